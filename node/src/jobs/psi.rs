//! PSI through the node: the guest's and a host's side of psi's sans-IO sessions over a
//! job's [`Link`], with the node's cap on the ids a peer may announce. The group operations
//! of each batch run on the party's workers when it has some connected (`crate::workers`).
//!
//! A job keeps what its PSI finished, part by part, with what it resumes from: an attempt that
//! aligns again runs under the same plan and only on the parts some party did not finish.

use std::collections::VecDeque;
use std::path::Path;

use psi::{
    DuplicatePolicy, FinishedPart, GuestConfig, PartitionKey, PartitionPlan, PartitionedGuest,
    PartitionedHost, PsiGuest, PsiHost,
};
use sha2::{Digest, Sha256};

use crate::error::{NodeError, PeerFault};
use crate::jobs::link::Link;
use crate::jobs::spill::{IdRows, SpilledParts};
use crate::jobs::staged::Staged;
use crate::registry::JobHandle;
use crate::state::NodeState;
use crate::store::{EventRecord, Store};
use crate::wire::psi::*;
use crate::workers::{Ticket, Workers, PER_WORKER};

fn unexpected(peer: &str, expected: &'static str) -> NodeError {
    NodeError::Peer {
        peer: peer.to_owned(),
        fault: PeerFault::OutOfTurn {
            got: "another PSI message".into(),
            expected,
        },
    }
}

/// Batches of the guest's points in flight per host: the guest blinds the next batches while
/// the hosts answer the earlier ones, so neither waits for the other (4 × 2^16 points is 8 MiB
/// per host, far under the receiving node's `max_buffered_bytes`).
const WINDOW: u32 = 4;

/// An error if `peer` announced more ids in all its parts than `cap`.
fn too_many(peer: &str, sizes: &[u64], cap: u64) -> Option<NodeError> {
    let announced = sizes.iter().fold(0u64, |a, s| a.saturating_add(*s));
    (announced > cap).then(|| NodeError::Peer {
        peer: peer.to_owned(),
        fault: PeerFault::TooManyRows { announced, cap },
    })
}

/// The resume part holding the plan a job's PSI runs under: the plan's digest, the digest of
/// the ids it split and, at the guest, the key.
const PLAN_PART: &str = "psi plan";
/// Resume parts holding the parts PSI finished, one each ("psi part 0000000012").
const PART_PREFIX: &str = "psi part ";

/// What a job keeps of its PSI in the store, to resume it part by part.
struct KeptPsi<'a> {
    store: &'a Store,
    party: String,
    job: &'a str,
    /// Digest of the ids this node splits (its dataset's id column, in order).
    ids: [u8; 32],
}

/// The plan a job's PSI ran under, as kept.
struct KeptPlan {
    plan: [u8; 32],
    key: Option<PartitionKey>,
}

impl<'a> KeptPsi<'a> {
    /// `ids`: the digest of the ids this node splits ([`Staged::ids_digest`]).
    fn new(store: &'a Store, party: &str, job: &'a str, ids: [u8; 32]) -> Self {
        KeptPsi {
            store,
            party: party.to_owned(),
            job,
            ids,
        }
    }

    /// The plan kept, if any; an error if it was made for other ids: a party's dataset that
    /// changed while PSI ran would show the others a second histogram under the same key
    /// (which ids moved between parts), so the job ends, as with a changed dataset after PSI.
    fn plan(&self) -> Result<Option<KeptPlan>, NodeError> {
        let bytes = match self.store.resume_part(self.job, PLAN_PART) {
            Ok(Some(bytes)) if bytes.len() >= 64 => bytes,
            Ok(_) => return Ok(None),
            Err(e) => {
                // Damaged: PSI starts over under a new plan.
                tracing::warn!(job = %self.job, error = %e, "the kept PSI plan is unreadable");
                return Ok(None);
            }
        };
        if bytes[32..64] != self.ids {
            return Err(fedlearn::FedError::Resume {
                party: self.party.clone(),
                reason: "its dataset changed since the job started".into(),
            }
            .into());
        }
        Ok(Some(KeptPlan {
            plan: bytes[..32].try_into().expect("32 bytes"),
            key: bytes
                .get(64..96)
                .map(|key| PartitionKey(key.try_into().expect("32 bytes"))),
        }))
    }

