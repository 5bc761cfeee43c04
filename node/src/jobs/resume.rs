//! Resuming an interrupted training job.
//!
//! A training job runs in attempts. When a party is lost (it crashed, restarted, was cut
//! off, or stopped answering), every party ends the attempt and keeps what it resumes from:
//! its part of the job (the guest's spec, a host's proposal), its aligned rows with a digest
//! of its aligned table, and its checkpoints of the last two epochs (see
//! [`fedlearn::Checkpoint`]), all sealed in its store. The guest then proposes the next
//! attempt to every host until all have accepted or `federation.resume_secs` have passed;
//! each host answers whether it kept its alignment and its last checkpoint's epoch. If every
//! party kept its alignment, the attempt skips PSI and training resumes after the last epoch
//! every party holds; otherwise PSI runs again and training starts over. A restarted node
//! takes up its unfinished training jobs where it left them: the guest proposes the next
//! attempt, a host waits for it. Messages name their attempt, so nothing of an earlier
//! attempt reaches a later one.
//!
//! A job that cannot resume (a party lost its store, its data changed, a host refuses) fails
//! on every node with the reason; one whose parties are not all back in time fails naming
//! the missing one.

use std::sync::Arc;
use std::time::Instant;

use fedlearn::{Checkpoint, Table};
use prost::Message as _;
use serde_json::json;

use crate::error::{NodeError, PeerFault, Refusal};
use crate::jobs::admission;
use crate::jobs::link::Link;
use crate::jobs::spill::IdRows;
use crate::jobs::staged::Staged;
use crate::mailbox::Liveness;
use crate::peers::WhenHeld;
use crate::proto::{JobProposal, ProposalReply};
use crate::registry::JobHandle;
use crate::spec::JobSpec;
use crate::state::NodeState;
use crate::store::JobRecord;
use crate::wire::DeliveryKind;

/// Most attempts of one job: a failure that comes back at every attempt ends the job.
pub(crate) const MAX_ATTEMPTS: u32 = 8;

/// The store part holding the guest's spec or a host's proposal.
pub(crate) const JOB_PART: &str = "job";
/// The store part holding a host's digest of the job's training settings.
pub(crate) const SETTINGS_PART: &str = "settings";
const ALIGNED_PART: &str = "aligned";

/// What an attempt that aligns again redoes: the aligned rows and the checkpoints (what PSI
/// finished stays: it resumes part by part).
fn realigned(part: &str) -> bool {
    part == ALIGNED_PART || part.starts_with("epoch ")
}

/// Why an attempt ended in a way a new attempt mends.
pub(super) struct Interruption {
    /// What the job's records and the peers read (names a party, never data).
    pub(super) cause: String,
    /// The party this node lost, when it found the interruption itself (it is not told).
    pub(super) lost: Option<String>,
}

/// Where an attempt's aligned rows come from.
pub(super) enum Alignment {
    /// PSI ran in this attempt: the positions of the aligned rows in the dataset, in PSI
    /// order.
    Fresh(Vec<u32>),
    /// Kept by an earlier attempt (already in the job's order), with the checkpoints to
    /// resume from.
    Kept(Table, Vec<Checkpoint>),
}

