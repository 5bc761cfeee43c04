//! Stored bytes of the node's wire messages — PSI messages as protobuf, job proposals and
//! delivery chunks — per federation version, decode and re-encode byte for byte
//! (`tests/data/wire/README.md`; bless with `UNSEEN_BLESS_WIRE=1`). PSI messages go through
//! the mapping to psi's types and back, so the mapping is pinned as well as the protobuf.

#[path = "../../tests/support/wire_golden.rs"]
mod wire_golden;

use node::internal::psi_proto::{self, Body};
use node::proto::{Chunk, JobProposal};
use prost::Message as _;
use psi::{
    DuplicatePolicy, GuestConfig, IdColumn, PartitionKey, PartitionPlan, PartitionSchedule,
    PartitionSizes, PsiError, PsiGuest, PsiHost, PROTOCOL_VERSION,
};
use wire_golden::Family;

const KINDS: [&str; 10] = [
    "psi_partition_plan",
    "psi_partition_sizes",
    "psi_partition_schedule",
    "psi_guest_hello",
    "psi_host_hello",
    "psi_points",
    "psi_tags",
    "psi_alignment",
    "job_proposal",
    "chunk",
];

fn ids(names: &[&str]) -> Result<IdColumn, PsiError> {
    IdColumn::from_ids(names.iter().copied())
}

/// Every message of one PSI run of three ids against three, as protobuf, and the other
/// federation messages.
fn samples() -> Result<Vec<(&'static str, Vec<u8>)>, PsiError> {
    let mut guest = PsiGuest::new(ids(&["a", "b", "c"])?, &["tax"], GuestConfig::default())?;
    let hello = guest.hello();
    let host_ids = ids(&["b", "c", "d"])?;
    let (host, reply) = PsiHost::new("bank", host_ids, DuplicatePolicy::Reject, &hello)?;
    guest.receive_host_hello("tax", &reply)?;
    let points = guest.blinded_batch(0).expect("one batch");
    let tags = host.answer(&points)?;
    guest.receive_tags("tax", &tags)?;
    let host_points = host.blinded_batch(0).expect("one batch");
    guest.receive_host_points("tax", &host_points)?;
    let result = guest.finish()?;
    let psi = psi_proto::encode_psi;
    // Fixed values: the plan's key is random in a run.
    let plan = PartitionPlan {
        version: PROTOCOL_VERSION,
        key: PartitionKey([0x5a; 32]),
        guest_sizes: vec![2, 0, 1],
    };
    let sizes = PartitionSizes {
        version: PROTOCOL_VERSION,
        host_sizes: vec![1, 1, 1],
        finished: vec![2],
    };
    let schedule = PartitionSchedule {
        version: PROTOCOL_VERSION,
        partitions: vec![0, 2],
        finished: vec![2],
    };
    let proposal = JobProposal {
        version: node::FEDERATION_VERSION,
        job_id: "0123456789abcdef0123456789abcdef".into(),
        kind: "train".into(),
        guest: "bank".into(),
        dataset: "filings".into(),
        hosts: vec!["tax".into(), "utilities".into()],
        model_id: "sme-credit@1".into(),
        guest_features: 13,
        prep: r#"{"default":{"bins":{"kind":"quantile","count":10}}}"#.into(),
        attempt: 2,
    };
    let chunk = Chunk {
        version: node::FEDERATION_VERSION,
        job_id: proposal.job_id.clone(),
        sender: "tax".into(),
        seq: 7,
        kind: "fedlearn".into(),
        index: 1,
        count: 3,
        total_bytes: 2_500_000,
        data: vec![0xa5; 16],
        attempt: 2,
    };
    Ok(vec![
        ("psi_partition_plan", psi(psi_proto::plan_to_proto(&plan))),
        (
            "psi_partition_sizes",
            psi(psi_proto::sizes_to_proto(&sizes)),
        ),
        (
            "psi_partition_schedule",
            psi(psi_proto::schedule_to_proto(&schedule)),
        ),
        (
            "psi_guest_hello",
            psi(psi_proto::guest_hello_to_proto(&hello)),
        ),
        (
            "psi_host_hello",
            psi(psi_proto::host_hello_to_proto(&reply)),
        ),
        ("psi_points", psi(psi_proto::points_to_proto(&points))),
        ("psi_tags", psi(psi_proto::tags_to_proto(&tags))),
        (
            "psi_alignment",
            psi(psi_proto::alignment_to_proto(&result.alignments[0].1)),
        ),
        ("job_proposal", proposal.encode_to_vec()),
        ("chunk", chunk.encode_to_vec()),
    ])
}

/// Decodes a PSI message, maps it to psi's type and back, and encodes it again.
fn psi_round_trip(kind: &str, bytes: &[u8]) -> Result<Vec<u8>, PsiError> {
    let body = psi_proto::decode_psi("tax", bytes)?;
    let again = match (kind, &body) {
        ("psi_partition_plan", Body::PartitionPlan(p)) => {
            psi_proto::plan_to_proto(&psi_proto::plan_from_proto("tax", p)?)
        }
        ("psi_partition_sizes", Body::PartitionSizes(s)) => {
            psi_proto::sizes_to_proto(&psi_proto::sizes_from_proto("tax", s)?)
        }
        ("psi_partition_schedule", Body::PartitionSchedule(s)) => {
            psi_proto::schedule_to_proto(&psi_proto::schedule_from_proto("tax", s)?)
        }
        ("psi_guest_hello", Body::GuestHello(h)) => {
            psi_proto::guest_hello_to_proto(&psi_proto::guest_hello_from_proto("tax", h)?)
        }
        ("psi_host_hello", Body::HostHello(h)) => {
            psi_proto::host_hello_to_proto(&psi_proto::host_hello_from_proto(h))
        }
        ("psi_points", Body::Points(p)) => {
            psi_proto::points_to_proto(&psi_proto::points_from_proto("tax", p)?)
        }
        ("psi_tags", Body::Tags(t)) => {
            psi_proto::tags_to_proto(&psi_proto::tags_from_proto("tax", t)?)
        }
        ("psi_alignment", Body::Alignment(a)) => {
            psi_proto::alignment_to_proto(&psi_proto::alignment_from_proto("tax", a)?)
        }
        _ => panic!("{kind}: decoded as {}", psi_proto::kind(&body)),
    };
    Ok(psi_proto::encode_psi(again))
}

/// A PSI message carries no version of its own: it travels only in chunks of the federation
/// version it was stored under, which a build of another version refuses.
fn round_trip(stored: u32, kind: &str, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let current = |version: u32| {
        if version == node::FEDERATION_VERSION {
            Ok(())
        } else {
            Err(format!("federation version {version}"))
        }
    };
    match kind {
        "job_proposal" => {
            let proposal = JobProposal::decode(bytes).map_err(|e| e.to_string())?;
            current(proposal.version)?;
            Ok(proposal.encode_to_vec())
        }
        "chunk" => {
            let chunk = Chunk::decode(bytes).map_err(|e| e.to_string())?;
            current(chunk.version)?;
            Ok(chunk.encode_to_vec())
        }
        psi_kind => {
            current(stored)?;
            psi_round_trip(psi_kind, bytes).map_err(|e| e.to_string())
        }
    }
}

#[test]
fn stored_messages_of_every_version_decode_and_reencode_byte_for_byte() {
    let family = Family {
        name: "node",
        current: node::FEDERATION_VERSION,
        kinds: &KINDS,
    };
    family.check(|| samples().expect("sample messages"), round_trip);
}
