//! Guest and hosts in one process, one thread each, over in-process channels. Every message is
//! encoded to bytes and decoded on arrival, as over a network, and can be recorded for audits.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::FedError;
use crate::guest::{run_guest, GuestJob};
use crate::host::{receive_proposal, run_host, HostJob};
use crate::message::{Message, Transport};
use crate::protocol::{Event, GuestOutcome, HostOutcome, Stopped};

/// One message as it crossed the simulated network.
#[derive(Clone, Debug)]
pub struct WireRecord {
    /// Sender.
    pub from: String,
    /// Receiver.
    pub to: String,
    /// Message kind.
    pub kind: &'static str,
    /// Encoded size.
    pub len: usize,
    /// The encoded bytes (empty unless recording was asked for).
    pub bytes: Vec<u8>,
}

/// Everything a simulated job produced.
#[derive(Debug)]
pub struct Simulation {
    /// The guest's result.
    pub guest: GuestOutcome,
    /// Each host's result, in job order.
    pub hosts: Vec<HostOutcome>,
    /// Every message sent, in send order per sender.
    pub wire: Vec<WireRecord>,
}

impl Simulation {
    /// Bytes sent per message kind.
    pub fn bytes_by_kind(&self) -> BTreeMap<&'static str, usize> {
        let mut out = BTreeMap::new();
        for record in &self.wire {
            *out.entry(record.kind).or_insert(0) += record.len;
        }
        out
    }

    /// Bytes sent by each party.
    pub fn bytes_by_sender(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for record in &self.wire {
            *out.entry(record.from.clone()).or_insert(0) += record.len;
        }
        out
    }
}

/// How long a simulated party waits for a message before failing the job.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(600);

/// Alters a message in flight: (sender, receiver, message) → the message delivered. Tests use
/// it to play a party that deviates from the protocol.
pub type Alter = dyn Fn(&str, &str, Message) -> Message + Send + Sync;

struct ChannelTransport {
    alter: Option<Arc<Alter>>,
    me: String,
    senders: HashMap<String, Sender<Vec<u8>>>,
    receivers: HashMap<String, Receiver<Vec<u8>>>,
    log: Arc<Mutex<Vec<WireRecord>>>,
    record: bool,
}

impl Transport for ChannelTransport {
    fn send(&mut self, to: &str, message: Message) -> Result<(), FedError> {
        let message = match &self.alter {
            Some(alter) => alter(&self.me, to, message),
            None => message,
        };
        let bytes = message.to_bytes();
        let sender = self.senders.get(to).ok_or_else(|| FedError::Transport {
            peer: to.to_owned(),
            reason: "no such party in the simulation".into(),
        })?;
        if let Ok(mut log) = self.log.lock() {
            log.push(WireRecord {
                from: self.me.clone(),
                to: to.to_owned(),
                kind: message.kind(),
                len: bytes.len(),
                bytes: if self.record {
                    bytes.clone()
                } else {
                    Vec::new()
                },
            });
        }
        sender.send(bytes).map_err(|_| FedError::Transport {
            peer: to.to_owned(),
            reason: "the party has stopped".into(),
        })
    }

    fn receive(&mut self, from: &str) -> Result<Message, FedError> {
        let receiver = self
            .receivers
            .get(from)
            .ok_or_else(|| FedError::Transport {
                peer: from.to_owned(),
                reason: "no such party in the simulation".into(),
            })?;
        let bytes = receiver
            .recv_timeout(RECEIVE_TIMEOUT)
            .map_err(|e| FedError::Transport {
                peer: from.to_owned(),
                reason: match e {
                    RecvTimeoutError::Timeout => format!("nothing received in {RECEIVE_TIMEOUT:?}"),
                    RecvTimeoutError::Disconnected => "the party has stopped".into(),
                },
            })?;
        Message::from_bytes(&bytes)
    }
}

