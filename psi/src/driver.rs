//! Runs a guest and its hosts in one process, moving every message through its wire form.
//! For tests, examples and benchmarks; `node` moves the same messages over gRPC.
//!
//! [`run_in_memory_altered`] lets a test alter, drop or replay any message in flight (after
//! rustls-test's `transfer_altered`): what it delivers goes through the same decoders and
//! session checks as an honest message, and a message that never arrives ends the run with a
//! typed error, never a hang.
#![forbid(unsafe_code)]

use crate::crypto::JobSalt;
use crate::error::PsiError;
use crate::ids::{DuplicatePolicy, IdColumn};
use crate::message::{
    alignment_from_bytes, alignment_to_bytes, parts_to_bytes, points_from_bytes, points_to_bytes,
    sizes_to_bytes, tags_from_bytes, tags_to_bytes, Alignment, GuestHello, HostHello, PointBatch,
    ResultMode, TagBatch,
};
use crate::partition::{PartitionedGuest, PartitionedHost};
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

/// A message in flight, which a tamper hook may change before it is delivered.
///
/// The payload is the message's wire form (what [`WireMessage::payload`] shows): the guest's
/// hello is its salt then its set size (u64, little-endian), the host's hello its set size,
/// point and tag batches their concatenated elements, an alignment its positions (u32 each,
/// little-endian). The header fields a peer checks are typed: the protocol version of every
/// message and the batch number of point and tag batches. (The guest hello's batch size and
/// result mode are not exposed.)
#[derive(Clone, Debug)]
pub struct InFlight<'a> {
    /// Sender.
    pub from: &'a str,
    /// Receiver.
    pub to: &'a str,
    /// Message kind: `guest-hello`, `host-hello`, `guest-points`, `guest-tags` (a host's
    /// answer to guest points), `host-points` or `alignment`.
    pub kind: &'static str,
    /// Protocol version in the header.
    pub version: u16,
    /// Batch number of point and tag batches; `None` for hellos and alignments (a batch
    /// without one is refused).
    pub batch: Option<u32>,
    /// The wire bytes.
    pub payload: Vec<u8>,
}

/// What a tamper hook does with a message in flight (after changing it, if it wants).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Altered {
    /// Deliver it once.
    Deliver,
    /// Lose it: the receiver never gets it.
    Drop,
    /// Deliver it twice in a row.
    Replay,
}