impl NodeState {
    /// A training job's aligned rows of `dataset` in the job's own order, kept to resume
    /// from. The order sorts the rows by SHA-256 of the training seed and the id: the same at
    /// every party (they hold the same ids), unrelated to any party's file or to PSI's
    /// shuffles, and the same in every job with that seed, so a job is reproducible from its
    /// seed. The sort keeps the digests' first 16 bytes (20 bytes per row, not 36); two ids
    /// that share them (about n²·2^-129: never) would be ordered by each party's own rows, so
    /// the job stops instead.
    pub(super) fn training_rows(
        &self,
        job: &JobHandle,
        dataset: &Staged,
        positions: &[u32],
        seed: u64,
    ) -> Result<Table, NodeError> {
        use sha2::{Digest, Sha256};
        let mut wanted = positions.to_vec();
        wanted.sort_unstable();
        let mut keyed: Vec<([u8; 16], u32)> = Vec::with_capacity(positions.len());
        let mut next = 0;
        dataset.each_id(&mut |row, id| {
            if wanted.get(next) == Some(&row) {
                next += 1;
                let digest = Sha256::new()
                    .chain_update(b"unseen training row order v1")
                    .chain_update(seed.to_le_bytes())
                    .chain_update(id.as_bytes())
                    .finalize();
                keyed.push((digest[..16].try_into().expect("16 bytes"), row));
            }
            Ok(())
        })?;
        drop(wanted);
        keyed.sort_unstable();
        if keyed.len() != positions.len() || keyed.windows(2).any(|w| w[0].0 == w[1].0) {
            // Told to peers as bad data; the reason stays here.
            return Err(NodeError::Dataset {
                name: dataset.name().to_owned(),
                reason: "its aligned rows cannot be put in the job's order (a row twice, or \
                         two ids sharing a 128-bit order key)"
                    .into(),
            });
        }
        let ordered: Vec<u32> = keyed.into_iter().map(|(_, p)| p).collect();
        let aligned = dataset.select(&ordered)?;
        self.keep_alignment(job, &ordered, &aligned)?;
        Ok(aligned)
    }

    /// Why attempt `attempt` of `job` ended with `error` in a way a new attempt mends — a
    /// party lost, a peer's interruption, or a new attempt already proposed — or `None`.
    pub(super) fn interruption(
        &self,
        job: &JobHandle,
        attempt: u32,
        error: &NodeError,
    ) -> Option<Interruption> {
        if job.is_cancelled()
            || self.shutting_down.load(std::sync::atomic::Ordering::SeqCst)
            || self.config().federation.resume_secs == 0
        {
            return None;
        }
        let told = |cause: String| Interruption { cause, lost: None };
        if job.attempt() > attempt {
            return Some(told("the guest resumed the job".into()));
        }
        if self.mailbox.aborted_by(job.id()).is_some() {
            // A peer's interruption resumes; a peer's abort ends the job.
            return self
                .mailbox
                .interrupted(job.id())
                .then(|| self.mailbox.abort_reason(job.id()))
                .flatten()
                .map(told);
        }
        let peer = match error {
            NodeError::Peer {
                peer,
                fault: PeerFault::Silent { .. } | PeerFault::Unreachable { .. } | PeerFault::Gone,
            } => peer,
            // It knows: nobody tells it.
            NodeError::Peer {
                peer,
                fault: PeerFault::Resuming,
            } => {
                return Some(Interruption {
                    cause: format!("{peer} interrupted the job"),
                    lost: Some(peer.clone()),
                })
            }
            NodeError::PeerCall { peer, code, .. } if lost(*code) => peer,
            NodeError::Train(fedlearn::FedError::Transport { peer, .. }) => peer,
            _ => return None,
        };
        Some(Interruption {
            cause: format!("lost contact with {peer}"),
            lost: Some(peer.clone()),
        })
    }

