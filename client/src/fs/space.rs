//! Space within a file: punching holes (`fallocate(PUNCH_HOLE)`) and finding them
//! (`lseek(SEEK_DATA / SEEK_HOLE)`). A hole is a block absent from the block map; it reads as
//! zeros and stores nothing.

use super::*;

impl Fs {
    /// Zero `[offset, offset + len)` without changing the size: whole blocks leave the block map
    /// (one metadata command, durable when it returns), the partial blocks at either end are
    /// written with zeros like any write.
    pub async fn punch_hole(&self, fh: u64, offset: u64, len: u64) -> FsResult<()> {
        let f = self.handle(fh)?;
        let bs = self.bs;
        let size = f.st.lock().await.size;
        let end = offset.saturating_add(len).min(size);
        if offset >= end {
            return Ok(());
        }
        // Whole blocks: those that start in the range and end in it or at the end of the file.
        let first = offset.div_ceil(bs);
        let last = if end == size { size.div_ceil(bs) } else { end / bs };
        let (zero_lo, zero_hi) = if first < last { (first * bs, (last * bs).min(end)) } else { (end, end) };
        for (lo, hi) in [(offset, zero_lo.min(end)), (zero_hi.max(offset), end)] {
            if lo < hi {
                self.write_zeros(fh, lo, hi - lo).await?;
            }
        }
        if first < last {
            let mut st = f.st.lock().await;
            self.meta.mutate_attr(Mutation::PunchBlocks { ino: f.ino, first, count: last - first }).await?;
            st.punch(first, last);
        }
        Ok(())
    }

    async fn write_zeros(&self, fh: u64, mut offset: u64, len: u64) -> FsResult<()> {
        let end = offset + len;
        let zeros = vec![0u8; (len.min(self.bs)) as usize];
        while offset < end {
            let n = (end - offset).min(zeros.len() as u64) as usize;
            self.write(fh, offset, &zeros[..n]).await?;
            offset += n as u64;
        }
        Ok(())
    }

    /// `SEEK_DATA` (`data`) or `SEEK_HOLE` from `offset`, answered from the block map as this
    /// mount sees it. ENXIO at or past the end, as Linux; the end of the file is a hole.
    pub async fn seek_hole_or_data(&self, fh: u64, offset: u64, data: bool) -> FsResult<u64> {
        let f = self.handle(fh)?;
        let st = f.st.lock().await;
        let bs = self.bs;
        if offset >= st.size {
            return Err(FsError::Errno(libc::ENXIO));
        }
        let idx = offset / bs;
        if data {
            let found = st.next_data(idx).map(|i| (i * bs).max(offset)).filter(|&p| p < st.size);
            return found.ok_or(FsError::Errno(libc::ENXIO));
        }
        let mut i = idx;
        while i * bs < st.size && st.has_data(i) {
            i += 1;
        }
        Ok((i * bs).max(offset).min(st.size))
    }
}
