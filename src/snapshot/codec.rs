//! Little-endian primitives shared by the snapshot file and the store.
//!
//! The writer appends to a byte vector; the reader walks a byte slice and
//! checks every length against what is left before it allocates, so a
//! corrupt length is an error and never a huge allocation or a panic.

use anyhow::{Result, bail};

/// Appends little-endian values to a byte vector.
#[derive(Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn u128(&mut self, v: u128) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn raw(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }

    /// A length as `u32`; lengths beyond that cannot come from a Wasm guest.
    pub(crate) fn len(&mut self, n: usize) -> Result<()> {
        match u32::try_from(n) {
            Ok(n) => {
                self.u32(n);
                Ok(())
            }
            Err(_) => bail!("length {n} does not fit the snapshot format"),
        }
    }

    /// Length-prefixed bytes.
    pub(crate) fn bytes(&mut self, v: &[u8]) -> Result<()> {
        self.len(v.len())?;
        self.raw(v);
        Ok(())
    }

    /// Length-prefixed UTF-8.
    pub(crate) fn str(&mut self, v: &str) -> Result<()> {
        self.bytes(v.as_bytes())
    }

    /// Length-prefixed list of strings.
    pub(crate) fn strings(&mut self, v: &[String]) -> Result<()> {
        self.len(v.len())?;
        v.iter().try_for_each(|s| self.str(s))
    }
}

/// Reads little-endian values from a byte slice, failing on overrun.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    pub(crate) fn raw(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.rest.len() {
            bail!(
                "data ends early (needs {n} more bytes, has {})",
                self.rest.len()
            );
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.raw(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.raw(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        self.array().map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        self.array().map(u64::from_le_bytes)
    }

    pub(crate) fn u128(&mut self) -> Result<u128> {
        self.array().map(u128::from_le_bytes)
    }

    pub(crate) fn hash(&mut self) -> Result<[u8; 32]> {
        self.array()
    }

    /// A count of items each at least `min_item` bytes long, checked against
    /// what is left so that a corrupt count cannot reserve huge vectors.
    pub(crate) fn count(&mut self, min_item: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item.max(1)) > self.rest.len() {
            bail!(
                "count {n} exceeds the data left ({} bytes)",
                self.rest.len()
            );
        }
        Ok(n)
    }

    pub(crate) fn bytes(&mut self) -> Result<Vec<u8>> {
        let n = self.u32()? as usize;
        Ok(self.raw(n)?.to_vec())
    }

    pub(crate) fn str(&mut self) -> Result<String> {
        match String::from_utf8(self.bytes()?) {
            Ok(s) => Ok(s),
            Err(_) => bail!("a string is not valid UTF-8"),
        }
    }

    pub(crate) fn strings(&mut self) -> Result<Vec<String>> {
        let n = self.count(4)?;
        (0..n).map(|_| self.str()).collect()
    }

    /// Fails unless every byte has been consumed.
    pub(crate) fn finish(&self) -> Result<()> {
        if !self.rest.is_empty() {
            bail!("{} unexpected bytes after the end", self.rest.len());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_primitives() {
        let mut w = Writer::default();
        w.u8(7);
        w.u32(0xdead_beef);
        w.u64(u64::MAX - 1);
        w.u128(1 << 100);
        w.str("héllo").unwrap();
        w.strings(&["a".into(), String::new()]).unwrap();
        let mut r = Reader::new(&w.buf);
        assert_eq!(r.u8().unwrap(), 7);
        assert_eq!(r.u32().unwrap(), 0xdead_beef);
        assert_eq!(r.u64().unwrap(), u64::MAX - 1);
        assert_eq!(r.u128().unwrap(), 1 << 100);
        assert_eq!(r.str().unwrap(), "héllo");
        assert_eq!(r.strings().unwrap(), vec!["a".to_string(), String::new()]);
        r.finish().unwrap();
    }

    #[test]
    fn refuses_overruns_and_huge_counts() {
        let mut r = Reader::new(&[1, 0, 0]);
        assert!(r.u32().is_err());
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 0]);
        assert!(r.count(1).is_err());
        let mut r = Reader::new(&[5, 0, 0, 0, b'a']);
        assert!(r.bytes().is_err());
        let mut r = Reader::new(&[1, 0, 0, 0, 0xff]);
        assert!(r.str().is_err());
        assert!(Reader::new(&[0]).finish().is_err());
    }
}
