//! The runners: what the guest and a host do in a job, from loading the dataset to storing
//! the model part.

use std::sync::Arc;
use std::time::Instant;

use fedlearn::{Event, GuestJob, HostJob, Message, Table, Transport};
use serde_json::json;

use crate::error::{NodeError, PeerFault, Refusal};
use crate::jobs::link::Link;
use crate::jobs::resume::{Alignment, Interruption};
use crate::jobs::staged::Staged;
use crate::jobs::{admission, psi, seeds};
use crate::proto::JobProposal;
use crate::registry::JobHandle;
use crate::spec::{JobKind, JobSpec};
use crate::state::NodeState;
use crate::store::{EventRecord, MetricsRecord, ModelRecord};
use crate::wire::FEDERATION_VERSION;

impl NodeState {
    /// Guest: the whole job; a training job interrupted by a lost party resumes in a new
    /// attempt once every party is back (`restarted`: this node's restart interrupted it).
    pub(super) fn run_guest(
        &self,
        job: &Arc<JobHandle>,
        spec: &JobSpec,
        restarted: bool,
    ) -> Result<String, NodeError> {
        if spec.kind == JobKind::Binning {
            return self.run_binning_guest(job, spec);
        }
        let (selected, chosen);
        let spec = match &spec.select {
            Some(selection) => {
                (selected, chosen) = self.select_columns(job, spec, selection)?;
                &selected
            }
            None => {
                chosen = Vec::new();
                spec
            }
        };
        let reading = |c: &str| spec.prep.reading(c);
        let table = Staged::load(&self.config(), &spec.dataset, true, &reading, job.id())?;
        let guest_features = spec.prep.columns_bound(table.schema()) as u32;
        let hosts: Vec<String> = spec.hosts.iter().map(|h| h.party.clone()).collect();
        let mut resumed = if restarted {
            let cause = format!("{} restarted", self.config().party);
            Some(self.propose_attempt(job, spec, guest_features, &cause)?)
        } else {
            self.propose(job, spec, guest_features, 0)?;
            None
        };
        loop {
            let attempt = job.attempt();
            match self.guest_attempt(job, spec, &table, &hosts, resumed.take(), &chosen) {
                Ok(summary) => return Ok(summary),
                Err(error) => {
                    let Some(interruption) = self.interruption(job, attempt, &error) else {
                        return Err(error);
                    };
                    self.mailbox
                        .close_attempt(job.id(), attempt, &interruption.cause);
                    self.interrupt_peers(job, attempt, &hosts, &interruption);
                    let cause = &interruption.cause;
                    resumed = Some(self.propose_attempt(job, spec, guest_features, cause)?);
                }
            }
        }
    }

