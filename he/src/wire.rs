//! Versioned byte encoding of everything that crosses the wire, with serde support.
//!
//! Layout (little-endian): magic `UNHE`, format version, kind, parameter-set id, 16-byte key
//! id, then the kind's fields. Decoding computes the exact expected length from the header and
//! the parameter set *before* allocating, so malformed, truncated or oversized input is a typed
//! error, never a panic or an unbounded allocation. Secret keys are deliberately not
//! encodable: they live for one job in the owner's memory.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::entities::{
    EncryptedBlocks, EncryptedVector, KeyId, MaskedColumns, PackingKey, PublicKey, SeededBlock,
};
use crate::error::HeError;
use crate::params::Params;
use crate::ring::ring_for;
use crate::wide::U192;

/// Bytes of one full coefficient of Z/2^192.
const COEFFICIENT: usize = 24;

const MAGIC: &[u8; 4] = b"UNHE";
/// Version of this byte format.
pub const FORMAT_VERSION: u8 = 3;
const HEADER_LEN: usize = 4 + 1 + 1 + 1 + 16;
/// Most columns one [`MaskedColumns`] may hold.
pub const MAX_COLUMNS: usize = 1 << 16;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Kind {
    PublicKey = 1,
    EncryptedVector = 2,
    MaskedColumns = 3,
    PackingKey = 4,
    EncryptedBlocks = 5,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::PublicKey => "public key",
            Kind::EncryptedVector => "encrypted vector",
            Kind::MaskedColumns => "masked columns",
            Kind::PackingKey => "packing key",
            Kind::EncryptedBlocks => "encrypted blocks",
        }
    }
}

fn malformed(kind: Kind, reason: impl Into<String>) -> HeError {
    HeError::Malformed {
        what: kind.name(),
        reason: reason.into(),
    }
}

fn header(out: &mut Vec<u8>, kind: Kind, params_id: u8, key: KeyId) {
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_VERSION);
    out.push(kind as u8);
    out.push(params_id);
    out.extend_from_slice(&key.0);
}

fn put_coefficients(out: &mut Vec<u8>, values: &[U192]) {
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// A cursor over bytes whose total length was already checked.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take<const K: usize>(&mut self) -> [u8; K] {
        let (head, rest) = self.bytes.split_at(K);
        self.bytes = rest;
        let mut out = [0u8; K];
        out.copy_from_slice(head);
        out
    }

    fn u128(&mut self) -> u128 {
        u128::from_le_bytes(self.take())
    }

    fn coefficients(&mut self, count: usize) -> Vec<U192> {
        (0..count)
            .map(|_| U192::from_le_bytes(self.take()))
            .collect()
    }

    /// A coefficient stored as its top `bytes·8` bits.
    fn top(&mut self, bytes: usize) -> U192 {
        let (head, rest) = self.bytes.split_at(bytes);
        self.bytes = rest;
        let mut full = [0u8; COEFFICIENT];
        full[COEFFICIENT - bytes..].copy_from_slice(head);
        U192::from_le_bytes(full)
    }
}

/// Checks the header and returns the parameters, key id and the bytes after the header.
fn read_header(bytes: &[u8], kind: Kind) -> Result<(Params, KeyId, &[u8]), HeError> {
    if bytes.len() < HEADER_LEN {
        return Err(malformed(
            kind,
            format!(
                "{} bytes is shorter than the {HEADER_LEN}-byte header",
                bytes.len()
            ),
        ));
    }
    if &bytes[..4] != MAGIC {
        return Err(malformed(kind, "not an unseen HE object (bad magic)"));
    }
    if bytes[4] != FORMAT_VERSION {
        return Err(malformed(
            kind,
            format!(
                "format version {}, this build reads {FORMAT_VERSION}",
                bytes[4]
            ),
        ));
    }
    if bytes[5] != kind as u8 {
        return Err(malformed(
            kind,
            format!("object kind {} instead of {}", bytes[5], kind as u8),
        ));
    }
    let params = Params::by_id(bytes[6])
        .ok_or_else(|| malformed(kind, format!("unknown parameter set {}", bytes[6])))?;
    let mut key = [0u8; 16];
    key.copy_from_slice(&bytes[7..HEADER_LEN]);
    Ok((params, KeyId(key), &bytes[HEADER_LEN..]))
}

