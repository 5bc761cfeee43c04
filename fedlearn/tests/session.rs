//! The parties are sans-IO state machines: one thread moves their messages, in an order of its
//! choosing, with no transport and no clock.

mod common;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::{jobs, parties};
use fedlearn::*;

#[test]
fn guest_and_hosts_run_in_one_thread_with_messages_moved_by_hand() {
    let (guest_table, host_tables) = parties("breast", 2);
    let config = TrainConfig {
        max_epochs: 3,
        seed: 8,
        ..TrainConfig::default()
    };
    let (guest_job, host_jobs) = jobs(guest_table, host_tables, &config);
    let mut guest = GuestSession::new(guest_job).unwrap();
    let mut pending_hosts: Vec<Option<HostJob>> = host_jobs.into_iter().map(Some).collect();
    let mut hosts: Vec<Option<HostSession>> = (0..pending_hosts.len()).map(|_| None).collect();
    let names = ["host0", "host1"];
    // Messages in flight: (from, to, message). Each round delivers the oldest one, so the
    // parties' sends interleave differently from a threaded run.
    let mut wire: VecDeque<(String, String, Message)> = VecDeque::new();
    let mut epochs = 0;
    loop {
        while let Some((to, message)) = guest.poll_transmit().unwrap() {
            wire.push_back(("bank".into(), to, message));
        }
        while let Some(event) = guest.poll_event() {
            if let Event::Epoch(report) = event {
                epochs = report.epoch;
            }
        }
        for (k, host) in hosts.iter_mut().enumerate() {
            if let Some(host) = host {
                while let Some((to, message)) = host.poll_transmit().unwrap() {
                    wire.push_back((names[k].into(), to, message));
                }
            }
        }
        let Some((from, to, message)) = wire.pop_front() else {
            break;
        };
        if to == "bank" {
            guest.handle(&from, message).unwrap();
            continue;
        }
        let k = names.iter().position(|n| *n == to).unwrap();
        match (&mut hosts[k], message) {
            (None, Message::Propose(proposal)) => {
                let job = pending_hosts[k].take().unwrap();
                hosts[k] = Some(HostSession::new(job, *proposal).unwrap());
            }
            (Some(host), message) => host.handle(&from, message).unwrap(),
            (None, other) => panic!("{to} got {} before the proposal", other.kind()),
        }
    }
    // Everyone finished, nobody waits, and the outcomes agree with each other.
    assert_eq!(guest.awaiting(), None);
    assert_eq!(epochs, 3);
    let outcome = guest.outcome().unwrap();
    assert!(outcome.evaluation.metrics.auc > 0.95, "{outcome:?}");
    for host in &hosts {
        let host = host.as_ref().unwrap();
        assert_eq!(host.awaiting(), None);
        assert_eq!(host.outcome().unwrap().epochs, 3);
    }
}

/// Every party keeps at most one unread message from each sender (a node whose
/// `max_buffered_bytes` is smaller than one message). With three parties or more, a sender
/// whose message one receiver holds back must still reach the others: each of them may be what
/// that receiver waits for (a cycle tax → utilities → bank → tax stalled set-up before).
#[test]
fn parties_that_hold_back_all_but_the_next_message_still_finish() {
    let config = TrainConfig {
        max_epochs: 3,
        seed: 8,
        ..TrainConfig::default()
    };
    for hosts in [1, 2, 4] {
        let (guest, host_tables) = parties("breast", hosts);
        let (guest_job, host_jobs) = jobs(guest, host_tables, &config);
        let run = fedlearn::internal::simulate_bounded(guest_job, host_jobs, 1);
        let outcome = run.guest.unwrap_or_else(|e| panic!("{hosts} hosts: {e}"));
        assert_eq!(outcome.history.len(), 3, "{hosts} hosts");
        assert!(
            outcome.evaluation.metrics.auc > 0.95,
            "{hosts} hosts: {outcome:?}"
        );
        for host in run.hosts {
            assert_eq!(host.unwrap().epochs, 3, "{hosts} hosts");
        }
    }
}

