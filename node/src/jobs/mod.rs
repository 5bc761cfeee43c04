//! Jobs: submission (guest) and acceptance (host), the blocking job runners (PSI, then
//! training), and how a job ends.
//!
//! A training job: the guest proposes it to every host; each host checks its policy
//! ([`admission`]) and registers the job; the guest runs PSI with all hosts ([`psi`]); every
//! party selects its aligned rows and runs fedlearn over [`link::Link`], a
//! [`fedlearn::Transport`] on top of the federation service ([`run`]); each party stores its
//! own model part, and the hosts agree their scoring seeds ([`seeds`]). Protocol code runs on
//! a thread per job; network calls go through the node's tokio runtime.

pub mod admission;
mod binning;
mod link;
mod psi;
mod resume;
mod run;
mod sealed;
mod seeds;
mod spill;
mod staged;

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use crate::error::{capped, NodeError, Refusal};
use crate::proto::{JobProposal, ProposalReply};
use crate::registry::JobHandle;
use crate::spec::{JobKind, JobSpec};
use crate::state::NodeState;
use crate::store::JobRecord;
use prost::Message as _;

pub(crate) use spill::forget_spilled;

impl NodeState {
    /// A live job, if this node runs it now.
    pub fn live(&self, job_id: &str) -> Option<Arc<JobHandle>> {
        self.jobs.live(job_id)
    }

    /// A job's record, live or stored.
    pub fn job(&self, job_id: &str) -> Result<Option<JobRecord>, NodeError> {
        match self.live(job_id) {
            Some(handle) => Ok(Some(handle.record())),
            None => self.store.job(job_id),
        }
    }

    /// Guest: checks a spec against this node and starts the job.
    pub fn submit(
        self: &Arc<Self>,
        spec_toml: &str,
        operator: &str,
    ) -> Result<JobRecord, NodeError> {
        let mut spec = JobSpec::parse(spec_toml)?;
        admission::check_spec(&self.config(), &spec)?;
        let _one_at_a_time = self.jobs.admission();
        self.room_for(None)?;
        if spec.kind == JobKind::Train {
            let mut jobs = self.store.jobs()?;
            jobs.extend(self.jobs.records());
            spec.model_id = crate::models::next_version(
                &self.store,
                &self.config().party,
                &jobs,
                &spec.model_id,
                spec.replace,
            )?;
        }
        let mut id = [0u8; 16];
        rand::fill(&mut id);
        let job_id = hex::encode(id);
        if spec.kind == JobKind::Train {
            // What the job resumes from after this node's restart.
            self.store
                .put_resume(&job_id, resume::JOB_PART, spec_toml.as_bytes())?;
        }
        let now = crate::clock::now_ms();
        let handle = self.jobs.open(
            &self.store,
            JobRecord {
                job_id,
                kind: spec.kind.as_str().into(),
                role: "guest".into(),
                state: "queued".into(),
                model_id: spec.model_id.clone(),
                created_unix_ms: now,
                updated_unix_ms: now,
                peers: spec.hosts.iter().map(|h| h.party.clone()).collect(),
                dataset: spec.dataset.clone(),
                max_epochs: match spec.kind {
                    JobKind::Train => spec.train.max_epochs as u32,
                    JobKind::Binning => 0,
                },
                ..JobRecord::default()
            },
        )?;
        let participants = spec.hosts.iter().map(|h| h.party.clone());
        self.mailbox.register(handle.id(), 0, participants);
        handle.state_event(&self.store, "queued", "submitted");
        self.metrics
            .add("unseen_jobs_started_total", &[("role", "guest")], 1.0);
        tracing::info!(job = %handle.id(), model = %spec.model_id, %operator, "job submitted");
        let record = handle.record();
        let audited = (
            "job.submitted",
            operator,
            json!({"model": record.model_id, "hosts": record.peers, "dataset": record.dataset}),
        );
        self.spawn(handle.clone(), audited, move |node, job| {
            node.run_guest(job, &spec, false)
        })?;
        Ok(handle.record())
    }

