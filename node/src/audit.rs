//! The audit trail: an append-only, hash-chained log in the node's store. Each record holds
//! the hash of the one before, so changing, inserting or removing a record breaks the chain
//! from that record on; `unseen audit verify` finds the first break.
//!
//! Recorded: jobs submitted, proposed, accepted, refused and ended; refused connections and
//! calls; per job, the messages and bytes of each kind exchanged with each peer; every scoring
//! call (client, model, number of ids) and every partial-score request a host answers. Never
//! features, labels, scores or ids.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::NodeError;
use crate::store::{AuditHead, Store};

/// One record of the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position, from 0.
    pub seq: u64,
    /// Time.
    pub unix_ms: i64,
    /// What happened, e.g. "job.proposed", "peer.refused", "score".
    pub event: String,
    /// Job (or empty).
    pub job_id: String,
    /// Peer, client or operator concerned (or empty).
    pub peer: String,
    /// Event-specific detail.
    pub detail: serde_json::Value,
    /// Hash of the previous record (64 zeros for the first).
    pub prev: String,
    /// SHA-256 over the previous hash and this record's fields.
    pub hash: String,
}

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn digest(record: &AuditRecord) -> String {
    let fields = (
        record.seq,
        record.unix_ms,
        &record.event,
        &record.job_id,
        &record.peer,
        &record.detail,
        &record.prev,
    );
    let mut hasher = Sha256::new();
    hasher.update(b"unseen audit record v1\0");
    hasher.update(serde_json::to_vec(&fields).unwrap_or_default());
    hex::encode(hasher.finalize())
}

/// Appends a record. What it records must not go ahead when this fails: a scoring answer,
/// a disclosure, a job's submission or acceptance fails with it.
pub fn append(
    store: &Store,
    event: &str,
    job_id: &str,
    peer: &str,
    detail: serde_json::Value,
) -> Result<(), NodeError> {
    store.append_audit(|seq, last| {
        let prev = last
            .and_then(|bytes| serde_json::from_slice::<AuditRecord>(bytes).ok())
            .map_or_else(|| GENESIS.to_string(), |r| r.hash);
        let mut record = AuditRecord {
            seq,
            unix_ms: crate::clock::now_ms(),
            event: event.to_owned(),
            job_id: job_id.to_owned(),
            peer: peer.to_owned(),
            detail: detail.clone(),
            prev,
            hash: String::new(),
        };
        record.hash = digest(&record);
        serde_json::to_vec(&record).unwrap_or_default()
    })
}

/// [`append`] for what has happened and cannot be undone (a refusal, a job's end, its
/// traffic): a failure is logged as an error.
pub fn record(store: &Store, event: &str, job_id: &str, peer: &str, detail: serde_json::Value) {
    if let Err(e) = append(store, event, job_id, peer, detail) {
        tracing::error!(event, job_id, error = %e, "could not append to the audit log");
    }
}

/// Every record, in order.
pub fn records(store: &Store) -> Result<Vec<AuditRecord>, NodeError> {
    store
        .audit_records()?
        .into_iter()
        .map(|(seq, bytes)| {
            serde_json::from_slice(&bytes)
                .map_err(|e| NodeError::Server(format!("audit record {seq}: {e}")))
        })
        .collect()
}

/// Most records [`page`] looks at per call, whatever passes its filter.
const PAGE_SCAN: usize = 20_000;

/// One page of the log: up to `limit` records from `from` on that `keep` accepts, and the
/// sequence number where the next page starts (one past the last record looked at).
pub fn page(
    store: &Store,
    from: u64,
    limit: usize,
    keep: impl Fn(&AuditRecord) -> bool,
) -> Result<(Vec<AuditRecord>, u64, bool), NodeError> {
    let raw = store.audit_range(from, PAGE_SCAN)?;
    let scanned_all = raw.len() < PAGE_SCAN;
    let mut next = from;
    let mut out = Vec::new();
    for (seq, bytes) in raw {
        if out.len() == limit {
            return Ok((out, next, true));
        }
        next = seq + 1;
        let record: AuditRecord = serde_json::from_slice(&bytes)
            .map_err(|e| NodeError::Server(format!("audit record {seq}: {e}")))?;
        if keep(&record) {
            out.push(record);
        }
    }
    Ok((out, next, !scanned_all))
}

