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
use tokio_stream::{Stream, StreamExt};
use tonic::Status;
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
    /// [`PATIENCE`] and [`QUEUE_PATIENCE`] (shorter in tests).
    patience: (Duration, Duration),
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
            patience: (PATIENCE, QUEUE_PATIENCE),
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
        let (patience, queue_patience) = self.patience;
        let overdue = match state.held {
            Some(held) => now.duration_since(held) >= patience,
            None => now.duration_since(state.queued) >= queue_patience,
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
        mut answers: impl Stream<Item = Result<WorkDone, Status>> + Unpin,
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
                answer = answers.next() => match answer {
                    Some(Ok(done)) => {
                        let Some(slot) = held.remove(&done.id) else { continue };
                        if done.error.is_empty() {
                            self.metrics.add("unseen_psi_work_total", &[("by", "worker")], 1.0);
                            slot.answer(done.output);
                        } else {
                            tracing::warn!(worker = name, error = %done.error, "a worker could not run its work");
                            slot.answer(Vec::new());
                        }
                    }
                    None => break "the worker closed its stream",
                    Some(Err(status)) => {
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

#[cfg(test)]
mod tests {
    use super::*;

    use tokio_stream::wrappers::ReceiverStream;

    /// How a fake worker answers the units it takes.
    #[derive(Clone, Copy, PartialEq)]
    enum Behaviour {
        Honest,
        Garbage,
        /// Takes units and never answers.
        Silent,
    }

    /// A fake worker on `runtime`: serves its stream on the node's side and answers as
    /// `behaviour` says; dropping the returned sender ends its stream.
    fn connect(
        runtime: &tokio::runtime::Runtime,
        workers: &Arc<Workers>,
        behaviour: Behaviour,
    ) -> tokio::sync::oneshot::Sender<()> {
        let (answers, stream) = mpsc::channel(8);
        let (items, mut taken) = mpsc::channel::<Result<WorkItem, Status>>(8);
        let (alive, mut killed) = tokio::sync::oneshot::channel::<()>();
        let before = workers.connected();
        let node = workers.clone();
        runtime.spawn(async move {
            node.serve("fake", &|| true, ReceiverStream::new(stream), items)
                .await
        });
        runtime.spawn(async move {
            loop {
                let item = tokio::select! {
                    _ = &mut killed => break,
                    item = taken.recv() => match item {
                        Some(Ok(item)) => item,
                        _ => break,
                    },
                };
                let output = match behaviour {
                    Behaviour::Honest => Work::from_bytes(&item.work).unwrap().run().to_bytes(),
                    Behaviour::Garbage => b"junk".to_vec(),
                    Behaviour::Silent => continue,
                };
                let done = WorkDone {
                    id: item.id,
                    output,
                    error: String::new(),
                };
                if answers.send(Ok(done)).await.is_err() {
                    break;
                }
            }
            // `answers` dropped here: the node sees the stream end.
        });
        let started = Instant::now();
        while workers.connected() == before {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "never connected"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        alive
    }

    /// Units of work: the guest's batches of 64 ids.
    fn units(count: usize) -> Vec<Work> {
        let ids = (0..64 * count).map(|i| format!("firm-{i}"));
        let config = psi::GuestConfig {
            batch_size: 64,
            ..psi::GuestConfig::default()
        };
        let guest =
            psi::PsiGuest::new(psi::IdColumn::from_ids(ids).unwrap(), &["tax"], config).unwrap();
        (0..count as u32)
            .map(|b| guest.blind_work(b).unwrap())
            .collect()
    }

    fn ran(workers: &Workers, by: &str) -> f64 {
        workers.metrics.get("unseen_psi_work_total", &[("by", by)])
    }

    /// Submits `count` units, waits for each, and checks every output against the node's own.
    fn run_all(workers: &Workers, count: usize) {
        let works = units(count);
        let expected: Vec<WorkOutput> = works.iter().map(Work::run).collect();
        let tickets: Vec<Ticket<'_>> = works.into_iter().map(|w| workers.submit(w)).collect();
        let outputs: Vec<WorkOutput> = tickets.into_iter().map(Ticket::wait).collect();
        assert!(outputs == expected, "outputs differ from the node's own");
    }

    #[test]
    fn units_run_on_workers_and_fall_back_to_the_node() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let mut workers = Workers::new(Arc::new(Metrics::default()));
        workers.patience = (Duration::from_millis(400), Duration::from_millis(200));
        let workers = Arc::new(workers);

        // No worker: the node runs everything.
        run_all(&workers, 3);
        assert_eq!((ran(&workers, "node"), ran(&workers, "worker")), (3.0, 0.0));

        // An honest worker runs everything.
        let honest = connect(&runtime, &workers, Behaviour::Honest);
        run_all(&workers, 6);
        assert_eq!((ran(&workers, "node"), ran(&workers, "worker")), (3.0, 6.0));
        drop(honest);
        let started = Instant::now();
        while workers.connected() > 0 {
            assert!(started.elapsed() < Duration::from_secs(10), "never left");
            std::thread::sleep(Duration::from_millis(5));
        }

        // Answers that do not fit their work: the node runs the units again.
        let garbage = connect(&runtime, &workers, Behaviour::Garbage);
        run_all(&workers, 2);
        assert_eq!(ran(&workers, "node"), 5.0);

        // A silent worker next to it: what it holds the node runs after the patience, what
        // waits for a free worker after the queue patience; nothing is lost or misplaced.
        let silent = connect(&runtime, &workers, Behaviour::Silent);
        let started = Instant::now();
        run_all(&workers, 8);
        assert!(ran(&workers, "node") > 5.0);
        assert!(started.elapsed() >= Duration::from_millis(200));

        // Only the silent worker left: it holds two units, the third waits in the queue; tickets
        // dropped unwaited leave it.
        drop(garbage);
        let until = |what: &str, done: &dyn Fn() -> bool| {
            let started = Instant::now();
            while !done() {
                assert!(started.elapsed() < Duration::from_secs(10), "{what}");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        until("the garbage worker never left", &|| {
            workers.connected() == 1
        });
        drop(silent);
        until("the silent worker never left", &|| workers.connected() == 0);
        let silent = connect(&runtime, &workers, Behaviour::Silent);
        let tickets: Vec<Ticket<'_>> = units(3).into_iter().map(|w| workers.submit(w)).collect();
        until("the silent worker took nothing", &|| {
            workers.queue().waiting.len() == 1
        });
        drop(tickets);
        assert!(workers.queue().waiting.is_empty());
        drop(silent);
        until("the silent worker never left", &|| workers.connected() == 0);

        // A worker that leaves gives back the units it holds; with none left, the node runs
        // them.
        let silent = connect(&runtime, &workers, Behaviour::Silent);
        let works = units(2);
        let expected: Vec<WorkOutput> = works.iter().map(Work::run).collect();
        let tickets: Vec<Ticket<'_>> = works.into_iter().map(|w| workers.submit(w)).collect();
        until("the silent worker took nothing", &|| {
            workers.queue().waiting.is_empty()
        });
        drop(silent);
        until("the silent worker never left", &|| workers.connected() == 0);
        assert_eq!(workers.queue().waiting.len(), 2, "units given back");
        let before = ran(&workers, "node");
        let outputs: Vec<WorkOutput> = tickets.into_iter().map(Ticket::wait).collect();
        assert!(outputs == expected, "outputs differ from the node's own");
        assert_eq!(ran(&workers, "node"), before + 2.0);
        assert!(workers.queue().waiting.is_empty());
    }
}
