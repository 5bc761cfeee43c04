//! The sans-IO surface of a party: messages in ([`Session::handle`]), messages and events out
//! ([`Session::poll_transmit`], [`Session::poll_event`]), and which peer it waits for
//! ([`Session::awaiting`]). [`drive`] runs a session over a blocking [`Transport`]; the
//! simulator and the node use it.
//!
//! Call order: transmit what [`Session::poll_transmit`] returns, in its order per receiver;
//! deliver messages with [`Session::handle`] as they arrive; while [`Session::awaiting`] names
//! a peer, the session needs that peer's next message. Messages from one peer must arrive in
//! the order that peer sent them; messages from different peers may interleave in any order
//! (a session keeps what arrives early).

use std::collections::{BTreeMap, VecDeque};

use crate::error::FedError;
use crate::message::{Message, Transport};
use crate::protocol::Event;

/// One party of a training job as a state machine.
///
/// Call order: transmit what [`poll_transmit`](Self::poll_transmit) returns, in its order per
/// receiver, and take the events [`poll_event`](Self::poll_event) returns before the messages
/// polled after them leave; deliver messages with [`handle`](Self::handle) as they arrive;
/// while [`awaiting`](Self::awaiting) names a peer, the session needs that peer's next
/// message. Messages from one peer must arrive in the order that peer sent them; messages
/// from different peers may interleave in any order (a session keeps what arrives early, and
/// `handle` may be given any peer's message, not only the awaited one's).
pub trait Session {
    /// Takes a message from `from`. An abort ends the session with [`FedError::Aborted`].
    fn handle(&mut self, from: &str, message: Message) -> Result<(), FedError>;
    /// The next message to send, and to whom.
    fn poll_transmit(&mut self) -> Result<Option<(String, Message)>, FedError>;
    /// The next progress event.
    fn poll_event(&mut self) -> Option<Event>;
    /// The peer whose next message the session needs, or `None` once it has finished.
    fn awaiting(&self) -> Option<&str>;
}

/// Runs `session` to its end over `transport`, passing its events to `events`.
///
/// What the session sends waits in one queue per receiver, and a receiver that holds messages
/// back delays only its own queue: with three parties or more, the message one of them needs
/// may otherwise sit behind one to a receiver that waits for that party in turn. While every
/// queue is held back, what arrives is handed to the session, whose answers may be what the
/// receivers wait for.
pub fn drive(
    session: &mut dyn Session,
    transport: &mut dyn Transport,
    events: &mut dyn FnMut(&Event),
) -> Result<(), FedError> {
    let mut outbox: Vec<(String, VecDeque<Message>)> = Vec::new();
    loop {
        // Events before every send: a party's checkpoint of an epoch is kept before anything
        // of the next epoch leaves it (see `crate::checkpoint`).
        loop {
            while let Some(event) = session.poll_event() {
                events(&event);
            }
            let Some((to, message)) = session.poll_transmit()? else {
                break;
            };
            match outbox.iter_mut().find(|(peer, _)| *peer == to) {
                Some((_, queue)) => queue.push_back(message),
                None => outbox.push((to, VecDeque::from([message]))),
            }
        }
        if !outbox.is_empty() {
            let mut sent = false;
            for (to, queue) in &mut outbox {
                while let Some(message) = queue.pop_front() {
                    if let Some(held) = transport.offer(to, message)? {
                        queue.push_front(held);
                        break;
                    }
                    sent = true;
                }
            }
            outbox.retain(|(_, queue)| !queue.is_empty());
            if !sent && !outbox.is_empty() {
                transport.wait(&mut |from, arrived| session.handle(from, arrived))?;
            }
            continue;
        }
        let Some(peer) = session.awaiting().map(str::to_owned) else {
            return Ok(());
        };
        let message = transport.receive(&peer)?;
        session.handle(&peer, message)?;
    }
}

/// Most messages of one peer a session keeps before it uses them: a peer runs at most a
/// round ahead, and no round takes more than a few messages of one peer. (While its sends are
/// held back, [`drive`] hands a session whatever has arrived.)
pub(crate) const MAX_EARLY: usize = 64;

/// What a session sends and what it has received but not used yet.
#[derive(Default)]
pub(crate) struct Mailbox {
    outbox: VecDeque<(String, Message)>,
    inbox: BTreeMap<String, VecDeque<Message>>,
    events: VecDeque<Event>,
}

impl Mailbox {
    /// Keeps a message from `from`; an abort is an error at once, and so is one message
    /// more than [`MAX_EARLY`] waiting from one peer.
    pub(crate) fn deliver(&mut self, from: &str, message: Message) -> Result<(), FedError> {
        if let Message::Abort { reason } = message {
            return Err(FedError::Aborted {
                peer: from.to_owned(),
                reason,
            });
        }
        let waiting = self.inbox.entry(from.to_owned()).or_default();
        if waiting.len() >= MAX_EARLY {
            return Err(FedError::protocol(
                from,
                format!("sent more than {MAX_EARLY} messages ahead of the job"),
            ));
        }
        waiting.push_back(message);
        Ok(())
    }

    /// Queues a message.
    pub(crate) fn send(&mut self, to: &str, message: Message) {
        self.outbox.push_back((to.to_owned(), message));
    }

    /// Queues an event.
    pub(crate) fn emit(&mut self, event: Event) {
        self.events.push_back(event);
    }

    pub(crate) fn next_transmit(&mut self) -> Option<(String, Message)> {
        self.outbox.pop_front()
    }

    pub(crate) fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether a message from `peer` is waiting.
    pub(crate) fn has(&self, peer: &str) -> bool {
        self.inbox.get(peer).is_some_and(|q| !q.is_empty())
    }

    /// The next message from `peer`, if one is waiting.
    pub(crate) fn take(&mut self, peer: &str) -> Option<Message> {
        self.inbox.get_mut(peer).and_then(VecDeque::pop_front)
    }
}
