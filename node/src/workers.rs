//! This party's workers (`unseen worker`): processes, on this machine or others, that run the
//! group operations of PSI for the node, one batch of a part at a time.
//!
//! A job thread hands each batch's [`Work`] to [`Workers::submit`] and later waits for its
//! [`Ticket`]. With no worker connected the node runs the work itself, on its own cores, as it
//! always did. Otherwise the work waits in one queue that every connected worker's stream
//! takes from (at most [`PER_WORKER`] each at a time, so a worker never idles between two
//! batches); Kubernetes, not the node, decides how many workers there are and where.
//!
//! A worker that disconnects gives its unanswered work back to the queue; work that no
//! connected worker can take, or that a worker has held for [`PATIENCE`], the node runs
//! itself, and an answer that does not fit its work ([`Work::accept`]) is replaced by the
//! node's own. So a worker can die or be replaced at any point of a job without changing its
//! result. Workers hold only what their current work carries (the party's key for one part and
//! one batch of ids or points); the node keeps every part's state, its peers, policy and
//! audit.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use psi::{Work, WorkOutput};
use tokio::sync::{mpsc, Notify};
use tonic::{Status, Streaming};
use zeroize::Zeroizing;

use crate::metrics::Metrics;
use crate::proto::{WorkDone, WorkItem};

/// Units of work a worker holds at once: one it computes, one waiting behind it.
pub(crate) const PER_WORKER: usize = 2;

/// How long a worker may hold a unit of work before the node runs it itself (a batch takes
/// well under a second on one core).
pub(crate) const PATIENCE: Duration = Duration::from_secs(120);

/// The queue of work and the workers connected to it.
pub(crate) struct Workers {
    queue: Mutex<Queue>,
    /// Woken when work arrives or comes back.
    arrived: Notify,
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
    answer: Mutex<Option<Vec<u8>>>,
    answered: Condvar,
}

impl Slot {
    fn answer(&self, bytes: Vec<u8>) {
        *self.answer.lock().unwrap_or_else(|e| e.into_inner()) = Some(bytes);
        self.answered.notify_all();
    }

    /// Whether a job thread still waits for it (the queue or a worker holds the other
    /// reference).
    fn wanted(self: &Arc<Self>) -> bool {
        Arc::strong_count(self) > 1
    }
}

/// A unit of work submitted: [`Ticket::wait`] gives its output.
pub(crate) struct Ticket<'a> {
    work: Work,
    /// In the workers' queue; `None` when no worker was connected.
    slot: Option<Arc<Slot>>,
    workers: &'a Workers,
}

impl Workers {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Workers {
        Workers {
            queue: Mutex::new(Queue::default()),
            arrived: Notify::new(),
            metrics,
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Workers connected now.
    pub(crate) fn connected(&self) -> usize {
        self.queue().connected
    }

    /// Queues `work` for the workers, or keeps it for the node when none is connected.
    pub(crate) fn submit(&self, work: Work) -> Ticket<'_> {
        let mut queue = self.queue();
        if queue.connected == 0 {
            return Ticket {
                work,
                slot: None,
                workers: self,
            };
        }
        let slot = Arc::new(Slot {
            id: queue.next_id,
            bytes: work.to_bytes(),
            answer: Mutex::new(None),
            answered: Condvar::new(),
        });
        queue.next_id += 1;
        queue.waiting.push_back(slot.clone());
        drop(queue);
        self.arrived.notify_waiters();
        Ticket {
            work,
            slot: Some(slot),
            workers: self,
        }
    }

    /// Takes a slot back for the node to run: when no worker is connected (it is removed
    /// from the queue if it waits there) or when the workers have had it too long.
    fn take_back(&self, slot: &Slot, since: Instant) -> bool {
        let mut queue = self.queue();
        if queue.connected > 0 && since.elapsed() < PATIENCE {
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

    /// Serves one worker's stream until it closes, then gives back what it held.
    pub(crate) async fn serve(
        &self,
        name: &str,
        mut answers: Streaming<WorkDone>,
        items: mpsc::Sender<Result<WorkItem, Status>>,
    ) {
        self.queue().connected += 1;
        let mut held: HashMap<u64, Arc<Slot>> = HashMap::new();
        loop {
            tokio::select! {
                answer = answers.message() => match answer {
                    Ok(Some(done)) => {
                        let Some(slot) = held.remove(&done.id) else { continue };
                        if done.error.is_empty() {
                            self.metrics.add("unseen_psi_work_total", &[("by", "worker")], 1.0);
                            slot.answer(done.output);
                        } else {
                            tracing::warn!(worker = name, error = %done.error, "a worker could not run its work; the node runs it");
                            slot.answer(Vec::new());
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::warn!(worker = name, %status, "a worker's stream broke");
                        break;
                    }
                },
                slot = self.next(), if held.len() < PER_WORKER => {
                    let item = WorkItem { id: slot.id, work: slot.bytes.to_vec() };
                    held.insert(slot.id, slot);
                    if items.send(Ok(item)).await.is_err() {
                        break;
                    }
                }
            }
        }
        let mut queue = self.queue();
        queue.connected -= 1;
        for slot in held.into_values().filter(Slot::wanted) {
            queue.waiting.push_front(slot);
        }
        drop(queue);
        self.arrived.notify_waiters();
    }
}

impl Ticket<'_> {
    /// The work's output: a worker's, if one answered in time with an output that fits the
    /// work, the node's own otherwise.
    pub(crate) fn wait(self) -> WorkOutput {
        let Ticket {
            work,
            slot,
            workers,
        } = self;
        if let Some(slot) = slot {
            if let Some(output) = workers.answer_of(&work, &slot) {
                return output;
            }
        }
        (workers.metrics).add("unseen_psi_work_total", &[("by", "node")], 1.0);
        work.run()
    }
}

impl Workers {
    /// A worker's answer to `work`, waited for until the node takes the work back.
    fn answer_of(&self, work: &Work, slot: &Slot) -> Option<WorkOutput> {
        let since = Instant::now();
        let mut answer = slot.answer.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(bytes) = answer.take() {
                let output = work.accept(&bytes);
                if output.is_none() && !bytes.is_empty() {
                    tracing::warn!("a worker's answer does not fit its work; the node runs it");
                }
                return output;
            }
            if self.take_back(slot, since) {
                return None;
            }
            answer = slot
                .answered
                .wait_timeout(answer, Duration::from_millis(200))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}
