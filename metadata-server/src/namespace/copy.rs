//! `CopyBlocks`: a copy of whole blocks is a block-map change. Blocks are named by their hash,
//! so the destination can reference the source's blocks; only reference counts change. A
//! block with patches is refused (the client copies it by value).

use super::*;

impl Namespace {
    /// See `Mutation::CopyBlocks`. The source entries are read before any destination entry is
    /// set, and every reference change goes through the command's overlay (`Txn::set_block`),
    /// so a block named several times, or by both files, is counted once per entry.
    pub(super) fn copy_blocks(&self, tx: &mut Txn, (src, src_first): (u64, u64), (dst, dst_first): (u64, u64), count: u64, end: u64) -> Result<MetaResponse, WireError> {
        let bs = tx.block_size;
        let bad = |m: String| err(ErrorCode::InvalidArgument, m);
        let s = tx.inode(src)?;
        let mut d = tx.inode(dst)?;
        for (what, r) in [("source", &s), ("destination", &d)] {
            match r.kind {
                FileKind::File => {}
                FileKind::Dir => return Err(err(ErrorCode::IsDir, format!("copy {what} is a directory"))),
                _ => return Err(bad(format!("copy {what} is not a regular file"))),
            }
        }
        if count == 0 || count > COPY_MAX_BLOCKS {
            return Err(bad(format!("copy of {count} blocks: between 1 and {COPY_MAX_BLOCKS} per command")));
        }
        // Offsets in bytes, checked against overflow and the largest file.
        let byte = |first: u64| first.checked_mul(bs).filter(|&b| b <= MAX_FILE_SIZE);
        let (Some(dst_start), Some(src_start)) = (byte(dst_first), byte(src_first)) else {
            return Err(bad("copy range past the largest file size".into()));
        };
        let last_start = dst_start + (count - 1) * bs;
        if end <= last_start || end > last_start + bs || end > MAX_FILE_SIZE {
            return Err(bad(format!("copy end {end} is not inside block {} of the destination", dst_first + count - 1)));
        }
        let len = end - dst_start;
        if src_start + len > s.size {
            return Err(bad(format!("copy source bytes {src_start}..{} pass the source's end ({})", src_start + len, s.size)));
        }
        let tail = end - last_start;
        if tail < bs && d.size > end {
            return Err(bad(format!("copy ends inside block {} of the destination, which has bytes after it", dst_first + count - 1)));
        }
        if src == dst && src_first < dst_first + count && dst_first < src_first + count {
            return Err(bad("copy ranges overlap within one file".into()));
        }
        // Inline bytes start at block 0 and may span several blocks when blocks are small.
        if tx.inline(src)?.is_some_and(|x| x.len() as u64 > src_start) {
            return Err(bad("copy source holds bytes of the range inline, not in blocks".into()));
        }
        if let Some(x) = tx.inline(dst)? {
            if !x.is_empty() && (dst_first > 0 || x.len() as u64 > end) {
                return Err(bad("copy destination holds bytes inline that the copy does not replace".into()));
            }
            // The copy replaces every inline byte (or there is none): nothing left to keep.
            tx.inline.insert(dst, None);
        }
        let mut from = Vec::with_capacity(count as usize);
        for i in 0..count {
            from.push(tx.block(src, src_first + i)?);
            // A patched block is more than its id names: its bytes go by value.
            if !tx.patches(src, src_first + i)?.is_empty() {
                return Err(bad(format!("copy source block {} has patches", src_first + i)));
            }
        }
        for (i, b) in from.into_iter().enumerate() {
            let mut b = b;
            if i as u64 == count - 1 {
                if let Some(b) = b.as_mut() {
                    b.len = b.len.min(tail as u32);
                }
            }
            tx.set_block(dst, dst_first + i as u64, b)?;
        }
        if end > d.size {
            tx.bytes += (end - d.size) as i64;
            d.size = end;
        }
        d.mtime = tx.now;
        d.ctime = tx.now;
        let a = attr(dst, &d);
        tx.put_inode(dst, d);
        Ok(MetaResponse::Attr(a))
    }
}