    /// The parts kept (a damaged one is not: it runs again).
    fn parts(&self) -> Result<Vec<FinishedPart>, NodeError> {
        let kept = self.store.resume_parts(self.job, PART_PREFIX)?;
        Ok(kept
            .into_iter()
            .filter_map(|(name, bytes)| match bytes.map(|b| FinishedPart::from_bytes(&b)) {
                Ok(Some(part)) => Some(part),
                Ok(None) | Err(_) => {
                    tracing::warn!(job = %self.job, %name, "a kept PSI part is unreadable; it runs again");
                    None
                }
            })
            .collect())
    }

    /// Starts over under `plan`: forgets any earlier plan and its parts.
    fn start(&self, plan: &PartitionPlan, keep_key: bool) -> Result<(), NodeError> {
        self.store
            .forget_resume(self.job, |part| part.starts_with("psi "))?;
        let mut bytes = plan_digest(plan).to_vec();
        bytes.extend_from_slice(&self.ids);
        if keep_key {
            bytes.extend_from_slice(&plan.key.0);
        }
        self.store.put_resume(self.job, PLAN_PART, &bytes)
    }

    /// Forgets the kept parts that run again (not in `finished`): a party never holds a part
    /// of an earlier session that the others ran again.
    fn forget_all_but(&self, finished: &[u32]) -> Result<(), NodeError> {
        self.store.forget_resume(self.job, |name| {
            name.strip_prefix(PART_PREFIX)
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|p| finished.binary_search(&p).is_err())
        })
    }

    fn keep(&self, part: &FinishedPart) -> Result<(), NodeError> {
        let name = format!("{PART_PREFIX}{:010}", part.part);
        self.store.put_resume(self.job, &name, &part.to_bytes())
    }
}

/// SHA-256 of a plan: its key and the guest's part sizes.
fn plan_digest(plan: &PartitionPlan) -> [u8; 32] {
    let mut digest = Sha256::new();
    digest.update(b"unseen psi plan v1");
    digest.update(plan.key.0);
    digest.update(psi::sizes_to_bytes(&plan.guest_sizes));
    digest.finalize().into()
}

/// The guest's side of the job's PSI, resumed under the kept plan when this node kept one for
/// the same ids; under a fresh key otherwise. Its ids are split into parts on disk.
fn partitioned_guest(
    data_dir: &Path,
    kept: &KeptPsi<'_>,
    (ids, rows): (&dyn IdRows, usize),
    hosts: &[String],
    config: GuestConfig,
    partition_rows: u64,
) -> Result<PartitionedGuest<SpilledParts>, NodeError> {
    let names: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let count = psi::part_count(rows as u64, partition_rows);
    let split = |key: &PartitionKey| {
        SpilledParts::split(data_dir, kept.job, ids, key, count, config.duplicates)
    };
    if let Some(KeptPlan {
        plan,
        key: Some(key),
    }) = kept.plan()?
    {
        let resumed =
            match PartitionedGuest::with_parts(split(&key)?, &names, config, key, kept.parts()?) {
                // Damaged: every part runs again, under the same key.
                Err(psi::PsiError::InvalidConfig {
                    field: "kept parts",
                    ..
                }) => {
                    kept.forget_all_but(&[])?;
                    PartitionedGuest::with_parts(split(&key)?, &names, config, key, Vec::new())
                }
                resumed => resumed,
            };
        // Other settings (`psi_partition_rows`) give another plan: a new key.
        if let Some(guest) = resumed.ok().filter(|g| plan_digest(&g.plan()) == plan) {
            return Ok(guest);
        }
    }
    let key = PartitionKey::random()?;
    let guest = PartitionedGuest::with_parts(split(&key)?, &names, config, key, Vec::new())?;
    kept.start(&guest.plan(), true)?;
    Ok(guest)
}

