//! Files and directories that survive a power cut once created: a new name is durable only
//! when the directory holding it has been fsynced, and a file's bytes only when it has been.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

/// `create_dir_all`, then fsync the parent of every directory it created, so each new name is
/// on disk before this returns.
pub fn create_dir_all(path: &Path) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut p = path;
    while !p.is_dir() {
        missing.push(p.to_owned());
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => break,
        }
    }
    fs::create_dir_all(path)?;
    for dir in missing.iter().rev() {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Write `data` to `path` as a whole: a temporary file, fsynced, renamed over `path`, and the
/// directory fsynced. A crash leaves the old content or the new, never a part.
pub fn write_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("file")));
    let mut f = File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    #[test]
    fn creates_nested_directories_and_replaces_files_whole() {
        let d = tempfile::tempdir().unwrap();
        let deep = d.path().join("a/b/c");
        super::create_dir_all(&deep).unwrap();
        assert!(deep.is_dir());
        super::create_dir_all(&deep).unwrap();
        let f = deep.join("id");
        super::write_file(&f, b"1\n").unwrap();
        super::write_file(&f, b"22\n").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"22\n");
        assert_eq!(std::fs::read_dir(&deep).unwrap().count(), 1, "no temporary file left");
    }
}
