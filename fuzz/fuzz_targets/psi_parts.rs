//! A guest and one or two hosts run partitioned PSI (`psi::PartitionedGuest`,
//! `psi::PartitionedHost`: plan, sizes, schedule, then one session per part) on small fuzzed id
//! sets, a host possibly holding fuzzed "kept" parts of an earlier run and the guest possibly
//! resuming one (its key and kept parts fuzzed), while the fuzzer moves
//! their messages: it delivers, drops, repeats, defers, alters or misroutes each one, or injects
//! messages of its own (plans, sizes and schedules with any part lists). No party may panic,
//! allocate beyond what arrived, or loop; an error stops the party that returned it, as the node
//! does; a party that ends holds no more rows than it has ids.
#![no_main]

use std::collections::VecDeque;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use psi::{
    Alignment, DuplicatePolicy, FinishedPart, GuestConfig, GuestHello, HostHello, IdColumn,
    PartitionKey, PartitionPlan, PartitionSchedule, PartitionSizes, PartitionedGuest,
    PartitionedHost, PointBatch, PsiError, PsiGuest, PsiHost, TagBatch, PROTOCOL_VERSION,
};
use unseen_fuzz::{play_input, Network, Then};

/// Party 0 is the guest, 1 and 2 the hosts; 3 belongs to no run.
const NAMES: [&str; 4] = ["guest", "tax", "utility", "stranger"];

/// Most moves per run.
const MAX_MOVES: usize = 768;

/// Most ids per party.
const MAX_IDS: usize = 24;

#[derive(Clone, Debug)]
enum Msg {
    Plan(PartitionPlan),
    Sizes(PartitionSizes),
    Schedule(PartitionSchedule),
    GuestHello(GuestHello),
    HostHello(HostHello),
    /// Guest → host: guest points; host → guest: host points.
    Points(PointBatch),
    Tags(TagBatch),
    Alignment(Alignment),
}

#[derive(Arbitrary, Debug)]
struct Setup {
    guest_ids: Vec<u8>,
    host_ids: Vec<u8>,
    second_host: Option<Vec<u8>>,
    partition_rows: u8,
    batch_size: u8,
    keep_first: bool,
    /// Parts the first host says it kept: (part, rows).
    kept: Vec<(u8, Vec<u8>)>,
    /// A guest that resumes an earlier run: its key, and the parts it kept (part, rows,
    /// pairwise sizes).
    resume: Option<([u8; 32], Vec<(u8, Vec<u8>, Vec<u8>)>)>,
}

#[derive(Arbitrary, Debug)]
enum Alteration {
    Version(u16),
    Key(u8, u8),
    Sizes(Vec<u64>),
    Parts(Vec<u32>),
    Finished(Vec<u32>),
    Batch(u32),
    Rows(u64),
    RemoveItem(u16),
    FlipItem { index: u16, at: u8, mask: u8 },
    Positions(Vec<u32>),
}

#[derive(Arbitrary, Debug)]
enum ArbMsg {
    Plan {
        key: [u8; 32],
        guest_sizes: Vec<u64>,
    },
    Sizes {
        host_sizes: Vec<u64>,
        finished: Vec<u32>,
    },
    Schedule {
        partitions: Vec<u32>,
        finished: Vec<u32>,
    },
    HostHello {
        host_rows: u64,
    },
    Points {
        batch: u32,
        points: Vec<[u8; 32]>,
    },
    Tags {
        batch: u32,
        tags: Vec<[u8; 12]>,
    },
    Alignment {
        positions: Vec<u32>,
    },
}

impl ArbMsg {
    fn build(self) -> Msg {
        let version = PROTOCOL_VERSION;
        match self {
            ArbMsg::Plan { key, guest_sizes } => Msg::Plan(PartitionPlan {
                version,
                key: PartitionKey(key),
                guest_sizes,
            }),
            ArbMsg::Sizes {
                host_sizes,
                finished,
            } => Msg::Sizes(PartitionSizes {
                version,
                host_sizes,
                finished,
            }),
            ArbMsg::Schedule {
                partitions,
                finished,
            } => Msg::Schedule(PartitionSchedule {
                version,
                partitions,
                finished,
            }),
            ArbMsg::HostHello { host_rows } => Msg::HostHello(HostHello { version, host_rows }),
            ArbMsg::Points { batch, points } => Msg::Points(PointBatch {
                version,
                batch,
                points,
            }),
            ArbMsg::Tags { batch, tags } => Msg::Tags(TagBatch {
                version,
                batch,
                tags,
            }),
            ArbMsg::Alignment { positions } => Msg::Alignment(Alignment { version, positions }),
        }
    }
}

