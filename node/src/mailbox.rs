//! Where delivered protocol messages wait for a job's (blocking) protocol thread.
//!
//! Messages from one sender in one job carry sequence numbers 0, 1, 2, …; the mailbox hands
//! them out in that order whatever order they arrived in, and drops a message whose number it
//! has already seen, so a sender may retry any delivery. A job is registered before any
//! message for it is accepted (the guest on submission, a host when it accepts the proposal),
//! and only its participants may deliver to it. After a job ends its counters stay, so a late
//! retry is acknowledged rather than failing the sender.
//!
//! What waits unread is bounded: per job, its bytes (`federation.max_buffered_bytes`), and per
//! sender, how far ahead of the next message to read a message may be ([`MAX_AHEAD`]). A
//! delivery beyond either is refused as retryable, so a sender that runs ahead waits, and a
//! peer cannot make this node hold more than that for a job, but for what a training session
//! takes in while its own sends are held back (at most `fedlearn`'s 64 early messages per
//! peer).
//!
//! A job that resumes after an interruption runs a new attempt: every message names its
//! attempt, a new attempt's inboxes start again from 0, and whatever an earlier attempt still
//! delivers is acknowledged and dropped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::wire::DeliveryKind;

/// A delivered message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// What it carries.
    pub kind: DeliveryKind,
    /// The payload.
    pub bytes: Vec<u8>,
}

/// How many messages ahead of the next one to read a sender may deliver.
pub const MAX_AHEAD: u64 = 4096;

/// Why a delivery was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum NotAdmitted {
    /// No such job here.
    UnknownJob,
    /// The sender is not part of the job.
    NotParticipant,
    /// The job's unread messages would exceed the byte bound, or this one is too far ahead:
    /// the sender should retry once the job has read more.
    Full {
        /// Bytes unread now.
        unread: usize,
        /// The bound.
        max: usize,
    },
}

/// What a peer's liveness probe of a job is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// The job's attempt is open here.
    Running,
    /// The job is between two attempts here: its attempt was interrupted, the next is not
    /// open yet.
    Resuming,
    /// The job does not run here with the asker as a participant (it ended, never ran, or
    /// the node restarted and has not taken it up yet).
    Gone,
}

/// Why a receive failed.
#[derive(Debug, PartialEq, Eq)]
pub enum ReceiveError {
    /// Nothing arrived in time.
    Timeout,
    /// The job was closed (cancelled, aborted by a peer, or finished).
    Closed(String),
}

#[derive(Default)]
struct Inbox {
    next: u64,
    pending: BTreeMap<u64, Delivery>,
}

struct JobBox {
    attempt: u32,
    participants: BTreeSet<String>,
    inboxes: HashMap<String, Inbox>,
    closed: Option<String>,
    /// The peer whose abort closed it (`closed` is then that peer's public reason).
    aborted_by: Option<String>,
    /// Whether it was closed by an interruption (the job resumes in a new attempt).
    interrupted: bool,
    /// Whether this node closed the attempt to resume the job in a new one.
    resuming: bool,
    /// Whether the job ended here.
    ended: bool,
    /// Bytes of the messages waiting to be read.
    unread: usize,
}

/// The job's box if `attempt` is open in it; why not otherwise.
fn open_attempt<'a>(
    jobs: &'a mut HashMap<String, JobBox>,
    job: &str,
    attempt: u32,
) -> Result<&'a mut JobBox, ReceiveError> {
    let Some(job_box) = jobs.get_mut(job) else {
        return Err(ReceiveError::Closed(
            "the job is not open on this node".into(),
        ));
    };
    if job_box.attempt != attempt {
        return Err(ReceiveError::Closed(
            "the job resumed in a later attempt".into(),
        ));
    }
    if let Some(reason) = &job_box.closed {
        return Err(ReceiveError::Closed(reason.clone()));
    }
    Ok(job_box)
}

impl JobBox {
    /// The next message from `sender`, if it has arrived.
    fn take_next(&mut self, sender: &str) -> Option<Delivery> {
        let inbox = self.inboxes.entry(sender.to_owned()).or_default();
        let delivery = inbox.pending.remove(&inbox.next)?;
        inbox.next += 1;
        self.unread -= delivery.bytes.len();
        Some(delivery)
    }

