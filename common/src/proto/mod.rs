//! The Tessera wire protocol. This module is the specification.
//!
//! Transport: QUIC with TLS 1.3 and mutual authentication, ALPN [`ALPN`]. One request per
//! bidirectional stream: the client writes one frame and finishes its side, the server answers
//! with one frame and finishes. Connections are cached and reused.
//!
//! Frame layout (all integers little-endian):
//!
//! ```text
//! u32 header_len | u32 payload_len | header (bincode, standard config) | payload (raw bytes)
//! ```
//!
//! The header is a [`meta::MetaRequest`]/[`meta::MetaResponse`] or
//! [`chunk::ChunkRequest`]/[`chunk::ChunkResponse`]; the payload carries block bytes, so that
//! blocks are never copied through the serializer. `header_len` is bounded by
//! [`MAX_HEADER`], `payload_len` by [`MAX_PAYLOAD`]; a frame over either bound, a truncated frame
//! or an undecodable header is a protocol error: the receiver closes that connection with
//! [`CLOSE_PROTOCOL_ERROR`] and keeps serving everyone else.
//!
//! Limits per connection (servers; constants in `net`): at most `MAX_STREAMS` streams open at
//! once; a frame is read only when its size (8 + `header_len` + `payload_len`) fits in the
//! `CONN_BUDGET` bytes that the connection's requests being read or handled may hold, so a
//! sender keeps its frames in flight within that budget; once a frame has begun, its lengths
//! and then the rest must each arrive within `FRAME_TIMEOUT`, or the connection is closed as a
//! protocol error.

pub mod chunk;
pub mod meta;

use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Versioned ALPN: a peer speaking another version fails the handshake. Bump it with every
/// change to a wire enum or struct (bincode has no field names to tolerate a mismatch).
/// 2: xattrs, locks, sessions, open tracking, punch hole, `Create.umask`; workers in
/// `ChunkLoad`, `NodeStatus` and `ClusterStatus`.
/// 3: metadata backup (`BackupStart`, `BackupRead`, `BackupEnd`).
/// 4: `Mutation::CopyBlocks` (copy_file_range by reference).
/// 5: `ChunkResponse::Stored` carries the server's free space.
/// 6: `ClusterStatus.events`.
/// 7: `MetaRequest::Raft` between metadata servers; `ClusterStatus.meta_servers`; the leader's
///    term in `HeartbeatAck` and `ChunkRequest::Delete`.
/// 8: `MetaRequest::MetaGroup` (`tessera meta add|remove`); `RaftRpc::Probe` answers the id.
/// 9: `MetaRequest::ReadDirPlus` (entries with their attributes, for FUSE's readdirplus).
/// 10: `DirPlus` tells for each entry whether its inode has extended attributes; `MetaRequest::Raft`
///     names the server it is for; `Mutation::CreateOpen`.
/// 11: `Mutation::PatchBlocks`; `MetaResponse::Blocks` carries the entries' patches.
pub const ALPN: &[u8] = b"tessera/11";
/// Bound on an encoded header (directory listings are paged to stay below it).
pub const MAX_HEADER: u32 = 4 * 1024 * 1024;
/// Bound on a payload: one block at most.
pub const MAX_PAYLOAD: u32 = crate::MAX_BLOCK_SIZE;

/// QUIC application close codes.
pub const CLOSE_NORMAL: u32 = 0;
pub const CLOSE_PROTOCOL_ERROR: u32 = 1;
pub const CLOSE_FORBIDDEN: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame header of {0} bytes exceeds the limit")]
    HeaderTooLarge(u32),
    #[error("frame payload of {0} bytes exceeds the limit")]
    PayloadTooLarge(u32),
    #[error("truncated frame: {0}")]
    Truncated(std::io::Error),
    #[error("undecodable header: {0}")]
    Decode(String),
    #[error("encode: {0}")]
    Encode(String),
    #[error("stream write: {0}")]
    Write(std::io::Error),
    #[error("frame not complete within {0} s")]
    TooSlow(u64),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encode a frame into one buffer (header and payload).
pub fn encode_frame<T: Serialize>(header: &T, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut out = encode_head(header, payload.len())?;
    out.extend_from_slice(payload);
    Ok(out)
}

/// Encode the part of a frame before its payload: both lengths and the header. Its length plus
/// the payload's is what the frame costs the receiver (see [`read_frame_lens`]).
pub fn encode_head<T: Serialize>(header: &T, payload_len: usize) -> Result<Vec<u8>, FrameError> {
    let hdr = bincode::serde::encode_to_vec(header, config()).map_err(|e| FrameError::Encode(e.to_string()))?;
    if hdr.len() as u64 > MAX_HEADER as u64 {
        return Err(FrameError::HeaderTooLarge(hdr.len() as u32));
    }
    if payload_len as u64 > MAX_PAYLOAD as u64 {
        return Err(FrameError::PayloadTooLarge(payload_len as u32));
    }
    let mut out = Vec::with_capacity(8 + hdr.len() + payload_len);
    out.extend_from_slice(&(hdr.len() as u32).to_le_bytes());
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    out.extend_from_slice(&hdr);
    Ok(out)
}

/// Write one frame; returns its length. The payload is written separately so a block is not
/// copied.
pub async fn write_frame<W, T>(w: &mut W, header: &T, payload: &[u8]) -> Result<usize, FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let head = encode_head(header, payload.len())?;
    write_head(w, &head, payload).await?;
    Ok(head.len() + payload.len())
}