/// Runs a job: the guest on this thread (its progress events go to `events`), each host on
/// its own thread, accepting the guest's proposal. With `record`, every message's bytes are
/// kept for inspection. Returns the guest's error if it failed, else the first host's.
pub fn simulate(
    guest: GuestJob,
    hosts: Vec<HostJob>,
    record: bool,
    events: &mut dyn FnMut(&Event),
) -> Result<Simulation, Stopped> {
    let run = simulate_run(guest, hosts, record, events, None);
    let guest = run.0?;
    let hosts = run.1.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok(Simulation {
        guest,
        hosts,
        wire: run.2,
    })
}

/// Every party's result of a simulated job, failed or not, and the wire.
#[doc(hidden)]
#[derive(Debug)]
pub struct AlteredRun {
    /// The guest's result.
    pub guest: Result<GuestOutcome, FedError>,
    /// Each host's result, in job order.
    pub hosts: Vec<Result<HostOutcome, FedError>>,
    /// Every message sent (after alteration), in send order per sender.
    pub wire: Vec<WireRecord>,
}

/// [`simulate`] with every message passed through `alter` before it is sent (a test hook for
/// deviating parties), returning every party's result.
#[doc(hidden)]
pub fn simulate_altered(
    guest: GuestJob,
    hosts: Vec<HostJob>,
    record: bool,
    events: &mut dyn FnMut(&Event),
    alter: Option<Arc<Alter>>,
) -> AlteredRun {
    let (guest, hosts, wire) = simulate_run(guest, hosts, record, events, alter);
    AlteredRun {
        guest: guest.map_err(|s| s.error),
        hosts: hosts.into_iter().map(|h| h.map_err(|s| s.error)).collect(),
        wire,
    }
}

/// Every party's result and the wire.
type Run = (
    Result<GuestOutcome, Stopped>,
    Vec<Result<HostOutcome, Stopped>>,
    Vec<WireRecord>,
);

fn simulate_run(
    guest: GuestJob,
    hosts: Vec<HostJob>,
    record: bool,
    events: &mut dyn FnMut(&Event),
    alter: Option<Arc<Alter>>,
) -> Run {
    let names: Vec<String> = std::iter::once(guest.party.clone())
        .chain(hosts.iter().map(|h| h.party.clone()))
        .collect();
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut transports: Vec<ChannelTransport> = names
        .iter()
        .map(|me| ChannelTransport {
            alter: alter.clone(),
            me: me.clone(),
            senders: HashMap::new(),
            receivers: HashMap::new(),
            log: Arc::clone(&log),
            record,
        })
        .collect();
    for from in 0..names.len() {
        for to in 0..names.len() {
            if from != to {
                let (sender, receiver) = channel();
                transports[from].senders.insert(names[to].clone(), sender);
                transports[to]
                    .receivers
                    .insert(names[from].clone(), receiver);
            }
        }
    }
    let mut host_transports = transports.split_off(1);
    let mut guest_transport = transports.pop().expect("the guest's transport");
    let (guest_result, host_results) = std::thread::scope(|scope| {
        let handles: Vec<_> = hosts
            .into_iter()
            .zip(host_transports.iter_mut())
            .map(|(job, transport)| {
                scope.spawn(move || {
                    let proposal = receive_proposal(transport, &job.guest)?;
                    run_host(job, proposal, transport, &mut |_| {})
                })
            })
            .collect();
        let guest_result = run_guest(guest, &mut guest_transport, events);
        // Dropping the guest's channels unblocks hosts still waiting on it.
        drop(guest_transport);
        let host_results: Vec<Result<HostOutcome, Stopped>> = handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(Stopped::from(FedError::Transport {
                        peer: "host thread".into(),
                        reason: "panicked".into(),
                    }))
                })
            })
            .collect();
        (guest_result, host_results)
    });
    let wire = log
        .lock()
        .map(|mut log| std::mem::take(&mut *log))
        .unwrap_or_default();
    (guest_result, host_results, wire)
}