    /// Host: applies the policy to a proposal and, if allowed, starts the host's side. A
    /// retried proposal of a job that runs is accepted again; a proposal of a later attempt
    /// resumes the job (see [`resume`]).
    pub fn accept_proposal(
        self: &Arc<Self>,
        proposal: &JobProposal,
    ) -> Result<ProposalReply, NodeError> {
        if proposal.attempt > 0 {
            admission::check_proposal(&self.config(), proposal)?;
            return self.accept_attempt(proposal);
        }
        let accepted = ProposalReply {
            accepted: true,
            ..ProposalReply::default()
        };
        // One configuration for the whole decision, taken under the lock a reload takes.
        let _one_at_a_time = self.jobs.admission();
        let config = self.config();
        let rule = admission::check_proposal(&config, proposal)?;
        if let Some(known) = self.job(&proposal.job_id)? {
            admission::check_known(proposal, &known)?;
            return Ok(accepted);
        }
        self.room_for(Some(&proposal.guest))?;
        let in_use = self.model_in_use(&proposal.model_id)?;
        let disclosed = self.disclosures(&proposal.guest, &proposal.dataset, &proposal.kind)?;
        admission::check_new(&config, rule, proposal, in_use, disclosed)?;
        if proposal.kind == "train" {
            // What the job resumes from after this node's restart.
            let first = JobProposal {
                attempt: 0,
                ..proposal.clone()
            };
            self.store
                .put_resume(&proposal.job_id, resume::JOB_PART, &first.encode_to_vec())?;
        }
        let now = crate::clock::now_ms();
        let handle = self.jobs.open(
            &self.store,
            JobRecord {
                job_id: proposal.job_id.clone(),
                kind: proposal.kind.clone(),
                role: "host".into(),
                state: "queued".into(),
                model_id: proposal.model_id.clone(),
                created_unix_ms: now,
                updated_unix_ms: now,
                peers: vec![proposal.guest.clone()],
                dataset: proposal.dataset.clone(),
                ..JobRecord::default()
            },
        )?;
        let participants = std::iter::once(proposal.guest.clone()).chain(
            proposal
                .hosts
                .iter()
                .filter(|h| **h != self.config().party)
                .cloned(),
        );
        self.mailbox.register(handle.id(), 0, participants);
        handle.state_event(
            &self.store,
            "queued",
            format!("accepted from {}", proposal.guest),
        );
        self.metrics
            .add("unseen_jobs_started_total", &[("role", "host")], 1.0);
        tracing::info!(job = %handle.id(), guest = %proposal.guest, dataset = %proposal.dataset, "job accepted");
        let audited = (
            "job.accepted",
            proposal.guest.as_str(),
            json!({"dataset": proposal.dataset, "model": proposal.model_id, "kind": proposal.kind, "hosts": proposal.hosts}),
        );
        let owned = proposal.clone();
        self.spawn(handle, audited, move |node, job| {
            node.run_host(job, &owned, false)
        })?;
        Ok(accepted)
    }

