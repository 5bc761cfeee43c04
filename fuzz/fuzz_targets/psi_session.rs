//! A guest and one or two hosts run PSI (`psi::PsiGuest`, `psi::PsiHost`) on small fuzzed id
//! sets while the fuzzer moves their messages: it delivers, drops, repeats, defers, alters or
//! misroutes each one, or injects messages of its own. No session may panic, allocate beyond
//! what arrived, or loop; an error stops the party that returned it, as a driver would.
#![no_main]

use std::collections::VecDeque;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use psi::{
    Alignment, DuplicatePolicy, GuestConfig, GuestHello, HostHello, IdColumn, JobSalt, PointBatch,
    PsiGuest, PsiHost, ResultMode, TagBatch,
};
use unseen_fuzz::{play_input, Network, Then};

/// Party 0 is the guest, 1 and 2 the hosts; 3 belongs to no run.
const NAMES: [&str; 4] = ["guest", "tax", "utility", "stranger"];

/// Most moves per run.
const MAX_MOVES: usize = 512;

#[derive(Clone, Debug)]
enum Msg {
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
    batch_size: u32,
    any_batch_size: bool,
    receiver_only: bool,
    keep_first: bool,
}

#[derive(Arbitrary, Debug)]
enum Alteration {
    Version(u16),
    Batch(u32),
    Rows(u64),
    BatchSize(u32),
    Salt(u8, u8),
    Mode,
    RemoveItem(u16),
    RepeatItem(u16),
    FlipItem { index: u16, at: u8, mask: u8 },
    Positions(Vec<u32>),
}

#[derive(Arbitrary, Debug)]
enum ArbMsg {
    GuestHello {
        version: u16,
        salt: [u8; 32],
        guest_rows: u64,
        batch_size: u32,
        receiver_only: bool,
    },
    HostHello {
        version: u16,
        host_rows: u64,
    },
    Points {
        version: u16,
        batch: u32,
        points: Vec<[u8; 32]>,
    },
    Tags {
        version: u16,
        batch: u32,
        tags: Vec<[u8; 12]>,
    },
    Alignment {
        version: u16,
        positions: Vec<u32>,
    },
}

impl ArbMsg {
    fn build(self) -> Msg {
        match self {
            ArbMsg::GuestHello {
                version,
                salt,
                guest_rows,
                batch_size,
                receiver_only,
            } => Msg::GuestHello(GuestHello {
                version,
                salt: JobSalt(salt),
                guest_rows,
                batch_size,
                result: mode(receiver_only),
            }),
            ArbMsg::HostHello { version, host_rows } => {
                Msg::HostHello(HostHello { version, host_rows })
            }
            ArbMsg::Points {
                version,
                batch,
                points,
            } => Msg::Points(PointBatch {
                version,
                batch,
                points,
            }),
            ArbMsg::Tags {
                version,
                batch,
                tags,
            } => Msg::Tags(TagBatch {
                version,
                batch,
                tags,
            }),
            ArbMsg::Alignment { version, positions } => {
                Msg::Alignment(Alignment { version, positions })
            }
        }
    }
}

fn mode(receiver_only: bool) -> ResultMode {
    if receiver_only {
        ResultMode::ReceiverOnly
    } else {
        ResultMode::BothSides
    }
}

/// Removes, repeats or flips one item of a list (index wrapping around).
fn alter_items<T: Clone + AsMut<[u8]>>(items: &mut Vec<T>, alteration: &Alteration) {
    let pick = |index: u16, len: usize| (len > 0).then(|| usize::from(index) % len);
    match *alteration {
        Alteration::RemoveItem(i) => {
            if let Some(i) = pick(i, items.len()) {
                items.remove(i);
            }
        }
        Alteration::RepeatItem(i) => {
            if let Some(i) = pick(i, items.len()) {
                items.insert(i, items[i].clone());
            }
        }
        Alteration::FlipItem { index, at, mask } => {
            if let Some(i) = pick(index, items.len()) {
                let bytes = items[i].as_mut();
                let at = usize::from(at) % bytes.len();
                bytes[at] ^= mask;
            }
        }
        _ => {}
    }
}

fn alter(message: &mut Msg, alteration: &Alteration) {
    let version = match message {
        Msg::GuestHello(m) => &mut m.version,
        Msg::HostHello(m) => &mut m.version,
        Msg::Points(m) => &mut m.version,
        Msg::Tags(m) => &mut m.version,
        Msg::Alignment(m) => &mut m.version,
    };
    if let Alteration::Version(v) = *alteration {
        *version = v;
        return;
    }
    match (message, alteration) {
        (Msg::GuestHello(m), Alteration::Rows(rows)) => m.guest_rows = *rows,
        (Msg::GuestHello(m), Alteration::BatchSize(size)) => m.batch_size = *size,
        (Msg::GuestHello(m), Alteration::Salt(at, mask)) => m.salt.0[usize::from(*at) % 32] ^= mask,
        (Msg::GuestHello(m), Alteration::Mode) => {
            m.result = mode(m.result == ResultMode::BothSides);
        }
        (Msg::HostHello(m), Alteration::Rows(rows)) => m.host_rows = *rows,
        (Msg::Points(m), Alteration::Batch(batch)) => m.batch = *batch,
        (Msg::Points(m), other) => alter_items(&mut m.points, other),
        (Msg::Tags(m), Alteration::Batch(batch)) => m.batch = *batch,
        (Msg::Tags(m), other) => alter_items(&mut m.tags, other),
        (Msg::Alignment(m), Alteration::Positions(positions)) => m.positions = positions.clone(),
        (Msg::Alignment(m), Alteration::RemoveItem(i)) if !m.positions.is_empty() => {
            let i = usize::from(*i) % m.positions.len();
            m.positions.remove(i);
        }
        _ => {}
    }
}

