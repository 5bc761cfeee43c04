//! A guest and one or two hosts (`fedlearn::GuestSession`, `fedlearn::HostSession`) train on
//! 32 small rows while the fuzzer moves their messages: it delivers, drops, repeats, defers,
//! edits the bytes of or misroutes each one, or injects messages built from fuzzed parts, from
//! any party or a stranger, to any party. No session may panic; an error stops the party that
//! returned it, as `fedlearn::drive` would.
//!
//! Every party draws fresh keys (the API has no seeded sessions), so every step costs real key
//! generation and products (48 inputs in 30 s with the sanitizer): a run stops when
//! the fuzzer's moves run out, and `DeliverMany` reaches deep states in a few bytes.
#![no_main]

use std::collections::VecDeque;

use arbitrary::Arbitrary;
use fedlearn::{
    EarlyStopping, GuestJob, GuestSession, HostJob, HostSession, Message, Missing, Session, Table,
    TrainConfig,
};
use libfuzzer_sys::fuzz_target;
use unseen_fuzz::{apply_edits, play_input, ArbMessage, Edit, Network, Then};

/// Party 0 is the guest, 1 and 2 the hosts; 3 belongs to no job.
const NAMES: [&str; 4] = ["bank", "host0", "host1", "stranger"];

const ROWS: usize = 32;

/// Most moves per run.
const MAX_MOVES: usize = 256;

#[derive(Arbitrary, Debug)]
struct Setup {
    two_hosts: bool,
    two_epochs: bool,
    validation: bool,
    early_stopping: bool,
    seed: u8,
}

enum Party {
    /// A host that has not received a proposal yet.
    Pending(HostJob),
    Running(Box<dyn Session>),
    Stopped,
}

struct Run {
    parties: Vec<Party>,
    /// (from, to, message), oldest first.
    wire: VecDeque<(usize, usize, Message)>,
}

fn table(party: &str, column: impl Fn(usize) -> f64, labels: bool) -> Table {
    let ids = (0..ROWS).map(|i| format!("row{i}")).collect();
    let values = fedlearn::ndarray::Array2::from_shape_fn((ROWS, 1), |(i, _)| column(i));
    let labels = labels.then(|| {
        (0..ROWS)
            .map(|i| f64::from(u8::from((i * 7) % 11 + (i * 5) % 13 > 11)))
            .collect()
    });
    Table::new(
        ids,
        vec![format!("{party}-x")],
        values,
        labels,
        Missing::Reject,
    )
    .expect("a valid table")
}

impl Run {
    fn start(setup: &Setup) -> Option<Run> {
        let hosts: Vec<String> = NAMES[1..=1 + usize::from(setup.two_hosts)]
            .iter()
            .map(|h| (*h).to_owned())
            .collect();
        let config = TrainConfig {
            max_epochs: 1 + usize::from(setup.two_epochs),
            validation_fraction: if setup.validation { 0.25 } else { 0.0 },
            early_stopping: setup
                .early_stopping
                .then_some(EarlyStopping::WeightChange { tolerance: 1e-3 }),
            seed: setup.seed.into(),
            ..TrainConfig::default()
        };
        let guest = GuestSession::new(GuestJob {
            party: NAMES[0].into(),
            model_id: "fuzz".into(),
            table: table("bank", |i| ((i * 7) % 11) as f64, true),
            hosts: hosts.clone(),
            config,
            prep: Default::default(),
            resume: None,
        })
        .ok()?;
        let mut parties = vec![Party::Running(Box::new(guest))];
        for (k, host) in hosts.iter().enumerate() {
            parties.push(Party::Pending(HostJob {
                party: host.clone(),
                guest: NAMES[0].into(),
                table: table(host, move |i| ((i * (5 + k)) % 13) as f64, false),
                prep: Default::default(),
                checkpoints: Vec::new(),
            }));
        }
        let mut run = Run {
            parties,
            wire: VecDeque::new(),
        };
        run.transmit();
        Some(run)
    }

    /// Moves everything the parties have to send onto the wire, and polls their events.
    fn transmit(&mut self) {
        for (from, party) in self.parties.iter_mut().enumerate() {
            let Party::Running(session) = party else {
                continue;
            };
            loop {
                match session.poll_transmit() {
                    Ok(Some((to, message))) => {
                        let to = NAMES.iter().position(|n| *n == to).expect("a named peer");
                        self.wire.push_back((from, to, message));
                    }
                    Ok(None) => break,
                    Err(_) => {
                        *party = Party::Stopped;
                        break;
                    }
                }
            }
            if let Party::Running(session) = party {
                while session.poll_event().is_some() {}
                let _ = session.awaiting();
            }
        }
    }

    fn deliver(&mut self, from: usize, to: usize, message: Message) {
        let Some(party) = self.parties.get_mut(to) else {
            return;
        };
        *party = match (std::mem::replace(party, Party::Stopped), message) {
            (Party::Pending(job), Message::Propose(proposal)) => {
                match HostSession::new(job, *proposal) {
                    Ok(session) => Party::Running(Box::new(session)),
                    Err(_) => Party::Stopped,
                }
            }
            (Party::Running(mut session), message) => match session.handle(NAMES[from], message) {
                Ok(()) => Party::Running(session),
                Err(_) => Party::Stopped,
            },
            // A host waits for the proposal first: a driver drops anything else.
            (state, _) => state,
        };
        self.transmit();
    }
}

impl Network for Run {
    type Message = Message;
    type Alteration = Vec<Edit>;
    type Injection = ArbMessage;
    const PARTIES: usize = 3;

    fn wire(&mut self) -> &mut VecDeque<(usize, usize, Message)> {
        &mut self.wire
    }

    fn deliver(&mut self, from: usize, to: usize, message: Message) {
        Run::deliver(self, from, to, message);
    }

    /// Edits the encoded bytes; the message is lost unless they still decode.
    fn alter(message: Message, edits: Vec<Edit>) -> Option<Message> {
        let mut bytes = message.to_bytes();
        apply_edits(&mut bytes, &edits);
        Message::from_bytes(&bytes).ok()
    }

    fn inject(injection: ArbMessage) -> Option<Message> {
        injection.build()
    }
}

fuzz_target!(|data: &[u8]| play_input(data, Run::start, MAX_MOVES, Then::Stop));