    /// Runs a job's protocol on its own thread and always finishes it — also when the
    /// protocol panics or the thread cannot start. No job runs unaudited: the record of its
    /// start, `(event, peer, detail)`, is appended first, and a job whose record cannot be
    /// written ends before it starts.
    fn spawn(
        self: &Arc<Self>,
        job: Arc<JobHandle>,
        (event, peer, detail): (&str, &str, serde_json::Value),
        run: impl FnOnce(&NodeState, &Arc<JobHandle>) -> Result<String, NodeError> + Send + 'static,
    ) -> Result<(), NodeError> {
        if let Err(error) = crate::audit::append(&self.store, event, job.id(), peer, detail) {
            let reason = format!("not started: its audit record could not be written ({error})");
            self.finish(&job, Err(NodeError::Server(reason)), Instant::now());
            return Err(error);
        }
        let node = self.clone();
        let handle = job.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("job-{}", &job.id()[..8]))
            .spawn(move || {
                let started = Instant::now();
                let result =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&node, &handle)))
                        .unwrap_or_else(|_| {
                            Err(NodeError::Server(
                                "internal error: the job's thread panicked".into(),
                            ))
                        });
                node.finish(&handle, result, started);
            });
        spawned.map(|_| ()).map_err(|e| {
            let error = NodeError::Server(format!("cannot start a job thread: {e}"));
            self.finish(
                &job,
                Err(NodeError::Server(error.to_string())),
                Instant::now(),
            );
            error
        })
    }

    /// Jobs of `kind` on this node's `dataset` whose disclosures reached or may reach
    /// `guest` — for training, models whose per-row scores did; for binning, per-bin counts —
    /// counted fail-closed: every host job of that kind with `guest` on `dataset` that is
    /// still running or got past PSI (it may have disclosed even if it failed afterwards).
    /// Called under the admission lock, which every new host job passes.
    pub fn disclosures(&self, guest: &str, dataset: &str, kind: &str) -> Result<usize, NodeError> {
        let past_psi = if kind == "binning" {
            "binning"
        } else {
            "training"
        };
        let mine = |r: &JobRecord| {
            r.role == "host" && r.peers == [guest] && r.dataset == dataset && r.kind == kind
        };
        let live: std::collections::BTreeSet<String> = self
            .jobs
            .records()
            .into_iter()
            .filter(|r| mine(r) && !r.is_final())
            .map(|r| r.job_id)
            .collect();
        let trained = self
            .store
            .jobs()?
            .into_iter()
            .filter(|r| {
                mine(r)
                    && !live.contains(&r.job_id)
                    && (!r.is_final() || r.events.iter().any(|e| e.state == past_psi))
            })
            .count();
        Ok(live.len() + trained)
    }

    /// Refuses a new job (for `guest`, when a peer proposes it) beyond `federation.max_jobs`
    /// live jobs, or `federation.max_jobs_per_peer` of that guest's.
    fn room_for(&self, guest: Option<&str>) -> Result<(), Refusal> {
        let live = self.jobs.records();
        let settings = &self.config().federation;
        if self.shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Refusal::ShuttingDown {
                party: self.config().party.clone(),
            });
        }
        let busy = |live: usize, of: String, key, max| Refusal::Busy {
            party: self.config().party.clone(),
            live,
            of,
            key,
            max,
        };
        if live.len() >= settings.max_jobs {
            return Err(busy(
                live.len(),
                String::new(),
                "max_jobs",
                settings.max_jobs,
            ));
        }
        if let Some(guest) = guest {
            let of_guest = live
                .iter()
                .filter(|r| r.role == "host" && r.peers == [guest])
                .count();
            if of_guest >= settings.max_jobs_per_peer {
                return Err(busy(
                    of_guest,
                    format!(" for {guest}"),
                    "max_jobs_per_peer",
                    settings.max_jobs_per_peer,
                ));
            }
        }
        Ok(())
    }

    /// Whether a stored or deleted model or a live job already uses a model id.
    fn model_in_use(&self, model_id: &str) -> Result<bool, NodeError> {
        if self.store.model(model_id)?.is_some() || self.store.deleted_model(model_id)?.is_some() {
            return Ok(true);
        }
        Ok(self.jobs.records().iter().any(|r| r.model_id == model_id))
    }

    /// Cancels a live job: its inbox closes, its protocol thread fails and tells the peers.
    pub fn cancel(&self, job_id: &str) -> Result<JobRecord, NodeError> {
        let Some(handle) = self.live(job_id) else {
            return self.store.job(job_id)?.ok_or_else(|| {
                NodeError::NotFound(format!("no job {job_id:?} on {}", self.config().party))
            });
        };
        handle.cancel();
        self.mailbox.close(job_id, "cancelled by the operator");
        Ok(handle.record())
    }

    /// Cancels every live job for `reason` (which their peers are told), waiting up to `wait`
    /// for them to end.
    pub async fn stop_all(&self, reason: &str, wait: std::time::Duration) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let live = {
            // Admission holds this lock while it starts a job: none starts after it.
            let _one_at_a_time = self.jobs.admission();
            self.jobs.records()
        };
        for record in &live {
            if let Some(handle) = self.live(&record.job_id) {
                handle.cancel_because(reason);
                self.mailbox.close(&record.job_id, reason);
            }
        }
        let deadline = Instant::now() + wait;
        while !self.jobs.records().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        if !live.is_empty() {
            tracing::info!(
                jobs = live.len(),
                left = self.jobs.records().len(),
                "stopped live jobs"
            );
        }
    }

    /// Tells the peers of jobs a restart interrupted that this node lost them (one attempt
    /// each; a peer whose job has ended ignores it), and audits their end.
    pub(crate) async fn report_interrupted(&self, jobs: &[JobRecord]) {
        let reason = format!("{} restarted and lost the job", self.config().party);
        for job in jobs {
            crate::audit::record(
                &self.store,
                "job.ended",
                &job.job_id,
                "",
                json!({"state": "failed", "message": "interrupted by a restart"}),
            );
            for peer in &job.peers {
                if let Err(e) = self
                    .peers
                    .deliver(
                        peer,
                        &job.job_id,
                        job.attempt,
                        0,
                        "abort",
                        reason.as_bytes(),
                        false,
                        crate::peers::WhenHeld::Return,
                    )
                    .await
                {
                    tracing::info!(job = %job.job_id, %peer, error = %e, "could not tell a peer of the lost job");
                }
            }
        }
    }

    /// Ends a job: tells the peers when it did not succeed (whatever the protocol managed to
    /// send), closes its inbox, audits its traffic and final state, and tells watchers.
    fn finish(&self, job: &JobHandle, result: Result<String, NodeError>, started: Instant) {
        let record = job.record();
        // What the peers read of a failure is a category and an error id; the text (file,
        // line, column, value) stays in this node's job record and log under that id.
        let error_id = crate::error::error_id();
        let (state, message, public) = match result {
            Ok(summary) => ("succeeded", summary, String::new()),
            Err(_) if job.is_cancelled() => {
                let text = job.cancel_reason();
                ("cancelled", text.clone(), text)
            }
            Err(error) => {
                // A peer's stop is the cause, however the protocol reported it (a send to a
                // peer that stopped fails too); it passes on as the peer gave it.
                let stopped = self.mailbox.abort_reason(job.id());
                let text = match (&stopped, &error) {
                    (Some(reason), e) if !matches!(e, NodeError::Stopped(_)) => {
                        format!("{reason} (here: {e})")
                    }
                    _ => error.to_string(),
                };
                (
                    "failed",
                    format!("{} [error {error_id}]", capped(&text)),
                    stopped.unwrap_or_else(|| error.public_reason(&error_id)),
                )
            }
        };
        // Ended before the peers are told: a probe meanwhile must not hear that it resumes.
        self.mailbox.close(job.id(), &format!("the job {state}"));
        if state != "succeeded" {
            link::abort_peers(self, job, &record.peers, &public);
        }
        // Whatever it kept to resume from (weights, aligned rows) goes with it.
        if let Err(e) = self.store.clear_resume(job.id(), false) {
            tracing::error!(job = %job.id(), error = %e, "could not forget what the job kept to resume");
        }
        for ((peer, direction, kind), (messages, bytes)) in job.take_traffic() {
            crate::audit::record(
                &self.store,
                "job.messages",
                job.id(),
                &peer,
                json!({"direction": direction, "kind": kind, "messages": messages, "bytes": bytes}),
            );
        }
        match state {
            "succeeded" => {
                tracing::info!(job = %job.id(), seconds = started.elapsed().as_secs_f64(), "job succeeded")
            }
            _ => tracing::warn!(job = %job.id(), %message, "job {state}"),
        }
        self.metrics.add(
            "unseen_jobs_total",
            &[("role", &record.role), ("state", state)],
            1.0,
        );
        // The audit log holds no data: a failure's category and id, not its text.
        crate::audit::record(
            &self.store,
            "job.ended",
            job.id(),
            "",
            json!({"state": state, "message": if state == "succeeded" { &message } else { &public }}),
        );
        job.state_event(&self.store, state, message);
        self.jobs.remove(job.id());
    }
}