enum Host {
    Waiting(IdColumn, DuplicatePolicy),
    Running(PsiHost),
    Stopped,
}

struct Run {
    guest: Option<PsiGuest>,
    hosts: Vec<Host>,
    /// (from, to, message), oldest first.
    wire: VecDeque<(usize, usize, Msg)>,
}

/// Ids "c0" … "c31" from bytes, so that sets overlap.
fn ids(bytes: &[u8]) -> Option<IdColumn> {
    IdColumn::from_ids(bytes.iter().take(24).map(|b| format!("c{}", b % 32))).ok()
}

impl Run {
    fn start(setup: &Setup) -> Option<Run> {
        let policy = if setup.keep_first {
            DuplicatePolicy::KeepFirst
        } else {
            DuplicatePolicy::Reject
        };
        let mut hosts = vec![Host::Waiting(ids(&setup.host_ids)?, policy)];
        if let Some(second) = &setup.second_host {
            hosts.push(Host::Waiting(ids(second)?, policy));
        }
        let names = &NAMES[1..=hosts.len()];
        let config = GuestConfig {
            batch_size: if setup.any_batch_size {
                setup.batch_size
            } else {
                1 + setup.batch_size % 8
            },
            result: mode(setup.receiver_only),
            duplicates: policy,
        };
        let guest = PsiGuest::new(ids(&setup.guest_ids)?, names, config).ok()?;
        let mut wire = VecDeque::new();
        for host in 1..=hosts.len() {
            wire.push_back((0, host, Msg::GuestHello(guest.hello())));
            for batch in 0..guest.batch_count() {
                let points = guest.blinded_batch(batch)?;
                wire.push_back((0, host, Msg::Points(points)));
            }
        }
        Some(Run {
            guest: Some(guest),
            hosts,
            wire,
        })
    }

    fn deliver(&mut self, from: usize, to: usize, message: Msg) {
        if to == 0 {
            self.guest_receives(NAMES[from], message);
        } else if to <= self.hosts.len() {
            let state = std::mem::replace(&mut self.hosts[to - 1], Host::Stopped);
            self.hosts[to - 1] = self.host_receives(to, state, message);
        }
    }

    fn guest_receives(&mut self, from: &str, message: Msg) {
        let Some(guest) = self.guest.as_mut() else {
            return;
        };
        let received = match &message {
            Msg::HostHello(hello) => guest.receive_host_hello(from, hello),
            Msg::Tags(tags) => guest.receive_tags(from, tags),
            Msg::Points(points) => guest.receive_host_points(from, points),
            Msg::GuestHello(_) | Msg::Alignment(_) => Ok(()),
        };
        if received.is_err() {
            self.guest = None;
            return;
        }
        if !guest.is_complete() {
            return;
        }
        let Some(guest) = self.guest.take() else {
            return;
        };
        let Ok(result) = guest.finish() else {
            return;
        };
        assert!(result.output.aligned_rows.len() <= 24);
        for (name, alignment) in result.alignments {
            let to = NAMES
                .iter()
                .position(|n| *n == name)
                .expect("a host of the run");
            self.wire.push_back((0, to, Msg::Alignment(alignment)));
        }
    }

    fn host_receives(&mut self, me: usize, state: Host, message: Msg) -> Host {
        match (state, message) {
            (Host::Waiting(ids, policy), Msg::GuestHello(hello)) => {
                let Ok((host, reply)) = PsiHost::new(NAMES[0], ids, policy, &hello) else {
                    return Host::Stopped;
                };
                self.wire.push_back((me, 0, Msg::HostHello(reply)));
                for batch in 0..host.batch_count() {
                    if let Some(points) = host.blinded_batch(batch) {
                        self.wire.push_back((me, 0, Msg::Points(points)));
                    }
                }
                Host::Running(host)
            }
            (Host::Running(host), Msg::Points(points)) => match host.answer(&points) {
                Ok(tags) => {
                    self.wire.push_back((me, 0, Msg::Tags(tags)));
                    Host::Running(host)
                }
                Err(_) => Host::Stopped,
            },
            (Host::Running(host), Msg::Alignment(alignment)) => {
                if let Ok(output) = host.receive_alignment(&alignment) {
                    assert!(output.aligned_rows.len() <= 24);
                }
                Host::Stopped
            }
            // Not for this party in this state: a driver ignores it.
            (state, _) => state,
        }
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
        alter(&mut message, &alteration);
        Some(message)
    }

    fn inject(injection: ArbMsg) -> Option<Msg> {
        Some(injection.build())
    }
}

fuzz_target!(|data: &[u8]| play_input(data, Run::start, MAX_MOVES, Then::DeliverAll));