/// This log's head: its last record's sequence number and hash.
pub fn head(store: &Store) -> Result<Option<(u64, String)>, NodeError> {
    let Some((seq, bytes)) = store.last_audit_record()? else {
        return Ok(None);
    };
    let record: AuditRecord = serde_json::from_slice(&bytes)
        .map_err(|e| NodeError::Server(format!("audit record {seq}: {e}")))?;
    Ok(Some((seq, record.hash)))
}

/// A signed head as it crosses between nodes.
pub(crate) fn head_to_wire(head: AuditHead) -> crate::proto::AuditHead {
    crate::proto::AuditHead {
        seq: head.seq,
        hash: head.hash,
        signed_unix_ms: head.signed_unix_ms,
        scheme: head.scheme.into(),
        signature: hex::decode(head.signature).unwrap_or_default(),
    }
}

/// A signed head from the wire (a scheme no TLS code point has does not verify).
pub(crate) fn head_from_wire(head: crate::proto::AuditHead) -> AuditHead {
    AuditHead {
        seq: head.seq,
        hash: head.hash,
        unix_ms: 0,
        signed_unix_ms: head.signed_unix_ms,
        scheme: u16::try_from(head.scheme).unwrap_or(u16::MAX),
        signature: hex::encode(head.signature),
        certificate: String::new(),
    }
}

/// What the node of `party` signs when it gives `keeper` its audit head `(seq, hash)` at
/// `signed_unix_ms`: a domain tag, then every field, each unambiguously delimited.
pub fn head_message(
    party: &str,
    keeper: &str,
    seq: u64,
    hash: &str,
    signed_unix_ms: i64,
) -> Vec<u8> {
    let mut message = b"unseen audit head v1".to_vec();
    for text in [party, keeper, hash] {
        message.extend_from_slice(&(text.len() as u32).to_be_bytes());
        message.extend_from_slice(text.as_bytes());
    }
    message.extend_from_slice(&seq.to_be_bytes());
    message.extend_from_slice(&signed_unix_ms.to_be_bytes());
    message
}

/// This node's head `(seq, hash)` for `keeper`, signed now with the node's key.
pub fn sign_head(
    identity: &crate::tls::Identity,
    party: &str,
    keeper: &str,
    (seq, hash): (u64, String),
) -> Result<AuditHead, NodeError> {
    let signed_unix_ms = crate::clock::now_ms();
    let (scheme, signature) =
        identity.sign(&head_message(party, keeper, seq, &hash, signed_unix_ms))?;
    Ok(AuditHead {
        seq,
        hash,
        unix_ms: 0,
        signed_unix_ms,
        scheme,
        signature: hex::encode(signature),
        certificate: String::new(),
    })
}

/// Whether `head`, kept by `keeper` of `party`'s log, carries `party`'s signature by the key
/// of `certificate`.
pub fn head_signed_by(head: &AuditHead, party: &str, keeper: &str, certificate: &[u8]) -> bool {
    let Ok(signature) = hex::decode(&head.signature) else {
        return false;
    };
    let message = head_message(party, keeper, head.seq, &head.hash, head.signed_unix_ms);
    crate::tls::verify_signature(&certificate.into(), head.scheme, &message, &signature)
}

