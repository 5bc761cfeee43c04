//! The jobs service (operator ↔ own node): submit a job spec, watch, list and cancel jobs,
//! list and fetch models, show and verify the audit log. Callers must present a certificate
//! valid for one of the configured `operators`.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::NodeError;
use crate::proto::jobs_server::Jobs;
use crate::proto::{
    self, JobRef, ListJobsReply, ListJobsRequest, ListModelsReply, ListModelsRequest,
};
use crate::services::records::{audit_proto, event_proto, is_final, status_proto, summary_proto};
use crate::services::{auth, blocking};
use crate::state::NodeState;
use crate::store::{EventRecord, JobRecord};

/// The jobs service: callers must present a certificate valid for one of `operators`.
pub(crate) struct JobsService {
    pub(crate) node: Arc<NodeState>,
}

impl JobsService {
    fn authorise<T>(&self, request: &Request<T>) -> Result<String, NodeError> {
        auth::operator(&self.node, request)
    }

    fn record(&self, job_id: &str) -> Result<JobRecord, NodeError> {
        self.node.job(job_id)?.ok_or_else(|| {
            NodeError::NotFound(format!("no job {job_id:?} on {}", self.node.config().party))
        })
    }
}

#[tonic::async_trait]
impl Jobs for JobsService {
    async fn submit(
        &self,
        request: Request<proto::SubmitRequest>,
    ) -> Result<Response<proto::JobStatus>, Status> {
        let operator = self.authorise(&request)?;
        let node = self.node.clone();
        let spec = request.into_inner().spec_toml;
        let record = blocking(move || node.submit(&spec, &operator)).await??;
        Ok(Response::new(status_proto(&record)))
    }

    type WatchStream = ReceiverStream<Result<proto::JobEvent, Status>>;