/// Tells the job's watchers how many parts an earlier attempt finished.
fn kept_event(node: &NodeState, job: &JobHandle, kept: usize, parts: usize, progress: f64) {
    if kept > 0 {
        job.emit(
            &node.store,
            EventRecord {
                state: "psi".into(),
                message: format!("{kept} of {parts} parts kept from an earlier attempt"),
                psi_progress: progress,
                ..EventRecord::default()
            },
        );
    }
}

pub(crate) fn guest_psi(
    node: &NodeState,
    job: &JobHandle,
    link: &mut Link<'_>,
    dataset: &Staged,
    hosts: &[String],
) -> Result<Vec<u32>, NodeError> {
    let config = GuestConfig::default();
    let federation = &node.config().federation;
    let kept = KeptPsi::new(
        &node.store,
        &node.config().party,
        job.id(),
        dataset.ids_digest(),
    );
    let data_dir = &node.config().data_dir;
    let partition_rows = federation.psi_partition_rows;
    let ids = (dataset as &dyn IdRows, dataset.rows());
    let mut guest = partitioned_guest(data_dir, &kept, ids, hosts, config, partition_rows)?;
    let plan = guest.plan();
    for host in hosts {
        link.send_psi(host, plan_to_proto(&plan))?;
    }
    let mut all_sizes = vec![plan.guest_sizes.clone()];
    for host in hosts {
        match link.receive_psi(host)? {
            Body::PartitionSizes(sizes) => {
                let sizes = sizes_from_proto(host, &sizes)?;
                if let Some(error) = too_many(host, &sizes.host_sizes, federation.max_peer_rows) {
                    return Err(error);
                }
                guest.receive_sizes(host, &sizes)?;
                all_sizes.push(sizes.host_sizes);
            }
            _ => return Err(unexpected(host, "its part sizes")),
        }
    }
    let schedule = guest.schedule()?;
    kept.forget_all_but(&schedule.finished)?;
    for host in hosts {
        link.send_psi(host, schedule_to_proto(&schedule))?;
    }
    // Batches of every party in the scheduled parts; those kept count as done.
    let batches = |parts: &[u32]| -> u64 {
        (all_sizes.iter())
            .flat_map(|sizes| {
                parts
                    .iter()
                    .map(|&p| sizes[p as usize].div_ceil(u64::from(config.batch_size)))
            })
            .sum()
    };
    let total = batches(&schedule.partitions).max(1);
    let mut done = batches(&schedule.finished);
    let parts = schedule.partitions.len();
    let mut finished = schedule.finished.len();
    kept_event(node, job, finished, parts, done as f64 / total as f64);
    let mut progress = |batches: u64, message: String| {
        done += batches;
        job.emit(
            &node.store,
            EventRecord {
                state: "psi".into(),
                message,
                psi_progress: done as f64 / total as f64,
                ..EventRecord::default()
            },
        )
    };
    while let Some((part, mut session)) = guest.next_session()? {
        guest_session(link, &mut session, hosts, &mut |batches| {
            progress(batches, "matching ids".into())
        })?;
        let (result, alignments) = guest.finish_session(part, session)?;
        // Kept before any host has it: a part the guest lacks runs again.
        kept.keep(&result)?;
        for (host, alignment) in alignments {
            link.send_psi(&host, alignment_to_proto(&alignment))?;
        }
        finished += 1;
        progress(0, format!("part {finished} of {parts} matched"));
    }
    Ok(guest.finish()?.aligned_rows)
}