/// Runs PSI between a guest and `hosts`, calling `observe` on every message in wire form.
pub fn run_in_memory(
    guest_ids: IdColumn,
    config: GuestConfig,
    hosts: Vec<HostInput>,
    observe: &mut dyn FnMut(&WireMessage<'_>),
) -> Result<InMemoryOutcome, PsiError> {
    run_in_memory_altered(guest_ids, config, hosts, &mut |m| {
        observe(&WireMessage {
            from: m.from,
            to: m.to,
            kind: m.kind,
            payload: &m.payload,
        });
        Altered::Deliver
    })
}

/// [`run_in_memory`] with every message passed to `alter` before delivery: it may change the
/// message and decides whether it is delivered once, twice or not at all. The run ends with
/// the first error of any party; a message that never arrives makes its receiver (or the
/// guest's `finish`) fail.
pub fn run_in_memory_altered(
    guest_ids: IdColumn,
    config: GuestConfig,
    hosts: Vec<HostInput>,
    alter: &mut dyn FnMut(&mut InFlight<'_>) -> Altered,
) -> Result<InMemoryOutcome, PsiError> {
    let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut guest = PsiGuest::new(guest_ids, &name_refs, config)?;
    let hello = guest.hello();
    // A host's session exists once its guest hello arrived.
    let mut sessions: Vec<Option<PsiHost>> = Vec::with_capacity(hosts.len());
    for host in hosts {
        let mut ids = Some(host.ids);
        let mut session = None;
        let sent = InFlight::header(GUEST, &host.name, "guest-hello", hello.version, None);
        for m in transmit(alter, sent.with(guest_hello_to_bytes(&hello))) {
            let ids = ids.take().ok_or_else(|| PsiError::UnexpectedMessage {
                peer: GUEST.to_owned(),
                what: "second guest hello",
            })?;
            let (created, reply) =
                PsiHost::new(GUEST, ids, host.duplicates, &guest_hello_from(&m, &hello)?)?;
            let sent = InFlight::header(&host.name, GUEST, "host-hello", reply.version, None);
            for m in transmit(alter, sent.with(reply.host_rows.to_le_bytes().to_vec())) {
                guest.receive_host_hello(&host.name, &host_hello_from(&m)?)?;
            }
            session = Some(created);
        }
        sessions.push(session);
    }
    for batch in 0..guest.batch_count() {
        let Some(points) = guest.blinded_batch(batch) else {
            break;
        };
        let wire = points_to_bytes(&points.points);
        for (name, session) in names.iter().zip(&sessions) {
            let sent = InFlight::points(GUEST, name, "guest-points", &points);
            for m in transmit(alter, sent.with(wire.clone())) {
                let session = session
                    .as_ref()
                    .ok_or_else(|| PsiError::UnexpectedMessage {
                        peer: GUEST.to_owned(),
                        what: "points before the guest's hello",
                    })?;
                let answer = session.answer(&point_batch_from(&m)?)?;
                let sent = InFlight::header(
                    name,
                    GUEST,
                    "guest-tags",
                    answer.version,
                    Some(answer.batch),
                );
                for m in transmit(alter, sent.with(tags_to_bytes(&answer.tags))) {
                    guest.receive_tags(name, &tag_batch_from(&m)?)?;
                }
            }
        }
    }
    for (name, session) in names.iter().zip(&sessions) {
        // A host without a session (its hello was lost) sends nothing.
        let Some(session) = session else { continue };
        for batch in 0..session.batch_count() {
            let Some(points) = session.blinded_batch(batch) else {
                break;
            };
            let sent = InFlight::points(name, GUEST, "host-points", &points);
            for m in transmit(alter, sent.with(points_to_bytes(&points.points))) {
                guest.receive_host_points(name, &point_batch_from(&m)?)?;
            }
        }
    }
    let result = guest.finish()?;
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
        let sent = InFlight::header(GUEST, &name, "alignment", alignment.version, None);
        for m in transmit(alter, sent.with(alignment_to_bytes(&alignment.positions))) {
            let session = sessions[index]
                .take()
                .ok_or_else(|| PsiError::UnexpectedMessage {
                    peer: GUEST.to_owned(),
                    what: "second alignment",
                })?;
            outputs[index] = Some(session.receive_alignment(&alignment_from(&m)?)?);
        }
    }
    if config.result == ResultMode::BothSides {
        if let Some(name) = names
            .iter()
            .zip(&outputs)
            .find_map(|(n, o)| o.is_none().then_some(n))
        {
            return Err(PsiError::Incomplete {
                missing: format!("host {name} received no alignment"),
            });
        }
    }
    Ok(InMemoryOutcome {
        guest: result.output,
        hosts: outputs,
    })
}

/// Partitioned PSI (both-sides mode, see [`PartitionedGuest`]) between a guest and `hosts`,
/// with about `partition_rows` distinct guest ids per part (hosts accept any number of parts; a
/// node's hosts require [`crate::MIN_PART_ROWS`] ids per part), calling `observe` on every message
/// in wire form (the plan's and the sizes' payloads are their sizes, u64 each, the schedule's
/// its part numbers, u32 each).
pub fn run_in_memory_partitioned(
    guest_ids: IdColumn,
    config: GuestConfig,
    partition_rows: u64,
    hosts: Vec<HostInput>,
    observe: &mut dyn FnMut(&WireMessage<'_>),
) -> Result<InMemoryOutcome, PsiError> {
    let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut send = |from: &str, to: &str, kind: &'static str, payload: &[u8]| {
        observe(&WireMessage {
            from,
            to,
            kind,
            payload,
        })
    };
    let mut guest = PartitionedGuest::new(guest_ids, &name_refs, config, partition_rows)?;
    let plan = guest.plan();
    let mut parties = Vec::with_capacity(hosts.len());
    for host in hosts {
        send(
            GUEST,
            &host.name,
            "partition-plan",
            &sizes_to_bytes(&plan.guest_sizes),
        );
        let (party, sizes) =
            PartitionedHost::new(GUEST, host.ids, host.duplicates, &plan, 0, Vec::new())?;
        send(
            &host.name,
            GUEST,
            "partition-sizes",
            &sizes_to_bytes(&sizes.host_sizes),
        );
        guest.receive_sizes(&host.name, &sizes)?;
        parties.push(party);
    }
    let schedule = guest.schedule()?;
    for (name, party) in names.iter().zip(&mut parties) {
        send(
            GUEST,
            name,
            "partition-schedule",
            &parts_to_bytes(&schedule.partitions),
        );
        party.receive_schedule(&schedule)?;
    }
    while let Some((part, mut session)) = guest.next_session()? {
        let hello = session.hello();
        let mut host_sessions = Vec::with_capacity(parties.len());
        for (name, party) in names.iter().zip(&mut parties) {
            send(GUEST, name, "guest-hello", &guest_hello_to_bytes(&hello));
            let (host_session, reply) = party.next_session(&hello)?;
            send(name, GUEST, "host-hello", &reply.host_rows.to_le_bytes());
            session.receive_host_hello(name, &reply)?;
            host_sessions.push(Some(host_session));
        }
        for batch in 0..session.batch_count() {
            let Some(points) = session.blinded_batch(batch) else {
                break;
            };
            let wire = points_to_bytes(&points.points);
            for (name, host_session) in names.iter().zip(&host_sessions) {
                send(GUEST, name, "guest-points", &wire);
                let host_session = host_session.as_ref().expect("created above");
                let tags = host_session.answer(&points)?;
                send(name, GUEST, "guest-tags", &tags_to_bytes(&tags.tags));
                session.receive_tags(name, &tags)?;
            }
        }
        for (name, host_session) in names.iter().zip(&host_sessions) {
            let host_session = host_session.as_ref().expect("created above");
            for batch in 0..host_session.batch_count() {
                let Some(points) = host_session.blinded_batch(batch) else {
                    break;
                };
                send(name, GUEST, "host-points", &points_to_bytes(&points.points));
                session.receive_host_points(name, &points)?;
            }
        }
        let (_, alignments) = guest.finish_session(part, session)?;
        for (name, alignment) in alignments {
            let index = names
                .iter()
                .position(|n| *n == name)
                .expect("a host of the run");
            send(
                GUEST,
                &name,
                "alignment",
                &alignment_to_bytes(&alignment.positions),
            );
            let host_session = host_sessions[index].take().expect("one alignment per host");
            parties[index].finish_session(host_session, &alignment)?;
        }
    }
    let guest = guest.finish()?;
    let hosts = parties
        .into_iter()
        .map(|party| party.finish().map(Some))
        .collect::<Result<_, _>>()?;
    Ok(InMemoryOutcome { guest, hosts })
}

impl<'a> InFlight<'a> {
    fn header(
        from: &'a str,
        to: &'a str,
        kind: &'static str,
        version: u16,
        batch: Option<u32>,
    ) -> Self {
        InFlight {
            from,
            to,
            kind,
            version,
            batch,
            payload: Vec::new(),
        }
    }

    fn points(from: &'a str, to: &'a str, kind: &'static str, points: &PointBatch) -> Self {
        Self::header(from, to, kind, points.version, Some(points.batch))
    }

    fn with(self, payload: Vec<u8>) -> Self {
        InFlight { payload, ..self }
    }

    /// The batch number, which point and tag batches must carry.
    fn batch_number(&self) -> Result<u32, PsiError> {
        self.batch.ok_or_else(|| PsiError::InvalidField {
            peer: self.from.to_owned(),
            field: "batch",
            reason: "missing".into(),
        })
    }
}

/// Passes `message` through the hook: the copies to deliver (none, one or two).
fn transmit<'a>(
    alter: &mut dyn FnMut(&mut InFlight<'_>) -> Altered,
    mut message: InFlight<'a>,
) -> impl Iterator<Item = InFlight<'a>> {
    let copies = match alter(&mut message) {
        Altered::Drop => 0,
        Altered::Deliver => 1,
        Altered::Replay => 2,
    };
    std::iter::repeat_n(message, copies)
}