    /// Closes the job (the first reason stays) and drops what is buffered.
    fn shut(&mut self, reason: String) {
        self.closed.get_or_insert(reason);
        for inbox in self.inboxes.values_mut() {
            inbox.pending.clear();
        }
        self.unread = 0;
    }
}

/// All jobs' inboxes.
pub struct Mailbox {
    jobs: Mutex<HashMap<String, JobBox>>,
    arrived: Condvar,
    /// Most bytes a job's unread messages may hold.
    max_unread: usize,
}

impl Default for Mailbox {
    /// Unread messages bounded by the default `federation.max_buffered_bytes`.
    fn default() -> Self {
        Mailbox::new(crate::config::FederationSettings::default().max_buffered_bytes)
    }
}

impl Mailbox {
    /// A mailbox whose jobs may each hold `max_unread` bytes of unread messages.
    pub fn new(max_unread: usize) -> Mailbox {
        Mailbox {
            jobs: Mutex::default(),
            arrived: Condvar::new(),
            max_unread,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, JobBox>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `sender` may deliver message `seq` of `attempt`, of `bytes` bytes, to `job`
    /// (checked on the first chunk, before the rest of the payload is read).
    pub fn admits(
        &self,
        job: &str,
        attempt: u32,
        sender: &str,
        seq: u64,
        bytes: u64,
    ) -> Result<(), NotAdmitted> {
        let jobs = self.lock();
        let job_box = jobs.get(job).ok_or(NotAdmitted::UnknownJob)?;
        if !job_box.participants.contains(sender) {
            return Err(NotAdmitted::NotParticipant);
        }
        if attempt > job_box.attempt {
            return Err(NotAdmitted::UnknownJob);
        }
        let next = job_box.inboxes.get(sender).map_or(0, |i| i.next);
        let unread = job_box.unread;
        let too_much = seq > next
            && (seq - next > MAX_AHEAD
                || (unread as u64).saturating_add(bytes) > self.max_unread as u64);
        if attempt == job_box.attempt && job_box.closed.is_none() && too_much {
            return Err(NotAdmitted::Full {
                unread,
                max: self.max_unread,
            });
        }
        Ok(())
    }

    /// Opens a job's inboxes for messages of `attempt` from `participants`; an earlier
    /// attempt's receivers fail and its late messages are dropped. False (and nothing changes)
    /// when that attempt or a later one is open already.
    pub fn register(
        &self,
        job: &str,
        attempt: u32,
        participants: impl IntoIterator<Item = String>,
    ) -> bool {
        let mut jobs = self.lock();
        if jobs.get(job).is_some_and(|b| b.attempt >= attempt) {
            return false;
        }
        jobs.insert(
            job.to_owned(),
            JobBox {
                attempt,
                participants: participants.into_iter().collect(),
                inboxes: HashMap::new(),
                closed: None,
                aborted_by: None,
                interrupted: false,
                resuming: false,
                ended: false,
                unread: 0,
            },
        );
        drop(jobs);
        self.arrived.notify_all();
        true
    }

    /// Accepts message `seq` of `attempt` from `sender`; `Ok(true)` when it was a duplicate
    /// or belongs to an earlier attempt. An "abort" or "interrupt" message closes the job with
    /// the sender's reason, whatever its sequence number.
    pub fn deliver(
        &self,
        job: &str,
        attempt: u32,
        sender: &str,
        seq: u64,
        delivery: Delivery,
    ) -> Result<bool, NotAdmitted> {
        let mut jobs = self.lock();
        let job_box = jobs.get_mut(job).ok_or(NotAdmitted::UnknownJob)?;
        if !job_box.participants.contains(sender) {
            return Err(NotAdmitted::NotParticipant);
        }
        if attempt < job_box.attempt {
            return Ok(true);
        }
        if attempt > job_box.attempt {
            return Err(NotAdmitted::UnknownJob);
        }
        if matches!(delivery.kind, DeliveryKind::Abort | DeliveryKind::Interrupt) {
            // Out of sequence: an abort stops the job whatever came before it, and repeating
            // it changes nothing. An abort still stops an attempt that was only interrupted (or
            // closed here while it waits to resume): the job then ends instead of resuming.
            let stops_interrupted = delivery.kind == DeliveryKind::Abort
                && (job_box.interrupted || job_box.aborted_by.is_none());
            let repeated = job_box.closed.is_some() && !stops_interrupted;
            if !repeated {
                job_box.closed = None;
                let reason: String = String::from_utf8_lossy(&delivery.bytes)
                    .chars()
                    .take(2000)
                    .collect();
                job_box.aborted_by = Some(sender.to_owned());
                job_box.interrupted = delivery.kind == DeliveryKind::Interrupt;
                // An abort ends a job that was waiting to resume.
                job_box.resuming &= job_box.interrupted;
                let what = if job_box.interrupted {
                    "interrupted"
                } else {
                    "stopped"
                };
                job_box.shut(format!("{sender} {what} the job: {reason}"));
            }
            drop(jobs);
            self.arrived.notify_all();
            return Ok(repeated);
        }
        let inbox = job_box.inboxes.entry(sender.to_owned()).or_default();
        if seq < inbox.next || inbox.pending.contains_key(&seq) {
            return Ok(true);
        }
        if job_box.closed.is_none() {
            let unread = job_box.unread;
            // The next message to read is always taken: the job then reads, and frees room.
            if seq != inbox.next
                && (seq - inbox.next > MAX_AHEAD || unread + delivery.bytes.len() > self.max_unread)
            {
                return Err(NotAdmitted::Full {
                    unread,
                    max: self.max_unread,
                });
            }
            job_box.unread += delivery.bytes.len();
            inbox.pending.insert(seq, delivery);
        }
        drop(jobs);
        self.arrived.notify_all();
        Ok(false)
    }

    /// Waits up to `timeout` for the next message of `attempt` from `sender`.
    pub fn receive(
        &self,
        job: &str,
        attempt: u32,
        sender: &str,
        timeout: Duration,
    ) -> Result<Delivery, ReceiveError> {
        let deadline = Instant::now() + timeout;
        let mut jobs = self.lock();
        loop {
            let job_box = open_attempt(&mut jobs, job, attempt)?;
            if let Some(delivery) = job_box.take_next(sender) {
                return Ok(delivery);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ReceiveError::Timeout);
            }
            jobs = self
                .arrived
                .wait_timeout(jobs, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The next message of `attempt` from any sender whose next message is of `kind`, if
    /// one is waiting (without waiting).
    pub fn take_any(
        &self,
        job: &str,
        attempt: u32,
        kind: DeliveryKind,
    ) -> Result<Option<(String, Delivery)>, ReceiveError> {
        let mut jobs = self.lock();
        let job_box = open_attempt(&mut jobs, job, attempt)?;
        let sender = job_box.inboxes.iter().find_map(|(sender, inbox)| {
            let next = inbox.pending.get(&inbox.next)?;
            (next.kind == kind).then(|| sender.clone())
        });
        Ok(sender.and_then(|sender| job_box.take_next(&sender).map(|d| (sender, d))))
    }

    /// The answer to `sender`'s liveness probe of `job`: a stranger to the job is told
    /// [`Liveness::Gone`], whatever runs here.
    pub fn liveness(&self, job: &str, sender: &str) -> Liveness {
        let jobs = self.lock();
        let Some(job_box) = jobs.get(job) else {
            return Liveness::Gone;
        };
        if !job_box.participants.contains(sender) || job_box.ended {
            Liveness::Gone
        } else if job_box.closed.is_none() {
            Liveness::Running
        } else if job_box.resuming || job_box.interrupted {
            Liveness::Resuming
        } else {
            Liveness::Gone
        }
    }

    /// The reason a peer gave when its abort closed the job, if one did.
    pub fn abort_reason(&self, job: &str) -> Option<String> {
        self.lock()
            .get(job)
            .filter(|job_box| job_box.aborted_by.is_some())
            .and_then(|job_box| job_box.closed.clone())
    }

    /// Whether a peer's interruption closed the job (it resumes in a new attempt).
    pub fn interrupted(&self, job: &str) -> bool {
        self.lock()
            .get(job)
            .is_some_and(|job_box| job_box.interrupted)
    }

    /// The peer whose abort closed the job, if one did.
    pub fn aborted_by(&self, job: &str) -> Option<String> {
        self.lock()
            .get(job)
            .and_then(|job_box| job_box.aborted_by.clone())
    }

    /// Closes attempt `attempt` of a job to resume it in a new one, if it is the job's
    /// attempt here (receivers fail, buffered messages are dropped, probes are told
    /// [`Liveness::Resuming`]): then `Some` of the peer whose abort or interruption had closed
    /// it already, if one had; `None` when another attempt is open.
    pub fn close_attempt(&self, job: &str, attempt: u32, reason: &str) -> Option<Option<String>> {
        let closed = match self.lock().get_mut(job) {
            Some(job_box) if job_box.attempt == attempt => {
                job_box.resuming = true;
                job_box.shut(reason.to_owned());
                Some(job_box.aborted_by.clone())
            }
            _ => None,
        };
        self.arrived.notify_all();
        closed
    }

    /// Ends a job: receivers fail with `reason`, buffered messages are dropped, later
    /// retries of already-seen messages are still acknowledged.
    pub fn close(&self, job: &str, reason: &str) {
        if let Some(job_box) = self.lock().get_mut(job) {
            job_box.ended = true;
            job_box.shut(reason.to_owned());
        }
        self.arrived.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(text: &str) -> Delivery {
        Delivery {
            kind: DeliveryKind::Fedlearn,
            bytes: text.as_bytes().to_vec(),
        }
    }

    #[test]
    fn messages_come_out_in_sequence_once_whatever_the_arrival_order() {
        let mailbox = Mailbox::default();
        mailbox.register("j", 0, ["bank".to_string()]);
        assert_eq!(mailbox.deliver("j", 0, "bank", 1, msg("second")), Ok(false));
        assert_eq!(mailbox.deliver("j", 0, "bank", 0, msg("first")), Ok(false));
        assert_eq!(mailbox.deliver("j", 0, "bank", 1, msg("second")), Ok(true));
        let t = Duration::from_millis(10);
        assert_eq!(mailbox.receive("j", 0, "bank", t).unwrap(), msg("first"));
        assert_eq!(mailbox.deliver("j", 0, "bank", 0, msg("first")), Ok(true));
        assert_eq!(mailbox.receive("j", 0, "bank", t).unwrap(), msg("second"));
        assert_eq!(
            mailbox.receive("j", 0, "bank", t),
            Err(ReceiveError::Timeout)
        );
    }

    #[test]
    fn strangers_unknown_jobs_and_aborts_are_handled() {
        let mailbox = Mailbox::default();
        assert_eq!(
            mailbox.deliver("j", 0, "bank", 0, msg("x")),
            Err(NotAdmitted::UnknownJob)
        );
        mailbox.register("j", 0, ["bank".to_string()]);
        assert_eq!(
            mailbox.deliver("j", 0, "eve", 0, msg("x")),
            Err(NotAdmitted::NotParticipant)
        );
        let abort = Delivery {
            kind: DeliveryKind::Abort,
            bytes: b"disk full".to_vec(),
        };
        mailbox.deliver("j", 0, "bank", 0, msg("hello")).unwrap();
        let t = Duration::from_millis(10);
        assert_eq!(mailbox.receive("j", 0, "bank", t).unwrap(), msg("hello"));
        // An abort is out of sequence: a fresh sender's "seq 0" abort still stops the job.
        assert_eq!(mailbox.deliver("j", 0, "bank", 0, abort.clone()), Ok(false));
        match mailbox.receive("j", 0, "bank", t) {
            Err(ReceiveError::Closed(reason)) => {
                assert!(reason.contains("bank stopped the job: disk full"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            mailbox.deliver("j", 0, "bank", 7, abort),
            Ok(true),
            "repeated abort"
        );
        assert_eq!(
            mailbox.abort_reason("j").as_deref(),
            Some("bank stopped the job: disk full")
        );
        assert_eq!(mailbox.aborted_by("j").as_deref(), Some("bank"));
        // A job this node closed itself has no peer's reason.
        mailbox.register("k", 0, ["bank".to_string()]);
        assert_eq!(mailbox.liveness("k", "bank"), Liveness::Running);
        assert_eq!(mailbox.liveness("k", "eve"), Liveness::Gone, "a stranger");
        assert_eq!(mailbox.liveness("j", "bank"), Liveness::Gone, "aborted");
        assert_eq!(mailbox.liveness("x", "bank"), Liveness::Gone, "unknown");
        mailbox.close("k", "the job failed");
        assert_eq!(mailbox.liveness("k", "bank"), Liveness::Gone, "ended");
        assert_eq!(mailbox.abort_reason("k"), None);
    }

    #[test]
    fn a_job_waiting_to_resume_says_so_until_an_abort_ends_it() {
        let mailbox = Mailbox::default();
        mailbox.register("j", 0, ["bank".to_string()]);
        assert_eq!(mailbox.close_attempt("j", 0, "lost tax"), Some(None));
        assert_eq!(mailbox.liveness("j", "bank"), Liveness::Resuming);
        let abort = Delivery {
            kind: DeliveryKind::Abort,
            bytes: b"tax was not back".to_vec(),
        };
        assert_eq!(mailbox.deliver("j", 0, "bank", 3, abort), Ok(false));
        assert_eq!(mailbox.liveness("j", "bank"), Liveness::Gone);
    }

    #[test]
    fn only_training_messages_are_taken_from_any_sender() {
        let mailbox = Mailbox::default();
        mailbox.register("j", 0, ["tax".to_string(), "utilities".to_string()]);
        let seed = Delivery {
            kind: DeliveryKind::ScoringSeed,
            bytes: b"seed".to_vec(),
        };
        mailbox.deliver("j", 0, "tax", 0, seed.clone()).unwrap();
        mailbox.deliver("j", 0, "utilities", 0, msg("u0")).unwrap();
        let take = || mailbox.take_any("j", 0, DeliveryKind::Fedlearn).unwrap();
        assert_eq!(take(), Some(("utilities".to_string(), msg("u0"))));
        assert_eq!(take(), None, "tax's seed waits for its own receive");
        let t = Duration::from_millis(10);
        assert_eq!(mailbox.receive("j", 0, "tax", t).unwrap(), seed);
    }

    #[test]
    fn a_new_attempt_starts_afresh_and_drops_the_old_ones_messages() {
        let mailbox = Mailbox::default();
        let t = Duration::from_millis(10);
        assert!(mailbox.register("j", 0, ["bank".to_string()]));
        mailbox.deliver("j", 0, "bank", 0, msg("old")).unwrap();
        let interrupt = Delivery {
            kind: DeliveryKind::Interrupt,
            bytes: b"lost contact with tax".to_vec(),
        };
        assert_eq!(mailbox.liveness("j", "bank"), Liveness::Running);
        assert_eq!(mailbox.deliver("j", 0, "bank", 5, interrupt), Ok(false));
        assert!(mailbox.interrupted("j"));
        // Between two attempts, a probe hears that the job goes on.
        assert_eq!(mailbox.liveness("j", "bank"), Liveness::Resuming);
        assert!(matches!(
            mailbox.receive("j", 0, "bank", t),
            Err(ReceiveError::Closed(r)) if r.contains("bank interrupted the job")
        ));
        assert_eq!(
            mailbox.deliver("j", 1, "bank", 0, msg("too early")),
            Err(NotAdmitted::UnknownJob)
        );
        assert!(mailbox.register("j", 1, ["bank".to_string()]));
        assert!(!mailbox.register("j", 1, ["bank".to_string()]), "once");
        assert!(!mailbox.interrupted("j"));
        assert_eq!(mailbox.liveness("j", "bank"), Liveness::Running);
        assert_eq!(mailbox.deliver("j", 0, "bank", 1, msg("late")), Ok(true));
        assert_eq!(mailbox.deliver("j", 1, "bank", 0, msg("new")), Ok(false));
        assert!(matches!(
            mailbox.receive("j", 0, "bank", t),
            Err(ReceiveError::Closed(_))
        ));
        assert_eq!(mailbox.receive("j", 1, "bank", t).unwrap(), msg("new"));
        assert_eq!(
            mailbox.receive("j", 1, "bank", t),
            Err(ReceiveError::Timeout)
        );
        assert_eq!(
            mailbox.close_attempt("j", 0, "old"),
            None,
            "not its attempt"
        );
        assert_eq!(mailbox.close_attempt("j", 1, "lost tax"), Some(None));
        assert_eq!(mailbox.liveness("j", "bank"), Liveness::Resuming);
        // Closed here while it waits to resume, the job still hears the guest give up.
        mailbox.close("j", "waiting to resume");
        assert_eq!(mailbox.liveness("j", "bank"), Liveness::Gone);
        let abort = Delivery {
            kind: DeliveryKind::Abort,
            bytes: b"tax was not back".to_vec(),
        };
        assert_eq!(mailbox.deliver("j", 1, "bank", 9, abort.clone()), Ok(false));
        assert!(!mailbox.interrupted("j"));
        assert_eq!(
            mailbox.abort_reason("j").as_deref(),
            Some("bank stopped the job: tax was not back")
        );
        assert_eq!(mailbox.deliver("j", 1, "bank", 9, abort), Ok(true));
    }

    #[test]
    fn unread_messages_are_bounded_but_the_next_one_is_always_taken() {
        let mailbox = Mailbox::new(10);
        let t = Duration::from_millis(10);
        mailbox.register("j", 0, ["bank".to_string(), "tax".to_string()]);
        assert_eq!(mailbox.deliver("j", 0, "bank", 1, msg("123456")), Ok(false));
        assert_eq!(
            mailbox.deliver("j", 0, "tax", 1, msg("abcdef")),
            Err(NotAdmitted::Full { unread: 6, max: 10 }),
            "over the job's bound, from any sender"
        );
        // The message the job reads next is taken whatever the bound: no deadlock.
        assert_eq!(mailbox.deliver("j", 0, "tax", 0, msg("next")), Ok(false));
        assert_eq!(mailbox.deliver("j", 0, "bank", 0, msg("first")), Ok(false));
        assert_eq!(mailbox.receive("j", 0, "bank", t).unwrap(), msg("first"));
        assert_eq!(mailbox.receive("j", 0, "bank", t).unwrap(), msg("123456"));
        assert_eq!(mailbox.receive("j", 0, "tax", t).unwrap(), msg("next"));
        // Room again, but not for a message far ahead of what the job reads.
        assert_eq!(mailbox.deliver("j", 0, "tax", 1, msg("abcdef")), Ok(false));
        assert!(matches!(
            mailbox.deliver("j", 0, "tax", 3 + MAX_AHEAD, msg("x")),
            Err(NotAdmitted::Full { .. })
        ));
    }

    #[test]
    fn a_waiting_receiver_wakes_on_delivery_and_on_close() {
        let mailbox = std::sync::Arc::new(Mailbox::default());
        mailbox.register("j", 0, ["bank".to_string()]);
        let m = mailbox.clone();
        let waiter = std::thread::spawn(move || m.receive("j", 0, "bank", Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(20));
        mailbox.deliver("j", 0, "bank", 0, msg("hi")).unwrap();
        assert_eq!(waiter.join().unwrap().unwrap(), msg("hi"));
        let m = mailbox.clone();
        let waiter = std::thread::spawn(move || m.receive("j", 0, "bank", Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(20));
        mailbox.close("j", "cancelled by operator");
        assert_eq!(
            waiter.join().unwrap(),
            Err(ReceiveError::Closed("cancelled by operator".into()))
        );
        assert_eq!(
            mailbox.deliver("j", 0, "bank", 0, msg("hi")),
            Ok(true),
            "late retry acknowledged"
        );
    }
}
