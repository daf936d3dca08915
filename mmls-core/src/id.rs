//! 32-byte identifiers (universe ids and send-group ids).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A universe id or a send-group id. Both are MLS group ids of exactly 32
/// bytes, so a fixed-size type makes malformed ids unrepresentable.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id32(pub [u8; 32]);

impl Id32 {
    pub fn from_slice(b: &[u8]) -> Option<Id32> {
        <[u8; 32]>::try_from(b).ok().map(Id32)
    }
    pub fn parse_hex(s: &str) -> Option<Id32> {
        hex::decode(s.trim())
            .ok()
            .and_then(|b| Id32::from_slice(&b))
    }
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
    /// First 8 hex chars, for logs and tables.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for Id32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}
impl fmt::Debug for Id32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id32({})", self.short())
    }
}

impl Serialize for Id32 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Id32 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let b = serde_bytes::ByteBuf::deserialize(d)?;
        Id32::from_slice(&b).ok_or_else(|| serde::de::Error::custom("id must be 32 bytes"))
    }
}
