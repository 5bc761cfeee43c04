//! Reassembly of a chunked delivery: a message arrives as chunks 0..count of one stream, each
//! naming the same job, sender, sequence number and count; the bytes must add up to the
//! announced length, which may not exceed the node's cap. Pure, so it can be fuzzed.

use crate::proto::Chunk;
use crate::wire::{DeliveryKind, FEDERATION_VERSION};

/// Why a chunk stream is not a well-formed delivery. The text is the reply to the sender.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    /// The sender speaks another federation version.
    #[error("federation version {0} is not supported (this node speaks {FEDERATION_VERSION})")]
    Version(u32),
    /// An unknown delivery kind.
    #[error("unknown message kind {0:?}")]
    Kind(String),
    /// The announced length exceeds the cap.
    #[error("message of {announced} bytes exceeds the cap of {cap}")]
    TooLarge {
        /// Announced bytes.
        announced: u64,
        /// The node's `federation.max_message_bytes`.
        cap: u64,
    },
    /// The stream does not start with chunk 0 of at least one.
    #[error("a delivery must start with chunk 0")]
    BadStart,
    /// A chunk of another message, or out of order.
    #[error("chunk {index} of message {seq} does not continue the stream")]
    Discontinuous {
        /// The chunk's index.
        index: u32,
        /// The message's sequence number.
        seq: u64,
    },
    /// More bytes than announced.
    #[error("chunks exceed the announced length")]
    Overlong,
    /// The stream ended early.
    #[error("message {seq} ended after {chunks} of {count} chunks ({bytes} of {total} bytes)")]
    Truncated {
        /// The message's sequence number.
        seq: u64,
        /// Chunks received.
        chunks: u32,
        /// Chunks announced.
        count: u32,
        /// Bytes received.
        bytes: usize,
        /// Bytes announced.
        total: u64,
    },
}

/// The header of a delivery, from its first chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The job.
    pub job_id: String,
    /// The sending party (authenticated by the caller, not here).
    pub sender: String,
    /// The sender's sequence number.
    pub seq: u64,
    /// The job's attempt.
    pub attempt: u32,
    /// What the message carries.
    pub kind: DeliveryKind,
}

/// Collects the chunks of one delivery.
#[derive(Debug)]
pub struct Reassembler {
    header: Header,
    count: u32,
    total: u64,
    received: u32,
    bytes: Vec<u8>,
}

impl Reassembler {
    /// Starts from the first chunk; checks version, kind, cap and start before anything is
    /// allocated for the rest.
    pub fn start(first: Chunk, cap: u64) -> Result<Reassembler, ChunkError> {
        if first.version != FEDERATION_VERSION {
            return Err(ChunkError::Version(first.version));
        }
        let kind = DeliveryKind::parse(&first.kind)
            .ok_or_else(|| ChunkError::Kind(first.kind.chars().take(64).collect()))?;
        if first.total_bytes > cap {
            return Err(ChunkError::TooLarge {
                announced: first.total_bytes,
                cap,
            });
        }
        if first.index != 0 || first.count == 0 {
            return Err(ChunkError::BadStart);
        }
        let mut assembler = Reassembler {
            header: Header {
                job_id: first.job_id,
                sender: first.sender,
                seq: first.seq,
                attempt: first.attempt,
                kind,
            },
            count: first.count,
            total: first.total_bytes,
            received: 0,
            bytes: Vec::new(),
        };
        assembler.append(&first.data)?;
        Ok(assembler)
    }

    /// The length of the whole message, as its first chunk announced it.
    pub fn announced_bytes(&self) -> u64 {
        self.total
    }

    /// The delivery's header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Adds the next chunk.
    pub fn push(&mut self, chunk: &Chunk) -> Result<(), ChunkError> {
        let h = &self.header;
        if chunk.job_id != h.job_id
            || chunk.sender != h.sender
            || chunk.seq != h.seq
            || chunk.attempt != h.attempt
            || chunk.index != self.received
            || chunk.count != self.count
        {
            return Err(ChunkError::Discontinuous {
                index: chunk.index,
                seq: h.seq,
            });
        }
        self.append(&chunk.data)
    }

    fn append(&mut self, data: &[u8]) -> Result<(), ChunkError> {
        if (self.bytes.len() + data.len()) as u64 > self.total {
            return Err(ChunkError::Overlong);
        }
        self.bytes.extend_from_slice(data);
        self.received = self.received.saturating_add(1);
        Ok(())
    }

    /// The whole message, once every announced chunk and byte arrived.
    pub fn finish(self) -> Result<(Header, Vec<u8>), ChunkError> {
        if self.received != self.count || self.bytes.len() as u64 != self.total {
            return Err(ChunkError::Truncated {
                seq: self.header.seq,
                chunks: self.received,
                count: self.count,
                bytes: self.bytes.len(),
                total: self.total,
            });
        }
        Ok((self.header, self.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(index: u32, count: u32, total: u64, data: &[u8]) -> Chunk {
        Chunk {
            version: FEDERATION_VERSION,
            job_id: "j".into(),
            sender: "tax".into(),
            seq: 3,
            kind: "psi".into(),
            index,
            count,
            total_bytes: total,
            data: data.to_vec(),
            attempt: 0,
        }
    }

    #[test]
    fn chunks_in_order_give_the_message() {
        let mut r = Reassembler::start(chunk(0, 2, 5, b"abc"), 100).unwrap();
        r.push(&chunk(1, 2, 5, b"de")).unwrap();
        let (header, bytes) = r.finish().unwrap();
        assert_eq!((header.seq, header.kind), (3, DeliveryKind::Psi));
        assert_eq!(bytes, b"abcde");
    }

    #[test]
    fn malformed_streams_get_named_errors() {
        let start = |c: Chunk| Reassembler::start(c, 100).unwrap_err();
        let mut old = chunk(0, 1, 1, b"a");
        old.version = 0;
        assert_eq!(start(old), ChunkError::Version(0));
        let mut odd = chunk(0, 1, 1, b"a");
        odd.kind = "gossip".into();
        assert_eq!(start(odd), ChunkError::Kind("gossip".into()));
        assert!(matches!(
            start(chunk(0, 1, 101, b"a")),
            ChunkError::TooLarge { announced: 101, .. }
        ));
        assert_eq!(start(chunk(1, 2, 2, b"a")), ChunkError::BadStart);
        assert_eq!(start(chunk(0, 0, 0, b"")), ChunkError::BadStart);
        assert_eq!(start(chunk(0, 1, 1, b"ab")), ChunkError::Overlong);

        let mut r = Reassembler::start(chunk(0, 3, 3, b"a"), 100).unwrap();
        assert!(matches!(
            r.push(&chunk(2, 3, 3, b"c")),
            Err(ChunkError::Discontinuous { index: 2, seq: 3 })
        ));
        let mut other = chunk(1, 3, 3, b"b");
        other.seq = 4;
        assert!(r.push(&other).is_err());
        r.push(&chunk(1, 3, 3, b"b")).unwrap();
        assert!(matches!(
            r.finish(),
            Err(ChunkError::Truncated {
                chunks: 2,
                count: 3,
                ..
            })
        ));
    }
}
