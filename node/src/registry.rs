//! The jobs this node runs now: their live records, event feeds, cancellation flags and
//! traffic counts. Persistence goes through the [`Store`] the caller passes.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use crate::error::NodeError;
use crate::store::{EventRecord, JobRecord, Store};

/// (peer, direction, kind) → (messages, bytes).
pub(crate) type Traffic = BTreeMap<(String, &'static str, String), (u64, u64)>;

/// A job's live state on this node.
pub struct JobHandle {
    id: String,
    record: Mutex<JobRecord>,
    events: broadcast::Sender<(usize, EventRecord)>,
    cancelled: AtomicBool,
    /// Why it was cancelled (what its peers are told).
    cancel_reason: Mutex<String>,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    /// Messages and bytes by peer, direction and kind, for the audit log.
    traffic: Mutex<Traffic>,
    /// A host's next attempt, handed over by the guest's resuming proposal.
    next_attempt: Mutex<Option<crate::proto::JobProposal>>,
    resumed: Condvar,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl JobHandle {
    /// The job id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The job's record as of now.
    pub fn record(&self) -> JobRecord {
        lock(&self.record).clone()
    }

    /// Epochs the job asked for (0 until a host has seen the training proposal).
    pub fn max_epochs(&self) -> u32 {
        lock(&self.record).max_epochs
    }

    /// Keeps a binning job's statistics (stored with the job's next event).
    pub(crate) fn set_report(&self, report: String) {
        lock(&self.record).report = report;
    }

    /// Keeps the bins a binning job fitted (stored with the job's next event).
    pub(crate) fn set_kept_bins(&self, kept: String) {
        lock(&self.record).kept_bins = kept;
    }

    /// The attempt the job runs (or last ran).
    pub(crate) fn attempt(&self) -> u32 {
        lock(&self.record).attempt
    }

    /// Starts attempt `attempt` (stored with the job's next event).
    pub(crate) fn set_attempt(&self, attempt: u32) {
        lock(&self.record).attempt = attempt;
    }

    /// Host: hands the guest's proposal of a new attempt to the job's thread.
    pub(crate) fn offer_attempt(&self, proposal: crate::proto::JobProposal) {
        *lock(&self.next_attempt) = Some(proposal);
        self.resumed.notify_all();
    }

    /// Host: the guest's proposal of an attempt after `after`, once one comes within `wait`
    /// (`None` when none did, or the job was cancelled; an older offer is dropped).
    pub(crate) fn wait_attempt(
        &self,
        wait: Duration,
        after: u32,
    ) -> Option<crate::proto::JobProposal> {
        let deadline = Instant::now() + wait;
        let mut next = lock(&self.next_attempt);
        loop {
            if let Some(proposal) = next.take() {
                if proposal.attempt > after {
                    return Some(proposal);
                }
            }
            let now = Instant::now();
            if now >= deadline || self.is_cancelled() {
                return None;
            }
            // Woken by an offer; a cancel is seen within the poll interval.
            let poll = (deadline - now).min(Duration::from_millis(200));
            next = self
                .resumed
                .wait_timeout(next, poll)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Records the epochs the guest's training proposal asks for.
    pub(crate) fn set_max_epochs(&self, epochs: u32) {
        lock(&self.record).max_epochs = epochs;
    }

    /// Subscribes to events, returning the events so far with the receiver of later ones
    /// (numbered from the length of the returned history).
    pub fn subscribe(&self) -> (Vec<EventRecord>, broadcast::Receiver<(usize, EventRecord)>) {
        let record = lock(&self.record);
        (record.events.clone(), self.events.subscribe())
    }

    /// Marks the job cancelled by the operator.
    pub(crate) fn cancel(&self) {
        self.cancel_because("cancelled by the operator");
    }

    /// Marks the job cancelled, for `reason`.
    pub(crate) fn cancel_because(&self, reason: &str) {
        *lock(&self.cancel_reason) = reason.to_owned();
        self.cancelled.store(true, Ordering::SeqCst);
    }

    /// Why the job was cancelled.
    pub(crate) fn cancel_reason(&self) -> String {
        lock(&self.cancel_reason).clone()
    }

    /// Whether the operator cancelled the job.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Counts payload bytes sent.
    pub(crate) fn add_sent(&self, bytes: usize) {
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts payload bytes received.
    pub(crate) fn add_received(&self, bytes: usize) {
        self.bytes_received
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// (bytes sent, bytes received) so far.
    pub(crate) fn bytes(&self) -> (u64, u64) {
        (
            self.bytes_sent.load(Ordering::Relaxed),
            self.bytes_received.load(Ordering::Relaxed),
        )
    }

    /// Counts one message of `kind` to or from `peer`.
    pub(crate) fn count(&self, peer: &str, direction: &'static str, kind: String, bytes: usize) {
        let mut traffic = lock(&self.traffic);
        let entry = traffic
            .entry((peer.to_owned(), direction, kind))
            .or_default();
        entry.0 += 1;
        entry.1 += bytes as u64;
    }

    /// The traffic counted so far, leaving none.
    pub(crate) fn take_traffic(&self) -> Traffic {
        std::mem::take(&mut *lock(&self.traffic))
    }

    /// Appends an event (filling in bytes and time), persists the record and tells watchers.
    pub(crate) fn emit(&self, store: &Store, mut event: EventRecord) {
        (event.bytes_sent, event.bytes_received) = self.bytes();
        event.unix_ms = crate::clock::now_ms();
        let (index, record) = {
            let mut record = lock(&self.record);
            if event.aligned_rows == 0 {
                event.aligned_rows = record.last().map_or(0, |e| e.aligned_rows);
            }
            record.state = event.state.clone();
            record.updated_unix_ms = event.unix_ms;
            if matches!(event.state.as_str(), "failed" | "cancelled") {
                record.error = event.message.clone();
            }
            record.events.push(event.clone());
            (record.events.len() - 1, record.head())
        };
        if let Err(e) = store.put_job_event(&record, index as u64, &event) {
            tracing::error!(job = %self.id, error = %e, "could not persist the job");
        }
        let _ = self.events.send((index, event));
    }

    /// Emits an event that only changes the state and says why.
    pub(crate) fn state_event(&self, store: &Store, state: &str, message: impl Into<String>) {
        self.emit(
            store,
            EventRecord {
                state: state.into(),
                message: message.into(),
                ..EventRecord::default()
            },
        );
    }
}

/// The live jobs, and the lock under which a new job is checked and registered.
#[derive(Default)]
pub struct JobTable {
    accepting: Mutex<()>,
    live: Mutex<HashMap<String, Arc<JobHandle>>>,
}

impl JobTable {
    /// Held while a job is checked and registered (submission or proposal), so a proposal
    /// retried on another connection cannot start the job twice.
    pub(crate) fn admission(&self) -> MutexGuard<'_, ()> {
        lock(&self.accepting)
    }

    /// Stores a new job's record and makes it live.
    pub(crate) fn open(
        &self,
        store: &Store,
        record: JobRecord,
    ) -> Result<Arc<JobHandle>, NodeError> {
        store.put_job(&record)?;
        let (events, _) = broadcast::channel(1024);
        let handle = Arc::new(JobHandle {
            id: record.job_id.clone(),
            record: Mutex::new(record),
            events,
            cancelled: AtomicBool::new(false),
            cancel_reason: Mutex::new(String::new()),
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            traffic: Mutex::default(),
            next_attempt: Mutex::default(),
            resumed: Condvar::new(),
        });
        lock(&self.live).insert(handle.id.clone(), handle.clone());
        Ok(handle)
    }

    /// A live job.
    pub fn live(&self, job_id: &str) -> Option<Arc<JobHandle>> {
        lock(&self.live).get(job_id).cloned()
    }

    /// The records of every live job.
    pub(crate) fn records(&self) -> Vec<JobRecord> {
        lock(&self.live).values().map(|j| j.record()).collect()
    }

    /// Forgets a job that ended.
    pub(crate) fn remove(&self, job_id: &str) {
        lock(&self.live).remove(job_id);
    }
}
