//! A job's connection to its peers: numbered sends through the federation service, ordered
//! receives from the mailbox, traffic counted per peer, direction and kind.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fedlearn::{Message, Transport};
use serde_json::json;

use crate::error::{NodeError, PeerFault};
use crate::mailbox::{Delivery, Liveness, ReceiveError};
use crate::peers::WhenHeld;
use crate::registry::JobHandle;
use crate::state::NodeState;
use crate::wire::psi::{decode_psi, encode_psi, kind as psi_kind, Body};
use crate::wire::DeliveryKind;

/// A job's connection to its peers.
pub(crate) struct Link<'a> {
    pub(crate) node: &'a NodeState,
    job: &'a JobHandle,
    /// The job's attempt this link carries.
    attempt: u32,
    next_seq: HashMap<String, u64>,
    /// Training messages a peer held back, by peer, to be offered again.
    held: HashMap<String, Held>,
    /// How long [`Transport::wait`] sleeps next.
    pause: Duration,
}

/// A training message a peer held back: its place in the sequence and its encoding.
struct Held {
    seq: u64,
    bytes: Vec<u8>,
    /// When it was first offered.
    since: Instant,
}

/// The first pause of a sender whose every message is held back.
const MIN_PAUSE: Duration = Duration::from_millis(10);