/// Keeps `peer`'s signed head (verified by the caller with `certificate`, the peer's) unless
/// it goes back on the one kept: an earlier record, or the same record with another hash,
/// means the peer's log was cut or rewritten. Then the one kept stays and `Err` returns it
/// (the peer's `audit verify` finds out from it). The peer itself offers a head only after
/// checking its log against the one kept (see [`check_anchor`]), so a tampered log stops
/// advancing its anchors.
pub fn keep_anchor(
    store: &Store,
    peer: &str,
    mut head: AuditHead,
    certificate: &[u8],
) -> Result<Result<AuditHead, AuditHead>, NodeError> {
    head.unix_ms = crate::clock::now_ms();
    head.certificate = hex::encode(certificate);
    Ok(store.advance_anchor(peer, &head)?.map(|()| head))
}

/// Whether this log agrees with the head `peer` keeps of it: `Err` says how it does not.
pub fn check_anchor(store: &Store, peer: &str, kept: &AuditHead) -> Result<(), NodeError> {
    let Some(bytes) = store
        .audit_range(kept.seq, 1)?
        .pop()
        .filter(|(s, _)| *s == kept.seq)
    else {
        return Err(NodeError::Server(format!(
            "{peer} keeps record #{} of this log, which no longer has it (the log was cut)",
            kept.seq
        )));
    };
    let record: AuditRecord = serde_json::from_slice(&bytes.1)
        .map_err(|e| NodeError::Server(format!("audit record {}: {e}", kept.seq)))?;
    if record.hash != kept.hash {
        return Err(NodeError::Server(format!(
            "record #{} differs from the one {peer} keeps (the log was rewritten)",
            kept.seq
        )));
    }
    Ok(())
}

/// Result of checking the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every record verifies.
    Intact {
        /// Number of records.
        records: u64,
    },
    /// The chain breaks at this record.
    Broken {
        /// Records read.
        records: u64,
        /// The first record that does not verify.
        seq: u64,
        /// Why.
        reason: String,
    },
}

/// Checks the whole chain.
pub fn verify(store: &Store) -> Result<Verdict, NodeError> {
    let raw = store.audit_records()?;
    let count = raw.len() as u64;
    let mut prev = GENESIS.to_string();
    for (expected, (seq, bytes)) in raw.into_iter().enumerate() {
        let broken = |reason: String| Verdict::Broken {
            records: count,
            seq,
            reason,
        };
        let record: AuditRecord = match serde_json::from_slice(&bytes) {
            Ok(record) => record,
            Err(e) => return Ok(broken(format!("unreadable: {e}"))),
        };
        if seq != expected as u64 || record.seq != seq {
            return Ok(broken(format!("out of sequence (expected {expected})")));
        }
        if record.prev != prev {
            return Ok(broken("does not link to the previous record".into()));
        }
        if digest(&record) != record.hash {
            return Ok(broken("its contents do not match its hash".into()));
        }
        prev = record.hash;
    }
    Ok(Verdict::Intact { records: count })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_chain_verifies_and_any_tampering_is_found_at_its_record() {
        let dir = std::env::temp_dir().join(format!("unseen-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir, crate::sealing::StoreKey::generate()).unwrap();
        for i in 0..5 {
            record(
                &store,
                "score",
                "",
                "platform",
                json!({"model": "m", "ids": i}),
            );
        }
        assert_eq!(verify(&store).unwrap(), Verdict::Intact { records: 5 });
        let all = records(&store).unwrap();
        assert_eq!(all[3].prev, all[2].hash);

        // Change a field without fixing the hash.
        let mut edited = all[2].clone();
        edited.detail = json!({"model": "m", "ids": 999});
        store
            .overwrite_audit_record_for_tests(2, &serde_json::to_vec(&edited).unwrap())
            .unwrap();
        match verify(&store).unwrap() {
            Verdict::Broken { seq: 2, reason, .. } => assert!(reason.contains("hash"), "{reason}"),
            other => panic!("{other:?}"),
        }

        // Re-hash the edited record: the next one no longer links to it.
        edited.hash = digest(&edited);
        store
            .overwrite_audit_record_for_tests(2, &serde_json::to_vec(&edited).unwrap())
            .unwrap();
        match verify(&store).unwrap() {
            Verdict::Broken { seq: 3, reason, .. } => assert!(reason.contains("link"), "{reason}"),
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