    /// Guest: one attempt of a training job: PSI (or, resuming, the alignment every party
    /// kept), then training from the start or from the last epoch every party kept.
    fn guest_attempt(
        &self,
        job: &Arc<JobHandle>,
        spec: &JobSpec,
        table: &Staged,
        hosts: &[String],
        resumed: Option<Vec<crate::proto::ProposalReply>>,
        chosen: &[fedlearn::ChosenColumn],
    ) -> Result<String, NodeError> {
        let mut link = Link::new(self, job);
        let alignment = match resumed {
            None => Alignment::Fresh(self.guest_align(job, &mut link, table, hosts, "training")?),
            Some(replies) => self.guest_resume(job, &mut link, table, hosts, &replies)?,
        };
        let (table, checkpoint) = match alignment {
            Alignment::Fresh(positions) => (
                self.training_rows(job, table, &positions, spec.train.seed)?,
                None,
            ),
            Alignment::Kept(table, mut checkpoints) => (table, checkpoints.pop()),
        };
        let aligned_rows = table.rows();
        // The guest's binned columns become its scorecard, counted on the aligned rows.
        let binned = table
            .feature_names()
            .iter()
            .any(|c| spec.prep.kept.contains_key(c) || spec.prep.column(c).bins.is_some());
        let aligned = binned.then(|| table.clone());
        let started = Instant::now();
        let outcome = fedlearn::run_guest(
            GuestJob {
                party: self.config().party.clone(),
                model_id: spec.model_id.clone(),
                table,
                hosts: hosts.to_vec(),
                config: spec.train.clone(),
                prep: spec.prep.clone(),
                resume: checkpoint,
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
        job.emit(
            &self.store,
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
        if outcome.convergence != fedlearn::Convergence::Converged {
            job.state_event(
                &self.store,
                "training",
                format!("warning: {}", outcome.convergence),
            );
        }
        let scoring = &self.config().scoring;
        let scorecard = match &aligned {
            Some(table) => scorecard_json(&outcome.model, table, scoring)?,
            None => serde_json::Value::Null,
        };
        let bands: Vec<_> = fedlearn::bands(
            &evaluation.probabilities,
            &evaluation.labels,
            &[scoring.yellow_from, scoring.red_from],
        )
        .into_iter()
        .zip(["blue", "yellow", "red"])
        .map(|(b, name)| json!({"band": name, "from": b.from, "rows": b.count, "mean_probability": b.mean_probability, "observed_rate": b.observed_rate}))
        .collect();
        let selection = spec.select.as_ref().map(|s| {
            json!({
                "binning_job": s.binning_job,
                "merge": s.merge,
                "min_iv": s.min_iv,
                "top_k": s.top_k,
                "columns": chosen,
            })
        });
        let report = json!({
            "job_id": job.id(),
            "model_id": spec.model_id,
            "guest": self.config().party,
            "hosts": hosts,
            "selection": selection,
            "scorecard": scorecard,
            "aligned_rows": aligned_rows,
            "train_config": spec.train,
            "best_epoch": outcome.best_epoch,
            "stop": outcome.stop.to_string(),
            "convergence": outcome.convergence.to_string(),
            "share_frac_bits": outcome.share_frac_bits,
            "evaluation": {
                "rows": rows_name,
                "count": evaluation.count,
                "metrics": metrics,
                "calibration": evaluation.calibration,
                "reliability": evaluation.reliability,
                "bands": bands,
                "roc": fedlearn::roc_curve(&evaluation.probabilities, &evaluation.labels, 20),
            },
            "history": history,
            "training_seconds": started.elapsed().as_secs_f64(),
            "bytes_sent": job.bytes().0,
            "bytes_received": job.bytes().1,
        });
        let record = model_record(
            job,
            &outcome.model,
            &report,
            (&self.config().party, hosts, &spec.dataset),
        );
        self.store.put_model(&record)?;
        Ok(format!(
            "model {} trained: epoch {} of {} ({}), {rows_name} AUC {:.4}, KS {:.4}; {}",
            spec.model_id,
            outcome.best_epoch,
            outcome.history.len(),
            outcome.stop,
            metrics.auc,
            metrics.ks,
            outcome.convergence
        ))
    }

    /// Host: the whole job; an interrupted training job waits for the guest to resume it in
    /// a new attempt (`restarted`: this node's restart interrupted it).
    pub(super) fn run_host(
        &self,
        job: &Arc<JobHandle>,
        proposal: &JobProposal,
        restarted: bool,
    ) -> Result<String, NodeError> {
        if proposal.kind == "binning" {
            return self.run_binning_host(job, proposal);
        }
        let mut proposal = proposal.clone();
        if restarted {
            let restart = Interruption {
                cause: format!("{} restarted", self.config().party),
                lost: None,
            };
            proposal = self.await_attempt(job, &proposal, &restart)?;
        }
        loop {
            match self.host_attempt(job, &proposal) {
                Ok(summary) => return Ok(summary),
                Err(error) => {
                    let Some(interruption) = self.interruption(job, proposal.attempt, &error)
                    else {
                        return Err(error);
                    };
                    proposal = self.await_attempt(job, &proposal, &interruption)?;
                }
            }
        }
    }

    /// Host: one attempt of a training job.
    fn host_attempt(
        &self,
        job: &Arc<JobHandle>,
        proposal: &JobProposal,
    ) -> Result<String, NodeError> {
        let guest = proposal.guest.as_str();
        let mut prep = admission::host_prep(&self.config(), proposal)?;
        self.keep_bins(&mut prep, "host", &[guest.to_owned()], &proposal.dataset)
            .map_err(|detail| {
                // What this node's store holds stays here; the guest reads that it may not.
                tracing::warn!(job = %job.id(), %detail, "refused the bins a proposal names");
                Refusal::BadPrep {
                    party: self.config().party.clone(),
                    reason: format!(
                        "its binning job is not one {} ran with {guest} on this dataset, or its \
                         columns are not that job's",
                        self.config().party
                    ),
                }
            })?;
        let reading = |c: &str| prep.reading(c);
        let table = Staged::load(&self.config(), &proposal.dataset, false, &reading, job.id())?;
        let mut link = Link::for_attempt(self, job, proposal.attempt);
        let alignment = if proposal.attempt == 0 {
            Alignment::Fresh(self.host_align(job, &mut link, &table, guest, "training")?)
        } else {
            self.host_resume(job, &mut link, &table, guest)?
        };
        let offered = fedlearn::receive_proposal(&mut link, guest)?;
        offered.config.validate()?;
        let (table, checkpoints) = match alignment {
            Alignment::Fresh(positions) => (
                self.training_rows(job, &table, &positions, offered.config.seed)?,
                Vec::new(),
            ),
            Alignment::Kept(table, checkpoints) => (table, checkpoints),
        };
        let aligned_rows = table.rows();
        if let Err(refusal) =
            admission::check_offer(&self.config(), proposal, &offered, aligned_rows)
        {
            return Err(refuse_offer(&mut link, guest, refusal));
        }
        match self.same_settings(job, &offered, !checkpoints.is_empty()) {
            Ok(()) => {}
            Err(NodeError::Refused(refusal)) => {
                return Err(refuse_offer(&mut link, guest, *refusal))
            }
            Err(other) => return Err(other),
        }
        job.set_max_epochs(offered.config.max_epochs as u32);
        let outcome = fedlearn::run_host(
            HostJob {
                party: self.config().party.clone(),
                guest: guest.to_owned(),
                table,
                prep,
                checkpoints,
            },
            offered,
            &mut link,
            &mut |event| self.training_event(job, event),
        )?;
        // The job's one per-row disclosure: the final model's scores of the revealed rows. They
        // left with the protocol's last message; without their record the job fails and keeps
        // no model (the budget already counted the job, fail-closed).
        crate::audit::append(
            &self.store,
            "disclosure.final_scores",
            job.id(),
            guest,
            json!({"model": proposal.model_id, "dataset": proposal.dataset, "rows": outcome.revealed_rows}),
        )?;
        let report = json!({
            "job_id": job.id(),
            "model_id": proposal.model_id,
            "guest": guest,
            "hosts": proposal.hosts,
            "aligned_rows": aligned_rows,
            "epochs": outcome.epochs,
            "revealed_rows": outcome.revealed_rows,
            "bytes_sent": job.bytes().0,
            "bytes_received": job.bytes().1,
        });
        let mut record = model_record(
            job,
            &outcome.model,
            &report,
            (guest, &proposal.hosts, &proposal.dataset),
        );
        record.pair_seeds =
            seeds::exchange_scoring_seeds(&mut link, &self.config().party, &proposal.hosts)?;
        self.store.put_model(&record)?;
        Ok(format!(
            "model {}: this node's part trained over {} epochs",
            proposal.model_id, outcome.epochs
        ))
    }

    /// Guest: the job with every party's preparation chosen from the binning job its
    /// `select` names, and the chosen columns.
    fn select_columns(
        &self,
        job: &Arc<JobHandle>,
        spec: &JobSpec,
        selection: &fedlearn::Selection,
    ) -> Result<(JobSpec, Vec<fedlearn::ChosenColumn>), NodeError> {
        let wrong = |reason: String| NodeError::Spec(format!("select: {reason}"));
        let hosts: Vec<String> = spec.hosts.iter().map(|h| h.party.clone()).collect();
        let (record, kept) = self
            .binning_record(&selection.binning_job, "guest", &hosts, &spec.dataset)
            .map_err(wrong)?;
        let report: fedlearn::BinningReport =
            serde_json::from_str(&record.report).map_err(|e| wrong(format!("its report: {e}")))?;
        let parties: Vec<String> = std::iter::once(self.config().party.clone())
            .chain(hosts.iter().cloned())
            .collect();
        let chosen = selection
            .choose(&report, &parties)
            .map_err(|e| wrong(e.to_string()))?;
        let mut own = selection.prep(&self.config().party, &chosen);
        own.keep(kept).map_err(|e| wrong(e.to_string()))?;
        let mut selected = spec.clone();
        selected.prep = own;
        for host in &mut selected.hosts {
            host.prep = Some(selection.prep(&host.party, &chosen));
        }
        let counts: Vec<String> = parties
            .iter()
            .map(|p| {
                let n = chosen.iter().filter(|c| &c.stats.party == p).count();
                format!("{p} {n}")
            })
            .collect();
        job.state_event(
            &self.store,
            "queued",
            format!(
                "{} columns chosen from binning job {} ({}; merge {:?}, min IV {})",
                chosen.len(),
                selection.binning_job,
                counts.join(", "),
                selection.merge,
                selection.min_iv
            ),
        );
        Ok((selected, chosen))
    }

    /// The job's proposal to `host` for `attempt`.
    pub(super) fn job_proposal(
        &self,
        job: &JobHandle,
        spec: &JobSpec,
        host: &crate::spec::HostSpec,
        guest_features: u32,
        attempt: u32,
    ) -> Result<JobProposal, NodeError> {
        Ok(JobProposal {
            version: FEDERATION_VERSION,
            job_id: job.id().to_owned(),
            kind: spec.kind.as_str().into(),
            guest: self.config().party.clone(),
            dataset: host.dataset.clone(),
            hosts: spec.hosts.iter().map(|h| h.party.clone()).collect(),
            model_id: spec.model_id.clone(),
            guest_features,
            prep: serde_json::to_string(&spec.host_prep(host))
                .map_err(|e| NodeError::Spec(format!("prep: {e}")))?,
            attempt,
        })
    }

    /// Guest: proposes the job to every host, in order; the first refusal fails the job.
    pub(super) fn propose(
        &self,
        job: &Arc<JobHandle>,
        spec: &JobSpec,
        guest_features: u32,
        attempt: u32,
    ) -> Result<(), NodeError> {
        for host in &spec.hosts {
            let proposal = self.job_proposal(job, spec, host, guest_features, attempt)?;
            crate::audit::append(
                &self.store,
                "job.proposed",
                job.id(),
                &host.party,
                json!({"dataset": host.dataset, "model": spec.model_id}),
            )?;
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
                job.id(),
                &host.party,
                json!({"reason": reply.reason}),
            );
            if !reply.accepted {
                return Err(NodeError::Peer {
                    peer: host.party.clone(),
                    fault: PeerFault::RefusedJob(reply.reason),
                });
            }
        }
        Ok(())
    }

    /// Guest: PSI with every host; the positions of its aligned rows in `table`, announced as
    /// the start of `state` (training or binning).
    pub(super) fn guest_align(
        &self,
        job: &Arc<JobHandle>,
        link: &mut Link<'_>,
        table: &Staged,
        hosts: &[String],
        state: &str,
    ) -> Result<Vec<u32>, NodeError> {
        job.state_event(
            &self.store,
            "psi",
            format!("aligning {} rows with {}", table.rows(), hosts.join(", ")),
        );
        let aligned = psi::guest_psi(self, job, link, table, hosts);
        self.aligned(job, aligned, state)
    }

    /// Host: PSI with the guest; the positions of its aligned rows in `table`, as for the
    /// guest.
    pub(super) fn host_align(
        &self,
        job: &Arc<JobHandle>,
        link: &mut Link<'_>,
        table: &Staged,
        guest: &str,
        state: &str,
    ) -> Result<Vec<u32>, NodeError> {
        job.state_event(
            &self.store,
            "psi",
            format!("aligning {} rows with {guest}", table.rows()),
        );
        let aligned = psi::host_psi(self, job, link, guest, table);
        self.aligned(job, aligned, state)
    }

    /// After PSI: the positions of the aligned rows in `table` (in PSI order), announced as
    /// the start of `state`.
    fn aligned(
        &self,
        job: &JobHandle,
        psi: Result<Vec<u32>, NodeError>,
        state: &str,
    ) -> Result<Vec<u32>, NodeError> {
        let aligned = psi?;
        job.emit(
            &self.store,
            EventRecord {
                state: state.into(),
                message: format!("{} rows in the intersection", aligned.len()),
                aligned_rows: aligned.len() as u64,
                psi_progress: 1.0,
                ..EventRecord::default()
            },
        );
        Ok(aligned)
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
            Event::Checkpoint(checkpoint) => {
                self.keep_checkpoint(job, checkpoint);
                return;
            }
        };
        job.emit(&self.store, record);
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
        job_id: job.id().to_owned(),
        role: if model.role == fedlearn::Role::Guest {
            "guest"
        } else {
            "host"
        }
        .into(),
        features: model.features.len() as u32,
        created_unix_ms: crate::clock::now_ms(),
        part_json: model.to_json(),
        report_json: serde_json::to_string_pretty(report).unwrap_or_default(),
        guest: guest.to_owned(),
        hosts: hosts.to_vec(),
        dataset: dataset.to_owned(),
        pair_seeds: Default::default(),
        archived_unix_ms: None,
    }
}

/// Refuses the guest's training offer: tells it why and fails this node's job.
fn refuse_offer(link: &mut Link<'_>, guest: &str, refusal: Refusal) -> NodeError {
    // Best effort: the guest learns the reason from its own failure otherwise.
    let _ = link.send(
        guest,
        Message::Abort {
            reason: refusal.to_string(),
        },
    );
    NodeError::Peer {
        peer: guest.to_owned(),
        fault: PeerFault::Offer(Box::new(refusal)),
    }
}

/// The guest's binned columns as a scorecard (see `fedlearn::ModelPart::scorecard`), each
/// bin's points also on the node's scorecard scale (`[scoring]`: points that double the odds).
fn scorecard_json(
    model: &fedlearn::ModelPart,
    table: &Table,
    scoring: &crate::config::ScoringSettings,
) -> Result<serde_json::Value, NodeError> {
    // A bin's share of z moves ln(odds good:bad) by −slope·share under the calibration.
    let slope = model.calibration.map_or(1.0, |c| c.slope);
    let factor = -slope * scoring.points_to_double_odds / std::f64::consts::LN_2;
    let columns = model.scorecard(table)?;
    Ok(columns
        .iter()
        .map(|c| {
            let bins: Vec<_> = c
                .bins
                .iter()
                .map(|b| {
                    let mut bin = json!(b);
                    bin["score_points"] = json!(factor * b.points);
                    bin
                })
                .collect();
            json!({"column": c.name, "iv": c.iv, "bins": bins})
        })
        .collect())
}
