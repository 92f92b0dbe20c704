//! Patches: how a small overwrite of a stored block is saved without uploading the block again.
//!
//! An `fsync` after a 4 KiB write into a 4 MiB block would otherwise upload 4 MiB to every
//! replica. Instead the written range goes to the metadata server as a [`Patch`] of that
//! block-map entry (`Mutation::PatchBlocks`), replicated and synced through Raft like any other
//! change. A reader takes the block's stored bytes (verified against its BLAKE3 id as always),
//! the first `len` of them, zeros up to the end of the furthest patch, and then each patch in
//! the order it was added.
//!
//! Patches are bounded, so that the metadata stays small and one block-map page stays within
//! a frame: at most [`PATCHES_PER_BLOCK`] patches and [`PATCH_BLOCK_BYTES`] bytes per entry, at
//! most [`PATCHES_PER_FILE`] patches and [`PATCH_FILE_BYTES`] bytes per file. Past a bound the
//! client uploads the whole block; the new entry has no patches (that is the compaction).

use crate::proto::meta::Patch;

/// Most bytes of patches on one block-map entry. An entry's patches are one record, rewritten
/// with each patch added, and every read and write of the block lays them over it: 256 KiB and
/// 64 patches made fsx 35% slower and synced random writes only 5-10% faster (fewer whole
/// uploads) than these bounds.
pub const PATCH_BLOCK_BYTES: usize = 64 * 1024;
/// Most patches on one block-map entry.
pub const PATCHES_PER_BLOCK: usize = 16;
/// Most bytes of patches of one file (all of them fit in one block-map page, within a frame).
pub const PATCH_FILE_BYTES: u64 = 2 * 1024 * 1024;
/// Most patches of one file.
pub const PATCHES_PER_FILE: u64 = 4096;

/// What one file's patches add up to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    pub patches: u64,
    pub bytes: u64,
}

impl std::ops::Add for Totals {
    type Output = Totals;
    fn add(self, o: Totals) -> Totals {
        Totals { patches: self.patches + o.patches, bytes: self.bytes + o.bytes }
    }
}

impl Totals {
    pub fn of(patches: &[Patch]) -> Self {
        Totals { patches: patches.len() as u64, bytes: bytes(patches) as u64 }
    }

    /// One more patch of `n` bytes.
    pub fn add(&mut self, n: usize) {
        self.patches += 1;
        self.bytes += n as u64;
    }

    /// Whether one more patch of `n` bytes stays within the file's bounds.
    pub fn fits(&self, n: usize) -> bool {
        self.patches < PATCHES_PER_FILE && self.bytes + n as u64 <= PATCH_FILE_BYTES
    }
}

impl Patch {
    /// Block offset just past the patch.
    pub fn end(&self) -> u64 {
        self.at as u64 + self.data.len() as u64
    }
}

/// The length of a block with its patches: `base_len` stored bytes, or up to the end of the
/// furthest patch.
pub fn logical_len(base_len: u32, patches: &[Patch]) -> u64 {
    patches.iter().map(Patch::end).fold(base_len as u64, u64::max)
}

/// Bytes the patches hold.
pub fn bytes(patches: &[Patch]) -> usize {
    patches.iter().map(|p| p.data.len()).sum()
}

/// Whether one more patch of `n` bytes fits on an entry that has `patches`.
pub fn fits(patches: &[Patch], n: usize) -> bool {
    n > 0 && patches.len() < PATCHES_PER_BLOCK && bytes(patches) + n <= PATCH_BLOCK_BYTES
}

/// Cut the patches at block offset `len` (a truncate): what lies past it goes.
pub fn clip(patches: &mut Vec<Patch>, len: u64) {
    patches.retain_mut(|p| {
        if p.end() > len {
            p.data.truncate(len.saturating_sub(p.at as u64) as usize);
        }
        !p.data.is_empty()
    });
}

/// Fill `dst` with the block's bytes from block offset `from`: the first `base_len` bytes of
/// `base` (the stored block), zeros after them, and each patch over that, in order. `dst` is
/// expected zeroed.
pub fn read(dst: &mut [u8], from: u64, base: &[u8], base_len: u64, patches: &[Patch]) {
    let to = from + dst.len() as u64;
    let copy = |dst: &mut [u8], src: &[u8], at: u64| {
        let (a, b) = (at.max(from), (at + src.len() as u64).min(to));
        if a < b {
            dst[(a - from) as usize..(b - from) as usize].copy_from_slice(&src[(a - at) as usize..(b - at) as usize]);
        }
    };
    copy(dst, &base[..(base_len as usize).min(base.len())], 0);
    for p in patches {
        copy(dst, &p.data, p.at as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(at: u32, data: &[u8]) -> Patch {
        Patch { at, data: data.to_vec() }
    }

    #[test]
    fn patches_apply_in_order_over_the_counted_bytes_and_zeros() {
        // Stored block "abcdefgh", of which 4 bytes count (cut by a truncate).
        let patches = [p(2, b"XY"), p(6, b"Z"), p(3, b"q")];
        assert_eq!(logical_len(4, &patches), 7);
        let mut out = vec![0; 7];
        read(&mut out, 0, b"abcdefgh", 4, &patches);
        assert_eq!(&out, b"abXq\0\0Z");
        let mut part = vec![0; 3];
        read(&mut part, 3, b"abcdefgh", 4, &patches);
        assert_eq!(&part, b"q\0\0");
    }

    #[test]
    fn clip_cuts_and_drops() {
        let mut patches = vec![p(0, b"aa"), p(3, b"bbb"), p(8, b"c")];
        clip(&mut patches, 4);
        assert_eq!(patches, vec![p(0, b"aa"), p(3, b"b")]);
        clip(&mut patches, 0);
        assert!(patches.is_empty());
    }

    #[test]
    fn limits() {
        assert!(fits(&[], 4096));
        assert!(!fits(&[], 0), "an empty patch is no patch");
        assert!(!fits(&[], PATCH_BLOCK_BYTES + 1));
        let full: Vec<Patch> = (0..PATCHES_PER_BLOCK as u32).map(|i| p(i, b"x")).collect();
        assert!(!fits(&full, 1));
    }
}