/// Write a frame whose head [`encode_head`] made.
pub async fn write_head<W: AsyncWrite + Unpin>(w: &mut W, head: &[u8], payload: &[u8]) -> Result<(), FrameError> {
    w.write_all(head).await.map_err(FrameError::Write)?;
    if !payload.is_empty() {
        w.write_all(payload).await.map_err(FrameError::Write)?;
    }
    Ok(())
}

/// Read one frame, enforcing both bounds before allocating.
pub async fn read_frame<R, T>(r: &mut R) -> Result<(T, Vec<u8>), FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let (hlen, plen) = read_frame_lens(r).await?;
    read_frame_body(r, hlen, plen).await
}

/// Read a frame's two lengths and check both bounds; nothing is allocated yet, so a server can
/// first wait until the frame fits in what the connection may hold.
pub async fn read_frame_lens<R: AsyncRead + Unpin>(r: &mut R) -> Result<(u32, u32), FrameError> {
    let mut lens = [0u8; 8];
    r.read_exact(&mut lens).await.map_err(FrameError::Truncated)?;
    let hlen = u32::from_le_bytes(lens[..4].try_into().unwrap());
    let plen = u32::from_le_bytes(lens[4..].try_into().unwrap());
    if hlen > MAX_HEADER {
        return Err(FrameError::HeaderTooLarge(hlen));
    }
    if plen > MAX_PAYLOAD {
        return Err(FrameError::PayloadTooLarge(plen));
    }
    Ok((hlen, plen))
}

/// Read the header and payload of a frame whose lengths [`read_frame_lens`] returned.
pub async fn read_frame_body<R, T>(r: &mut R, hlen: u32, plen: u32) -> Result<(T, Vec<u8>), FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut hdr = vec![0u8; hlen as usize];
    r.read_exact(&mut hdr).await.map_err(FrameError::Truncated)?;
    let mut payload = vec![0u8; plen as usize];
    r.read_exact(&mut payload).await.map_err(FrameError::Truncated)?;
    let (header, used) = bincode::serde::decode_from_slice(&hdr, config()).map_err(|e| FrameError::Decode(e.to_string()))?;
    if used != hdr.len() {
        return Err(FrameError::Decode("trailing bytes after header".into()));
    }
    Ok((header, payload))
}

#[cfg(test)]
mod tests {
    use super::meta::MetaRequest;
    use super::*;

    /// Golden bytes: pin the frame layout and the header encoding of a simple request.
    #[test]
    fn golden_getattr_frame() {
        let f = encode_frame(&MetaRequest::GetAttr { ino: 1 }, b"xy").unwrap();
        // header: variant index of GetAttr, then varint ino 1.
        let hdr = &f[8..f.len() - 2];
        assert_eq!(&f[..4], &(hdr.len() as u32).to_le_bytes());
        assert_eq!(&f[4..8], &2u32.to_le_bytes());
        assert_eq!(hdr, &[2u8, 1u8]);
        assert_eq!(&f[f.len() - 2..], b"xy");
    }

    /// Byte fields written as byte strings (`serde_bytes`, one copy) encode exactly as the byte
    /// sequences they were before: stored patches and inline data still decode.
    #[test]
    fn byte_fields_encode_as_before() {
        use crate::proto::meta::{MetaResponse, Patch};
        let data: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        assert_eq!(enc(&Patch { at: 7, data: data.clone() }), enc(&(7u32, data.clone())));
        // An enum variant: its index, then its fields in order.
        let blocks = MetaResponse::Blocks { size: 9, blocks: vec![], inline: Some(data.clone()), patches: vec![(1, vec![Patch { at: 0, data: data.clone() }])] };
        let index = enc(&blocks)[0];
        assert_eq!(enc(&blocks), enc(&(index, 9u64, Vec::<u64>::new(), Some(data.clone()), vec![(1u64, vec![(0u32, data.clone())])])));
        let back: MetaResponse = bincode::serde::decode_from_slice(&enc(&blocks), config()).unwrap().0;
        assert!(matches!(back, MetaResponse::Blocks { inline: Some(d), patches, .. } if d == data && patches[0].1[0].data == data));
    }

    fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
        bincode::serde::encode_to_vec(v, config()).unwrap()
    }

    #[tokio::test]
    async fn round_trip_and_bounds() {
        let f = encode_frame(&MetaRequest::GetAttr { ino: 77 }, b"payload").unwrap();
        let (h, p): (MetaRequest, Vec<u8>) = read_frame(&mut &f[..]).await.unwrap();
        assert!(matches!(h, MetaRequest::GetAttr { ino: 77 }));
        assert_eq!(p, b"payload");

        // Truncated.
        let r: Result<(MetaRequest, Vec<u8>), _> = read_frame(&mut &f[..f.len() - 1]).await;
        assert!(matches!(r, Err(FrameError::Truncated(_))));
        // Oversized payload announced: refused before allocation.
        let mut big = f.clone();
        big[4..8].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        let r: Result<(MetaRequest, Vec<u8>), _> = read_frame(&mut &big[..]).await;
        assert!(matches!(r, Err(FrameError::PayloadTooLarge(_))));
        // Garbage header.
        let bad = [1u8, 0, 0, 0, 0, 0, 0, 0, 250];
        let r: Result<(MetaRequest, Vec<u8>), _> = read_frame(&mut &bad[..]).await;
        assert!(matches!(r, Err(FrameError::Decode(_))));
    }
}