impl<'a> Link<'a> {
    /// A link for the job's current attempt.
    pub(crate) fn new(node: &'a NodeState, job: &'a JobHandle) -> Link<'a> {
        Link::for_attempt(node, job, job.attempt())
    }

    /// A link for attempt `attempt` of the job.
    pub(crate) fn for_attempt(node: &'a NodeState, job: &'a JobHandle, attempt: u32) -> Link<'a> {
        Link {
            node,
            job,
            attempt,
            next_seq: HashMap::new(),
            held: HashMap::new(),
            pause: MIN_PAUSE,
        }
    }

    /// Sends one numbered message (an abort is unnumbered for the receiver). A cancelled
    /// job sends nothing but aborts. A peer that holds the message back is waited for.
    pub(crate) fn send_raw(
        &mut self,
        to: &str,
        kind: DeliveryKind,
        bytes: Vec<u8>,
        retry: bool,
    ) -> Result<(), NodeError> {
        let seq = self.next(to, kind)?;
        self.deliver(to, seq, kind, &bytes, retry, WhenHeld::Wait)
    }

    /// The sequence number of the next message to `to` (a cancelled job sends only aborts).
    fn next(&mut self, to: &str, kind: DeliveryKind) -> Result<u64, NodeError> {
        if kind != DeliveryKind::Abort && self.job.is_cancelled() {
            return Err(NodeError::Cancelled("cancelled by the operator".into()));
        }
        let seq = self.next_seq.entry(to.to_owned()).or_insert(0);
        *seq += 1;
        Ok(*seq - 1)
    }

    fn deliver(
        &self,
        to: &str,
        seq: u64,
        kind: DeliveryKind,
        bytes: &[u8],
        retry: bool,
        held: WhenHeld,
    ) -> Result<(), NodeError> {
        self.node.runtime.block_on(self.node.peers.deliver(
            to,
            self.job.id(),
            self.attempt,
            seq,
            kind.as_str(),
            bytes,
            retry,
            held,
        ))?;
        self.job.add_sent(bytes.len());
        Ok(())
    }

    /// Passes every training message waiting in the mailbox, from any peer, to `arrived`;
    /// whether there was one. What a peer sent after training (a scoring seed) stays for
    /// its own receive.
    fn take_waiting(
        &mut self,
        arrived: &mut dyn FnMut(&str, Message) -> Result<(), fedlearn::FedError>,
    ) -> Result<bool, fedlearn::FedError> {
        let mut took = false;
        loop {
            let waiting =
                (self.node.mailbox).take_any(self.job.id(), self.attempt, DeliveryKind::Fedlearn);
            let (from, delivery) = match waiting {
                Ok(Some(next)) => next,
                Ok(None) => return Ok(took),
                Err(ReceiveError::Closed(reason)) => return Err(self.closed(reason)),
                Err(ReceiveError::Timeout) => return Ok(took),
            };
            took = true;
            self.job.add_received(delivery.bytes.len());
            let message = self.training_message(&from, delivery)?;
            arrived(&from, message)?;
        }
    }

    /// A training message from a delivery of `from`.
    fn training_message(
        &self,
        from: &str,
        delivery: Delivery,
    ) -> Result<Message, fedlearn::FedError> {
        if delivery.kind != DeliveryKind::Fedlearn {
            return Err(fedlearn::FedError::Protocol {
                peer: from.to_owned(),
                reason: format!("a {:?} message during training", delivery.kind.as_str()),
            });
        }
        let message = Message::from_bytes(&delivery.bytes)?;
        self.count(
            from,
            "received",
            format!("fedlearn.{}", message.kind()),
            delivery.bytes.len(),
        );
        Ok(message)
    }

    /// The error of a job another party's abort, or this node's cancel, closed: the peer a
    /// receive waited for is not at fault, and the protocol's own abort must not name it.
    ///
    /// An attempt that was interrupted, or that a later attempt replaced, ends as a lost
    /// transport instead: the protocol then aborts nobody, and the job resumes.
    fn closed(&self, reason: String) -> fedlearn::FedError {
        let peer = (self.node.mailbox.aborted_by(self.job.id()))
            .unwrap_or_else(|| self.node.config().party.clone());
        if self.job.attempt() != self.attempt || self.node.mailbox.interrupted(self.job.id()) {
            fedlearn::FedError::Transport { peer, reason }
        } else {
            fedlearn::FedError::Aborted { peer, reason }
        }
    }

    /// The next delivery from `from`. While it waits, it asks `from` every probe interval
    /// whether it still runs the job: a peer that interrupted this attempt, that no longer
    /// runs the job (twice in a row: it may have restarted and not taken the job up yet), or
    /// that answers nothing for `peer_dead_secs`, ends the attempt within seconds, named; a
    /// live peer may take up to the receive timeout.
    pub(crate) fn receive_raw(&mut self, from: &str) -> Result<Delivery, NodeError> {
        let settings = &self.node.config().federation;
        let (timeout, interval) = (settings.receive_timeout(), settings.probe_interval());
        let started = Instant::now();
        let mut alive_at = started;
        // Consecutive answers that the peer no longer runs the job: a node that restarted
        // says so until it has taken the job up again.
        let mut gone = 0;
        loop {
            let left = timeout.saturating_sub(started.elapsed());
            if let Some(taken) = self.take(from, interval.min(left)) {
                return taken;
            }
            if started.elapsed() >= timeout {
                return Err(NodeError::Peer {
                    peer: from.to_owned(),
                    fault: PeerFault::Silent {
                        seconds: timeout.as_secs(),
                    },
                });
            }
            let probe = self.node.peers.alive(from, self.job.id(), interval);
            let fault = match self.node.runtime.block_on(probe) {
                Ok(Liveness::Running) => {
                    alive_at = Instant::now();
                    gone = 0;
                    continue;
                }
                Ok(Liveness::Resuming) => PeerFault::Resuming,
                Ok(Liveness::Gone) if gone == 0 => {
                    gone = 1;
                    continue;
                }
                Ok(Liveness::Gone) => PeerFault::Gone,
                Err(_) if alive_at.elapsed() < settings.peer_dead() => continue,
                Err(_) => PeerFault::Unreachable {
                    seconds: alive_at.elapsed().as_secs(),
                },
            };
            // Its last message may have arrived since the wait ended.
            return self
                .take(from, Duration::ZERO)
                .unwrap_or(Err(NodeError::Peer {
                    peer: from.to_owned(),
                    fault,
                }));
        }
    }

    /// The next delivery from `from` if one comes within `wait`; `None` when none did.
    fn take(&mut self, from: &str, wait: Duration) -> Option<Result<Delivery, NodeError>> {
        match self
            .node
            .mailbox
            .receive(self.job.id(), self.attempt, from, wait)
        {
            Ok(delivery) => {
                self.job.add_received(delivery.bytes.len());
                Some(Ok(delivery))
            }
            Err(ReceiveError::Timeout) => None,
            Err(ReceiveError::Closed(reason)) if self.job.is_cancelled() => {
                Some(Err(NodeError::Cancelled(reason)))
            }
            Err(ReceiveError::Closed(reason)) => Some(Err(NodeError::Stopped(reason))),
        }
    }

    /// Counts one message for the audit log.
    pub(crate) fn count(&self, peer: &str, direction: &'static str, kind: String, bytes: usize) {
        self.job.count(peer, direction, kind, bytes);
    }

    pub(crate) fn send_psi(&mut self, to: &str, body: Body) -> Result<(), NodeError> {
        let kind = format!("psi.{}", psi_kind(&body));
        let bytes = encode_psi(body);
        let length = bytes.len();
        self.send_raw(to, DeliveryKind::Psi, bytes, true)?;
        self.count(to, "sent", kind, length);
        Ok(())
    }

    pub(crate) fn receive_psi(&mut self, from: &str) -> Result<Body, NodeError> {
        let delivery = self.receive_raw(from)?;
        if delivery.kind != DeliveryKind::Psi {
            return Err(NodeError::Peer {
                peer: from.to_owned(),
                fault: PeerFault::WrongKind {
                    got: delivery.kind.to_string(),
                    phase: "PSI",
                },
            });
        }
        let body = decode_psi(from, &delivery.bytes)?;
        self.count(
            from,
            "received",
            format!("psi.{}", psi_kind(&body)),
            delivery.bytes.len(),
        );
        Ok(body)
    }
}