    async fn watch(&self, request: Request<JobRef>) -> Result<Response<Self::WatchStream>, Status> {
        self.authorise(&request)?;
        let job_id = request.into_inner().job_id;
        let (tx, rx) = mpsc::channel(64);
        match self.node.live(&job_id) {
            Some(handle) => {
                let (past, mut live) = handle.subscribe();
                tokio::spawn(async move {
                    // Sends events[from..]; returns whether to stop (watcher gone or job over).
                    let send_from = |events: Vec<EventRecord>, from: usize| {
                        let tx = tx.clone();
                        let job_id = job_id.clone();
                        let max_epochs = handle.max_epochs();
                        async move {
                            for event in events.iter().skip(from) {
                                let done = is_final(&event.state);
                                if tx
                                    .send(Ok(event_proto(&job_id, max_epochs, event)))
                                    .await
                                    .is_err()
                                    || done
                                {
                                    return true;
                                }
                            }
                            false
                        }
                    };
                    let mut next = past.len();
                    if send_from(past, 0).await {
                        return;
                    }
                    loop {
                        match live.recv().await {
                            Ok((index, event)) if index >= next => {
                                next = index + 1;
                                if send_from(vec![event], 0).await {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                                // Too slow for the live feed: catch up from the record.
                                let events = handle.record().events;
                                let total = events.len();
                                if send_from(events, next).await {
                                    return;
                                }
                                next = total;
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        }
                    }
                });
            }
            None => {
                let record = self.record(&job_id)?;
                tokio::spawn(async move {
                    for event in &record.events {
                        if tx
                            .send(Ok(event_proto(&job_id, record.max_epochs, event)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get(&self, request: Request<JobRef>) -> Result<Response<proto::JobStatus>, Status> {
        self.authorise(&request)?;
        let record = self.record(&request.into_inner().job_id)?;
        Ok(Response::new(status_proto(&record)))
    }

    async fn list(
        &self,
        request: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsReply>, Status> {
        self.authorise(&request)?;
        let asked = request.into_inner();
        let limit = page_size(asked.limit, 100);
        let stored = self.node.store.jobs()?;
        // Oldest first, ties by id: the order pages follow.
        let after = stored
            .iter()
            .find(|j| j.job_id == asked.after_job_id)
            .map(|j| (j.created_unix_ms, j.job_id.clone()));
        if after.is_none() && !asked.after_job_id.is_empty() {
            return Err(NodeError::NotFound(format!(
                "no job {:?} to list after",
                asked.after_job_id
            ))
            .into());
        }
        let mut chosen: Vec<_> = stored
            .iter()
            .filter(|j| j.created_unix_ms >= asked.since_unix_ms)
            .filter(|j| {
                after
                    .as_ref()
                    .is_none_or(|a| (j.created_unix_ms, j.job_id.clone()) > *a)
            })
            .collect();
        chosen.sort_by(|a, b| (a.created_unix_ms, &a.job_id).cmp(&(b.created_unix_ms, &b.job_id)));
        let more = chosen.len() > limit;
        let jobs = chosen
            .into_iter()
            .take(limit)
            .map(|stored| {
                let mut status = match self.node.live(&stored.job_id) {
                    Some(handle) => status_proto(&handle.record()),
                    None => status_proto(stored),
                };
                status.binning_report.clear();
                status
            })
            .collect();
        Ok(Response::new(ListJobsReply { jobs, more }))
    }

    async fn cancel(&self, request: Request<JobRef>) -> Result<Response<proto::JobStatus>, Status> {
        let operator = self.authorise(&request)?;
        let job_id = request.into_inner().job_id;
        let record = self.node.cancel(&job_id)?;
        tracing::info!(%operator, job = %job_id, "cancel requested");
        crate::audit::record(
            &self.node.store,
            "job.cancel",
            &job_id,
            &operator,
            serde_json::json!({}),
        );
        Ok(Response::new(status_proto(&record)))
    }

    async fn list_models(
        &self,
        request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsReply>, Status> {
        self.authorise(&request)?;
        let models = self.node.store.models()?;
        Ok(Response::new(ListModelsReply {
            models: models.iter().map(summary_proto).collect(),
        }))
    }

    async fn archive_model(
        &self,
        request: Request<proto::ModelRef>,
    ) -> Result<Response<proto::ModelSummary>, Status> {
        let operator = self.authorise(&request)?;
        let node = self.node.clone();
        let asked = request.into_inner().model_id;
        let model = blocking(move || {
            crate::models::archive(&node.store, &node.config().party, &asked, &operator)
        })
        .await??;
        self.node.scores.forget_model(&model.model_id);
        Ok(Response::new(summary_proto(&model)))
    }

    async fn delete_model(
        &self,
        request: Request<proto::ModelRef>,
    ) -> Result<Response<proto::ModelSummary>, Status> {
        let operator = self.authorise(&request)?;
        let node = self.node.clone();
        let asked = request.into_inner().model_id;
        let gone = blocking(move || {
            crate::models::delete(&node.store, &node.config().party, &asked, &operator)
        })
        .await??;
        // Nothing computed from its weights stays in memory either.
        self.node.scores.forget_model(&gone.model_id);
        Ok(Response::new(proto::ModelSummary {
            model_id: gone.model_id,
            job_id: gone.job_id,
            role: gone.role,
            created_unix_ms: gone.created_unix_ms,
            deleted_unix_ms: gone.deleted_unix_ms,
            ..Default::default()
        }))
    }

    async fn reload_config(
        &self,
        request: Request<proto::ReloadConfigRequest>,
    ) -> Result<Response<proto::ReloadConfigReply>, Status> {
        self.authorise(&request)?;
        let node = self.node.clone();
        let changed = blocking(move || node.reload())
            .await?
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(proto::ReloadConfigReply {
            changed: changed.into_iter().map(String::from).collect(),
        }))
    }

    async fn verify_audit(
        &self,
        request: Request<proto::VerifyAuditRequest>,
    ) -> Result<Response<proto::VerifyAuditReply>, Status> {
        self.authorise(&request)?;
        let node = self.node.clone();
        let verdict = blocking(move || crate::audit::verify(&node.store)).await??;
        let mut reply = match verdict {
            crate::audit::Verdict::Intact { records } => proto::VerifyAuditReply {
                intact: true,
                records,
                ..Default::default()
            },
            crate::audit::Verdict::Broken {
                records,
                seq,
                reason,
            } => proto::VerifyAuditReply {
                intact: false,
                records,
                first_broken: seq,
                reason,
                ..Default::default()
            },
        };
        // What each peer keeps of this log: a cut or a rewrite shows against it.
        for peer in &self.node.config().peers {
            let asked = self.node.peers.anchor(&peer.name, None);
            let kept = match tokio::time::timeout(std::time::Duration::from_secs(10), asked).await {
                Ok(Ok(kept)) => kept,
                Ok(Err(e)) => {
                    reply
                        .anchors
                        .push(format!("{}: not checked ({e})", peer.name));
                    continue;
                }
                Err(_) => {
                    reply
                        .anchors
                        .push(format!("{}: not checked (no answer in 10 s)", peer.name));
                    continue;
                }
            };
            let Some(head) = kept else {
                reply
                    .anchors
                    .push(format!("{}: keeps nothing of this log yet", peer.name));
                continue;
            };
            let seq = head.seq;
            // The head was signed with this node's key (unless the key changed since).
            let own = self.node.identity.certificate().map(|c| c.as_ref());
            let signed = own.is_some_and(|own| {
                crate::audit::head_signed_by(&head, &self.node.config().party, &peer.name, own)
            });
            let signed = if signed {
                "signed by this node"
            } else {
                "not signed with this node's current key"
            };
            match crate::audit::check_anchor(&self.node.store, &peer.name, &head) {
                Ok(()) => reply
                    .anchors
                    .push(format!("{} keeps #{seq} ({signed}): agrees", peer.name)),
                Err(e) => {
                    reply
                        .anchors
                        .push(format!("{} keeps #{seq}: {e}", peer.name));
                    if reply.intact {
                        reply.intact = false;
                        reply.first_broken = seq;
                        reply.reason = e.to_string();
                    }
                }
            }
        }
        Ok(Response::new(reply))
    }

    async fn list_audit(
        &self,
        request: Request<proto::ListAuditRequest>,
    ) -> Result<Response<proto::ListAuditReply>, Status> {
        self.authorise(&request)?;
        let asked = request.into_inner();
        let limit = page_size(asked.limit, 500);
        let (records, next_seq, more) =
            crate::audit::page(&self.node.store, asked.from_seq, limit, |r| {
                (asked.job_id.is_empty() || r.job_id == asked.job_id)
                    && r.unix_ms >= asked.since_unix_ms
            })?;
        Ok(Response::new(proto::ListAuditReply {
            records: records.into_iter().map(audit_proto).collect(),
            next_seq,
            more,
        }))
    }

    async fn get_model(
        &self,
        request: Request<proto::ModelRef>,
    ) -> Result<Response<proto::Model>, Status> {
        self.authorise(&request)?;
        let model_id = request.into_inner().model_id;
        let model = crate::models::held(&self.node.store, &self.node.config().party, &model_id)?;
        Ok(Response::new(proto::Model {
            summary: Some(summary_proto(&model)),
            part_json: model.part_json,
            report_json: model.report_json,
        }))
    }
}

/// A page size: `asked`, or `most` when `asked` is 0 or larger.
fn page_size(asked: u32, most: usize) -> usize {
    match asked as usize {
        0 => most,
        n => n.min(most),
    }
}
