//! What ACME leaves on disk, under the listener's `state_dir`: the account's
//! credentials (`account.json`) and each name's certificate chain and key
//! (`NAME.pem`, `NAME.key`). Keys and credentials are written 0600, every file
//! atomically (a temporary file renamed into place), so a crash never leaves half a
//! key. The directory is made 0700 if missing.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The largest file read back (certificate chains are a few KiB).
const MAX_FILE_BYTES: u64 = 1 << 20;

pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: &Path) -> Store {
        Store {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn ensure_dir(&self) -> Result<(), String> {
        if !self.dir.is_dir() {
            std::fs::create_dir_all(&self.dir)
                .map_err(|e| format!("state_dir {}: {e}", self.dir.display()))?;
            std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("state_dir {}: {e}", self.dir.display()))?;
        }
        Ok(())
    }

    /// Writes `file` atomically with mode `mode`.
    fn write(&self, file: &str, bytes: &[u8], mode: u32) -> Result<(), String> {
        self.ensure_dir()?;
        let path = self.dir.join(file);
        let tmp = self.dir.join(format!(".{file}.tmp"));
        let fail = |e: std::io::Error| format!("{}: {e}", path.display());
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(fail)?;
        f.write_all(bytes).map_err(fail)?;
        f.sync_all().map_err(fail)?;
        std::fs::rename(&tmp, &path).map_err(fail)
    }

    fn read(&self, file: &str) -> Option<Vec<u8>> {
        let path = self.dir.join(file);
        let meta = std::fs::metadata(&path).ok()?;
        if meta.len() > MAX_FILE_BYTES {
            log::warn!("acme: {} is over 1 MiB: ignored", path.display());
            return None;
        }
        std::fs::read(&path).ok()
    }

    pub fn account(&self) -> Option<Vec<u8>> {
        self.read("account.json")
    }

    pub fn save_account(&self, json: &[u8]) -> Result<(), String> {
        self.write("account.json", json, 0o600)
    }

    /// A name's stored chain and key (PEM), if both are there.
    pub fn certificate(&self, name: &str) -> Option<(PathBuf, Vec<u8>, PathBuf, Vec<u8>)> {
        let (cert, key) = (format!("{name}.pem"), format!("{name}.key"));
        Some((
            self.dir.join(&cert),
            self.read(&cert)?,
            self.dir.join(&key),
            self.read(&key)?,
        ))
    }

    /// Stores a name's chain and key: the key first, so a chain on disk always has it.
    pub fn save_certificate(&self, name: &str, chain: &str, key: &str) -> Result<(), String> {
        self.write(&format!("{name}.key"), key.as_bytes(), 0o600)?;
        self.write(&format!("{name}.pem"), chain.as_bytes(), 0o644)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_keys_private_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(&dir.path().join("acme"));
        assert!(store.account().is_none());
        store.save_account(b"{}").unwrap();
        store.save_certificate("a.test", "CHAIN", "KEY").unwrap();
        let mode = |f: &str| {
            std::fs::metadata(dir.path().join("acme").join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("account.json"), 0o600);
        assert_eq!(mode("a.test.key"), 0o600);
        assert_eq!(mode("."), 0o700);
        let (_, chain, _, key) = store.certificate("a.test").unwrap();
        assert_eq!((&chain[..], &key[..]), (&b"CHAIN"[..], &b"KEY"[..]));
        assert!(store.certificate("b.test").is_none());
    }
}