fn expect_len(kind: Kind, body: &[u8], expected: usize) -> Result<(), HeError> {
    if body.len() == expected {
        Ok(())
    } else {
        Err(malformed(
            kind,
            format!("{} bytes after the header, expected {expected}", body.len()),
        ))
    }
}

impl PublicKey {
    /// Encodes the key.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + 16 + COEFFICIENT * self.body.len());
        header(&mut out, Kind::PublicKey, self.params_id, self.id);
        out.extend_from_slice(&self.seed.to_le_bytes());
        put_coefficients(&mut out, &self.body);
        out
    }

    /// Decodes a key, checking every length.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, HeError> {
        let (params, id, body) = read_header(bytes, Kind::PublicKey)?;
        expect_len(Kind::PublicKey, body, 16 + COEFFICIENT * params.poly_size)?;
        let mut r = Reader { bytes: body };
        Ok(PublicKey {
            params_id: params.id,
            id,
            seed: r.u128(),
            body: r.coefficients(params.poly_size),
        })
    }
}

impl EncryptedVector {
    /// Encodes the vector (24 bytes per value plus 16 per block of N).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + 24 + self.payload_bytes());
        header(&mut out, Kind::EncryptedVector, self.params_id, self.key);
        out.extend_from_slice(&(self.len as u64).to_le_bytes());
        out.extend_from_slice(&self.value_bound.to_le_bytes());
        for block in &self.blocks {
            out.extend_from_slice(&block.seed.to_le_bytes());
            put_coefficients(&mut out, &block.body);
        }
        out
    }

    /// Decodes a vector of at most `max_rows` values, checking every length and bound.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, HeError> {
        let kind = Kind::EncryptedVector;
        let (params, key, body) = read_header(bytes, kind)?;
        if body.len() < 24 {
            return Err(malformed(kind, "missing length and bound"));
        }
        let mut r = Reader { bytes: body };
        let len = u64::from_le_bytes(r.take());
        let value_bound = i128::from_le_bytes(r.take());
        if len == 0 || len > params.max_rows as u64 {
            return Err(malformed(
                kind,
                format!("length {len} is not in 1..={}", params.max_rows),
            ));
        }
        if !(0..=params.max_message_abs()).contains(&value_bound) {
            return Err(malformed(
                kind,
                format!("value bound {value_bound} is out of range"),
            ));
        }
        let len = len as usize;
        let blocks = len.div_ceil(params.poly_size);
        expect_len(
            kind,
            r.bytes,
            blocks * (16 + COEFFICIENT * params.poly_size),
        )?;
        let blocks = (0..blocks)
            .map(|_| SeededBlock {
                seed: r.u128(),
                body: r.coefficients(params.poly_size),
            })
            .collect();
        Ok(EncryptedVector {
            params_id: params.id,
            key,
            len,
            value_bound,
            blocks,
        })
    }
}