/// One part's session, the guest's side: hellos, the guest's points (a window of batches in
/// flight per host) and the hosts' tags, then the hosts' points. `progress` counts batches.
fn guest_session(
    link: &mut Link<'_>,
    guest: &mut PsiGuest,
    hosts: &[String],
    progress: &mut dyn FnMut(u64),
) -> Result<(), NodeError> {
    let workers = &link.node.workers;
    let hello = guest.hello();
    for host in hosts {
        link.send_psi(host, guest_hello_to_proto(&hello))?;
    }
    let mut host_batches = Vec::with_capacity(hosts.len());
    for host in hosts {
        match link.receive_psi(host)? {
            Body::HostHello(reply) => {
                let reply = host_hello_from_proto(&reply);
                guest.receive_host_hello(host, &reply)?;
                host_batches.push(reply.host_rows.div_ceil(u64::from(hello.batch_size)));
            }
            _ => return Err(unexpected(host, "its hello")),
        }
    }
    let batches = guest.batch_count();
    let mut own = Ahead::new(workers, batches);
    let mut sent = 0;
    for batch in 0..batches {
        while sent < batches && sent < batch + WINDOW {
            let Some(points) = own.next(|b| guest.blind_work(b))? else {
                break;
            };
            let body = points_to_proto(&points);
            for host in hosts {
                link.send_psi(host, body.clone())?;
            }
            sent += 1;
        }
        for host in hosts {
            match link.receive_psi(host)? {
                Body::Tags(tags) => guest.receive_tags(host, &tags_from_proto(host, &tags)?)?,
                _ => return Err(unexpected(host, "tags")),
            }
        }
        progress(1);
    }
    for (host, batches) in hosts.iter().zip(host_batches) {
        let mut pending = VecDeque::new();
        let mut received = 0;
        while received < batches || !pending.is_empty() {
            // The host sends all its batches: as many at once as the workers take (the node
            // itself takes one at a time).
            while received < batches && pending.len() < local_window(workers) {
                let points = match link.receive_psi(host)? {
                    Body::Points(points) => points_from_proto(host, &points)?,
                    _ => return Err(unexpected(host, "points")),
                };
                received += 1;
                let batch = points.batch;
                match guest.host_points_work(host, points)? {
                    Some(work) => pending.push_back((batch, workers.submit(work))),
                    None => progress(1),
                }
            }
            if let Some((batch, ticket)) = pending.pop_front() {
                guest.receive_host_tags(host, batch, ticket.wait())?;
                progress(1);
            }
        }
    }
    Ok(())
}

/// A party's own blinded batches in order, the work of the next ones submitted ahead ([`WINDOW`],
/// or more for many workers; the node runs its own when it waits for them).
struct Ahead<'w> {
    workers: &'w Workers,
    pending: VecDeque<(u32, Ticket<'w>)>,
    submitted: u32,
    end: u32,
}

impl<'w> Ahead<'w> {
    fn new(workers: &'w Workers, end: u32) -> Self {
        Ahead {
            workers,
            pending: VecDeque::new(),
            submitted: 0,
            end,
        }
    }

    /// The next batch's points, given each batch's work.
    fn next(
        &mut self,
        work: impl Fn(u32) -> Option<psi::Work>,
    ) -> Result<Option<psi::PointBatch>, NodeError> {
        while self.submitted < self.end
            && self.pending.len() < local_window(self.workers).max(WINDOW as usize)
        {
            let Some(work) = work(self.submitted) else {
                break;
            };
            let ticket = self.workers.submit(work);
            self.pending.push_back((self.submitted, ticket));
            self.submitted += 1;
        }
        match self.pending.pop_front() {
            Some((batch, ticket)) => Ok(Some(ticket.wait().into_points(batch)?)),
            None => Ok(None),
        }
    }
}

/// Units of work submitted at once where only this party decides: enough for every connected
/// worker's slots; one for the node itself (it runs a unit when it waits for it).
fn local_window(workers: &Workers) -> usize {
    (PER_WORKER * workers.connected()).max(1)
}

/// The guest's batches a host works on at once: the guest sends [`WINDOW`] ahead (both sides
/// of federation version 7 keep this window), so a host with workers holds that many; the
/// node itself takes one at a time (it would otherwise wait for the next batch to arrive
/// before working on the one it has).
fn answer_window(workers: &Workers) -> usize {
    if workers.connected() > 0 {
        WINDOW as usize
    } else {
        1
    }
}

