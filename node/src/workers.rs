//! This party's workers (`unseen worker`): processes, on this machine or others, that run the
//! group operations of PSI for the node, one batch of a part at a time.
//!
//! A job thread hands each batch's [`Work`] to [`Workers::submit`] and later waits for its
//! [`Ticket`]. With no worker connected the node runs the work itself, on its own cores, as it
//! always did. Otherwise the work waits in one queue that every connected worker's stream
//! takes from (at most [`PER_WORKER`] units each at a time, so a worker never idles between
//! two); Kubernetes, not the node, decides how many workers there are and where.
//!
//! The node runs a unit itself when no worker is connected, when no worker took it within
//! [`QUEUE_PATIENCE`], or when the worker that took it has not answered within [`PATIENCE`]; a
//! worker that disconnects gives its unanswered units back to the queue, and an answer that
//! does not fit its work ([`Work::accept`]: kind, count, one element recomputed) is replaced by
//! the node's own. So a worker can die, hang or be replaced at any point of a job without
//! changing its result. A worker holds only what its current units carry: the party's key for
//! one part and one batch of ids or points. Each stream is checked against the revocation
//! lists before every unit it is given.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use psi::{Work, WorkOutput};
use tokio::sync::{mpsc, watch, Notify};
use tonic::{Status, Streaming};
use zeroize::Zeroizing;

use crate::metrics::Metrics;
use crate::proto::{WorkDone, WorkItem};

/// Units of work a worker holds at once: one it computes, one waiting behind it.
pub(crate) const PER_WORKER: usize = 2;

/// How long a worker may hold a unit before the node runs it itself (a batch of 2^16 takes
/// under a second on one core; 2^20, the largest a peer may ask for, under a minute on the
/// slowest CPU this runs on).
const PATIENCE: Duration = Duration::from_secs(120);

/// How long a unit may wait for a free worker before the node runs it itself.
const QUEUE_PATIENCE: Duration = Duration::from_secs(2);

/// The largest message of the workers' stream, either way; larger units the node runs itself.
pub(crate) const MAX_MESSAGE_BYTES: usize = 32 << 20;

/// The queue of work and the workers connected to it.
pub(crate) struct Workers {
    queue: Mutex<Queue>,
    /// Woken when work arrives or comes back.
    arrived: Notify,
    /// Set when the node shuts down: every stream ends.
    closing: watch::Sender<bool>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Arc<Slot>>,
    connected: usize,
    next_id: u64,
}

/// One unit of work on its way to a worker and back.
pub(crate) struct Slot {
    id: u64,
    bytes: Zeroizing<Vec<u8>>,
    state: Mutex<SlotState>,
    answered: Condvar,
}

struct SlotState {
    answer: Option<Vec<u8>>,
    /// When it was (last) queued.
    queued: Instant,
    /// When a worker took it, while one holds it.
    held: Option<Instant>,
}

impl Slot {
    fn state(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn answer(&self, bytes: Vec<u8>) {
        self.state().answer = Some(bytes);
        self.answered.notify_all();
    }

    /// Whether a job thread still waits for it (the queue or a worker holds the other
    /// reference).
    fn wanted(self: &Arc<Self>) -> bool {
        Arc::strong_count(self) > 1
    }
}

/// A unit of work submitted: [`Ticket::wait`] gives its output. Dropped unwaited (its job
/// failed), it leaves the queue.
pub(crate) struct Ticket<'a> {
    work: Option<Work>,
    /// In the workers' queue; `None` when the node runs it.
    slot: Option<Arc<Slot>>,
    workers: &'a Workers,
}

impl Workers {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Workers {
        Workers {
            queue: Mutex::new(Queue::default()),
            arrived: Notify::new(),
            closing: watch::Sender::new(false),
            metrics,
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Workers connected now.
    pub(crate) fn connected(&self) -> usize {
        self.queue().connected
    }

    /// Ends every worker's stream (the node shuts down); their units go back to the node.
    pub(crate) fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Queues `work` for the workers, or keeps it for the node when none is connected or it
    /// is too large for one message.
    pub(crate) fn submit(&self, work: Work) -> Ticket<'_> {
        let fits =
            work.wire_len() < MAX_MESSAGE_BYTES - 64 && work.output_len() < MAX_MESSAGE_BYTES - 64;
        if !fits || self.connected() == 0 {
            return Ticket {
                work: Some(work),
                slot: None,
                workers: self,
            };
        }
        let bytes = work.to_bytes();
        let mut queue = self.queue();
        let slot = Arc::new(Slot {
            id: queue.next_id,
            bytes,
            state: Mutex::new(SlotState {
                answer: None,
                queued: Instant::now(),
                held: None,
            }),
            answered: Condvar::new(),
        });
        queue.next_id += 1;
        queue.waiting.push_back(slot.clone());
        drop(queue);
        self.arrived.notify_waiters();
        Ticket {
            work: Some(work),
            slot: Some(slot),
            workers: self,
        }
    }

