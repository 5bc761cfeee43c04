//! Guest and hosts in one process, one thread each, over an in-process network. Every message
//! is encoded to bytes and decoded on arrival, as over a network, and can be recorded for
//! audits. A test hook may alter, drop or replay messages in flight, and a bounded network
//! holds messages back as a node with little room for unread messages does; a run in which a
//! lost message, or a cycle of held-back ones, leaves every party waiting fails at once with
//! [`FedError::Transport`].

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::error::FedError;
use crate::guest::{run_guest, GuestJob};
use crate::host::{receive_proposal, run_host, HostJob};
use crate::message::{Message, Transport};
use crate::protocol::{Event, GuestOutcome, HostOutcome};

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

/// How long a simulated party waits for a message before failing the job (a backstop: a run
/// in which every party waits for a message that nobody will send fails at once).
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(600);

/// Alters a message in flight: (sender, receiver, message) → the messages delivered in its
/// place, in order: none drops it, two copies replay it. Tests use it to play a party that
/// deviates from the protocol, or a network that loses or repeats messages.
pub type Alter = dyn Fn(&str, &str, Message) -> Vec<Message> + Send + Sync;

/// The simulated network: one queue per (sender, receiver), shared by every party.
#[derive(Default)]
struct Network {
    wires: Mutex<Wires>,
    changed: Condvar,
}

#[derive(Default)]
struct Wires {
    /// Bytes sent and not yet received, by (sender, receiver).
    queues: HashMap<(String, String), VecDeque<Vec<u8>>>,
    /// Every party of the job.
    parties: BTreeSet<String>,
    /// The parties still running (a party stops when its transport is dropped).
    running: BTreeSet<String>,
    /// Each party blocked in `receive`, and the peer it waits for.
    waiting: HashMap<String, String>,
    /// Each party blocked in `wait` with nothing to take, and the parties that hold its
    /// messages back.
    held: HashMap<String, BTreeSet<String>>,
    /// The most unread messages a party keeps from one sender (`None`: no bound); a sender
    /// whose messages fill that is held back.
    capacity: Option<usize>,
    /// Set once every running party waited for a message that nothing could bring: none can
    /// arrive any more (one was lost, or the parties deadlocked), so every receive fails.
    stalled: bool,
    /// Every message sent.
    log: Vec<WireRecord>,
}

impl Wires {
    fn queue(&mut self, from: &str, to: &str) -> &mut VecDeque<Vec<u8>> {
        self.queues
            .entry((from.to_owned(), to.to_owned()))
            .or_default()
    }

    fn unread(&self, from: &str, to: &str) -> usize {
        let key = (from.to_owned(), to.to_owned());
        self.queues.get(&key).map_or(0, VecDeque::len)
    }

    /// Whether `to` holds back a message from `from` now.
    fn holds_back(&self, from: &str, to: &str) -> bool {
        self.running.contains(to)
            && self
                .capacity
                .is_some_and(|capacity| self.unread(from, to) >= capacity)
    }

    /// Whether every running party waits for a peer that has sent it nothing, or for room at
    /// parties that hold its messages back while nothing has come to it.
    fn stalls(&self) -> bool {
        self.running.iter().all(|party| {
            if let Some(from) = self.waiting.get(party) {
                return self.unread(from, party) == 0;
            }
            self.held.get(party).is_some_and(|on| {
                self.parties
                    .iter()
                    .all(|from| self.unread(from, party) == 0)
                    && on.iter().all(|to| self.holds_back(party, to))
            })
        })
    }

    /// The next message to `to` from any sender, if one waits.
    fn take_any(&mut self, to: &str) -> Option<(String, Vec<u8>)> {
        let from = self
            .parties
            .iter()
            .find(|from| self.unread(from, to) > 0)?
            .clone();
        let bytes = self.queue(&from, to).pop_front()?;
        Some((from, bytes))
    }
}

