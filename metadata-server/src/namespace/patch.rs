//! `PatchBlocks`: small overwrites kept as patches of block-map entries
//! (`tessera_common::patch`). Every other change of an entry goes through `Txn::set_block`,
//! which drops its patches, or `Txn::truncate`, which cuts them.

use super::*;
use tessera_common::patch::{self as rules, PATCHES_PER_FILE, PATCH_FILE_BYTES};

impl Namespace {
    /// See `Mutation::PatchBlocks`.
    pub(super) fn patch_blocks(&self, tx: &mut Txn, ino: u64, patches: &[(u64, BlockRef, Patch)], size: u64) -> Result<MetaResponse, WireError> {
        let bad = |m: String| err(ErrorCode::InvalidArgument, m);
        let mut r = tx.commit_start(ino, size, patches.iter().map(|(idx, _, _)| *idx))?;
        let bs = tx.block_size;
        let mut file = tx.patch_totals(ino)?;
        for (idx, base, p) in patches {
            if tx.block(ino, *idx)? != Some(*base) {
                return Err(bad(format!("block {idx} is not the one the patch was made for (it changed meanwhile)")));
            }
            if p.end() > bs || idx.saturating_mul(bs).saturating_add(p.end()) > size {
                return Err(bad(format!("patch of block {idx} does not fit the file")));
            }
            let mut all = tx.patches(ino, *idx)?;
            if !rules::fits(&all, p.data.len()) {
                return Err(bad(format!("block {idx} has no room for another patch of {} bytes", p.data.len())));
            }
            if !file.fits(p.data.len()) {
                return Err(bad(format!("file has {} patches of {} bytes (at most {PATCHES_PER_FILE}, {PATCH_FILE_BYTES} bytes)", file.patches, file.bytes)));
            }
            file.add(p.data.len());
            all.push(p.clone());
            tx.set_patches(ino, *idx, all);
        }
        Ok(MetaResponse::Attr(tx.commit_end(ino, &mut r, size)))
    }
}