impl Transport for Link<'_> {
    /// Sends one message outside the training loop (binning, a refusal, an abort): a peer
    /// that holds it back is waited for, as [`Link::send_raw`] does.
    ///
    /// A training party's abort is best effort and waits for no room: it takes the place of a
    /// message `to` held back, if one was, and the node tells every peer again, out of
    /// sequence, once the job has ended (`abort_peers`).
    fn send(&mut self, to: &str, message: Message) -> Result<(), fedlearn::FedError> {
        let bytes = message.to_bytes();
        let length = bytes.len();
        let sent = if matches!(message, Message::Abort { .. }) {
            match self.held.remove(to) {
                Some(held) => Ok(held.seq),
                None => self.next(to, DeliveryKind::Fedlearn),
            }
            .and_then(|seq| {
                let kind = DeliveryKind::Fedlearn;
                self.deliver(to, seq, kind, &bytes, true, WhenHeld::Return)
            })
        } else {
            self.send_raw(to, DeliveryKind::Fedlearn, bytes, true)
        };
        sent.map_err(|e| lost(to, e))?;
        self.count(to, "sent", format!("fedlearn.{}", message.kind()), length);
        Ok(())
    }

    /// Delivers the message unless `to` holds it back (it has as much of this job's messages
    /// unread as it takes); then keeps its encoding and sequence number for the next offer,
    /// which [`Transport::offer`] promises is this message again.
    fn offer(&mut self, to: &str, message: Message) -> Result<Option<Message>, fedlearn::FedError> {
        let held = match self.held.remove(to) {
            Some(held) => held,
            None => Held {
                seq: (self.next(to, DeliveryKind::Fedlearn)).map_err(|e| lost(to, e))?,
                bytes: message.to_bytes(),
                since: Instant::now(),
            },
        };
        match self.deliver(
            to,
            held.seq,
            DeliveryKind::Fedlearn,
            &held.bytes,
            true,
            WhenHeld::Return,
        ) {
            Ok(()) => {
                self.pause = MIN_PAUSE;
                self.count(
                    to,
                    "sent",
                    format!("fedlearn.{}", message.kind()),
                    held.bytes.len(),
                );
                Ok(None)
            }
            Err(NodeError::PeerCall {
                code: tonic::Code::ResourceExhausted,
                ..
            }) => {
                let timeout = self.node.config().federation.receive_timeout();
                if held.since.elapsed() >= timeout {
                    return Err(fedlearn::FedError::Transport {
                        peer: to.to_owned(),
                        reason: format!(
                            "held a message of this party back for {} s",
                            timeout.as_secs()
                        ),
                    });
                }
                self.node
                    .metrics
                    .add("unseen_deliveries_held_back_total", &[("peer", to)], 1.0);
                self.held.insert(to.to_owned(), held);
                Ok(Some(message))
            }
            Err(e) => Err(lost(to, e)),
        }
    }

    /// Takes what has arrived from any peer; when nothing has, sleeps a pause that doubles,
    /// up to a second, while nothing moves.
    fn wait(
        &mut self,
        arrived: &mut dyn FnMut(&str, Message) -> Result<(), fedlearn::FedError>,
    ) -> Result<(), fedlearn::FedError> {
        if self.take_waiting(arrived)? {
            self.pause = MIN_PAUSE;
        } else {
            std::thread::sleep(self.pause);
            self.pause = (self.pause * 2).min(Duration::from_secs(1));
        }
        Ok(())
    }

    fn receive(&mut self, from: &str) -> Result<Message, fedlearn::FedError> {
        let delivery = self.receive_raw(from).map_err(|e| match e {
            NodeError::Stopped(reason) | NodeError::Cancelled(reason) => self.closed(reason),
            other => lost(from, other),
        })?;
        self.training_message(from, delivery)
    }
}

/// `error`, met sending to or receiving from `peer`, as the training protocol's loss of it.
fn lost(peer: &str, error: NodeError) -> fedlearn::FedError {
    fedlearn::FedError::Transport {
        peer: peer.to_owned(),
        reason: error.to_string(),
    }
}

/// Tells every peer of a job that it stopped (one attempt each; the peers' receive timeouts
/// cover a peer this does not reach).
pub(crate) fn abort_peers(node: &NodeState, job: &JobHandle, peers: &[String], reason: &str) {
    let mut link = Link::new(node, job);
    crate::audit::record(
        &node.store,
        "job.abort_sent",
        job.id(),
        &peers.join(","),
        json!({"reason": reason}),
    );
    for peer in peers {
        if let Err(e) = link.send_raw(peer, DeliveryKind::Abort, reason.as_bytes().to_vec(), false)
        {
            tracing::warn!(job = %job.id(), %peer, error = %e, "could not tell a peer the job stopped");
        }
    }
}
