//! PSI messages as protobuf: psi's sans-IO types ↔ the generated `PsiMessage`, checked field
//! by field (a malformed field is a `psi::PsiError` naming the peer and the field).

use prost::Message as _;

use crate::proto::{psi_message, PsiMessage};
use crate::proto::{
    PsiAlignment, PsiGuestHello, PsiHostHello, PsiPartitionPlan, PsiPartitionSchedule,
    PsiPartitionSizes, PsiPoints, PsiTags,
};

/// A PSI message body.
pub type Body = psi_message::Body;

/// The body's kind, for traffic counts ("psi.<kind>").
pub fn kind(body: &Body) -> &'static str {
    match body {
        Body::GuestHello(_) => "guest_hello",
        Body::HostHello(_) => "host_hello",
        Body::Points(_) => "points",
        Body::Tags(_) => "tags",
        Body::Alignment(_) => "alignment",
        Body::PartitionPlan(_) => "partition_plan",
        Body::PartitionSizes(_) => "partition_sizes",
        Body::PartitionSchedule(_) => "partition_schedule",
    }
}

/// psi's partition plan as protobuf.
pub fn plan_to_proto(plan: &psi::PartitionPlan) -> psi_message::Body {
    psi_message::Body::PartitionPlan(PsiPartitionPlan {
        version: plan.version.into(),
        key: plan.key.0.to_vec(),
        guest_sizes: psi::sizes_to_bytes(&plan.guest_sizes),
    })
}

/// Protobuf partition plan as psi's.
pub fn plan_from_proto(
    peer: &str,
    plan: &PsiPartitionPlan,
) -> Result<psi::PartitionPlan, psi::PsiError> {
    let key: [u8; 32] =
        plan.key
            .as_slice()
            .try_into()
            .map_err(|_| psi::PsiError::InvalidField {
                peer: peer.to_owned(),
                field: "key",
                reason: format!("{} bytes, expected 32", plan.key.len()),
            })?;
    Ok(psi::PartitionPlan {
        version: version(plan.version),
        key: psi::PartitionKey(key),
        guest_sizes: psi::sizes_from_bytes(peer, "guest_sizes", &plan.guest_sizes)?,
    })
}

/// psi's partition sizes as protobuf.
pub fn sizes_to_proto(sizes: &psi::PartitionSizes) -> psi_message::Body {
    psi_message::Body::PartitionSizes(PsiPartitionSizes {
        version: sizes.version.into(),
        host_sizes: psi::sizes_to_bytes(&sizes.host_sizes),
        finished: psi::parts_to_bytes(&sizes.finished),
    })
}

/// Protobuf partition sizes as psi's.
pub fn sizes_from_proto(
    peer: &str,
    sizes: &PsiPartitionSizes,
) -> Result<psi::PartitionSizes, psi::PsiError> {
    Ok(psi::PartitionSizes {
        version: version(sizes.version),
        host_sizes: psi::sizes_from_bytes(peer, "host_sizes", &sizes.host_sizes)?,
        finished: psi::parts_from_bytes(peer, "finished", &sizes.finished)?,
    })
}

/// psi's schedule of parts as protobuf.
pub fn schedule_to_proto(schedule: &psi::PartitionSchedule) -> psi_message::Body {
    psi_message::Body::PartitionSchedule(PsiPartitionSchedule {
        version: schedule.version.into(),
        partitions: psi::parts_to_bytes(&schedule.partitions),
        finished: psi::parts_to_bytes(&schedule.finished),
    })
}

/// Protobuf schedule of parts as psi's.
pub fn schedule_from_proto(
    peer: &str,
    schedule: &PsiPartitionSchedule,
) -> Result<psi::PartitionSchedule, psi::PsiError> {
    Ok(psi::PartitionSchedule {
        version: version(schedule.version),
        partitions: psi::parts_from_bytes(peer, "partitions", &schedule.partitions)?,
        finished: psi::parts_from_bytes(peer, "finished", &schedule.finished)?,
    })
}

