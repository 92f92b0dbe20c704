//! The metadata leader's term, as this server last heard it (from a heartbeat reply or a
//! delete). Garbage-collection deletes from an older term come from a leader that was deposed
//! and may not know it yet (cut off from the others mid-pass): they are refused, so only the
//! current leader's view of what is referenced can delete blocks. Kept in `DATA/fence`
//! (synced), so a restart does not forget it. A metadata server that runs alone has term 0.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct Fence {
    path: PathBuf,
    term: Mutex<u64>,
}

impl Fence {
    pub fn load(dir: &Path) -> io::Result<Self> {
        let path = dir.join("fence");
        let term = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("{}: not a term", path.display())))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok(Fence { path, term: Mutex::new(term) })
    }

    pub fn current(&self) -> u64 {
        *self.term.lock().unwrap()
    }

    /// The leader is now in `term`: raise the fence if that is newer (stored first).
    pub fn raise(&self, term: u64) -> io::Result<()> {
        let mut t = self.term.lock().unwrap();
        if term > *t {
            tessera_common::durable::write_file(&self.path, term.to_string().as_bytes())?;
            *t = term;
        }
        Ok(())
    }

    /// May a delete sent in metadata term `term` go ahead? Raises the fence to it if newer;
    /// `Err` names the current term if it is older.
    pub fn admit(&self, term: u64) -> Result<(), String> {
        let current = self.current();
        if term < current {
            return Err(format!("a delete from metadata term {term} was refused: the metadata leader's term is {current} (the sender was deposed)"));
        }
        self.raise(term).map_err(|e| format!("storing the metadata term: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_terms_are_refused_and_the_fence_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let f = Fence::load(dir.path()).unwrap();
        assert_eq!(f.current(), 0);
        f.admit(0).unwrap();
        f.raise(5).unwrap();
        assert!(f.admit(4).unwrap_err().contains("term 4 was refused"));
        f.admit(6).unwrap();
        let f = Fence::load(dir.path()).unwrap();
        assert_eq!(f.current(), 6, "kept across a restart");
        assert!(f.admit(5).is_err());
    }
}