pub(crate) fn host_psi(
    node: &NodeState,
    job: &JobHandle,
    link: &mut Link<'_>,
    guest: &str,
    dataset: &Staged,
) -> Result<Vec<u32>, NodeError> {
    let plan = match link.receive_psi(guest)? {
        Body::PartitionPlan(plan) => plan_from_proto(guest, &plan)?,
        _ => return Err(unexpected(guest, "its partition plan")),
    };
    let cap = node.config().federation.max_peer_rows;
    if let Some(error) = too_many(guest, &plan.guest_sizes, cap) {
        return Err(error);
    }
    let kept = KeptPsi::new(
        &node.store,
        &node.config().party,
        job.id(),
        dataset.ids_digest(),
    );
    // The plan is checked before this host's ids are split on disk by it.
    let count = PartitionedHost::<SpilledParts>::check_plan(guest, &plan)?;
    let start = |kept_parts| -> Result<_, NodeError> {
        let data_dir = &node.config().data_dir;
        let policy = DuplicatePolicy::Reject;
        let parts = SpilledParts::split(data_dir, job.id(), dataset, &plan.key, count, policy)?;
        let min = psi::MIN_PART_ROWS;
        Ok(PartitionedHost::with_parts(
            guest, parts, &plan, min, kept_parts,
        )?)
    };
    let (mut host, sizes) = match kept.plan()? {
        Some(kept_plan) if kept_plan.plan == plan_digest(&plan) => match start(kept.parts()?) {
            Ok(started) => started,
            // Kept parts that do not fit the ids: start over under this plan.
            Err(NodeError::Psi(psi::PsiError::InvalidConfig {
                field: "kept parts",
                ..
            })) => {
                kept.start(&plan, false)?;
                start(Vec::new())?
            }
            Err(e) => return Err(e),
        },
        _ => {
            kept.start(&plan, false)?;
            start(Vec::new())?
        }
    };
    link.send_psi(guest, sizes_to_proto(&sizes))?;
    let schedule = match link.receive_psi(guest)? {
        Body::PartitionSchedule(schedule) => schedule_from_proto(guest, &schedule)?,
        _ => return Err(unexpected(guest, "the schedule of parts")),
    };
    host.receive_schedule(&schedule)?;
    kept.forget_all_but(&schedule.finished)?;
    kept_event(
        node,
        job,
        schedule.finished.len(),
        schedule.partitions.len(),
        0.0,
    );
    while !host.is_finished() {
        let hello = match link.receive_psi(guest)? {
            Body::GuestHello(hello) => guest_hello_from_proto(guest, &hello)?,
            _ => return Err(unexpected(guest, "its hello for the next part")),
        };
        if hello.result != psi::ResultMode::BothSides {
            return Err(NodeError::Peer {
                peer: guest.to_owned(),
                fault: PeerFault::OneSidedPsi,
            });
        }
        let (session, reply) = host.next_session(&hello)?;
        link.send_psi(guest, host_hello_to_proto(&reply))?;
        let alignment = host_session(link, guest, &hello, &session)?;
        kept.keep(&host.finish_session(session, &alignment)?)?;
    }
    Ok(host.finish()?.aligned_rows)
}

