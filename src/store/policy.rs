//! An instance's [`Policy`] as bytes in its row: the same little-endian
//! codec as snapshots, so that any backend stores it as one blob.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use crate::runtime::{Directory, Policy};
use crate::snapshot::codec::{Reader, Writer};

/// Bumped when the layout changes; older layouts stay readable.
const LAYOUT: u8 = 1;

/// The policy's bytes. An empty policy is no bytes at all, which is also
/// what instances made before policies existed hold.
pub(super) fn encode(policy: &Policy) -> Result<Vec<u8>> {
    if *policy == Policy::default() {
        return Ok(Vec::new());
    }
    let mut w = Writer::default();
    w.u8(LAYOUT);
    optional_u64(&mut w, policy.time_limit.map(|d| d.as_millis() as u64));
    optional_u64(&mut w, policy.memory_limit);
    w.len(policy.directories.len())?;
    for directory in &policy.directories {
        w.str(&directory.host.to_string_lossy())?;
        w.str(&directory.guest)?;
    }
    w.len(policy.env.len())?;
    for (key, value) in &policy.env {
        w.str(key)?;
        w.str(value)?;
    }
    Ok(w.buf)
}

/// The policy `encode` wrote.
pub(super) fn decode(bytes: &[u8]) -> Result<Policy> {
    if bytes.is_empty() {
        return Ok(Policy::default());
    }
    let mut r = Reader::new(bytes);
    let layout = r.u8()?;
    if layout != LAYOUT {
        anyhow::bail!("policy layout {layout} is newer than this wasnap reads ({LAYOUT})");
    }
    let time_limit = optional_u64_of(&mut r)?.map(Duration::from_millis);
    let memory_limit = optional_u64_of(&mut r)?;
    let mut directories = Vec::new();
    for _ in 0..r.count(8)? {
        directories.push(Directory {
            host: PathBuf::from(r.str()?),
            guest: r.str()?,
        });
    }
    let mut env = Vec::new();
    for _ in 0..r.count(8)? {
        env.push((r.str()?, r.str()?));
    }
    r.finish()?;
    Ok(Policy {
        time_limit,
        memory_limit,
        directories,
        env,
    })
}

fn optional_u64(w: &mut Writer, value: Option<u64>) {
    match value {
        None => w.u8(0),
        Some(v) => {
            w.u8(1);
            w.u64(v);
        }
    }
}

fn optional_u64_of(r: &mut Reader) -> Result<Option<u64>> {
    Ok(match r.u8()? {
        0 => None,
        _ => Some(r.u64()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_the_empty_policy_is_no_bytes() {
        assert!(encode(&Policy::default()).unwrap().is_empty());
        let policy = Policy {
            time_limit: Some(Duration::from_millis(1500)),
            memory_limit: Some(64 << 20),
            directories: vec![Directory {
                host: "/tmp/in".into(),
                guest: "/data".into(),
            }],
            env: vec![("MODE".into(), "test".into())],
        };
        assert_eq!(decode(&encode(&policy).unwrap()).unwrap(), policy);
    }
}