/// One step of a scripted party: send a numbered message, or wait for one.
#[derive(Clone, Copy)]
enum Step {
    Send(&'static str, u8),
    Receive(&'static str, u8),
}

/// A party that sends and waits in the order of its script; a message that arrives early
/// waits in its inbox, as in the protocol's sessions.
struct Scripted {
    script: VecDeque<Step>,
    inbox: HashMap<String, VecDeque<u8>>,
}

impl Scripted {
    fn new(script: &[Step]) -> Scripted {
        Scripted {
            script: script.iter().copied().collect(),
            inbox: HashMap::new(),
        }
    }

    /// Takes every awaited message that has arrived.
    fn advance(&mut self) -> Result<(), FedError> {
        while let Some(&Step::Receive(from, number)) = self.script.front() {
            let Some(got) = self.inbox.get_mut(from).and_then(VecDeque::pop_front) else {
                return Ok(());
            };
            if got != number {
                return Err(FedError::Protocol {
                    peer: from.into(),
                    reason: format!("{got} instead of {number}"),
                });
            }
            self.script.pop_front();
        }
        Ok(())
    }
}

fn numbered(number: u8) -> Message {
    Message::Digest { hash: [number; 32] }
}

impl Session for Scripted {
    fn handle(&mut self, from: &str, message: Message) -> Result<(), FedError> {
        let Message::Digest { hash } = message else {
            return Err(FedError::Protocol {
                peer: from.into(),
                reason: "not a numbered message".into(),
            });
        };
        self.inbox
            .entry(from.into())
            .or_default()
            .push_back(hash[0]);
        self.advance()
    }

    fn poll_transmit(&mut self) -> Result<Option<(String, Message)>, FedError> {
        self.advance()?;
        match self.script.front() {
            Some(&Step::Send(to, number)) => {
                self.script.pop_front();
                Ok(Some((to.into(), numbered(number))))
            }
            _ => Ok(None),
        }
    }

    fn poll_event(&mut self) -> Option<Event> {
        None
    }

    fn awaiting(&self) -> Option<&str> {
        match self.script.front() {
            Some(Step::Receive(from, _)) => Some(from),
            _ => None,
        }
    }
}

/// Three parties' links, each keeping one unread message per sender: a sender is held back
/// while its last message is unread.
#[derive(Default)]
struct Links {
    queues: Mutex<HashMap<(String, String), VecDeque<Message>>>,
    changed: Condvar,
}

struct End {
    me: &'static str,
    links: Arc<Links>,
    /// Since when an offer has been held back.
    held_since: Option<Instant>,
}

const PATIENCE: Duration = Duration::from_secs(5);

impl Transport for End {
    fn send(&mut self, to: &str, message: Message) -> Result<(), FedError> {
        let mut message = message;
        let deadline = Instant::now() + PATIENCE;
        while let Some(held) = self.offer(to, message)? {
            if Instant::now() > deadline {
                return Err(FedError::Transport {
                    peer: to.into(),
                    reason: "held back".into(),
                });
            }
            message = held;
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    fn receive(&mut self, from: &str) -> Result<Message, FedError> {
        let key = (from.to_owned(), self.me.to_owned());
        let mut queues = self.links.queues.lock().unwrap();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(message) = queues.get_mut(&key).and_then(VecDeque::pop_front) {
                self.links.changed.notify_all();
                return Ok(message);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(FedError::Transport {
                    peer: from.into(),
                    reason: "nothing came".into(),
                });
            }
            queues = self.links.changed.wait_timeout(queues, left).unwrap().0;
        }
    }

    fn offer(&mut self, to: &str, message: Message) -> Result<Option<Message>, FedError> {
        let mut queues = self.links.queues.lock().unwrap();
        let queue = queues
            .entry((self.me.to_owned(), to.to_owned()))
            .or_default();
        if !queue.is_empty() {
            self.held_since.get_or_insert_with(Instant::now);
            return Ok(Some(message));
        }
        self.held_since = None;
        queue.push_back(message);
        self.links.changed.notify_all();
        Ok(None)
    }

    fn wait(
        &mut self,
        arrived: &mut dyn FnMut(&str, Message) -> Result<(), FedError>,
    ) -> Result<(), FedError> {
        if self
            .held_since
            .is_some_and(|since| since.elapsed() > PATIENCE)
        {
            return Err(FedError::Transport {
                peer: "a receiver".into(),
                reason: "held back".into(),
            });
        }
        let mut queues = self.links.queues.lock().unwrap();
        let waiting = queues
            .iter_mut()
            .find(|((_, to), queue)| to == self.me && !queue.is_empty())
            .map(|((from, _), queue)| (from.clone(), queue.pop_front().unwrap()));
        match waiting {
            Some((from, message)) => {
                drop(queues);
                self.links.changed.notify_all();
                arrived(&from, message)
            }
            None => {
                let _ = self
                    .links
                    .changed
                    .wait_timeout(queues, Duration::from_millis(5));
                Ok(())
            }
        }
    }
}

/// tax sends utilities two messages, then bank one; utilities reads bank's message before
/// tax's; bank answers utilities only after tax's message. Utilities holds tax's second
/// message back until bank answers, so tax's message to bank must not wait behind it.
#[test]
fn a_receiver_that_holds_messages_back_delays_no_other_receiver() {
    use Step::{Receive, Send};
    let scripts: [(&str, Vec<Step>); 3] = [
        (
            "tax",
            vec![Send("utilities", 1), Send("utilities", 2), Send("bank", 3)],
        ),
        (
            "utilities",
            vec![Receive("bank", 4), Receive("tax", 1), Receive("tax", 2)],
        ),
        ("bank", vec![Receive("tax", 3), Send("utilities", 4)]),
    ];
    let links = Arc::new(Links::default());
    let results: Vec<Result<(), FedError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = scripts
            .iter()
            .map(|(me, script)| {
                let mut end = End {
                    me,
                    links: Arc::clone(&links),
                    held_since: None,
                };
                scope.spawn(move || drive(&mut Scripted::new(script), &mut end, &mut |_| {}))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((party, _), result) in scripts.iter().zip(results) {
        assert!(result.is_ok(), "{party}: {result:?}");
    }
}