fn guest_hello_to_bytes(hello: &GuestHello) -> Vec<u8> {
    let mut payload = hello.salt.0.to_vec();
    payload.extend(hello.guest_rows.to_le_bytes());
    payload
}

/// The guest hello a host receives: the delivered salt and set size, the rest of `sent`.
fn guest_hello_from(m: &InFlight<'_>, sent: &GuestHello) -> Result<GuestHello, PsiError> {
    let (salt, rows) = m.payload.split_at(m.payload.len().min(32));
    Ok(GuestHello {
        version: m.version,
        salt: JobSalt(fixed(m.from, "salt", salt)?),
        guest_rows: u64::from_le_bytes(fixed(m.from, "guest_rows", rows)?),
        ..sent.clone()
    })
}

fn host_hello_from(m: &InFlight<'_>) -> Result<HostHello, PsiError> {
    Ok(HostHello {
        version: m.version,
        host_rows: u64::from_le_bytes(fixed(m.from, "host_rows", &m.payload)?),
    })
}

fn point_batch_from(m: &InFlight<'_>) -> Result<PointBatch, PsiError> {
    Ok(PointBatch {
        version: m.version,
        batch: m.batch_number()?,
        points: points_from_bytes(m.from, &m.payload)?,
    })
}

fn tag_batch_from(m: &InFlight<'_>) -> Result<TagBatch, PsiError> {
    Ok(TagBatch {
        version: m.version,
        batch: m.batch_number()?,
        tags: tags_from_bytes(m.from, &m.payload)?,
    })
}

fn alignment_from(m: &InFlight<'_>) -> Result<Alignment, PsiError> {
    Ok(Alignment {
        version: m.version,
        positions: alignment_from_bytes(m.from, &m.payload)?,
    })
}

/// A field of exactly `N` bytes.
fn fixed<const N: usize>(
    peer: &str,
    field: &'static str,
    bytes: &[u8],
) -> Result<[u8; N], PsiError> {
    bytes.try_into().map_err(|_| PsiError::InvalidField {
        peer: peer.to_owned(),
        field,
        reason: format!("{} bytes, expected {N}", bytes.len()),
    })
}