/// One part's session, a host's side: answers the guest's batches, sends its own, and returns
/// the guest's alignment.
fn host_session(
    link: &mut Link<'_>,
    guest: &str,
    hello: &psi::GuestHello,
    session: &PsiHost,
) -> Result<psi::Alignment, NodeError> {
    let workers = &link.node.workers;
    let guest_batches = hello
        .guest_rows
        .div_ceil(u64::from(hello.batch_size.max(1)));
    // The guest keeps WINDOW batches in flight: that many may be held before answering.
    let mut pending = VecDeque::new();
    let mut received = 0;
    while received < guest_batches || !pending.is_empty() {
        while received < guest_batches && pending.len() < answer_window(workers) {
            let points = match link.receive_psi(guest)? {
                Body::Points(points) => points_from_proto(guest, &points)?,
                _ => return Err(unexpected(guest, "points")),
            };
            received += 1;
            let batch = points.batch;
            pending.push_back((batch, workers.submit(session.answer_work(points)?)));
        }
        if let Some((batch, ticket)) = pending.pop_front() {
            let tags = session.answered(batch, ticket.wait())?;
            link.send_psi(guest, tags_to_proto(&tags))?;
        }
    }
    let mut own = Ahead::new(workers, session.batch_count());
    while let Some(points) = own.next(|b| session.blind_work(b))? {
        link.send_psi(guest, points_to_proto(&points))?;
    }
    match link.receive_psi(guest)? {
        Body::Alignment(alignment) => Ok(alignment_from_proto(guest, &alignment)?),
        _ => Err(unexpected(guest, "the alignment")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(ids: &[&str]) -> [u8; 32] {
        crate::jobs::staged::ids_digest(ids.iter().copied())
    }

    /// A kept plan serves the same ids only; parts that run again are forgotten; damaged parts
    /// are skipped, and everything PSI kept goes when another plan starts.
    #[test]
    fn kept_psi_serves_the_same_ids_only() {
        let dir = std::env::temp_dir().join(format!("unseen-kept-psi-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir, crate::sealing::StoreKey::generate()).unwrap();
        let kept = KeptPsi::new(&store, "bank", "job", digest(&["a", "b", "c"]));
        assert!(kept.plan().unwrap().is_none());
        let plan = PartitionPlan {
            version: psi::PROTOCOL_VERSION,
            key: PartitionKey([3; 32]),
            guest_sizes: vec![2, 1],
        };
        kept.start(&plan, true).unwrap();
        let record = kept.plan().unwrap().unwrap();
        assert_eq!(record.plan, plan_digest(&plan));
        assert_eq!(record.key, Some(plan.key));
        let part = |part: u32| FinishedPart {
            part,
            rows: vec![part, 2],
            pairwise_sizes: vec![1],
        };
        for p in [0, 1, 7] {
            kept.keep(&part(p)).unwrap();
        }
        store
            .put_resume("job", "psi part 0000000009", b"\x01")
            .unwrap();
        let parts = |kept: &KeptPsi<'_>| -> Vec<u32> {
            kept.parts().unwrap().iter().map(|p| p.part).collect()
        };
        assert_eq!(parts(&kept), [0, 1, 7], "the damaged part 9 is skipped");
        kept.forget_all_but(&[1, 7]).unwrap();
        assert_eq!(parts(&kept), [1, 7]);
        assert_eq!(kept.parts().unwrap()[0], part(1));

        // The same job's dataset with another id: refused, naming the party.
        let changed = KeptPsi::new(&store, "bank", "job", digest(&["a", "b", "x"]));
        let error = changed.plan().err().expect("ids changed").to_string();
        assert!(
            error.contains("bank") && error.contains("dataset changed"),
            "{error}"
        );

        // A host's record has no key; a new plan forgets the earlier one and its parts.
        let other = PartitionPlan {
            key: PartitionKey([4; 32]),
            ..plan
        };
        kept.start(&other, false).unwrap();
        let record = kept.plan().unwrap().unwrap();
        assert_eq!((record.plan, record.key), (plan_digest(&other), None));
        assert!(parts(&kept).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A guest resumes under its kept key; kept parts that do not fit are dropped, not the
    /// key; other settings draw a new key.
    #[test]
    fn a_guest_keeps_its_key_unless_its_settings_changed() {
        let dir = std::env::temp_dir().join(format!("unseen-guest-psi-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir, crate::sealing::StoreKey::generate()).unwrap();
        let ids: Vec<String> = (0..40).map(|i| format!("sme-{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let kept = KeptPsi::new(&store, "bank", "job", digest(&refs));
        let data = (&ids as &dyn IdRows, ids.len());
        let hosts = ["tax".to_owned()];
        let config = GuestConfig::default();
        let first = partitioned_guest(&dir, &kept, data, &hosts, config, 10).unwrap();
        let key = first.plan().key;
        let again = partitioned_guest(&dir, &kept, data, &hosts, config, 10).unwrap();
        assert_eq!(again.plan(), first.plan());
        // A kept part whose rows are not of its part: dropped, the key stays.
        let wrong = FinishedPart {
            part: 0,
            rows: (0..40).collect(),
            pairwise_sizes: vec![0],
        };
        kept.keep(&wrong).unwrap();
        let again = partitioned_guest(&dir, &kept, data, &hosts, config, 10).unwrap();
        assert_eq!(again.plan().key, key);
        assert!(kept.parts().unwrap().is_empty());
        // Other parts: another plan, a new key.
        let other = partitioned_guest(&dir, &kept, data, &hosts, config, 20).unwrap();
        assert_ne!(other.plan().key, key);
        assert_eq!(
            kept.plan().unwrap().unwrap().plan,
            plan_digest(&other.plan())
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
