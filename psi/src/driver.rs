//! Runs a guest and its hosts in one process, moving every message through its wire form.
//! For tests, examples and benchmarks; `node` moves the same messages over gRPC.

use crate::error::PsiError;
use crate::ids::{DuplicatePolicy, IdColumn};
use crate::message::{
    points_from_bytes, points_to_bytes, tags_from_bytes, tags_to_bytes, Alignment, PointBatch,
    TagBatch,
};
use crate::session::{GuestConfig, GuestOutput, HostOutput, PsiGuest, PsiHost};

/// Name the driver gives the guest.
pub const GUEST: &str = "guest";

/// One host of an in-memory run.
#[derive(Debug)]
pub struct HostInput {
    /// Host name, unique in the run.
    pub name: String,
    /// Its ids.
    pub ids: IdColumn,
    /// Its duplicate policy.
    pub duplicates: DuplicatePolicy,
}

/// One message as it crossed the simulated wire.
#[derive(Debug)]
pub struct WireMessage<'a> {
    /// Sender.
    pub from: &'a str,
    /// Receiver.
    pub to: &'a str,
    /// Message kind, e.g. `"guest-points"`.
    pub kind: &'static str,
    /// The bytes that crossed (the variable-size part; fixed headers are not counted).
    pub payload: &'a [u8],
}

/// What every party ended with.
#[derive(Debug)]
pub struct InMemoryOutcome {
    /// The guest's output.
    pub guest: GuestOutput,
    /// Each host's output, in input order; `None` in receiver-only mode.
    pub hosts: Vec<Option<HostOutput>>,
}

/// Runs PSI between a guest and `hosts`, calling `observe` on every message in wire form.
pub fn run_in_memory(
    guest_ids: IdColumn,
    config: GuestConfig,
    hosts: Vec<HostInput>,
    observe: &mut dyn FnMut(&WireMessage<'_>),
) -> Result<InMemoryOutcome, PsiError> {
    let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut guest = PsiGuest::new(guest_ids, &name_refs, config)?;
    let hello = guest.hello();
    let mut sessions = Vec::with_capacity(hosts.len());
    for host in hosts {
        let mut payload = hello.salt.0.to_vec();
        payload.extend(hello.guest_rows.to_le_bytes());
        observe(&WireMessage {
            from: GUEST,
            to: &host.name,
            kind: "guest-hello",
            payload: &payload,
        });
        let (session, reply) = PsiHost::new(GUEST, host.ids, host.duplicates, &hello)?;
        observe(&WireMessage {
            from: &host.name,
            to: GUEST,
            kind: "host-hello",
            payload: &reply.host_rows.to_le_bytes(),
        });
        guest.receive_host_hello(&host.name, &reply)?;
        sessions.push(session);
    }
    for batch in 0..guest.batch_count() {
        let Some(points) = guest.blinded_batch(batch) else {
            break;
        };
        let wire = points_to_bytes(&points.points);
        for (name, session) in names.iter().zip(&sessions) {
            observe(&WireMessage {
                from: GUEST,
                to: name,
                kind: "guest-points",
                payload: &wire,
            });
            let received = PointBatch {
                points: points_from_bytes(GUEST, &wire)?,
                ..points.clone()
            };
            let answer = session.answer(&received)?;
            let wire_tags = tags_to_bytes(&answer.tags);
            observe(&WireMessage {
                from: name,
                to: GUEST,
                kind: "guest-tags",
                payload: &wire_tags,
            });
            guest.receive_tags(
                name,
                &TagBatch {
                    tags: tags_from_bytes(name, &wire_tags)?,
                    ..answer
                },
            )?;
        }
    }
    for (name, session) in names.iter().zip(&sessions) {
        for batch in 0..session.batch_count() {
            let Some(points) = session.blinded_batch(batch) else {
                break;
            };
            let wire = points_to_bytes(&points.points);
            observe(&WireMessage {
                from: name,
                to: GUEST,
                kind: "host-points",
                payload: &wire,
            });
            guest.receive_host_points(
                name,
                &PointBatch {
                    points: points_from_bytes(name, &wire)?,
                    ..points
                },
            )?;
        }
    }
    let result = guest.finish()?;
    let mut sessions: Vec<Option<PsiHost>> = sessions.into_iter().map(Some).collect();
    let mut outputs: Vec<Option<HostOutput>> = names.iter().map(|_| None).collect();
    for (name, alignment) in result.alignments {
        let index =
            names
                .iter()
                .position(|n| *n == name)
                .ok_or_else(|| PsiError::UnexpectedMessage {
                    peer: name.clone(),
                    what: "alignment for an unknown host",
                })?;
        let wire: Vec<u8> = alignment
            .positions
            .iter()
            .flat_map(|p| p.to_le_bytes())
            .collect();
        observe(&WireMessage {
            from: GUEST,
            to: &name,
            kind: "alignment",
            payload: &wire,
        });
        let received = Alignment {
            positions: wire
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            ..alignment
        };
        let session = sessions[index]
            .take()
            .ok_or_else(|| PsiError::UnexpectedMessage {
                peer: name.clone(),
                what: "second alignment",
            })?;
        outputs[index] = Some(session.receive_alignment(&received)?);
    }
    Ok(InMemoryOutcome {
        guest: result.output,
        hosts: outputs,
    })
}
