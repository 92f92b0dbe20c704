//! `BlockId`: the BLAKE3 hash of a block's bytes.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlockId(pub [u8; 32]);

impl BlockId {
    /// The id of `data`.
    pub fn of(data: &[u8]) -> Self {
        BlockId(*blake3::hash(data).as_bytes())
    }

    /// True when `data` hashes to this id.
    pub fn verify(&self, data: &[u8]) -> bool {
        BlockId::of(data) == *self
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let v = hex::decode(s).ok()?;
        Some(BlockId(v.try_into().ok()?))
    }

    /// Position on the placement ring: the id is already a uniform hash.
    pub fn ring_position(&self) -> u64 {
        u64::from_be_bytes(self.0[..8].try_into().unwrap())
    }

    /// Short form for logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Debug for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockId({})", self.short())
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_blake3_and_round_trips_hex() {
        let id = BlockId::of(b"hello");
        assert_eq!(id.to_hex(), blake3::hash(b"hello").to_hex().to_string());
        assert_eq!(BlockId::from_hex(&id.to_hex()), Some(id));
        assert!(id.verify(b"hello"));
        assert!(!id.verify(b"hellp"));
        assert_eq!(BlockId::from_hex("zz"), None);
    }
}