impl MaskedColumns {
    /// Encodes the results: per ciphertext, N mask coefficients and one body coefficient per
    /// result, each as its top `released_bits / 8` bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + 5 + self.payload_bytes());
        header(&mut out, Kind::MaskedColumns, self.params_id, self.key);
        out.extend_from_slice(&(self.columns as u32).to_le_bytes());
        out.push(self.levels as u8);
        let bytes = self.coefficient_bytes();
        for value in self.packed.iter().flat_map(|(a, b)| a.iter().chain(b)) {
            // Released coefficients are multiples of 2^(192 − released_bits): keep the top bytes.
            debug_assert_eq!(
                value.shl(8 * bytes as u32),
                U192::ZERO,
                "coefficient was not rounded"
            );
            out.extend_from_slice(&value.to_le_bytes()[COEFFICIENT - bytes..]);
        }
        out
    }

    /// Decodes at most [`MAX_COLUMNS`] results, checking every length.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, HeError> {
        let kind = Kind::MaskedColumns;
        let (params, key, body) = read_header(bytes, kind)?;
        if body.len() < 5 {
            return Err(malformed(kind, "missing result count and levels"));
        }
        let mut r = Reader { bytes: body };
        let count = u32::from_le_bytes(r.take()) as usize;
        if count == 0 || count > MAX_COLUMNS {
            return Err(malformed(
                kind,
                format!("{count} results is not in 1..={MAX_COLUMNS}"),
            ));
        }
        let [levels] = r.take::<1>();
        let levels = u32::from(levels);
        if levels > params.max_pack_levels {
            return Err(malformed(
                kind,
                format!(
                    "{levels} packing levels, at most {}",
                    params.max_pack_levels
                ),
            ));
        }
        let group = 1usize << levels;
        let ciphertexts = count.div_ceil(group);
        let bytes = params.released_bits as usize / 8;
        expect_len(
            kind,
            r.bytes,
            bytes * (ciphertexts * params.poly_size + count),
        )?;
        let packed = (0..ciphertexts)
            .map(|g| {
                let slots = group.min(count - g * group);
                (
                    (0..params.poly_size).map(|_| r.top(bytes)).collect(),
                    (0..slots).map(|_| r.top(bytes)).collect(),
                )
            })
            .collect();
        Ok(MaskedColumns {
            params_id: params.id,
            key,
            levels,
            columns: count,
            packed,
        })
    }
}

impl EncryptedBlocks {
    /// Encodes the blocks: rows, columns, the row chunk, the declared bound, then per block a
    /// seed and N body coefficients.
    pub fn to_bytes(&self) -> Vec<u8> {
        let first = &self.blocks[0];
        let mut out = Vec::with_capacity(HEADER_LEN + 32 + self.payload_bytes());
        header(&mut out, Kind::EncryptedBlocks, first.params_id, first.key);
        out.extend_from_slice(&(self.rows as u64).to_le_bytes());
        out.extend_from_slice(&(self.columns as u32).to_le_bytes());
        out.extend_from_slice(&(self.chunk as u32).to_le_bytes());
        out.extend_from_slice(&first.value_bound.to_le_bytes());
        for block in self.blocks.iter().flat_map(|b| &b.blocks) {
            out.extend_from_slice(&block.seed.to_le_bytes());
            put_coefficients(&mut out, &block.body);
        }
        out
    }

    /// Decodes blocks of at most `max_rows` rows and [`MAX_COLUMNS`] columns whose row chunk
    /// is a layout [`SecretKey::encrypt_blocks`](crate::SecretKey::encrypt_blocks) makes,
    /// checking every length before allocating.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, HeError> {
        let kind = Kind::EncryptedBlocks;
        let (params, key, body) = read_header(bytes, kind)?;
        if body.len() < 32 {
            return Err(malformed(kind, "missing shape and bound"));
        }
        let mut r = Reader { bytes: body };
        let rows = u64::from_le_bytes(r.take());
        let columns = u32::from_le_bytes(r.take()) as usize;
        let chunk = u32::from_le_bytes(r.take()) as usize;
        let value_bound = i128::from_le_bytes(r.take());
        let n = params.poly_size;
        if rows == 0 || rows > params.max_rows as u64 {
            return Err(malformed(
                kind,
                format!("{rows} rows is not in 1..={}", params.max_rows),
            ));
        }
        if columns == 0 || columns > MAX_COLUMNS {
            return Err(malformed(
                kind,
                format!("{columns} columns is not in 1..={MAX_COLUMNS}"),
            ));
        }
        if !chunk.is_power_of_two() || chunk > n || n / chunk > 1 << params.max_pack_levels {
            return Err(malformed(
                kind,
                format!("a row chunk of {chunk} is not a layout of N = {n}"),
            ));
        }
        if !(0..=params.max_message_abs()).contains(&value_bound) {
            return Err(malformed(
                kind,
                format!("value bound {value_bound} is out of range"),
            ));
        }
        let rows = rows as usize;
        let count = columns.div_ceil(n / chunk) * rows.div_ceil(chunk);
        expect_len(kind, r.bytes, count * (16 + COEFFICIENT * n))?;
        let blocks = (0..count)
            .map(|_| EncryptedVector {
                params_id: params.id,
                key,
                len: n,
                value_bound,
                blocks: vec![SeededBlock {
                    seed: r.u128(),
                    body: r.coefficients(n),
                }],
            })
            .collect();
        Ok(EncryptedBlocks {
            rows,
            columns,
            chunk,
            blocks,
        })
    }
}