    /// Tells `peers` but the lost one that this attempt of `job` is lost: one try each, of
    /// at most a probe interval (a peer that does not take it learns it from the next
    /// attempt's proposal or its own probes).
    pub(super) fn interrupt_peers(
        &self,
        job: &JobHandle,
        attempt: u32,
        peers: &[String],
        interruption: &Interruption,
    ) {
        let cause = interruption.cause.as_bytes();
        for peer in peers {
            if interruption.lost.as_ref() == Some(peer) {
                continue;
            }
            let delivery = self.peers.deliver(
                peer,
                job.id(),
                attempt,
                0,
                DeliveryKind::Interrupt.as_str(),
                cause,
                false,
                WhenHeld::Return,
            );
            let wait = self.config().federation.probe_interval();
            // The timer is made inside the runtime (a job thread has none of its own).
            match (self.runtime).block_on(async { tokio::time::timeout(wait, delivery).await }) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::info!(job = %job.id(), %peer, error = %e, "could not tell a peer of the interruption")
                }
                Err(_) => {
                    tracing::info!(job = %job.id(), %peer, "a peer took no interruption within {wait:?}")
                }
            }
        }
    }

    /// Guest: proposes the next attempt of `job` to every host until all have accepted, and
    /// returns their replies (in host order).
    pub(super) fn propose_attempt(
        &self,
        job: &Arc<JobHandle>,
        spec: &JobSpec,
        guest_features: u32,
        cause: &str,
    ) -> Result<Vec<ProposalReply>, NodeError> {
        let attempt = job.attempt() + 1;
        if attempt >= MAX_ATTEMPTS {
            return Err(NodeError::Stopped(format!(
                "interrupted {attempt} times, the last time because {cause}; not resumed again"
            )));
        }
        let window = self.config().federation.resume_window();
        job.set_attempt(attempt);
        let hosts: Vec<String> = spec.hosts.iter().map(|h| h.party.clone()).collect();
        self.mailbox.register(job.id(), attempt, hosts.clone());
        job.state_event(
            &self.store,
            "interrupted",
            format!(
                "{cause}; resuming once every party is back (waiting up to {} s)",
                window.as_secs()
            ),
        );
        let deadline = Instant::now() + window;
        let mut replies: Vec<Option<ProposalReply>> = vec![None; hosts.len()];
        loop {
            for (host, reply) in spec.hosts.iter().zip(replies.iter_mut()) {
                if reply.is_some() {
                    continue;
                }
                let proposal = self.job_proposal(job, spec, host, guest_features, attempt)?;
                match self
                    .runtime
                    .block_on(self.peers.propose(&host.party, proposal))
                {
                    Ok(answer) if answer.accepted => *reply = Some(answer),
                    Ok(answer) => {
                        return Err(NodeError::Peer {
                            peer: host.party.clone(),
                            fault: PeerFault::RefusedJob(answer.reason),
                        })
                    }
                    Err(e) => {
                        tracing::info!(job = %job.id(), peer = %host.party, error = %e, "not back yet")
                    }
                }
            }
            if let Some(missing) = hosts
                .iter()
                .zip(&replies)
                .find(|(_, r)| r.is_none())
                .map(|(h, _)| h.clone())
            {
                if job.is_cancelled() {
                    return Err(NodeError::Cancelled(job.cancel_reason()));
                }
                if Instant::now() >= deadline {
                    return Err(NodeError::Peer {
                        peer: missing,
                        fault: PeerFault::NotBack {
                            seconds: window.as_secs(),
                        },
                    });
                }
                std::thread::sleep(self.config().federation.probe_interval());
                continue;
            }
            crate::audit::record(
                &self.store,
                "job.resumed",
                job.id(),
                &hosts.join(","),
                json!({"attempt": attempt, "cause": cause}),
            );
            return Ok(replies.into_iter().flatten().collect());
        }
    }

    /// Guest: the start of a resumed attempt. Tells every host whether the alignment every
    /// party kept is used (else PSI runs again), and picks the checkpoint to resume from: the
    /// last epoch every party holds.
    pub(super) fn guest_resume(
        &self,
        job: &Arc<JobHandle>,
        link: &mut Link<'_>,
        dataset: &Staged,
        hosts: &[String],
        replies: &[ProposalReply],
    ) -> Result<Alignment, NodeError> {
        let own = self.kept_alignment(job, dataset)?;
        let reuse = own.is_some() && replies.iter().all(|r| r.aligned);
        for host in hosts {
            link.send_raw(host, DeliveryKind::Plan, vec![u8::from(reuse)], true)?;
        }
        let Some(aligned) = own.filter(|_| reuse) else {
            self.store.forget_resume(job.id(), realigned)?;
            let positions = self.guest_align(job, link, dataset, hosts, "training")?;
            return Ok(Alignment::Fresh(positions));
        };
        let own_epoch = self.store.checkpoint_epochs(job.id())?.last().copied();
        let epochs: Option<Vec<u64>> = std::iter::once(own_epoch)
            .chain(replies.iter().map(|r| r.checkpoint))
            .collect();
        let checkpoint = match epochs.and_then(|e| e.into_iter().min()) {
            None => None,
            Some(epoch) => {
                let bytes = self.store.checkpoint(job.id(), epoch)?.ok_or_else(|| {
                    fedlearn::FedError::Resume {
                        party: self.config().party.clone(),
                        reason: format!("it holds no checkpoint of epoch {epoch}"),
                    }
                })?;
                Some(Checkpoint::from_bytes(&bytes)?)
            }
        };
        self.resumed_event(job, &aligned, checkpoint.as_ref().map(|c| c.epoch));
        Ok(Alignment::Kept(aligned, checkpoint.into_iter().collect()))
    }

    /// Host: the start of a resumed attempt: the guest's plan, then the kept alignment and
    /// checkpoints, or PSI again.
    pub(super) fn host_resume(
        &self,
        job: &Arc<JobHandle>,
        link: &mut Link<'_>,
        dataset: &Staged,
        guest: &str,
    ) -> Result<Alignment, NodeError> {
        let plan = link.receive_raw(guest)?;
        let reuse = match (plan.kind, plan.bytes.as_slice()) {
            (DeliveryKind::Plan, [flag @ (0 | 1)]) => *flag == 1,
            (kind, _) => {
                return Err(NodeError::Peer {
                    peer: guest.to_owned(),
                    fault: PeerFault::WrongKind {
                        got: kind.to_string(),
                        phase: "the start of a resumed attempt",
                    },
                })
            }
        };
        if !reuse {
            // Every party keeps its aligned rows before any epoch ends: a guest that asks to
            // align again after one did would get a second PSI and a second training.
            if !self.store.checkpoint_epochs(job.id())?.is_empty() {
                return Err(self.not_resumable(job, "training had begun; align again it may not"));
            }
            self.store.forget_resume(job.id(), realigned)?;
            let positions = self.host_align(job, link, dataset, guest, "training")?;
            return Ok(Alignment::Fresh(positions));
        }
        let aligned = self.kept_alignment(job, dataset)?.ok_or_else(|| {
            NodeError::from(fedlearn::FedError::Resume {
                party: self.config().party.clone(),
                reason: "it kept no aligned rows".into(),
            })
        })?;
        let mut checkpoints = Vec::new();
        for epoch in self.store.checkpoint_epochs(job.id())? {
            if let Some(bytes) = self.store.checkpoint(job.id(), epoch)? {
                checkpoints.push(Checkpoint::from_bytes(&bytes)?);
            }
        }
        self.resumed_event(job, &aligned, checkpoints.last().map(|c| c.epoch));
        Ok(Alignment::Kept(aligned, checkpoints))
    }

    /// Host: this node's refusal to go on with a resumed job.
    pub(super) fn not_resumable(&self, job: &JobHandle, reason: &str) -> NodeError {
        Refusal::NotResumable {
            party: self.config().party.clone(),
            job: job.id().to_owned(),
            reason: reason.into(),
        }
        .into()
    }

    /// Host: the settings of the job's first training offer are the settings of every
    /// attempt's (kept with the job, they outlive a new alignment).
    pub(super) fn same_settings(
        &self,
        job: &JobHandle,
        offered: &fedlearn::Proposal,
        kept_checkpoints: bool,
    ) -> Result<(), NodeError> {
        let settings = offered.settings_digest();
        match self.store.resume_part(job.id(), SETTINGS_PART)? {
            Some(kept) if kept != settings => Err(Refusal::OfferDiffers.into()),
            Some(_) => {
                if kept_checkpoints && offered.resume.is_none() {
                    Err(self.not_resumable(job, "training had begun; start over it may not"))
                } else {
                    Ok(())
                }
            }
            None => self.store.put_resume(job.id(), SETTINGS_PART, &settings),
        }
    }

    fn resumed_event(&self, job: &JobHandle, aligned: &Table, epoch: Option<usize>) {
        job.emit(
            &self.store,
            crate::store::EventRecord {
                state: "training".into(),
                message: match epoch {
                    Some(e) => format!("attempt {}: resuming after epoch {e}", job.attempt()),
                    None => format!("attempt {}: training from the start", job.attempt()),
                },
                aligned_rows: aligned.rows() as u64,
                psi_progress: 1.0,
                epoch: epoch.unwrap_or(0) as u32,
                ..Default::default()
            },
        );
    }

    /// Host: waits for the guest to propose the next attempt after the interruption of
    /// `proposal`'s attempt; telling the guest first when this node found the interruption.
    pub(super) fn await_attempt(
        &self,
        job: &Arc<JobHandle>,
        proposal: &JobProposal,
        interruption: &Interruption,
    ) -> Result<JobProposal, NodeError> {
        let guest = &proposal.guest;
        let cause = &interruption.cause;
        // Only the attempt that ended is closed (a later one the guest proposed meanwhile
        // stays open), and the guest is told unless it told this node, or is the one lost.
        if let Some(told_by) = self
            .mailbox
            .close_attempt(job.id(), proposal.attempt, cause)
        {
            if told_by.as_deref() != Some(guest.as_str()) {
                self.interrupt_peers(
                    job,
                    proposal.attempt,
                    std::slice::from_ref(guest),
                    interruption,
                );
            }
        }
        let window = self.config().federation.resume_window();
        job.state_event(
            &self.store,
            "interrupted",
            format!(
                "{cause}; waiting up to {} s for {guest} to resume the job",
                window.as_secs()
            ),
        );
        let deadline = Instant::now() + window;
        let interval = self.config().federation.probe_interval();
        let mut probed = Instant::now();
        let mut gone = 0;
        loop {
            let slice = deadline
                .saturating_duration_since(Instant::now())
                .min(interval);
            if let Some(next) = job.wait_attempt(slice, proposal.attempt) {
                return Ok(next);
            }
            if job.is_cancelled() {
                return Err(NodeError::Cancelled(job.cancel_reason()));
            }
            // A guest that answers but no longer runs the job ended it (twice in a row: it
            // may have restarted and not taken the job up yet); one between two attempts
            // goes on with it, and one that does not answer may be restarting.
            if probed.elapsed() >= interval {
                probed = Instant::now();
                let probe = self.peers.alive(guest, job.id(), interval);
                gone = match self.runtime.block_on(probe) {
                    Ok(Liveness::Gone) => gone + 1,
                    _ => 0,
                };
                if gone >= 2 {
                    return Err(NodeError::Peer {
                        peer: guest.clone(),
                        fault: PeerFault::Gone,
                    });
                }
            }
            // The guest gave up on the job instead of resuming it.
            if !self.mailbox.interrupted(job.id()) {
                if let Some(reason) = self.mailbox.abort_reason(job.id()) {
                    return Err(NodeError::Stopped(reason));
                }
            }
            if Instant::now() >= deadline {
                return Err(NodeError::Peer {
                    peer: guest.clone(),
                    fault: PeerFault::NotBack {
                        seconds: window.as_secs(),
                    },
                });
            }
        }
    }

    /// Host: the guest's proposal of a new attempt of a job this node runs: checked against
    /// the job as first proposed, then handed to the job's thread. The reply says what this
    /// node kept to resume from.
    pub(super) fn accept_attempt(
        &self,
        proposal: &JobProposal,
    ) -> Result<ProposalReply, NodeError> {
        let refuse = |reason: String| Refusal::NotResumable {
            party: self.config().party.clone(),
            job: proposal.job_id.clone(),
            reason,
        };
        let _one_at_a_time = self.jobs.admission();
        let Some(handle) = self.live(&proposal.job_id) else {
            // The state of a job goes only to its own guest.
            return Err(refuse(match self.store.job(&proposal.job_id)? {
                Some(record)
                    if record.role == "host" && record.peers == [proposal.guest.clone()] =>
                {
                    format!("it has ended here ({})", record.state)
                }
                _ => "it is not known here".into(),
            })
            .into());
        };
        admission::check_known(proposal, &handle.record())?;
        let first = self
            .store
            .resume_part(&proposal.job_id, JOB_PART)?
            .and_then(|bytes| JobProposal::decode(bytes.as_slice()).ok())
            .ok_or_else(|| refuse("it kept nothing to resume from".into()))?;
        let same = JobProposal {
            attempt: 0,
            ..proposal.clone()
        };
        if same != first {
            return Err(Refusal::OfferDiffers.into());
        }
        let running = handle.attempt();
        // Each attempt re-runs at most one epoch with this node's weights (and all of them
        // when PSI runs again): a guest gets no more than MAX_ATTEMPTS runs out of a job.
        if proposal.attempt >= MAX_ATTEMPTS {
            return Err(refuse(format!(
                "attempt {} is beyond the {MAX_ATTEMPTS} a job may have",
                proposal.attempt
            ))
            .into());
        }
        if proposal.attempt < running {
            return Err(refuse(format!(
                "attempt {} is older than its attempt {running}",
                proposal.attempt
            ))
            .into());
        }
        if proposal.attempt > running {
            handle.set_attempt(proposal.attempt);
            let participants = std::iter::once(proposal.guest.clone()).chain(
                (proposal.hosts.iter())
                    .filter(|h| **h != self.config().party)
                    .cloned(),
            );
            self.mailbox
                .register(&proposal.job_id, proposal.attempt, participants);
            handle.offer_attempt(proposal.clone());
            crate::audit::record(
                &self.store,
                "job.resumed",
                &proposal.job_id,
                &proposal.guest,
                json!({"attempt": proposal.attempt}),
            );
        }
        Ok(ProposalReply {
            accepted: true,
            reason: String::new(),
            aligned: self
                .store
                .resume_part(&proposal.job_id, ALIGNED_PART)?
                .is_some(),
            checkpoint: self
                .store
                .checkpoint_epochs(&proposal.job_id)?
                .last()
                .copied(),
        })
    }

    /// Keeps the job's aligned rows (positions in this node's dataset) with the digest of
    /// the aligned table, replacing any earlier alignment and its checkpoints. What PSI kept
    /// stays until the job ends: a party lost before it kept its own aligned rows aligns
    /// again under the same plan, running only the parts it lacks.
    pub(super) fn keep_alignment(
        &self,
        job: &JobHandle,
        positions: &[u32],
        table: &Table,
    ) -> Result<(), NodeError> {
        let mut bytes = table.digest().to_vec();
        for p in positions {
            bytes.extend_from_slice(&p.to_le_bytes());
        }
        self.store.forget_resume(job.id(), realigned)?;
        self.store.put_resume(job.id(), ALIGNED_PART, &bytes)
    }

    /// The job's aligned rows of `table` as kept, if they were; an error when the data they
    /// select changed since.
    fn kept_alignment(
        &self,
        job: &JobHandle,
        dataset: &Staged,
    ) -> Result<Option<Table>, NodeError> {
        let Some(bytes) = self.store.resume_part(job.id(), ALIGNED_PART)? else {
            return Ok(None);
        };
        let cannot = |reason: &str| {
            NodeError::from(fedlearn::FedError::Resume {
                party: self.config().party.clone(),
                reason: reason.into(),
            })
        };
        if bytes.len() < 32 || (bytes.len() - 32) % 4 != 0 {
            return Err(cannot("its kept alignment is damaged"));
        }
        let positions: Vec<u32> = bytes[32..]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if positions.iter().any(|&p| p as usize >= dataset.rows()) {
            return Err(cannot("its dataset changed since the job started"));
        }
        let aligned = dataset
            .select(&positions)
            .map_err(|_| cannot("its dataset changed since the job started"))?;
        if aligned.digest()[..] != bytes[..32] {
            return Err(cannot("its dataset changed since the job started"));
        }
        Ok(Some(aligned))
    }

    /// Keeps a training checkpoint. A job whose checkpoint cannot be kept ends: it could not
    /// resume from the epoch the others hold.
    pub(super) fn keep_checkpoint(&self, job: &JobHandle, checkpoint: &Checkpoint) {
        let bytes = checkpoint.to_bytes();
        if let Err(e) = self
            .store
            .put_checkpoint(job.id(), checkpoint.epoch as u64, &bytes)
        {
            tracing::error!(job = %job.id(), epoch = checkpoint.epoch, error = %e, "could not keep a checkpoint");
            let reason = format!("{} could not keep its checkpoint", self.config().party);
            job.cancel_because(&reason);
            self.mailbox.close(job.id(), &reason);
        }
    }

    /// At start-up: takes up the training jobs a restart interrupted that kept what they
    /// resume from (the guest proposes the next attempt; a host waits for it).
    pub(crate) fn resume_interrupted(self: &Arc<Self>, records: Vec<JobRecord>) {
        for record in records {
            let id = record.job_id.clone();
            if let Err(e) = self.take_up(record) {
                tracing::error!(job = %id, error = %e, "could not take up an interrupted job");
            }
        }
    }

    fn take_up(self: &Arc<Self>, record: JobRecord) -> Result<(), NodeError> {
        let part = self
            .store
            .resume_part(&record.job_id, JOB_PART)?
            .unwrap_or_default();
        let detail = json!({"attempt": record.attempt, "state": record.state});
        let (role, model_id) = (record.role.clone(), record.model_id.clone());
        let (attempt, peers) = (record.attempt + 1, record.peers.clone());
        let handle = self.jobs.open(&self.store, record)?;
        tracing::info!(job = %handle.id(), %role, "taking up a job a restart interrupted");
        // What the job was started with, unreadable: it ends here, its peers told.
        let unusable = |reason: String| {
            let error = NodeError::Server(format!("cannot take up the job: {reason}"));
            self.finish(&handle, Err(error), Instant::now());
            Ok(())
        };
        if role == "guest" {
            let spec = match JobSpec::parse(&String::from_utf8_lossy(&part)) {
                // The version the job was given when submitted.
                Ok(spec) => JobSpec { model_id, ..spec },
                Err(e) => return unusable(format!("its kept spec: {e}")),
            };
            // Open for the next attempt before this node answers probes: a host asking
            // whether the job still runs here hears yes.
            self.mailbox.register(handle.id(), attempt, peers);
            let audited = ("job.restarted", "", detail);
            self.spawn(handle.clone(), audited, move |node, job| {
                node.run_guest(job, &spec, true)
            })
        } else {
            let proposal = match JobProposal::decode(part.as_slice()) {
                Ok(proposal) => proposal,
                Err(e) => return unusable(format!("its kept proposal: {e}")),
            };
            let guest = proposal.guest.clone();
            let audited = ("job.restarted", guest.as_str(), detail);
            self.spawn(handle.clone(), audited, move |node, job| {
                node.run_host(job, &proposal, true)
            })
        }
    }
}

/// Whether a call that failed with `code` lost its peer (no answer, or a peer that no longer
/// knows the job).
fn lost(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Unknown
            | tonic::Code::NotFound
    )
}
