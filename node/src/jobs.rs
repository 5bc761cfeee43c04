//! Jobs: the node's shared state, submission (guest) and acceptance (host), the blocking job
//! runners (PSI, then training), progress events and persistence.
//!
//! A training job: the guest proposes it to every host; each host checks its policy and
//! registers the job; the guest runs PSI with all hosts; every party selects its aligned rows
//! and runs fedlearn over [`Link`], a [`fedlearn::Transport`] on top of the federation service;
//! each party stores its own model part. Protocol code runs on blocking threads; network calls
//! go through the node's tokio runtime.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fedlearn::{Event, GuestJob, HostJob, Message, Table, Transport};
use psi::{DuplicatePolicy, GuestConfig, IdColumn, PsiGuest, PsiHost};
use serde_json::json;
use tokio::sync::broadcast;

use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::federation::*;
use crate::mailbox::{Delivery, Mailbox, ReceiveError};
use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::proto::{psi_message::Body, JobProposal};
use crate::spec::JobSpec;
use crate::store::{EventRecord, JobRecord, MetricsRecord, ModelRecord, Store};
use crate::FEDERATION_VERSION;

/// A job's live state on this node.
pub struct JobHandle {
    id: String,
    record: Mutex<JobRecord>,
    events: broadcast::Sender<(usize, EventRecord)>,
    cancelled: AtomicBool,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    /// Messages and bytes by peer, direction and kind, for the audit log.
    traffic: Mutex<Traffic>,
}