impl PackingKey {
    /// Encodes the key: per level and digit, a seed and N body coefficients.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        header(&mut out, Kind::PackingKey, self.params_id, self.key);
        out.push(self.levels() as u8);
        for block in self.blocks.iter().flatten() {
            out.extend_from_slice(&block.seed.to_le_bytes());
            put_coefficients(&mut out, &block.body);
        }
        out
    }

    /// Decodes a key, checking every length, and prepares it for packing.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, HeError> {
        let kind = Kind::PackingKey;
        let (params, key, body) = read_header(bytes, kind)?;
        let Some((&levels, rest)) = body.split_first() else {
            return Err(malformed(kind, "missing level count"));
        };
        let levels = u32::from(levels);
        if levels > params.max_pack_levels {
            return Err(malformed(
                kind,
                format!("{levels} levels, at most {}", params.max_pack_levels),
            ));
        }
        let digits = params.ks_digits as usize;
        expect_len(
            kind,
            rest,
            levels as usize * digits * (16 + COEFFICIENT * params.poly_size),
        )?;
        let mut r = Reader { bytes: rest };
        let blocks = (0..levels)
            .map(|_| {
                (0..digits)
                    .map(|_| SeededBlock {
                        seed: r.u128(),
                        body: r.coefficients(params.poly_size),
                    })
                    .collect()
            })
            .collect();
        Ok(PackingKey::new(&params, &ring_for(&params), key, blocks))
    }
}

macro_rules! serde_via_bytes {
    ($type:ty) => {
        impl Serialize for $type {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_bytes(&self.to_bytes())
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let bytes: serde_bytes_buf::Buf = Deserialize::deserialize(deserializer)?;
                <$type>::from_bytes(&bytes.0).map_err(D::Error::custom)
            }
        }
    };
}

serde_via_bytes!(PublicKey);
serde_via_bytes!(EncryptedVector);
serde_via_bytes!(MaskedColumns);
serde_via_bytes!(PackingKey);
serde_via_bytes!(EncryptedBlocks);

mod serde_bytes_buf {
    //! Accepts a byte string, or a sequence of bytes from formats without byte strings.
    use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};

    pub(super) struct Buf(pub(super) Vec<u8>);

    impl<'de> Deserialize<'de> for Buf {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct BufVisitor;
            impl<'de> Visitor<'de> for BufVisitor {
                type Value = Buf;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E>(self, v: &[u8]) -> Result<Buf, E> {
                    Ok(Buf(v.to_vec()))
                }
                fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Buf, E> {
                    Ok(Buf(v))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Buf, A::Error> {
                    // Bounded by the largest legitimate object (an encrypted vector of max_rows).
                    const LIMIT: usize = 64 << 20;
                    let mut out = Vec::new();
                    while let Some(byte) = seq.next_element::<u8>()? {
                        if out.len() == LIMIT {
                            return Err(serde::de::Error::custom("byte sequence too long"));
                        }
                        out.push(byte);
                    }
                    Ok(Buf(out))
                }
            }
            deserializer.deserialize_byte_buf(BufVisitor)
        }
    }
}
