//! Encoding of Raft entries in the Raft log WAL, and of openraft's
//! messages between peers: a format version byte, then bincode of the
//! serde form.
//!
//! The version byte lets a later build change the entry form (a field in
//! [`super::Member`], a new request) and still read the entries an older
//! build wrote: it decodes each version it knows. This build writes and
//! reads version 1.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::Entry;

/// The entry format this build writes.
pub const VERSION: u8 = 1;

/// Why an entry could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// No bytes at all.
    #[error("empty entry")]
    Empty,
    /// Written by a build with a format this one does not know.
    #[error("entry format version {0} is unknown to this build (it reads version {VERSION})")]
    Version(u8),
    /// The bytes do not hold an entry of the format.
    #[error("malformed entry: {0}")]
    Malformed(#[from] bincode::Error),
}

/// Serializes an entry for the Raft log.
pub fn encode(entry: &Entry) -> Vec<u8> {
    encode_msg(entry)
}

/// Parses an entry read back from the Raft log.
pub fn decode(bytes: &[u8]) -> Result<Entry, DecodeError> {
    decode_msg(bytes)
}

/// Serializes an entry or an openraft message (the peers' wire form).
pub fn encode_msg<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(VERSION);
    bincode::serialize_into(&mut out, msg).expect("raft types always serialize");
    out
}

/// Parses what [`encode_msg`] wrote.
pub fn decode_msg<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    match bytes.split_first() {
        None => Err(DecodeError::Empty),
        Some((&VERSION, body)) => Ok(bincode::deserialize(body)?),
        Some((&other, _)) => Err(DecodeError::Version(other)),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use serde::{Deserialize, Serialize};

    use crate::raft::Request;

    /// [`Request`] as builds before records became `Bytes` declared it:
    /// what their Raft logs and peers hold.
    #[derive(Debug, Serialize, Deserialize)]
    enum RequestWithVecs {
        Append {
            records: Vec<Vec<u8>>,
            producer: Option<(String, u64)>,
            at_ms: u64,
        },
        Batch(Vec<RequestWithVecs>),
        Retain {
            lowest: u64,
        },
        ProducerLimit {
            max: u64,
        },
    }

    #[test]
    fn records_as_bytes_keep_the_format_of_records_as_vecs() {
        let old = RequestWithVecs::Batch(vec![
            RequestWithVecs::Append {
                records: vec![b"ab".to_vec(), Vec::new()],
                producer: Some(("p".into(), 7)),
                at_ms: 9,
            },
            RequestWithVecs::Retain { lowest: 3 },
            RequestWithVecs::ProducerLimit { max: 5 },
        ]);
        let new = Request::Batch(vec![
            Request::Append {
                records: vec![Bytes::from_static(b"ab"), Bytes::new()],
                producer: Some(("p".into(), 7)),
                at_ms: 9,
            },
            Request::Retain { lowest: 3 },
            Request::ProducerLimit { max: 5 },
        ]);
        let written = super::encode_msg(&old);
        assert_eq!(super::encode_msg(&new), written);
        assert_eq!(super::decode_msg::<Request>(&written).unwrap(), new);
        // The Append itself, byte by byte: variant, record count, each
        // record's length and bytes, producer, clock (bincode's fixed-width
        // little-endian integers).
        let mut expected = vec![super::VERSION, 0, 0, 0, 0];
        expected.extend(2u64.to_le_bytes());
        expected.extend(2u64.to_le_bytes());
        expected.extend(b"ab");
        expected.extend(0u64.to_le_bytes());
        expected.push(1);
        expected.extend(1u64.to_le_bytes());
        expected.extend(b"p");
        expected.extend(7u64.to_le_bytes());
        expected.extend(9u64.to_le_bytes());
        let Request::Batch(requests) = new else {
            unreachable!()
        };
        assert_eq!(super::encode_msg(&requests[0]), expected);
    }
}