/// (peer, direction, kind) → (messages, bytes).
type Traffic = std::collections::BTreeMap<(String, &'static str, String), (u64, u64)>;

impl JobHandle {
    /// The job's record as of now.
    pub fn record(&self) -> JobRecord {
        self.record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Epochs the job asked for (0 until a host has seen the training proposal).
    pub fn max_epochs(&self) -> u32 {
        self.record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .max_epochs
    }

    /// Subscribes to events, returning the events so far with the receiver of later ones
    /// (numbered from the length of the returned history).
    pub fn subscribe(&self) -> (Vec<EventRecord>, broadcast::Receiver<(usize, EventRecord)>) {
        let record = self.record.lock().unwrap_or_else(|e| e.into_inner());
        (record.events.clone(), self.events.subscribe())
    }
}

/// Everything the node's services and jobs share.
pub struct NodeState {
    /// The configuration.
    pub config: NodeConfig,
    /// The embedded store.
    pub store: Store,
    /// Inboxes of open jobs.
    pub mailbox: Mailbox,
    /// Clients of the peers.
    pub peers: Peers,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Scoring indexes and rate-limit buckets.
    pub scores: crate::scoring::ScoreCache,
    /// Held while a job is checked and registered (submission or proposal).
    accepting: Mutex<()>,
    jobs: Mutex<HashMap<String, Arc<JobHandle>>>,
    runtime: tokio::runtime::Handle,
}

impl NodeState {
    pub(crate) fn new(
        config: NodeConfig,
        store: Store,
        peers: Peers,
        metrics: Arc<Metrics>,
        runtime: tokio::runtime::Handle,
    ) -> NodeState {
        NodeState {
            config,
            store,
            mailbox: Mailbox::default(),
            peers,
            metrics,
            scores: crate::scoring::ScoreCache::default(),
            accepting: Mutex::new(()),
            jobs: Mutex::new(HashMap::new()),
            runtime,
        }
    }

    /// A live job, if this node runs it now.
    pub fn live(&self, job_id: &str) -> Option<Arc<JobHandle>> {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(job_id)
            .cloned()
    }

    /// A job's record, live or stored.
    pub fn job(&self, job_id: &str) -> Result<Option<JobRecord>, NodeError> {
        match self.live(job_id) {
            Some(handle) => Ok(Some(handle.record())),
            None => self.store.job(job_id),
        }
    }

    fn open(&self, record: JobRecord) -> Result<Arc<JobHandle>, NodeError> {
        self.store.put_job(&record)?;
        let (events, _) = broadcast::channel(1024);
        let handle = Arc::new(JobHandle {
            id: record.job_id.clone(),
            record: Mutex::new(record),
            events,
            cancelled: AtomicBool::new(false),
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            traffic: Mutex::default(),
        });
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(handle.id.clone(), handle.clone());
        Ok(handle)
    }

    /// Appends an event (filling in bytes and time), persists the record and tells watchers.
    fn emit(&self, job: &JobHandle, mut event: EventRecord) {
        event.bytes_sent = job.bytes_sent.load(Ordering::Relaxed);
        event.bytes_received = job.bytes_received.load(Ordering::Relaxed);
        event.unix_ms = crate::now_ms();
        let (index, record) = {
            let mut record = job.record.lock().unwrap_or_else(|e| e.into_inner());
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
        if let Err(e) = self.store.put_job_event(&record, index as u64, &event) {
            tracing::error!(job = %job.id, error = %e, "could not persist the job");
        }
        let _ = job.events.send((index, event));
    }

    fn state_event(&self, job: &JobHandle, state: &str, message: impl Into<String>) {
        self.emit(
            job,
            EventRecord {
                state: state.into(),
                message: message.into(),
                ..EventRecord::default()
            },
        );
    }

    /// Guest: checks a spec against this node and starts the job.
    pub fn submit(self: &Arc<Self>, spec_toml: &str) -> Result<JobRecord, NodeError> {
        let spec = JobSpec::parse(spec_toml)?;
        let dataset = self.config.datasets.get(&spec.dataset).ok_or_else(|| {
            NodeError::Spec(format!(
                "dataset: {:?} is not a dataset of {} (known: {})",
                spec.dataset,
                self.config.party,
                self.config
                    .datasets
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        if dataset.label_column.is_none() {
            return Err(NodeError::Spec(format!(
                "dataset: {:?} has no label_column; the guest's dataset holds the labels",
                spec.dataset
            )));
        }
        for (i, host) in spec.hosts.iter().enumerate() {
            if self.config.peer(&host.party).is_none() {
                return Err(NodeError::Spec(format!(
                    "hosts[{i}].party: {:?} is not a peer of {}",
                    host.party, self.config.party
                )));
            }
        }
        let _one_at_a_time = self.accepting.lock().unwrap_or_else(|e| e.into_inner());
        if self.model_in_use(&spec.model_id)? {
            return Err(NodeError::Spec(format!(
                "model_id: {:?} already exists on {}",
                spec.model_id, self.config.party
            )));
        }
        let mut id = [0u8; 16];
        rand::fill(&mut id);
        let now = crate::now_ms();
        let handle = self.open(JobRecord {
            job_id: hex::encode(id),
            kind: "train".into(),
            role: "guest".into(),
            state: "queued".into(),
            model_id: spec.model_id.clone(),
            created_unix_ms: now,
            updated_unix_ms: now,
            peers: spec.hosts.iter().map(|h| h.party.clone()).collect(),
            dataset: spec.dataset.clone(),
            max_epochs: spec.train.max_epochs as u32,
            ..JobRecord::default()
        })?;
        let participants = spec.hosts.iter().map(|h| h.party.clone());
        self.mailbox.register(&handle.id, participants);
        self.state_event(&handle, "queued", "submitted");
        self.metrics
            .add("unseen_jobs_started_total", &[("role", "guest")], 1.0);
        tracing::info!(job = %handle.id, model = %spec.model_id, "job submitted");
        self.spawn(handle.clone(), move |node, job| node.run_guest(job, &spec))?;
        Ok(handle.record())
    }

    /// Host: applies the policy to a proposal and, if allowed, starts the host's side.
    pub fn accept_proposal(self: &Arc<Self>, proposal: &JobProposal) -> Result<(), String> {
        if proposal.version != FEDERATION_VERSION {
            return Err(format!(
                "federation version {} is not supported (this node speaks {FEDERATION_VERSION})",
                proposal.version
            ));
        }
        if proposal.job_id.len() != 32 || !proposal.job_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("the job id must be 32 hex digits".into());
        }
        crate::config::check_name("model_id", &proposal.model_id)?;
        if proposal.kind != "train" {
            return Err(format!(
                "{:?} is not a job kind a guest can propose",
                proposal.kind
            ));
        }
        self.config
            .allows(&proposal.guest, &proposal.kind, &proposal.dataset)?;
        let rule = self
            .config
            .rule(&proposal.guest, &proposal.kind, &proposal.dataset)
            .ok_or("no policy rule allows the job")?;
        check_job_shape(&self.config.party, rule, proposal)?;
        let distinct: std::collections::BTreeSet<&String> = proposal.hosts.iter().collect();
        if distinct.len() != proposal.hosts.len() || distinct.contains(&proposal.guest) {
            return Err("the hosts must be distinct parties other than the guest".into());
        }
        // Check and register atomically, so a proposal retried on another connection cannot
        // start the job twice.
        let _one_at_a_time = self.accepting.lock().unwrap_or_else(|e| e.into_inner());
        if !proposal.hosts.contains(&self.config.party) {
            return Err(format!(
                "{} is not among the job's hosts",
                self.config.party
            ));
        }
        for host in &proposal.hosts {
            if *host != self.config.party && self.config.peer(host).is_none() {
                return Err(format!(
                    "{host} is not a peer of {}; hosts exchange masks directly",
                    self.config.party
                ));
            }
        }
        if let Some(known) = self.job(&proposal.job_id).map_err(|e| e.to_string())? {
            // A retried proposal (the first reply was lost) is accepted again; anything else
            // reusing the id is refused.
            let same = known.role == "host"
                && known.peers == [proposal.guest.clone()]
                && known.dataset == proposal.dataset
                && known.model_id == proposal.model_id;
            if same && known.is_final() {
                return Err(format!(
                    "job {} has already ended here ({})",
                    proposal.job_id, known.state
                ));
            }
            return if same {
                Ok(())
            } else {
                Err(format!("job {} is already known here", proposal.job_id))
            };
        }
        if self
            .model_in_use(&proposal.model_id)
            .map_err(|e| e.to_string())?
        {
            return Err(format!(
                "model {:?} already exists on {}",
                proposal.model_id, self.config.party
            ));
        }
        let disclosed = self
            .disclosures(&proposal.guest, &proposal.dataset)
            .map_err(|e| e.to_string())?;
        if disclosed >= rule.max_models as usize {
            return Err(format!(
                "{} already has {disclosed} models trained on dataset {:?} of {}; the policy \
                 allows {} (policy key max_models)",
                proposal.guest, proposal.dataset, self.config.party, rule.max_models
            ));
        }
        let now = crate::now_ms();
        let handle = self
            .open(JobRecord {
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
            })
            .map_err(|e| e.to_string())?;
        let participants = std::iter::once(proposal.guest.clone()).chain(
            proposal
                .hosts
                .iter()
                .filter(|h| **h != self.config.party)
                .cloned(),
        );
        self.mailbox.register(&handle.id, participants);
        self.state_event(
            &handle,
            "queued",
            format!("accepted from {}", proposal.guest),
        );
        self.metrics
            .add("unseen_jobs_started_total", &[("role", "host")], 1.0);
        tracing::info!(job = %handle.id, guest = %proposal.guest, dataset = %proposal.dataset, "job accepted");
        let proposal = proposal.clone();
        self.spawn(handle, move |node, job| node.run_host(job, &proposal))
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Runs a job's protocol on its own thread and always finishes it — also when the
    /// protocol panics or the thread cannot start.
    fn spawn(
        self: &Arc<Self>,
        job: Arc<JobHandle>,
        run: impl FnOnce(&NodeState, &Arc<JobHandle>) -> Result<String, NodeError> + Send + 'static,
    ) -> Result<(), NodeError> {
        let node = self.clone();
        let handle = job.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("job-{}", &job.id[..8]))
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

    /// Whether a stored model or a live job already uses a model id.
    /// Models of this node's `dataset` whose per-row scores reached or may reach `guest`,
    /// counted fail-closed: every host job with `guest` on `dataset` that is still running or
    /// got past PSI into training (it may have revealed its final scores even if it failed
    /// afterwards). Called under the `accepting` lock, which every new host job passes.
    pub fn disclosures(&self, guest: &str, dataset: &str) -> Result<usize, NodeError> {
        let mine = |r: &JobRecord| r.role == "host" && r.peers == [guest] && r.dataset == dataset;
        let live: std::collections::BTreeSet<String> = {
            let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
            jobs.values()
                .map(|j| j.record())
                .filter(|r| mine(r) && !r.is_final())
                .map(|r| r.job_id)
                .collect()
        };
        let trained = self
            .store
            .jobs()?
            .into_iter()
            .filter(|r| {
                mine(r)
                    && !live.contains(&r.job_id)
                    && (!r.is_final() || r.events.iter().any(|e| e.state == "training"))
            })
            .count();
        Ok(live.len() + trained)
    }

    fn model_in_use(&self, model_id: &str) -> Result<bool, NodeError> {
        if self.store.model(model_id)?.is_some() {
            return Ok(true);
        }
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        Ok(jobs.values().any(|j| j.record().model_id == model_id))
    }

    /// Cancels a live job: its inbox closes, its protocol thread fails and tells the peers.
    pub fn cancel(&self, job_id: &str) -> Result<JobRecord, NodeError> {
        let Some(handle) = self.live(job_id) else {
            return match self.store.job(job_id)? {
                Some(record) => Ok(record),
                None => Err(NodeError::Spec(format!("no job {job_id}"))),
            };
        };
        handle.cancelled.store(true, Ordering::SeqCst);
        self.mailbox.close(job_id, "cancelled by the operator");
        Ok(handle.record())
    }

    /// Ends a job: tells the peers when it did not succeed (whatever the protocol managed to
    /// send), closes its inbox, audits its traffic and final state, and tells watchers.
    fn finish(&self, job: &JobHandle, result: Result<String, NodeError>, started: Instant) {
        let record = job.record();
        let role = record.role.clone();
        let (state, message) = match result {
            Ok(summary) => ("succeeded", summary),
            Err(_) if job.cancelled.load(Ordering::SeqCst) => {
                ("cancelled", "cancelled by the operator".to_string())
            }
            Err(error) => ("failed", error.to_string()),
        };
        if state != "succeeded" {
            abort_peers(self, job, &record.peers, &message);
        }
        self.mailbox.close(&job.id, &format!("the job {state}"));
        let traffic = std::mem::take(&mut *job.traffic.lock().unwrap_or_else(|e| e.into_inner()));
        for ((peer, direction, kind), (messages, bytes)) in traffic {
            crate::audit::record(
                &self.store,
                "job.messages",
                &job.id,
                &peer,
                json!({"direction": direction, "kind": kind, "messages": messages, "bytes": bytes}),
            );
        }
        match state {
            "succeeded" => {
                tracing::info!(job = %job.id, seconds = started.elapsed().as_secs_f64(), "job succeeded")
            }
            _ => tracing::warn!(job = %job.id, %message, "job {state}"),
        }
        self.metrics.add(
            "unseen_jobs_total",
            &[("role", &role), ("state", state)],
            1.0,
        );
        crate::audit::record(
            &self.store,
            "job.ended",
            &job.id,
            "",
            json!({"state": state, "message": message}),
        );
        self.state_event(job, state, message);
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&job.id);
    }

    pub(crate) fn load_table(&self, name: &str, with_labels: bool) -> Result<Table, NodeError> {
        let error = |reason: String| NodeError::Dataset {
            name: name.to_owned(),
            reason,
        };
        let dataset = self
            .config
            .datasets
            .get(name)
            .ok_or_else(|| error("not in this node's configuration".into()))?;
        let text = std::fs::read_to_string(&dataset.path)
            .map_err(|e| error(format!("{}: {e}", dataset.path.display())))?;
        let label = if with_labels {
            Some(
                dataset
                    .label_column
                    .as_deref()
                    .ok_or_else(|| error("no label_column configured".into()))?,
            )
        } else {
            None
        };
        let source = dataset.path.display().to_string();
        let table = Table::parse_csv(&source, &text, &dataset.id_column, label, dataset.missing)
            .map_err(|e| error(e.to_string()))?;
        match &dataset.features {
            Some(features) => {
                let names: Vec<&str> = features.iter().map(String::as_str).collect();
                table
                    .select_columns(&names)
                    .map_err(|e| error(e.to_string()))
            }
            None => Ok(table),
        }
    }

    fn run_guest(&self, job: &Arc<JobHandle>, spec: &JobSpec) -> Result<String, NodeError> {
        let table = self.load_table(&spec.dataset, true)?;
        let hosts: Vec<String> = spec.hosts.iter().map(|h| h.party.clone()).collect();
        for host in &spec.hosts {
            let proposal = JobProposal {
                version: FEDERATION_VERSION,
                job_id: job.id.clone(),
                kind: "train".into(),
                guest: self.config.party.clone(),
                dataset: host.dataset.clone(),
                hosts: hosts.clone(),
                model_id: spec.model_id.clone(),
                batch_rows: spec.train.batch_size.map_or(0, |b| b as u64),
                guest_features: table.features() as u32,
            };
            crate::audit::record(
                &self.store,
                "job.proposed",
                &job.id,
                &host.party,
                json!({"dataset": host.dataset, "model": spec.model_id}),
            );
            let reply = self
                .runtime
                .block_on(self.peers.propose(&host.party, proposal))?;
            crate::audit::record(
                &self.store,
                if reply.accepted {
                    "job.accepted_by"
                } else {
                    "job.refused_by"
                },
                &job.id,
                &host.party,
                json!({"reason": reply.reason}),
            );
            if !reply.accepted {
                let reason = format!("refused the job: {}", reply.reason);
                return Err(NodeError::Peer {
                    peer: host.party.clone(),
                    reason,
                });
            }
        }
        let mut link = Link::new(self, job);
        self.state_event(
            job,
            "psi",
            format!("aligning {} rows with {}", table.rows(), hosts.join(", ")),
        );
        let aligned = guest_psi(self, job, &mut link, &table, &hosts);
        let table = self.aligned(job, aligned, &table)?;
        let aligned_rows = table.rows();
        let started = Instant::now();
        let outcome = fedlearn::run_guest(
            GuestJob {
                party: self.config.party.clone(),
                model_id: spec.model_id.clone(),
                table,
                hosts: hosts.clone(),
                config: spec.train.clone(),
            },
            &mut link,
            &mut |event| self.training_event(job, event),
        )?;
        let history: Vec<_> = outcome
            .history
            .iter()
            .map(|r| {
                json!({
                    "epoch": r.epoch,
                    "train_loss": r.train_loss,
                    "validation_loss": r.validation_loss,
                    "weight_change": r.weight_change,
                    "learning_rate": r.learning_rate,
                })
            })
            .collect();
        let evaluation = &outcome.evaluation;
        let (rows_name, metrics) = (
            match evaluation.rows {
                fedlearn::RevealedRows::Validation => "validation",
                fedlearn::RevealedRows::Training => "training",
            },
            MetricsRecord::from(&evaluation.metrics),
        );
        self.emit(
            job,
            EventRecord {
                state: "training".into(),
                message: format!(
                    "final model on {} {rows_name} rows: AUC {:.4}, KS {:.4}",
                    evaluation.count, metrics.auc, metrics.ks
                ),
                epoch: outcome.history.len() as u32,
                train: (evaluation.rows == fedlearn::RevealedRows::Training).then_some(metrics),
                validation: (evaluation.rows == fedlearn::RevealedRows::Validation)
                    .then_some(metrics),
                psi_progress: 1.0,
                ..EventRecord::default()
            },
        );
        let report = json!({
            "job_id": job.id,
            "model_id": spec.model_id,
            "guest": self.config.party,
            "hosts": hosts,
            "aligned_rows": aligned_rows,
            "train_config": spec.train,
            "best_epoch": outcome.best_epoch,
            "stop": outcome.stop.to_string(),
            "share_frac_bits": outcome.share_frac_bits,
            "evaluation": {
                "rows": rows_name,
                "count": evaluation.count,
                "metrics": metrics,
            },
            "history": history,
            "training_seconds": started.elapsed().as_secs_f64(),
            "bytes_sent": job.bytes_sent.load(Ordering::Relaxed),
            "bytes_received": job.bytes_received.load(Ordering::Relaxed),
        });
        let record = model_record(
            job,
            &outcome.model,
            &report,
            (&self.config.party, &hosts, &spec.dataset),
        );
        self.save_model(record)?;
        Ok(format!(
            "model {} trained: epoch {} of {}, {rows_name} AUC {:.4}, KS {:.4}",
            spec.model_id,
            outcome.best_epoch,
            outcome.history.len(),
            metrics.auc,
            metrics.ks
        ))
    }

    fn run_host(&self, job: &Arc<JobHandle>, proposal: &JobProposal) -> Result<String, NodeError> {
        let guest = proposal.guest.as_str();
        let table = self.load_table(&proposal.dataset, false)?;
        let mut link = Link::new(self, job);
        self.state_event(
            job,
            "psi",
            format!("aligning {} rows with {guest}", table.rows()),
        );
        let aligned = host_psi(&mut link, guest, &table);
        let table = self.aligned(job, aligned, &table)?;
        let aligned_rows = table.rows();
        let offered = fedlearn::receive_proposal(&mut link, guest)?;
        offered.config.validate()?;
        let train_rows = aligned_rows
            - (aligned_rows as f64 * offered.config.validation_fraction).round() as usize;
        let batch = offered
            .config
            .batch_size
            .map_or(train_rows, |b| b.min(train_rows));
        let min_batch = self
            .config
            .rule(guest, "train", &proposal.dataset)
            .map_or(u64::MAX, |r| r.min_batch_rows);
        if (batch as u64) < min_batch {
            return Err(refuse_offer(
                &mut link,
                guest,
                format!(
                    "batches of {batch} rows are below the {min_batch} rows the policy of {} \
                     requires (policy key min_batch_rows)",
                    self.config.party
                ),
            ));
        }
        let batch_rows = offered.config.batch_size.map_or(0, |b| b as u64);
        if offered.model_id != proposal.model_id
            || offered.hosts != proposal.hosts
            || batch_rows != proposal.batch_rows
            || offered.features != proposal.guest_features
        {
            return Err(refuse_offer(
                &mut link,
                guest,
                "the training proposal differs from the accepted job".into(),
            ));
        }
        {
            let mut record = job.record.lock().unwrap_or_else(|e| e.into_inner());
            record.max_epochs = offered.config.max_epochs as u32;
        }
        let outcome = fedlearn::run_host(
            HostJob {
                party: self.config.party.clone(),
                guest: guest.to_owned(),
                table,
            },
            offered,
            &mut link,
            &mut |event| self.training_event(job, event),
        )?;
        // The job's one per-row disclosure: the final model's scores of the revealed rows.
        crate::audit::record(
            &self.store,
            "disclosure.final_scores",
            &job.id,
            guest,
            json!({"model": proposal.model_id, "dataset": proposal.dataset, "rows": outcome.revealed_rows}),
        );
        let report = json!({
            "job_id": job.id,
            "model_id": proposal.model_id,
            "guest": guest,
            "hosts": proposal.hosts,
            "aligned_rows": aligned_rows,
            "epochs": outcome.epochs,
            "revealed_rows": outcome.revealed_rows,
            "bytes_sent": job.bytes_sent.load(Ordering::Relaxed),
            "bytes_received": job.bytes_received.load(Ordering::Relaxed),
        });
        let mut record = model_record(
            job,
            &outcome.model,
            &report,
            (guest, &proposal.hosts, &proposal.dataset),
        );
        record.pair_seeds = exchange_scoring_seeds(&mut link, &self.config.party, &proposal.hosts)?;
        self.save_model(record)?;
        Ok(format!(
            "model {}: this node's part trained over {} epochs",
            proposal.model_id, outcome.epochs
        ))
    }

    /// After PSI: the aligned rows of `table`, announced as the start of training.
    fn aligned(
        &self,
        job: &JobHandle,
        psi: Result<Vec<u32>, NodeError>,
        table: &Table,
    ) -> Result<Table, NodeError> {
        let aligned = psi?;
        let rows: Vec<usize> = aligned.iter().map(|&r| r as usize).collect();
        let table = table.select_rows(&rows)?;
        self.emit(
            job,
            EventRecord {
                state: "training".into(),
                message: format!("{} rows in the intersection", rows.len()),
                aligned_rows: rows.len() as u64,
                psi_progress: 1.0,
                ..EventRecord::default()
            },
        );
        Ok(table)
    }

    fn training_event(&self, job: &JobHandle, event: &Event) {
        let record = match event {
            Event::Epoch(report) => EventRecord {
                state: "training".into(),
                message: format!("epoch {}", report.epoch),
                epoch: report.epoch as u32,
                train_loss: Some(report.train_loss),
                validation_loss: report.validation_loss,
                psi_progress: 1.0,
                ..EventRecord::default()
            },
            Event::HostEpoch { epoch } => EventRecord {
                state: "training".into(),
                message: format!("epoch {epoch}"),
                epoch: *epoch as u32,
                psi_progress: 1.0,
                ..EventRecord::default()
            },
        };
        self.emit(job, record);
    }

    /// Stores this node's model part.
    fn save_model(&self, record: ModelRecord) -> Result<(), NodeError> {
        self.store.put_model(&record)
    }
}

fn model_record(
    job: &JobHandle,
    model: &fedlearn::ModelPart,
    report: &serde_json::Value,
    placement: (&str, &[String], &str),
) -> ModelRecord {
    let (guest, hosts, dataset) = placement;
    ModelRecord {
        model_id: model.model_id.clone(),
        job_id: job.id.clone(),
        role: if model.role == fedlearn::Role::Guest {
            "guest"
        } else {
            "host"
        }
        .into(),
        features: model.features.len() as u32,
        created_unix_ms: crate::now_ms(),
        part_json: model.to_json(),
        report_json: serde_json::to_string_pretty(report).unwrap_or_default(),
        guest: guest.to_owned(),
        hosts: hosts.to_vec(),
        dataset: dataset.to_owned(),
        pair_seeds: Default::default(),
    }
}

/// Tells every peer of a job that it stopped (one attempt each; the peers' receive timeouts
/// cover a peer this does not reach).
fn abort_peers(node: &NodeState, job: &JobHandle, peers: &[String], reason: &str) {
    let mut link = Link::new(node, job);
    crate::audit::record(
        &node.store,
        "job.abort_sent",
        &job.id,
        &peers.join(","),
        json!({"reason": reason}),
    );
    for peer in peers {
        if let Err(e) = link.send_raw(peer, "abort", reason.as_bytes().to_vec(), false) {
            tracing::warn!(job = %job.id, %peer, error = %e, "could not tell a peer the job stopped");
        }
    }
}

/// A job's connection to its peers: numbered sends through the federation service, ordered
/// receives from the mailbox.
pub struct Link<'a> {
    node: &'a NodeState,
    job: &'a JobHandle,
    next_seq: HashMap<String, u64>,
}

impl<'a> Link<'a> {
    fn new(node: &'a NodeState, job: &'a JobHandle) -> Link<'a> {
        Link {
            node,
            job,
            next_seq: HashMap::new(),
        }
    }

    fn count(&self, peer: &str, direction: &'static str, kind: String, bytes: usize) {
        let mut traffic = self.job.traffic.lock().unwrap_or_else(|e| e.into_inner());
        let entry = traffic
            .entry((peer.to_owned(), direction, kind))
            .or_default();
        entry.0 += 1;
        entry.1 += bytes as u64;
    }

    /// Sends one numbered message (an "abort" is unnumbered for the receiver). A cancelled
    /// job sends nothing but aborts.
    fn send_raw(
        &mut self,
        to: &str,
        kind: &str,
        bytes: Vec<u8>,
        retry: bool,
    ) -> Result<(), NodeError> {
        if kind != "abort" && self.job.cancelled.load(Ordering::SeqCst) {
            return Err(NodeError::Cancelled("cancelled by the operator".into()));
        }
        let seq = self.next_seq.entry(to.to_owned()).or_insert(0);
        let this = *seq;
        *seq += 1;
        self.node.runtime.block_on(self.node.peers.deliver(
            to,
            &self.job.id,
            this,
            kind,
            &bytes,
            retry,
        ))?;
        self.job
            .bytes_sent
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn receive_raw(&mut self, from: &str) -> Result<Delivery, NodeError> {
        let timeout = self.node.config.federation.receive_timeout();
        match self.node.mailbox.receive(&self.job.id, from, timeout) {
            Ok(delivery) => {
                self.job
                    .bytes_received
                    .fetch_add(delivery.bytes.len() as u64, Ordering::Relaxed);
                Ok(delivery)
            }
            Err(ReceiveError::Timeout) => Err(NodeError::Peer {
                peer: from.to_owned(),
                reason: format!("sent nothing for {} s", timeout.as_secs()),
            }),
            Err(ReceiveError::Closed(reason)) if self.job.cancelled.load(Ordering::SeqCst) => {
                Err(NodeError::Cancelled(reason))
            }
            Err(ReceiveError::Closed(reason)) => Err(NodeError::Stopped(reason)),
        }
    }

    fn send_psi(&mut self, to: &str, body: Body) -> Result<(), NodeError> {
        let kind = format!("psi.{}", psi_kind(&body));
        let bytes = encode_psi(body);
        let length = bytes.len();
        self.send_raw(to, "psi", bytes, true)?;
        self.count(to, "sent", kind, length);
        Ok(())
    }

    fn receive_psi(&mut self, from: &str) -> Result<Body, NodeError> {
        let delivery = self.receive_raw(from)?;
        if delivery.kind != "psi" {
            return Err(NodeError::Peer {
                peer: from.to_owned(),
                reason: format!("sent a {:?} message during PSI", delivery.kind),
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
    fn send(&mut self, to: &str, message: Message) -> Result<(), fedlearn::FedError> {
        let bytes = message.to_bytes();
        let length = bytes.len();
        self.send_raw(to, "fedlearn", bytes, true)
            .map_err(|e| fedlearn::FedError::Transport {
                peer: to.to_owned(),
                reason: e.to_string(),
            })?;
        self.count(to, "sent", format!("fedlearn.{}", message.kind()), length);
        Ok(())
    }

    fn receive(&mut self, from: &str) -> Result<Message, fedlearn::FedError> {
        let delivery = self
            .receive_raw(from)
            .map_err(|e| fedlearn::FedError::Transport {
                peer: from.to_owned(),
                reason: e.to_string(),
            })?;
        if delivery.kind != "fedlearn" {
            return Err(fedlearn::FedError::Protocol {
                peer: from.to_owned(),
                reason: format!("a {:?} message during training", delivery.kind),
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
}

fn psi_kind(body: &Body) -> &'static str {
    match body {
        Body::GuestHello(_) => "guest_hello",
        Body::HostHello(_) => "host_hello",
        Body::Points(_) => "points",
        Body::Tags(_) => "tags",
        Body::Alignment(_) => "alignment",
    }
}

/// Hosts agree a seed per pair for the scoring masks: the lower-named host draws it and sends
/// it to the other over their mutually authenticated channel. Returns hex seeds by peer.
fn exchange_scoring_seeds(
    link: &mut Link<'_>,
    party: &str,
    hosts: &[String],
) -> Result<std::collections::BTreeMap<String, String>, NodeError> {
    let mut seeds = std::collections::BTreeMap::new();
    for other in hosts.iter().filter(|h| h.as_str() > party) {
        let mut seed = [0u8; 32];
        rand::fill(&mut seed);
        link.send_raw(other, "scoring-seed", seed.to_vec(), true)?;
        link.count(other, "sent", "scoring_seed".into(), seed.len());
        seeds.insert(other.clone(), hex::encode(seed));
    }
    for other in hosts.iter().filter(|h| h.as_str() < party) {
        let delivery = link.receive_raw(other)?;
        if delivery.kind != "scoring-seed" || delivery.bytes.len() != 32 {
            return Err(NodeError::Peer {
                peer: other.clone(),
                reason: format!(
                    "sent a {:?} message where the scoring seed was due",
                    delivery.kind
                ),
            });
        }
        link.count(other, "received", "scoring_seed".into(), 32);
        seeds.insert(other.clone(), hex::encode(&delivery.bytes));
    }
    Ok(seeds)
}

fn unexpected(peer: &str, expected: &str) -> NodeError {
    NodeError::Peer {
        peer: peer.to_owned(),
        reason: format!("sent another PSI message where {expected} was due"),
    }
}

fn guest_psi(
    node: &NodeState,
    job: &JobHandle,
    link: &mut Link<'_>,
    table: &Table,
    hosts: &[String],
) -> Result<Vec<u32>, NodeError> {
    let ids = IdColumn::from_ids(table.ids())?;
    let names: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let mut guest = PsiGuest::new(ids, &names, GuestConfig::default())?;
    let hello = guest.hello();
    for host in hosts {
        link.send_psi(host, guest_hello_to_proto(&hello))?;
    }
    let mut host_batches = Vec::with_capacity(hosts.len());
    for host in hosts {
        match link.receive_psi(host)? {
            Body::HostHello(reply) => {
                let reply = host_hello_from_proto(&reply);
                let cap = node.config.federation.max_peer_rows;
                if reply.host_rows > cap {
                    return Err(NodeError::Peer {
                        peer: host.clone(),
                        reason: format!(
                            "announced {} ids; federation.max_peer_rows is {cap}",
                            reply.host_rows
                        ),
                    });
                }
                guest.receive_host_hello(host, &reply)?;
                host_batches.push(reply.host_rows.div_ceil(u64::from(hello.batch_size)));
            }
            _ => return Err(unexpected(host, "its hello")),
        }
    }
    let own_batches = u64::from(guest.batch_count());
    let total = (own_batches + host_batches.iter().sum::<u64>()).max(1);
    let progress = |done: u64| {
        node.emit(
            job,
            EventRecord {
                state: "psi".into(),
                message: "matching ids".into(),
                psi_progress: done as f64 / total as f64,
                ..EventRecord::default()
            },
        )
    };
    for batch in 0..guest.batch_count() {
        let Some(points) = guest.blinded_batch(batch) else {
            break;
        };
        let body = points_to_proto(&points);
        for host in hosts {
            link.send_psi(host, body.clone())?;
        }
        for host in hosts {
            match link.receive_psi(host)? {
                Body::Tags(tags) => guest.receive_tags(host, &tags_from_proto(host, &tags)?)?,
                _ => return Err(unexpected(host, "tags")),
            }
        }
        progress(u64::from(batch) + 1);
    }
    let mut done = own_batches;
    for (host, batches) in hosts.iter().zip(host_batches) {
        for _ in 0..batches {
            match link.receive_psi(host)? {
                Body::Points(points) => {
                    guest.receive_host_points(host, &points_from_proto(host, &points)?)?
                }
                _ => return Err(unexpected(host, "points")),
            }
            done += 1;
            progress(done);
        }
    }
    let result = guest.finish()?;
    for (host, alignment) in &result.alignments {
        link.send_psi(host, alignment_to_proto(alignment))?;
    }
    Ok(result.output.aligned_rows)
}

fn host_psi(link: &mut Link<'_>, guest: &str, table: &Table) -> Result<Vec<u32>, NodeError> {
    let hello = match link.receive_psi(guest)? {
        Body::GuestHello(hello) => guest_hello_from_proto(guest, &hello)?,
        _ => return Err(unexpected(guest, "its hello")),
    };
    let cap = link.node.config.federation.max_peer_rows;
    if hello.guest_rows > cap {
        return Err(NodeError::Peer {
            peer: guest.to_owned(),
            reason: format!(
                "announced {} ids; federation.max_peer_rows is {cap}",
                hello.guest_rows
            ),
        });
    }
    if hello.result != psi::ResultMode::BothSides {
        return Err(NodeError::Peer {
            peer: guest.to_owned(),
            reason: "training needs both-sides PSI".into(),
        });
    }
    let ids = IdColumn::from_ids(table.ids())?;
    let (session, reply) = PsiHost::new(guest, ids, DuplicatePolicy::Reject, &hello)?;
    link.send_psi(guest, host_hello_to_proto(&reply))?;
    let guest_batches = hello
        .guest_rows
        .div_ceil(u64::from(hello.batch_size.max(1)));
    for _ in 0..guest_batches {
        match link.receive_psi(guest)? {
            Body::Points(points) => {
                let tags = session.answer(&points_from_proto(guest, &points)?)?;
                link.send_psi(guest, tags_to_proto(&tags))?;
            }
            _ => return Err(unexpected(guest, "points")),
        }
    }
    for batch in 0..session.batch_count() {
        let Some(points) = session.blinded_batch(batch) else {
            break;
        };
        link.send_psi(guest, points_to_proto(&points))?;
    }
    match link.receive_psi(guest)? {
        Body::Alignment(alignment) => {
            let output = session.receive_alignment(&alignment_from_proto(guest, &alignment)?)?;
            Ok(output.aligned_rows)
        }
        _ => Err(unexpected(guest, "the alignment")),
    }
}

/// The policy's limits on a proposed job's shape, before anything runs: the guest's features
/// and the batch size it announces.
fn check_job_shape(
    party: &str,
    rule: &crate::config::PolicyRule,
    proposal: &JobProposal,
) -> Result<(), String> {
    if proposal.guest_features > rule.max_guest_features {
        return Err(format!(
            "the job brings {} guest features; the policy of {party} allows {} at most {} on \
             dataset {:?} (policy key max_guest_features)",
            proposal.guest_features, proposal.guest, rule.max_guest_features, proposal.dataset
        ));
    }
    if proposal.batch_rows != 0 && proposal.batch_rows < rule.min_batch_rows {
        return Err(format!(
            "batches of {} rows are below the {} rows the policy of {party} requires of {} on \
             dataset {:?} (policy key min_batch_rows)",
            proposal.batch_rows, rule.min_batch_rows, proposal.guest, proposal.dataset
        ));
    }
    Ok(())
}

/// Refuses the guest's training proposal: tells it why and fails this node's job.
fn refuse_offer(link: &mut Link<'_>, guest: &str, reason: String) -> NodeError {
    // Best effort: the guest learns the reason from its own failure otherwise.
    let _ = link.send(
        guest,
        Message::Abort {
            reason: reason.clone(),
        },
    );
    NodeError::Peer {
        peer: guest.to_owned(),
        reason,
    }
}