impl Network {
    fn wires(&self) -> MutexGuard<'_, Wires> {
        self.wires.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Called by a party about to block (its wait recorded in `wires`): marks the run stalled
    /// if nothing can move any more and returns at once; otherwise waits for a change until
    /// `deadline`, and `None` once it has passed.
    fn wait_for_change<'a>(
        &'a self,
        mut wires: MutexGuard<'a, Wires>,
        deadline: Instant,
    ) -> Option<MutexGuard<'a, Wires>> {
        if wires.stalls() {
            wires.stalled = true;
            self.changed.notify_all();
            return Some(wires);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let (wires, _) =
            (self.changed.wait_timeout(wires, left)).unwrap_or_else(PoisonError::into_inner);
        Some(wires)
    }
}

/// One party's end of the [`Network`].
struct NetTransport {
    alter: Option<Arc<Alter>>,
    me: String,
    net: Arc<Network>,
    record: bool,
    /// The parties that held back this party's last offer to them.
    held_by: BTreeSet<String>,
}

fn transport_error(peer: &str, reason: impl Into<String>) -> FedError {
    FedError::Transport {
        peer: peer.to_owned(),
        reason: reason.into(),
    }
}

impl Transport for NetTransport {
    fn send(&mut self, to: &str, message: Message) -> Result<(), FedError> {
        let messages = match &self.alter {
            Some(alter) => alter(&self.me, to, message),
            None => vec![message],
        };
        for message in messages {
            let bytes = message.to_bytes();
            let mut wires = self.net.wires();
            if !wires.parties.contains(to) {
                return Err(transport_error(to, "no such party in the simulation"));
            }
            wires.log.push(WireRecord {
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
            // What is sent to a party that has stopped is lost, as over a network: the sender
            // finds out when it waits for that party.
            if wires.running.contains(to) {
                wires.queue(&self.me, to).push_back(bytes);
            }
            self.net.changed.notify_all();
        }
        Ok(())
    }

    fn receive(&mut self, from: &str) -> Result<Message, FedError> {
        let deadline = Instant::now() + RECEIVE_TIMEOUT;
        let mut wires = self.net.wires();
        if !wires.parties.contains(from) {
            return Err(transport_error(from, "no such party in the simulation"));
        }
        loop {
            wires.waiting.remove(&self.me);
            if wires.stalled {
                return Err(transport_error(
                    from,
                    "nothing can arrive: every party waits for a message nobody will send",
                ));
            }
            if let Some(bytes) = wires.queue(from, &self.me).pop_front() {
                drop(wires);
                // Room for a sender held back.
                self.net.changed.notify_all();
                return Message::from_bytes(&bytes);
            }
            if !wires.running.contains(from) {
                return Err(transport_error(from, "the party has stopped"));
            }
            wires.waiting.insert(self.me.clone(), from.to_owned());
            let Some(changed) = self.net.wait_for_change(wires, deadline) else {
                self.net.wires().waiting.remove(&self.me);
                return Err(transport_error(
                    from,
                    format!("nothing received in {RECEIVE_TIMEOUT:?}"),
                ));
            };
            wires = changed;
        }
    }

    fn offer(&mut self, to: &str, message: Message) -> Result<Option<Message>, FedError> {
        if self.net.wires().holds_back(&self.me, to) {
            self.held_by.insert(to.to_owned());
            return Ok(Some(message));
        }
        self.held_by.remove(to);
        self.send(to, message).map(|()| None)
    }

    fn wait(
        &mut self,
        arrived: &mut dyn FnMut(&str, Message) -> Result<(), FedError>,
    ) -> Result<(), FedError> {
        let deadline = Instant::now() + RECEIVE_TIMEOUT;
        let mut wires = self.net.wires();
        loop {
            wires.held.remove(&self.me);
            if let Some((from, bytes)) = wires.take_any(&self.me) {
                drop(wires);
                self.net.changed.notify_all();
                return arrived(&from, Message::from_bytes(&bytes)?);
            }
            if !self.held_by.iter().all(|to| wires.holds_back(&self.me, to)) {
                return Ok(());
            }
            if wires.stalled {
                let peers: Vec<&str> = self.held_by.iter().map(String::as_str).collect();
                return Err(transport_error(
                    &peers.join(", "),
                    "nothing can move: every party waits for a message or for room nobody will make",
                ));
            }
            wires.held.insert(self.me.clone(), self.held_by.clone());
            let Some(changed) = self.net.wait_for_change(wires, deadline) else {
                self.net.wires().held.remove(&self.me);
                return Err(transport_error(
                    self.held_by.first().map_or("", String::as_str),
                    format!("held back for {RECEIVE_TIMEOUT:?}"),
                ));
            };
            wires = changed;
        }
    }
}

impl Drop for NetTransport {
    fn drop(&mut self) {
        let mut wires = self.net.wires();
        wires.running.remove(&self.me);
        wires.waiting.remove(&self.me);
        wires.held.remove(&self.me);
        self.net.changed.notify_all();
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
) -> Result<Simulation, FedError> {
    let run = simulate_run(guest, hosts, record, events, None, None);
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
/// deviating parties and lossy networks), returning every party's result.
#[doc(hidden)]
pub fn simulate_altered(
    guest: GuestJob,
    hosts: Vec<HostJob>,
    record: bool,
    events: &mut dyn FnMut(&Event),
    alter: Option<Arc<Alter>>,
) -> AlteredRun {
    let (guest, hosts, wire) = simulate_run(guest, hosts, record, events, alter, None);
    AlteredRun { guest, hosts, wire }
}

/// [`simulate`] over a network in which every party keeps at most `capacity` unread messages
/// from each sender (at least the one it reads next), as a node whose
/// `federation.max_buffered_bytes` is smaller than one message does with `capacity` 1.
#[doc(hidden)]
pub fn simulate_bounded(guest: GuestJob, hosts: Vec<HostJob>, capacity: usize) -> AlteredRun {
    let capacity = Some(capacity.max(1));
    let (guest, hosts, wire) = simulate_run(guest, hosts, false, &mut |_| {}, None, capacity);
    AlteredRun { guest, hosts, wire }
}

/// An [`Alter`] that delivers `f`'s replacement of every message, one for one.
#[doc(hidden)]
pub fn replacing(f: impl Fn(&str, &str, Message) -> Message + Send + Sync + 'static) -> Arc<Alter> {
    Arc::new(move |from: &str, to: &str, message| vec![f(from, to, message)])
}

/// Every party's result and the wire.
type Run = (
    Result<GuestOutcome, FedError>,
    Vec<Result<HostOutcome, FedError>>,
    Vec<WireRecord>,
);

fn simulate_run(
    guest: GuestJob,
    hosts: Vec<HostJob>,
    record: bool,
    events: &mut dyn FnMut(&Event),
    alter: Option<Arc<Alter>>,
    capacity: Option<usize>,
) -> Run {
    let names: Vec<String> = std::iter::once(guest.party.clone())
        .chain(hosts.iter().map(|h| h.party.clone()))
        .collect();
    let net = Arc::new(Network::default());
    {
        let mut wires = net.wires();
        wires.parties = names.iter().cloned().collect();
        wires.running = wires.parties.clone();
        wires.capacity = capacity;
    }
    let transport = |me: &String| NetTransport {
        alter: alter.clone(),
        me: me.clone(),
        net: Arc::clone(&net),
        record,
        held_by: BTreeSet::new(),
    };
    let mut guest_transport = transport(&names[0]);
    let host_transports: Vec<NetTransport> = names[1..].iter().map(transport).collect();
    let (guest_result, host_results) = std::thread::scope(|scope| {
        let handles: Vec<_> = hosts
            .into_iter()
            .zip(host_transports)
            .map(|(job, mut transport)| {
                // The transport drops with the thread: peers waiting on the host then learn
                // that it stopped.
                scope.spawn(move || {
                    let proposal = receive_proposal(&mut transport, &job.guest)?;
                    run_host(job, proposal, &mut transport, &mut |_| {})
                })
            })
            .collect();
        let guest_result = run_guest(guest, &mut guest_transport, events);
        // Dropping the guest's transport unblocks hosts still waiting on it.
        drop(guest_transport);
        let host_results: Vec<Result<HostOutcome, FedError>> = handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(FedError::Transport {
                        peer: "host thread".into(),
                        reason: "panicked".into(),
                    })
                })
            })
            .collect();
        (guest_result, host_results)
    });
    let wire = std::mem::take(&mut net.wires().log);
    (guest_result, host_results, wire)
}
