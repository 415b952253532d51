//! Compiled artifacts, and who is trusted with them.
//!
//! An artifact is native code: loading one runs whatever it holds
//! (`Engine::load_with_artifact` is `unsafe` for that reason). A database
//! is a file anyone may hand over, so its contents are no reason to run
//! code. The store therefore gives back only artifacts it can
//! authenticate: each is kept with a MAC (keyed BLAKE3 over the module's
//! hash, the engine fingerprint and the bytes) whose key is the current
//! user's, kept outside every database, in `$XDG_CONFIG_HOME/wasnap/
//! artifact-key` (`~/.config/wasnap/artifact-key`), readable by that user
//! only. An artifact whose MAC does not verify (another user's, another
//! machine's, written by hand) is not offered, and the module is
//! instrumented and compiled again, then cached under this user's key.
//! So a database copied to another machine or account simply compiles its
//! modules once more there, and a crafted database cannot make wasnap run
//! code it did not compile itself. Without a key (no home or config
//! directory, or a key file others could read or write), artifacts are
//! neither stored nor used.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use super::sql::{Begin, params};
use super::{Database, require_module};
use crate::snapshot::ModuleHash;

/// The secret that authenticates compiled artifacts (see the module
/// documentation).
#[derive(Clone)]
pub struct ArtifactKey([u8; 32]);

impl std::fmt::Debug for ArtifactKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ArtifactKey(..)")
    }
}

const KEY_LEN: usize = 32;

impl ArtifactKey {
    /// A new random key.
    pub fn generate() -> Result<ArtifactKey> {
        let mut key = [0u8; KEY_LEN];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut random| random.read_exact(&mut key))
            .context("cannot read /dev/urandom for a new artifact key")?;
        Ok(ArtifactKey(key))
    }

    /// The current user's key, made on first use; `None` when the user
    /// has no config directory (no `XDG_CONFIG_HOME` nor `HOME`).
    pub fn for_user() -> Result<Option<ArtifactKey>> {
        let config = match std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
                Some(home) => Path::new(&home).join(".config"),
                None => return Ok(None),
            },
        };
        ArtifactKey::in_file(&config.join("wasnap").join("artifact-key")).map(Some)
    }

    /// The key in `path`, made (with its directory) if it does not exist.
    /// A key file that others may read or write is refused: whoever can
    /// read it can make artifacts this user's wasnap would run.
    pub fn in_file(path: &Path) -> Result<ArtifactKey> {
        if !path.exists() {
            ArtifactKey::create(path)?;
        }
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot read the artifact key {}", path.display()))?;
        let mode = file.metadata()?.permissions().mode();
        if mode & 0o077 != 0 {
            bail!(
                "the artifact key {} is open to other users (mode {:o}); make it 0600",
                path.display(),
                mode & 0o777
            );
        }
        let mut key = [0u8; KEY_LEN];
        let mut extra = [0u8; 1];
        let mut reader = &file;
        if reader.read_exact(&mut key).is_err() || reader.read(&mut extra)? != 0 {
            bail!(
                "the artifact key {} is not {KEY_LEN} bytes long",
                path.display()
            );
        }
        Ok(ArtifactKey(key))
    }

    /// Writes a new key to `path`, whole or not at all: it is written
    /// beside it and linked into place, so that a process that finds the
    /// file finds all of it, and of two processes making one at once, one
    /// wins and both use its key.
    fn create(path: &Path) -> Result<()> {
        let dir = path
            .parent()
            .context("an artifact key file needs a directory")?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let partial = dir.join(format!(".artifact-key.{}", std::process::id()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .and_then(|mut file| {
                file.write_all(&ArtifactKey::generate().map_err(std::io::Error::other)?.0)?;
                file.sync_all()
            });
        let linked = written.and_then(|()| match std::fs::hard_link(&partial, path) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        });
        let _ = std::fs::remove_file(&partial);
        linked.with_context(|| format!("cannot write the artifact key {}", path.display()))
    }

    /// The MAC of an artifact of module `hash` under engine `fingerprint`.
    fn mac(&self, hash: &ModuleHash, fingerprint: &str, bytes: &[u8]) -> [u8; 32] {
        let mut mac = blake3::Hasher::new_keyed(&self.0);
        mac.update(b"wasnap compiled artifact\0");
        mac.update(hash);
        mac.update(&(fingerprint.len() as u64).to_le_bytes());
        mac.update(fingerprint.as_bytes());
        mac.update(bytes);
        *mac.finalize().as_bytes()
    }
}