fn alter(message: &mut Msg, alteration: Alteration) {
    if let Alteration::Version(v) = alteration {
        match message {
            Msg::Plan(m) => m.version = v,
            Msg::Sizes(m) => m.version = v,
            Msg::Schedule(m) => m.version = v,
            Msg::GuestHello(m) => m.version = v,
            Msg::HostHello(m) => m.version = v,
            Msg::Points(m) => m.version = v,
            Msg::Tags(m) => m.version = v,
            Msg::Alignment(m) => m.version = v,
        }
        return;
    }
    match (message, alteration) {
        (Msg::Plan(m), Alteration::Key(at, mask)) => m.key.0[usize::from(at) % 32] ^= mask,
        (Msg::Plan(m), Alteration::Sizes(sizes)) => m.guest_sizes = sizes,
        (Msg::Sizes(m), Alteration::Sizes(sizes)) => m.host_sizes = sizes,
        (Msg::Sizes(m), Alteration::Finished(parts)) => m.finished = parts,
        (Msg::Schedule(m), Alteration::Parts(parts)) => m.partitions = parts,
        (Msg::Schedule(m), Alteration::Finished(parts)) => m.finished = parts,
        (Msg::GuestHello(m), Alteration::Rows(rows)) => m.guest_rows = rows,
        (Msg::HostHello(m), Alteration::Rows(rows)) => m.host_rows = rows,
        (Msg::Points(m), Alteration::Batch(batch)) => m.batch = batch,
        (Msg::Points(m), Alteration::RemoveItem(i)) if !m.points.is_empty() => {
            let i = usize::from(i) % m.points.len();
            m.points.remove(i);
        }
        (Msg::Points(m), Alteration::FlipItem { index, at, mask }) if !m.points.is_empty() => {
            let i = usize::from(index) % m.points.len();
            m.points[i][usize::from(at) % 32] ^= mask;
        }
        (Msg::Tags(m), Alteration::Batch(batch)) => m.batch = batch,
        (Msg::Tags(m), Alteration::RemoveItem(i)) if !m.tags.is_empty() => {
            let i = usize::from(i) % m.tags.len();
            m.tags.remove(i);
        }
        (Msg::Alignment(m), Alteration::Positions(positions)) => m.positions = positions,
        _ => {}
    }
}

/// Ids "c0" … "c31" from bytes, so that sets overlap.
fn ids(bytes: &[u8]) -> Option<IdColumn> {
    IdColumn::from_ids(bytes.iter().take(MAX_IDS).map(|b| format!("c{}", b % 32))).ok()
}

enum Host {
    /// Its ids, policy and kept parts, before the plan.
    Waiting(IdColumn, DuplicatePolicy, Vec<FinishedPart>),
    Running(Box<PartitionedHost>, Option<PsiHost>),
    Stopped,
}

struct Guest {
    parts: PartitionedGuest,
    session: Option<(u32, PsiGuest)>,
    /// Hosts whose sizes arrived.
    sized: Vec<bool>,
}

struct Run {
    guest: Option<Guest>,
    hosts: Vec<Host>,
    rows: Vec<usize>,
    wire: VecDeque<(usize, usize, Msg)>,
}