    /// Whether the node takes `slot` back to run it itself (see the module doc); if so, it
    /// leaves the queue.
    fn take_back(&self, slot: &Slot, state: &SlotState) -> bool {
        let now = Instant::now();
        let overdue = match state.held {
            Some(held) => now.duration_since(held) >= PATIENCE,
            None => now.duration_since(state.queued) >= QUEUE_PATIENCE,
        };
        let mut queue = self.queue();
        if queue.connected > 0 && !overdue {
            return false;
        }
        queue.waiting.retain(|queued| queued.id != slot.id);
        true
    }

    /// The next unit of work some job thread still waits for.
    async fn next(&self) -> Arc<Slot> {
        loop {
            let notified = self.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut queue = self.queue();
                while let Some(slot) = queue.waiting.pop_front() {
                    if slot.wanted() {
                        return slot;
                    }
                }
            }
            notified.await;
        }
    }

    /// Serves one worker's stream until it closes, the node shuts down, or `trusted` (the
    /// worker's certificate, checked before every unit) fails; then gives back what it held.
    /// Returns why the stream ended.
    pub(crate) async fn serve(
        &self,
        name: &str,
        trusted: &(dyn Fn() -> bool + Send + Sync),
        mut answers: Streaming<WorkDone>,
        items: mpsc::Sender<Result<WorkItem, Status>>,
    ) -> &'static str {
        let mut closing = self.closing.subscribe();
        if *closing.borrow_and_update() {
            return "the node is shutting down";
        }
        self.queue().connected += 1;
        let mut held: HashMap<u64, Arc<Slot>> = HashMap::new();
        let ended = loop {
            tokio::select! {
                answer = answers.message() => match answer {
                    Ok(Some(done)) => {
                        let Some(slot) = held.remove(&done.id) else { continue };
                        if done.error.is_empty() {
                            self.metrics.add("unseen_psi_work_total", &[("by", "worker")], 1.0);
                            slot.answer(done.output);
                        } else {
                            tracing::warn!(worker = name, error = %done.error, "a worker could not run its work");
                            slot.answer(Vec::new());
                        }
                    }
                    Ok(None) => break "the worker closed its stream",
                    Err(status) => {
                        tracing::warn!(worker = name, %status, "a worker's stream broke");
                        break "the stream broke";
                    }
                },
                _ = closing.changed() => break "the node is shutting down",
                slot = self.next(), if held.len() < PER_WORKER => {
                    if !trusted() {
                        tracing::warn!(worker = name, "a worker's certificate is no longer trusted: its stream ends");
                        held.insert(slot.id, slot);
                        let status = Status::permission_denied("the worker's certificate is revoked");
                        let _ = items.send(Err(status)).await;
                        break "its certificate was revoked";
                    }
                    slot.state().held = Some(Instant::now());
                    let item = WorkItem { id: slot.id, work: slot.bytes.to_vec() };
                    held.insert(slot.id, slot);
                    if items.send(Ok(item)).await.is_err() {
                        break "the stream broke";
                    }
                }
            }
        };
        // Back to the queue, first marked as queued (slot before queue, as `take_back` locks).
        let back: Vec<Arc<Slot>> = held.into_values().filter(Slot::wanted).collect();
        for slot in &back {
            let mut state = slot.state();
            state.held = None;
            state.queued = Instant::now();
        }
        let mut queue = self.queue();
        queue.connected -= 1;
        for slot in back {
            queue.waiting.push_front(slot);
        }
        drop(queue);
        self.arrived.notify_waiters();
        ended
    }

    /// A worker's answer to `work`, waited for until the node takes the work back.
    fn answer_of(&self, work: &Work, slot: &Slot) -> Option<WorkOutput> {
        let mut state = slot.state();
        loop {
            if let Some(bytes) = state.answer.take() {
                let output = work.accept(&bytes);
                if output.is_none() && !bytes.is_empty() {
                    tracing::warn!("a worker's answer does not fit its work; the node runs it");
                }
                return output;
            }
            if self.take_back(slot, &state) {
                return None;
            }
            state = slot
                .answered
                .wait_timeout(state, Duration::from_millis(200))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Ticket<'_> {
    /// The work's output: a worker's, if one answered in time with an output that fits the
    /// work, the node's own otherwise.
    pub(crate) fn wait(mut self) -> WorkOutput {
        let work = self
            .work
            .take()
            .expect("a ticket holds its work until waited for");
        if let Some(slot) = self.slot.take() {
            let answer = self.workers.answer_of(&work, &slot);
            // Not wanted any more: a worker that dies holding it does not give it back.
            drop(slot);
            if let Some(output) = answer {
                return output;
            }
        }
        let metrics = &self.workers.metrics;
        metrics.add("unseen_psi_work_total", &[("by", "node")], 1.0);
        work.run()
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.workers
                .queue()
                .waiting
                .retain(|queued| queued.id != slot.id);
        }
    }
}