impl Database {
    /// Sets the key that authenticates compiled artifacts; `None` stores
    /// and uses none. Without a call, the current user's key is used
    /// ([`ArtifactKey::for_user`]), if there is one.
    pub fn set_artifact_key(&self, key: Option<ArtifactKey>) {
        super::lock(&self.shared).artifact_key = Some(key);
    }

    /// The key, looked up on first use.
    fn artifact_key(&self) -> Option<ArtifactKey> {
        let mut shared = super::lock(&self.shared);
        shared
            .artifact_key
            .get_or_insert_with(|| ArtifactKey::for_user().ok().flatten())
            .clone()
    }

    /// Whether an artifact is cached for module `hash` under the engine
    /// `fingerprint`, without reading it (an interpreter's is 140 MB): the
    /// check before compiling. [`Database::compiled`] authenticates it when
    /// it is read to run; one that fails is compiled again then, and
    /// replaced.
    pub fn has_compiled(&self, hash: &ModuleHash, fingerprint: &str) -> Result<bool> {
        if self.artifact_key().is_none() {
            return Ok(false);
        }
        self.with(|s| {
            s.conn.exists(
                "SELECT 1 FROM compiled WHERE module_hash = ?1 AND fingerprint = ?2",
                params![hash, fingerprint],
            )
        })
    }

    /// The compiled artifact cached for module `hash` under the engine
    /// `fingerprint` (which names everything that makes artifacts
    /// incompatible: engine version, settings, instrumenter version), if
    /// there is one and it is authenticated by this store's key: bytes
    /// that [`Database::put_compiled`] was given with that key, unchanged.
    pub fn compiled(&self, hash: &ModuleHash, fingerprint: &str) -> Result<Option<Vec<u8>>> {
        let Some(key) = self.artifact_key() else {
            return Ok(None);
        };
        let row: Option<(Vec<u8>, Option<Vec<u8>>)> = self.with(|s| {
            match s.conn.query_opt(
                "SELECT bytes, mac FROM compiled WHERE module_hash = ?1 AND fingerprint = ?2",
                params![hash, fingerprint],
            )? {
                Some(mut r) => Ok(Some((r.get(0)?, r.get(1)?))),
                None => Ok(None),
            }
        })?;
        Ok(row.and_then(|(bytes, mac)| {
            let expected = key.mac(hash, fingerprint, &bytes);
            // Comparing in constant time, as blake3::Hash does.
            let genuine = mac.is_some_and(|mac| {
                <[u8; 32]>::try_from(mac.as_slice())
                    .is_ok_and(|mac| blake3::Hash::from(mac) == blake3::Hash::from(expected))
            });
            genuine.then_some(bytes)
        }))
    }

    /// Caches a compiled artifact of module `hash` (which must be stored)
    /// under the engine `fingerprint`, replacing any earlier one, with its
    /// MAC. Without a key nothing is stored: an artifact nobody can
    /// authenticate would never be used.
    pub fn put_compiled(&self, hash: &ModuleHash, fingerprint: &str, bytes: &[u8]) -> Result<()> {
        let key = self.artifact_key();
        self.with(|s| {
            let mut tx = s.conn.transaction(Begin::Write)?;
            require_module(&mut *tx, hash)?;
            if let Some(key) = key {
                tx.execute(
                    "INSERT INTO compiled (module_hash, fingerprint, bytes, mac)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (module_hash, fingerprint)
                     DO UPDATE SET bytes = excluded.bytes, mac = excluded.mac",
                    params![hash, fingerprint, bytes, &key.mac(hash, fingerprint, bytes)],
                )?;
            }
            tx.commit()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_made_once_for_its_user_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config/wasnap/artifact-key");
        let key = ArtifactKey::in_file(&path).unwrap();
        let again = ArtifactKey::in_file(&path).unwrap();
        assert_eq!(key.0, again.0);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = ArtifactKey::in_file(&path).unwrap_err().to_string();
        assert!(error.contains("open to other users (mode 644)"), "{error}");
    }

    #[test]
    fn macs_name_the_module_the_engine_and_the_bytes() {
        let key = ArtifactKey::generate().unwrap();
        let other = ArtifactKey::generate().unwrap();
        let mac = key.mac(&[1; 32], "engine", b"code");
        assert_eq!(mac, key.mac(&[1; 32], "engine", b"code"));
        assert_ne!(mac, key.mac(&[2; 32], "engine", b"code"));
        assert_ne!(mac, key.mac(&[1; 32], "engine2", b"code"));
        assert_ne!(mac, key.mac(&[1; 32], "engine", b"code!"));
        assert_ne!(mac, other.mac(&[1; 32], "engine", b"code"));
    }
}