impl Run {
    fn start(setup: &Setup) -> Option<Run> {
        let policy = if setup.keep_first {
            DuplicatePolicy::KeepFirst
        } else {
            DuplicatePolicy::Reject
        };
        let kept = setup
            .kept
            .iter()
            .take(4)
            .map(|(part, rows)| FinishedPart {
                part: u32::from(*part % 8),
                rows: rows.iter().take(MAX_IDS).map(|&r| u32::from(r)).collect(),
                pairwise_sizes: Vec::new(),
            })
            .collect();
        let first = ids(&setup.host_ids)?;
        let mut rows = vec![first.len()];
        let mut hosts = vec![Host::Waiting(first, policy, kept)];
        if let Some(second) = &setup.second_host {
            let second = ids(second)?;
            rows.push(second.len());
            hosts.push(Host::Waiting(second, policy, Vec::new()));
        }
        let names = &NAMES[1..=hosts.len()];
        let config = GuestConfig {
            batch_size: 1 + u32::from(setup.batch_size % 8),
            duplicates: policy,
            ..GuestConfig::default()
        };
        let guest_ids = ids(&setup.guest_ids)?;
        rows.insert(0, guest_ids.len());
        let partition_rows = 1 + u64::from(setup.partition_rows % 12);
        let parts = match &setup.resume {
            None => PartitionedGuest::new(guest_ids, names, config, partition_rows).ok()?,
            Some((key, kept)) => {
                let kept: Vec<FinishedPart> = (kept.iter().take(4))
                    .map(|(part, rows, sizes)| FinishedPart {
                        part: u32::from(*part % 8),
                        rows: rows.iter().take(MAX_IDS).map(|&r| u32::from(r)).collect(),
                        pairwise_sizes: sizes.iter().take(3).map(|&s| u64::from(s)).collect(),
                    })
                    .collect();
                let key = PartitionKey(*key);
                // As the node does: kept parts that do not fit run again under the same key.
                match PartitionedGuest::resume(
                    guest_ids.clone(),
                    names,
                    config,
                    partition_rows,
                    key,
                    kept,
                ) {
                    Err(PsiError::InvalidConfig {
                        field: "kept parts",
                        ..
                    }) => PartitionedGuest::resume(
                        guest_ids,
                        names,
                        config,
                        partition_rows,
                        key,
                        Vec::new(),
                    ),
                    resumed => resumed,
                }
                .ok()?
            }
        };
        let mut wire = VecDeque::new();
        for host in 1..=hosts.len() {
            wire.push_back((0, host, Msg::Plan(parts.plan())));
        }
        Some(Run {
            guest: Some(Guest {
                parts,
                session: None,
                sized: vec![false; hosts.len()],
            }),
            hosts,
            rows,
            wire,
        })
    }

    fn deliver(&mut self, from: usize, to: usize, message: Msg) {
        if to == 0 {
            let Some(guest) = self.guest.take() else {
                return;
            };
            self.guest = self.guest_receives(guest, from, message);
        } else if to <= self.hosts.len() {
            let state = std::mem::replace(&mut self.hosts[to - 1], Host::Stopped);
            self.hosts[to - 1] = self.host_receives(to, state, message);
        }
    }

    /// The guest after `message` from party `from`; `None` once it stopped or ended.
    fn guest_receives(&mut self, mut guest: Guest, from: usize, message: Msg) -> Option<Guest> {
        let name = NAMES[from];
        match message {
            Msg::Sizes(sizes) => {
                guest.parts.receive_sizes(name, &sizes).ok()?;
                if let Some(sized) = guest.sized.get_mut(from.wrapping_sub(1)) {
                    *sized = true;
                }
                if guest.sized.iter().all(|s| *s) && guest.session.is_none() {
                    let schedule = guest.parts.schedule().ok()?;
                    for host in 1..=self.hosts.len() {
                        self.wire
                            .push_back((0, host, Msg::Schedule(schedule.clone())));
                    }
                    return self.next_part(guest);
                }
                Some(guest)
            }
            Msg::HostHello(hello) => {
                let (_, session) = guest.session.as_mut()?;
                session.receive_host_hello(name, &hello).ok()?;
                Some(guest)
            }
            Msg::Tags(tags) => {
                let (_, session) = guest.session.as_mut()?;
                session.receive_tags(name, &tags).ok()?;
                self.part_done(guest)
            }
            Msg::Points(points) => {
                let (_, session) = guest.session.as_mut()?;
                session.receive_host_points(name, &points).ok()?;
                self.part_done(guest)
            }
            _ => Some(guest),
        }
    }

    /// Starts the next part's session, or ends the run.
    fn next_part(&mut self, mut guest: Guest) -> Option<Guest> {
        match guest.parts.next_session().ok()? {
            Some((part, session)) => {
                for host in 1..=self.hosts.len() {
                    self.wire
                        .push_back((0, host, Msg::GuestHello(session.hello())));
                    for batch in 0..session.batch_count() {
                        let points = session.blinded_batch(batch)?;
                        self.wire.push_back((0, host, Msg::Points(points)));
                    }
                }
                guest.session = Some((part, session));
                Some(guest)
            }
            None => {
                let output = guest.parts.finish().ok()?;
                assert!(output.aligned_rows.len() <= self.rows[0]);
                None
            }
        }
    }

