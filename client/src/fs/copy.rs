//! `copy_file_range`. Blocks are named by their hash, so a whole block is copied by reference:
//! the destination's block map takes the source's entries in one metadata command
//! (`CopyBlocks`) and no bytes move. What does not fill a destination block from the same place
//! in a source block (an unaligned head or tail, offsets at different places within a block,
//! inline data) is copied by value, through the normal read and write path.

use super::*;
use tessera_common::ErrorCode;

/// Bytes one by-value step reads and then writes.
const COPY_CHUNK: u64 = 4 << 20;

impl Fs {
    /// Copy `len` bytes of `fh_in` from `off_in` to `fh_out` at `off_out`. Returns the bytes
    /// copied: fewer than `len` at the source's end, and at most what one FUSE reply can count
    /// (a whole number of blocks, so that the caller's next call stays aligned).
    pub async fn copy_range(&self, fh_in: u64, off_in: u64, fh_out: u64, off_out: u64, len: u64) -> FsResult<u64> {
        let (src, dst) = (self.handle(fh_in)?, self.handle(fh_out)?);
        let bs = self.bs;
        let src_size = src.st.lock().await.size;
        let len = len.min(src_size.saturating_sub(off_in)).min(u32::MAX as u64 / bs * bs);
        if len == 0 {
            return Ok(0);
        }
        let end = off_out.checked_add(len).filter(|&e| e <= MAX_FILE_SIZE).ok_or(FsError::Errno(libc::EFBIG))?;
        if src.ino == dst.ino && off_in < end && off_out < off_in + len {
            // As Linux refuses it: a copy onto an overlapping range of the same file.
            return Err(FsError::Errno(libc::EINVAL));
        }
        let first = off_out.div_ceil(bs);
        let mut done = off_out;
        if off_in % bs == off_out % bs && first * bs < end {
            let head = first * bs - off_out;
            let n = self.copy_bytes(fh_in, off_in, fh_out, off_out, head).await?;
            if n < head {
                return Ok(n);
            }
            done = self.copy_blocks(&src, &dst, (off_in + head) / bs, first, end).await?;
        }
        let n = self.copy_bytes(fh_in, off_in + (done - off_out), fh_out, done, end - done).await?;
        Ok(done - off_out + n)
    }

    /// Copy by reference the source blocks from `src_first` into the destination blocks from
    /// `dst_first` up to `end`: the whole blocks, and the last, partial one when it is the
    /// source's tail and nothing of the destination follows it. Both files' local writes are
    /// settled first, so that the metadata server copies what this mount shows. Returns where
    /// in the destination the copy by reference stopped (`dst_first`'s offset if it did not
    /// start); the rest is the caller's to copy by value.
    async fn copy_blocks(&self, src: &Arc<OpenFile>, dst: &Arc<OpenFile>, src_first: u64, dst_first: u64, end: u64) -> FsResult<u64> {
        let bs = self.bs;
        let start = dst_first * bs;
        // The lower inode is locked first: two copies in opposite directions must not deadlock.
        let (lo, hi) = if src.ino <= dst.ino { (src, dst) } else { (dst, src) };
        let mut g_lo = lo.st.lock().await;
        let mut g_hi = if lo.ino == hi.ino { None } else { Some(hi.st.lock().await) };
        self.flush_state(lo, &mut g_lo).await?;
        if let Some(g) = g_hi.as_mut() {
            self.flush_state(hi, g).await?;
        }
        let src_is_lo = src.ino == lo.ino;
        let src_st: &OpenState = match g_hi.as_ref() {
            Some(g) if !src_is_lo => g,
            _ => &g_lo,
        };
        let (src_size, src_inline) = (src_st.size, src_st.inline_len());
        let dst_st: &mut OpenState = match g_hi.as_mut() {
            Some(g) if src_is_lo => g,
            _ => &mut g_lo,
        };
        let src_end = src_first * bs + (end - start);
        let partial = end % bs != 0 && src_end == src_size && end >= dst_st.size;
        let last = end / bs + partial as u64;
        // Inline bytes are not in blocks: they go by value (see `Mutation::CopyBlocks`).
        let dst_inline = dst_st.inline_len();
        let inline_kept = src_inline > src_first * bs || (dst_inline > 0 && (dst_first > 0 || dst_inline > end));
        if last <= dst_first || src_end > src_size || inline_kept {
            return Ok(start);
        }
        let mut i = dst_first;
        while i < last {
            let count = (last - i).min(COPY_MAX_BLOCKS);
            let until = if i + count == last && partial { end } else { (i + count) * bs };
            let op = Mutation::CopyBlocks { src: src.ino, src_first: src_first + (i - dst_first), dst: dst.ino, dst_first: i, count, end: until };
            let a = match self.meta.mutate_attr(op).await {
                Ok(a) => a,
                // Another mount changed a file since it was settled here: nothing was applied,
                // and the rest goes by value.
                Err(FsError::Wire(e)) if e.code == ErrorCode::InvalidArgument => {
                    tracing::debug!(src = src.ino, dst = dst.ino, "copy by reference refused, copying by value: {e}");
                    return Ok(i * bs);
                }
                Err(e) => return Err(e),
            };
            let entries = self.meta.block_range(dst.ino, i, count).await?;
            dst_st.copied(i, count, entries, a.size);
            dst.size_hint.store(a.size, Ordering::Relaxed);
            i += count;
        }
        Ok(if partial { end } else { last * bs })
    }

    /// Copy by value, in steps of at most `COPY_CHUNK`; the bytes copied (fewer than `len` only
    /// if the source ends sooner).
    async fn copy_bytes(&self, fh_in: u64, off_in: u64, fh_out: u64, off_out: u64, len: u64) -> FsResult<u64> {
        let mut done = 0;
        while done < len {
            let data = self.read(fh_in, off_in + done, (len - done).min(COPY_CHUNK) as u32).await?;
            if data.is_empty() {
                break;
            }
            self.write(fh_out, off_out + done, &data).await?;
            done += data.len() as u64;
        }
        Ok(done)
    }
}
