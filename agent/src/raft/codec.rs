//! Encoding of Raft entries in the Raft log WAL (bincode of the serde form).

use super::Entry;

/// Serializes an entry for the Raft log.
pub fn encode(entry: &Entry) -> Vec<u8> {
    bincode::serialize(entry).expect("entries always serialize")
}

/// Parses an entry read back from the Raft log.
pub fn decode(bytes: &[u8]) -> Result<Entry, bincode::Error> {
    bincode::deserialize(bytes)
}
