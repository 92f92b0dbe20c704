//! The on-disk form of a metadata backup (`tessera meta backup DIR`, `tessera-meta --restore
//! DIR`): the checkpoint's files under `DIR/db/`, and `DIR/tessera-backup.json`, the manifest
//! that names each file with its size and BLAKE3 hash. A restore uses a backup only when every
//! file matches its manifest entry.

use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The manifest's file name in a backup directory.
pub const MANIFEST: &str = "tessera-backup.json";
/// The directory of a backup that holds the database files.
pub const DB_DIR: &str = "db";
/// Version of the manifest format.
pub const FORMAT: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// When the checkpoint was taken: seconds since the Unix epoch, and as `YYYY-MM-DD HH:MM:SS UTC`.
    pub created_unix: u64,
    pub created: String,
    /// The metadata server's file-system block size and replica count at that time.
    pub block_size: u32,
    pub replicas: u32,
    pub ring_version: u64,
    pub files: Vec<ManifestFile>,
}

impl Manifest {
    /// Write it as `dir/tessera-backup.json`, durably (the last step of a backup: a directory
    /// without a manifest is no backup).
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        crate::durable::write_file(&dir.join(MANIFEST), &serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Relative to `DIR/db/`.
    pub name: String,
    pub size: u64,
    /// BLAKE3 of the file, hex.
    pub blake3: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0} is not a backup: no {MANIFEST}")]
    NoManifest(PathBuf),
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{0}: unreadable manifest: {1}")]
    BadManifest(PathBuf, String),
    #[error("backup file {path} is {actual} bytes, the manifest says {expected}: the backup is damaged")]
    Size { path: PathBuf, expected: u64, actual: u64 },
    #[error("backup file {0} does not match its BLAKE3 hash in the manifest: the backup is damaged")]
    Hash(PathBuf),
}

/// A name that stays inside the directory it is joined to: no separator, not `.` or `..`.
pub fn plain_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && !name.contains('/') && !name.contains('\0') && name != "." && name != ".."
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |err| BackupError::Io { path: path.to_owned(), err }
}

/// Size and BLAKE3 (hex) of a file, read once.
pub fn hash_file(path: &Path) -> Result<(u64, String), BackupError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            return Ok((size, h.finalize().to_hex().to_string()));
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
}

/// Read the manifest of the backup in `dir` and check every file it names against its size
/// and hash. Nothing is written.
pub fn read_verified(dir: &Path) -> Result<Manifest, BackupError> {
    let mpath = dir.join(MANIFEST);
    let text = match std::fs::read(&mpath) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(BackupError::NoManifest(dir.to_owned())),
        Err(e) => return Err(BackupError::Io { path: mpath, err: e }),
    };
    let m: Manifest = serde_json::from_slice(&text).map_err(|e| BackupError::BadManifest(mpath.clone(), e.to_string()))?;
    if m.format != FORMAT {
        return Err(BackupError::BadManifest(mpath, format!("format {} (this version reads {FORMAT})", m.format)));
    }
    if m.files.is_empty() {
        return Err(BackupError::BadManifest(mpath, "no files".into()));
    }
    if let Some(f) = m.files.iter().find(|f| !plain_name(&f.name)) {
        return Err(BackupError::BadManifest(mpath, format!("bad file name {:?}", f.name)));
    }
    for f in &m.files {
        let path = dir.join(DB_DIR).join(&f.name);
        let actual = std::fs::metadata(&path).map_err(io(&path))?.len();
        if actual != f.size {
            return Err(BackupError::Size { path, expected: f.size, actual });
        }
        let (size, hash) = hash_file(&path)?;
        if size != f.size {
            return Err(BackupError::Size { path, expected: f.size, actual: size });
        }
        if hash != f.blake3 {
            return Err(BackupError::Hash(path));
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_byte_or_length_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join(DB_DIR)).unwrap();
        let f = d.path().join(DB_DIR).join("000001.sst");
        std::fs::write(&f, b"hello").unwrap();
        let (size, blake3) = hash_file(&f).unwrap();
        let m = Manifest { format: FORMAT, created_unix: 0, created: String::new(), block_size: 4096, replicas: 3, ring_version: 1, files: vec![ManifestFile { name: "000001.sst".into(), size, blake3 }] };
        m.write(d.path()).unwrap();
        assert_eq!(read_verified(d.path()).unwrap(), m);
        std::fs::write(&f, b"hellp").unwrap();
        assert!(matches!(read_verified(d.path()), Err(BackupError::Hash(_))));
        std::fs::write(&f, b"hello!").unwrap();
        assert!(matches!(read_verified(d.path()), Err(BackupError::Size { .. })));
        assert!(matches!(read_verified(&d.path().join(DB_DIR)), Err(BackupError::NoManifest(_))));
        assert!(!plain_name("../x") && !plain_name("..") && plain_name("CURRENT"));
    }
}
