//! How a version keeps its value (what it yielded, or its result) and the
//! reply it was resumed with: once each, zstd-compressed when that makes
//! them smaller, and read back whole or, for listings, only their start.
//!
//! The snapshot a version holds does not repeat the yielded value: it is
//! the version's value, and [`super::Database::load_version`] puts it back.
//! (Versions written before schema 4 have it in both places, uncompressed;
//! they read as before.)

use std::borrow::Cow;
use std::io::Read;

use anyhow::{Result, bail};

use super::sql::Row;

/// Values shorter than this are kept as they are: compressing them saves
/// nothing.
const SMALLEST_COMPRESSED: usize = 64;

/// Enough of a stored value to read its first [`MAX_PREVIEW`] bytes: the
/// frame header and one whole zstd block (at most 128 KiB and its header).
pub(super) const PREFIX_BYTES: usize = (128 << 10) + 64;

/// The most a listing may ask of a value (see [`PREFIX_BYTES`]).
pub(super) const MAX_PREVIEW: usize = 64 << 10;

/// The largest value a version can hold: what a guest's 32-bit memory can.
const LARGEST_VALUE: u64 = 4 << 30;

/// A value as it is stored, and whether that is a zstd frame.
pub(super) type Packed<'a> = (Cow<'a, [u8]>, bool);

/// `value` as it is stored, and whether that is a zstd frame.
pub(super) fn pack<'a>(
    compressor: &mut zstd::bulk::Compressor<'static>,
    value: &'a [u8],
) -> Result<Packed<'a>> {
    if value.len() < SMALLEST_COMPRESSED {
        return Ok((Cow::Borrowed(value), false));
    }
    let compressed = compressor
        .compress(value)
        .map_err(|e| anyhow::anyhow!("cannot compress a value: {e}"))?;
    if compressed.len() >= value.len() {
        return Ok((Cow::Borrowed(value), false));
    }
    Ok((Cow::Owned(compressed), true))
}

/// The SQL that selects the stored column `name`: all of it, or with a
/// limit only as much as reading that many bytes of it needs.
pub(super) fn column(name: &str, limit: Option<usize>) -> String {
    match limit {
        None => name.to_string(),
        Some(_) => format!("substr({name}, 1, {PREFIX_BYTES})"),
    }
}

/// The value in columns `at` (as [`column`] selects it), `at + 1` (the
/// stored length) and `at + 2` (whether it is compressed) of a row: its
/// first `limit` bytes, or all of it, and its whole length.
pub(super) fn read(row: &mut Row, at: usize, limit: Option<usize>) -> Result<(Vec<u8>, u64)> {
    // SQLite's `substr` of an empty blob is NULL.
    let stored: Vec<u8> = row.get::<Option<Vec<u8>>>(at)?.unwrap_or_default();
    let stored_len: u64 = row.get(at + 1)?;
    let zstd: bool = row.get(at + 2)?;
    unpack(&stored, stored_len, zstd, limit)
}

/// A stored value (or its start, from [`PREFIX_BYTES`]) read back: its
/// first `limit` bytes (all of it without a limit), and its whole length.
/// `stored_len` is the length of the stored value, which is the value's
/// own when it is not compressed.
pub(super) fn unpack(
    stored: &[u8],
    stored_len: u64,
    zstd: bool,
    limit: Option<usize>,
) -> Result<(Vec<u8>, u64)> {
    if !zstd {
        let end = limit.map_or(stored.len(), |l| l.min(stored.len()));
        return Ok((stored[..end].to_vec(), stored_len));
    }
    let size = match zstd::zstd_safe::get_frame_content_size(stored) {
        Ok(Some(size)) if size <= LARGEST_VALUE => size,
        _ => bail!("a stored value is corrupt (its size is missing or too large)"),
    };
    let wanted = limit.map_or(size, |l| (l as u64).min(size));
    let mut value = Vec::with_capacity(wanted as usize);
    let decoder = zstd::stream::read::Decoder::new(stored)
        .map_err(|e| anyhow::anyhow!("a stored value cannot be read: {e}"))?;
    if let Err(e) = decoder.take(wanted).read_to_end(&mut value) {
        bail!("a stored value is corrupt: {e}");
    }
    if value.len() as u64 != wanted {
        bail!("a stored value is corrupt: it is shorter than its size");
    }
    Ok((value, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compressor() -> zstd::bulk::Compressor<'static> {
        zstd::bulk::Compressor::new(1).unwrap()
    }

    #[test]
    fn small_and_incompressible_values_stay_as_they_are() {
        let (stored, zstd) = pack(&mut compressor(), b"do something").unwrap();
        assert!(!zstd);
        assert_eq!(&*stored, b"do something");
        let mut noise = vec![0u8; 1000];
        blake3::Hasher::new().finalize_xof().fill(&mut noise);
        let (_, zstd) = pack(&mut compressor(), &noise).unwrap();
        assert!(!zstd);
    }

    #[test]
    fn large_values_are_compressed_and_read_whole_or_in_part() {
        let value = b"ask the boss ".repeat(100_000);
        let (stored, zstd) = pack(&mut compressor(), &value).unwrap();
        assert!(zstd && stored.len() < value.len() / 100);
        let whole = unpack(&stored, stored.len() as u64, true, None).unwrap();
        assert_eq!(whole, (value.clone(), value.len() as u64));
        let prefix = &stored[..stored.len().min(PREFIX_BYTES)];
        let start = unpack(prefix, stored.len() as u64, true, Some(20)).unwrap();
        assert_eq!(start, (value[..20].to_vec(), value.len() as u64));
        let raw = unpack(b"hello", 5, false, Some(2)).unwrap();
        assert_eq!(raw, (b"he".to_vec(), 5));
    }

    #[test]
    fn a_corrupt_value_is_an_error() {
        assert!(unpack(b"not zstd", 8, true, None).is_err());
        let (stored, _) = pack(&mut compressor(), &[7u8; 1000]).unwrap();
        assert!(unpack(&stored[..stored.len() - 2], 0, true, None).is_err());
    }
}