    fn part_done(&mut self, mut guest: Guest) -> Option<Guest> {
        if !guest.session.as_ref()?.1.is_complete() {
            return Some(guest);
        }
        let (part, session) = guest.session.take()?;
        let (finished, alignments) = guest.parts.finish_session(part, session).ok()?;
        assert!(finished.rows.len() <= self.rows[0]);
        for (name, alignment) in alignments {
            let to = NAMES.iter().position(|n| *n == name)?;
            self.wire.push_back((0, to, Msg::Alignment(alignment)));
        }
        self.next_part(guest)
    }

    fn host_receives(&mut self, me: usize, state: Host, message: Msg) -> Host {
        match (state, message) {
            (Host::Waiting(ids, policy, kept), Msg::Plan(plan)) => {
                // As the node does: kept parts that do not fit are dropped, not fatal.
                let started =
                    match PartitionedHost::new(NAMES[0], ids.clone(), policy, &plan, 1, kept) {
                        Err(PsiError::InvalidConfig {
                            field: "kept parts",
                            ..
                        }) => PartitionedHost::new(NAMES[0], ids, policy, &plan, 1, vec![]),
                        started => started,
                    };
                let Ok((host, sizes)) = started else {
                    return Host::Stopped;
                };
                self.wire.push_back((me, 0, Msg::Sizes(sizes)));
                Host::Running(Box::new(host), None)
            }
            (Host::Running(mut host, None), Msg::Schedule(schedule)) => {
                match host.receive_schedule(&schedule) {
                    Ok(()) => self.host_maybe_done(me, host),
                    Err(_) => Host::Stopped,
                }
            }
            (Host::Running(mut host, None), Msg::GuestHello(hello)) => {
                let Ok((session, reply)) = host.next_session(&hello) else {
                    return Host::Stopped;
                };
                self.wire.push_back((me, 0, Msg::HostHello(reply)));
                for batch in 0..session.batch_count() {
                    if let Some(points) = session.blinded_batch(batch) {
                        self.wire.push_back((me, 0, Msg::Points(points)));
                    }
                }
                Host::Running(host, Some(session))
            }
            (Host::Running(host, Some(session)), Msg::Points(points)) => {
                match session.answer(&points) {
                    Ok(tags) => {
                        self.wire.push_back((me, 0, Msg::Tags(tags)));
                        Host::Running(host, Some(session))
                    }
                    Err(_) => Host::Stopped,
                }
            }
            (Host::Running(mut host, Some(session)), Msg::Alignment(alignment)) => {
                match host.finish_session(session, &alignment) {
                    Ok(finished) => {
                        assert!(finished.rows.len() <= self.rows[me]);
                        self.host_maybe_done(me, host)
                    }
                    Err(_) => Host::Stopped,
                }
            }
            // Not for this party in this state: the node stops on it; ignoring it here lets
            // the fuzzer go on with the others.
            (state, _) => state,
        }
    }

    fn host_maybe_done(&mut self, me: usize, host: Box<PartitionedHost>) -> Host {
        if !host.is_finished() {
            return Host::Running(host, None);
        }
        if let Ok(output) = host.finish() {
            assert!(output.aligned_rows.len() <= self.rows[me]);
        }
        Host::Stopped
    }
}

impl Network for Run {
    type Message = Msg;
    type Alteration = Alteration;
    type Injection = ArbMsg;
    const PARTIES: usize = 3;

    fn wire(&mut self) -> &mut VecDeque<(usize, usize, Msg)> {
        &mut self.wire
    }

    fn deliver(&mut self, from: usize, to: usize, message: Msg) {
        Run::deliver(self, from, to, message);
    }

    fn alter(mut message: Msg, alteration: Alteration) -> Option<Msg> {
        alter(&mut message, alteration);
        Some(message)
    }

    fn inject(injection: ArbMsg) -> Option<Msg> {
        Some(injection.build())
    }
}

fuzz_target!(|data: &[u8]| play_input(data, Run::start, MAX_MOVES, Then::DeliverAll));