fn version(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

/// Encodes a PSI message as protobuf.
pub fn encode_psi(body: psi_message::Body) -> Vec<u8> {
    PsiMessage { body: Some(body) }.encode_to_vec()
}

/// Decodes a PSI message from `peer`.
pub fn decode_psi(peer: &str, bytes: &[u8]) -> Result<psi_message::Body, psi::PsiError> {
    let malformed = |field: &'static str, reason: String| psi::PsiError::InvalidField {
        peer: peer.to_owned(),
        field,
        reason,
    };
    PsiMessage::decode(bytes)
        .map_err(|e| malformed("message", e.to_string()))?
        .body
        .ok_or_else(|| malformed("message", "empty PSI message".into()))
}

/// psi's guest hello as protobuf.
pub fn guest_hello_to_proto(hello: &psi::GuestHello) -> psi_message::Body {
    psi_message::Body::GuestHello(PsiGuestHello {
        version: hello.version.into(),
        salt: hello.salt.0.to_vec(),
        guest_rows: hello.guest_rows,
        batch_size: hello.batch_size,
        both_sides: hello.result == psi::ResultMode::BothSides,
    })
}

/// Protobuf guest hello as psi's.
pub fn guest_hello_from_proto(
    peer: &str,
    hello: &PsiGuestHello,
) -> Result<psi::GuestHello, psi::PsiError> {
    let salt: [u8; 32] =
        hello
            .salt
            .as_slice()
            .try_into()
            .map_err(|_| psi::PsiError::InvalidField {
                peer: peer.to_owned(),
                field: "salt",
                reason: format!("{} bytes, expected 32", hello.salt.len()),
            })?;
    Ok(psi::GuestHello {
        version: version(hello.version),
        salt: psi::JobSalt(salt),
        guest_rows: hello.guest_rows,
        batch_size: hello.batch_size,
        result: if hello.both_sides {
            psi::ResultMode::BothSides
        } else {
            psi::ResultMode::ReceiverOnly
        },
    })
}

/// psi's host hello as protobuf.
pub fn host_hello_to_proto(hello: &psi::HostHello) -> psi_message::Body {
    psi_message::Body::HostHello(PsiHostHello {
        version: hello.version.into(),
        host_rows: hello.host_rows,
    })
}

/// Protobuf host hello as psi's.
pub fn host_hello_from_proto(hello: &PsiHostHello) -> psi::HostHello {
    psi::HostHello {
        version: version(hello.version),
        host_rows: hello.host_rows,
    }
}

/// A point batch as protobuf.
pub fn points_to_proto(batch: &psi::PointBatch) -> psi_message::Body {
    psi_message::Body::Points(PsiPoints {
        version: batch.version.into(),
        batch: batch.batch,
        points: psi::points_to_bytes(&batch.points),
    })
}

/// Protobuf points as psi's.
pub fn points_from_proto(peer: &str, batch: &PsiPoints) -> Result<psi::PointBatch, psi::PsiError> {
    Ok(psi::PointBatch {
        version: version(batch.version),
        batch: batch.batch,
        points: psi::points_from_bytes(peer, &batch.points)?,
    })
}

/// A tag batch as protobuf.
pub fn tags_to_proto(batch: &psi::TagBatch) -> psi_message::Body {
    psi_message::Body::Tags(PsiTags {
        version: batch.version.into(),
        batch: batch.batch,
        tags: psi::tags_to_bytes(&batch.tags),
    })
}

/// Protobuf tags as psi's.
pub fn tags_from_proto(peer: &str, batch: &PsiTags) -> Result<psi::TagBatch, psi::PsiError> {
    Ok(psi::TagBatch {
        version: version(batch.version),
        batch: batch.batch,
        tags: psi::tags_from_bytes(peer, &batch.tags)?,
    })
}

/// An alignment as protobuf.
pub fn alignment_to_proto(alignment: &psi::Alignment) -> psi_message::Body {
    psi_message::Body::Alignment(PsiAlignment {
        version: alignment.version.into(),
        positions: psi::alignment_to_bytes(&alignment.positions),
    })
}

/// Protobuf alignment as psi's.
pub fn alignment_from_proto(
    peer: &str,
    alignment: &PsiAlignment,
) -> Result<psi::Alignment, psi::PsiError> {
    Ok(psi::Alignment {
        version: version(alignment.version),
        positions: psi::alignment_from_bytes(peer, &alignment.positions)?,
    })
}
