//! Starting a node: TLS listener (handshake failures are logged and counted), the federation
//! and jobs services, gRPC health and reflection, and the metrics endpoint.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::federation::FederationService;
use crate::jobs::NodeState;
use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::proto::federation_server::FederationServer;
use crate::proto::jobs_server::{Jobs, JobsServer};
use crate::proto::scoring_server::ScoringServer;
use crate::proto::{
    self, JobRef, ListJobsReply, ListJobsRequest, ListModelsReply, ListModelsRequest,
};
use crate::store::{EventRecord, JobRecord, MetricsRecord, ModelRecord, Store};
use crate::tls::Identity;

/// A node serving in the background.
pub struct RunningNode {
    /// Where the gRPC server listens.
    pub address: SocketAddr,
    /// Where the metrics endpoint listens, if configured.
    pub metrics_address: Option<SocketAddr>,
    /// The node's state (for tests and embedding).
    pub state: Arc<NodeState>,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningNode {
    /// Stops accepting calls and waits for the server to finish.
    pub async fn shutdown(mut self) -> Result<(), NodeError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        for task in &self.background {
            task.abort();
        }
        match tokio::time::timeout(Duration::from_secs(10), &mut self.server).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(NodeError::Server(format!("gRPC server: {e}"))),
            Ok(Err(e)) => Err(NodeError::Server(format!("gRPC server task: {e}"))),
            Err(_) => {
                self.server.abort();
                Ok(())
            }
        }
    }
}

/// Starts a node from its configuration (on the current tokio runtime).
pub async fn start(config: NodeConfig) -> Result<RunningNode, NodeError> {
    let identity = Identity::load(&config.tls.cert, &config.tls.key, &config.tls.ca)?;
    if !identity.is_for(&config.party) {
        return Err(NodeError::Tls(format!(
            "{}: the certificate is not valid for this node's party name {:?}",
            config.tls.cert.display(),
            config.party
        )));
    }
    let server_tls = identity.server_config()?;
    let store = Store::open(&config.data_dir)?;
    for job in store.fail_interrupted()? {
        tracing::warn!(%job, "marked failed: a restart interrupted it");
    }
    let metrics = Arc::new(Metrics::default());
    let peers = Peers::new(&config, &identity, metrics.clone())?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| NodeError::Server(format!("listen {}: {e}", config.listen)))?;
    let address = listener
        .local_addr()
        .map_err(|e| NodeError::Server(e.to_string()))?;
    let mut background = Vec::new();
    let metrics_address = match config.metrics_listen {
        Some(addr) => {
            let metrics_listener = TcpListener::bind(addr)
                .await
                .map_err(|e| NodeError::Server(format!("metrics_listen {addr}: {e}")))?;
            let bound = metrics_listener
                .local_addr()
                .map_err(|e| NodeError::Server(e.to_string()))?;
            background.push(tokio::spawn(crate::metrics::serve(
                metrics_listener,
                metrics.clone(),
            )));
            Some(bound)
        }
        None => None,
    };
    let party = config.party.clone();
    let state = Arc::new(NodeState::new(
        config,
        store,
        peers,
        metrics.clone(),
        tokio::runtime::Handle::current(),
    ));

    let (connections, incoming) = mpsc::channel(64);
    background.push(tokio::spawn(accept_tls(
        listener,
        TlsAcceptor::from(server_tls),
        connections,
        state.clone(),
    )));

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<FederationServer<FederationService>>()
        .await;
    health.set_serving::<JobsServer<JobsService>>().await;
    health
        .set_serving::<ScoringServer<crate::scoring::ScoringService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::DESCRIPTOR)
        .build_v1()
        .map_err(|e| NodeError::Server(format!("reflection: {e}")))?;
    let federation = FederationServer::new(FederationService {
        node: state.clone(),
    })
    .max_decoding_message_size(8 << 20);
    let jobs = JobsServer::new(JobsService {
        node: state.clone(),
    });
    let scoring = ScoringServer::new(crate::scoring::ScoringService {
        node: state.clone(),
    });
    let (shutdown, stop) = oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(federation)
            .add_service(jobs)
            .add_service(scoring)
            .serve_with_incoming_shutdown(ReceiverStream::new(incoming), async {
                let _ = stop.await;
            }),
    );
    tracing::info!(%party, %address, ?metrics_address, "node serving");
    Ok(RunningNode {
        address,
        metrics_address,
        state,
        shutdown: Some(shutdown),
        server,
        background,
    })
}

type TlsConnection = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// Refused handshakes per remote IP: when the last audit record was written, and how many
/// refusals came since. Anyone who can connect can provoke refusals, so the audit log gets at
/// most one record per address per minute (with the count); logs and metrics get every one.
#[derive(Default)]
struct RefusalThrottle {
    by_ip: std::collections::HashMap<std::net::IpAddr, (std::time::Instant, u64)>,
}

const REFUSAL_AUDIT_EVERY: Duration = Duration::from_secs(60);

impl RefusalThrottle {
    /// `Some(refusals since the last record)` when this refusal should be audited.
    fn admit(&mut self, ip: std::net::IpAddr) -> Option<u64> {
        let now = std::time::Instant::now();
        if self.by_ip.len() > 10_000 {
            self.by_ip
                .retain(|_, (at, _)| now.duration_since(*at) < REFUSAL_AUDIT_EVERY);
        }
        match self.by_ip.get_mut(&ip) {
            Some((at, count)) if now.duration_since(*at) < REFUSAL_AUDIT_EVERY => {
                *count += 1;
                None
            }
            Some((at, count)) => {
                let since = *count + 1;
                (*at, *count) = (now, 0);
                Some(since)
            }
            None => {
                self.by_ip.insert(ip, (now, 0));
                Some(1)
            }
        }
    }
}

/// Accepts TCP connections and completes TLS handshakes; a refused handshake (no client
/// certificate, wrong CA, expired, …) is logged with the remote address, counted and audited
/// (throttled per address).
async fn accept_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    connections: mpsc::Sender<Result<TlsConnection, std::io::Error>>,
    node: Arc<NodeState>,
) {
    let throttle = Arc::new(std::sync::Mutex::new(RefusalThrottle::default()));
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let connections = connections.clone();
        let node = node.clone();
        let throttle = throttle.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = connections.send(Ok(stream)).await;
                }
                Ok(Err(e)) => {
                    tracing::warn!(%remote, error = %e, "refused a TLS connection");
                    node.metrics
                        .add("unseen_refused_total", &[("reason", "tls")], 1.0);
                    let admitted = throttle
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .admit(remote.ip());
                    let Some(refusals) = admitted else { return };
                    let detail = serde_json::json!({"reason": e.to_string(), "refusals": refusals});
                    let store = node.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        crate::audit::record(
                            &store.store,
                            "connection.refused",
                            "",
                            &remote.ip().to_string(),
                            detail,
                        )
                    })
                    .await;
                }
                Err(_) => {
                    tracing::warn!(%remote, "TLS handshake timed out");
                    node.metrics
                        .add("unseen_refused_total", &[("reason", "tls timeout")], 1.0);
                }
            }
        });
    }
}

/// The jobs service: callers must present a certificate valid for one of `operators`.
pub struct JobsService {
    node: Arc<NodeState>,
}

impl JobsService {
    fn authorise<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let certs = request.peer_certs();
        let operators = self.node.config.operators.iter().map(String::as_str);
        match crate::tls::peer_name(certs.as_deref().map(|c| &c[..]), operators) {
            Some(name) => Ok(name.to_owned()),
            None => {
                tracing::warn!("refused a jobs call: the certificate names no operator");
                crate::audit::record(
                    &self.node.store,
                    "operator.refused",
                    "",
                    "",
                    serde_json::json!({}),
                );
                self.node.metrics.add(
                    "unseen_refused_total",
                    &[("reason", "operator identity")],
                    1.0,
                );
                Err(Status::permission_denied(format!(
                    "the caller's certificate is not valid for any operator of {}",
                    self.node.config.party
                )))
            }
        }
    }

    fn record(&self, job_id: &str) -> Result<JobRecord, Status> {
        self.node.job(job_id).map_err(internal)?.ok_or_else(|| {
            Status::not_found(format!("no job {job_id:?} on {}", self.node.config.party))
        })
    }
}

fn internal(e: NodeError) -> Status {
    Status::internal(e.to_string())
}

fn metrics_proto(m: Option<MetricsRecord>) -> Option<proto::Metrics> {
    m.map(|m| proto::Metrics {
        auc: m.auc,
        ks: m.ks,
        log_loss: m.log_loss,
        accuracy: m.accuracy,
    })
}

/// A job record as a status message.
pub fn status_proto(record: &JobRecord) -> proto::JobStatus {
    let last = record.last().cloned().unwrap_or_default();
    let best = record
        .events
        .iter()
        .rev()
        .find(|e| e.train.is_some() || e.validation.is_some())
        .cloned()
        .unwrap_or_default();
    proto::JobStatus {
        job_id: record.job_id.clone(),
        kind: record.kind.clone(),
        role: record.role.clone(),
        state: record.state.clone(),
        model_id: record.model_id.clone(),
        error: record.error.clone(),
        created_unix_ms: record.created_unix_ms,
        updated_unix_ms: record.updated_unix_ms,
        peers: record.peers.clone(),
        aligned_rows: last.aligned_rows,
        epochs: record.events.iter().map(|e| e.epoch).max().unwrap_or(0),
        bytes_sent: last.bytes_sent,
        bytes_received: last.bytes_received,
        train: metrics_proto(best.train),
        validation: metrics_proto(best.validation),
    }
}

fn event_proto(job_id: &str, max_epochs: u32, event: &EventRecord) -> proto::JobEvent {
    proto::JobEvent {
        job_id: job_id.to_owned(),
        state: event.state.clone(),
        message: event.message.clone(),
        epoch: event.epoch,
        max_epochs,
        train: metrics_proto(event.train),
        validation: metrics_proto(event.validation),
        bytes_sent: event.bytes_sent,
        bytes_received: event.bytes_received,
        aligned_rows: event.aligned_rows,
        psi_progress: event.psi_progress,
        unix_ms: event.unix_ms,
        train_loss: event.train_loss,
        validation_loss: event.validation_loss,
    }
}

fn summary_proto(model: &ModelRecord) -> proto::ModelSummary {
    proto::ModelSummary {
        model_id: model.model_id.clone(),
        job_id: model.job_id.clone(),
        role: model.role.clone(),
        features: model.features,
        created_unix_ms: model.created_unix_ms,
    }
}

fn is_final(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "cancelled")
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
        let record = tokio::task::spawn_blocking(move || node.submit(&spec))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| match e {
                NodeError::Spec(_) => Status::invalid_argument(e.to_string()),
                other => Status::internal(other.to_string()),
            })?;
        tracing::info!(%operator, job = %record.job_id, "submitted by operator");
        crate::audit::record(
            &self.node.store,
            "job.submitted",
            &record.job_id,
            &operator,
            serde_json::json!({"model": record.model_id, "hosts": record.peers, "dataset": record.dataset}),
        );
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
        let jobs = self.node.store.jobs().map_err(internal)?;
        let jobs = jobs
            .iter()
            .map(|stored| match self.node.live(&stored.job_id) {
                Some(handle) => status_proto(&handle.record()),
                None => status_proto(stored),
            })
            .collect();
        Ok(Response::new(ListJobsReply { jobs }))
    }

    async fn cancel(&self, request: Request<JobRef>) -> Result<Response<proto::JobStatus>, Status> {
        let operator = self.authorise(&request)?;
        let job_id = request.into_inner().job_id;
        let record = self
            .node
            .cancel(&job_id)
            .map_err(|e| Status::not_found(e.to_string()))?;
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
        let models = self.node.store.models().map_err(internal)?;
        Ok(Response::new(ListModelsReply {
            models: models.iter().map(summary_proto).collect(),
        }))
    }

    async fn verify_audit(
        &self,
        request: Request<proto::VerifyAuditRequest>,
    ) -> Result<Response<proto::VerifyAuditReply>, Status> {
        self.authorise(&request)?;
        let reply = match crate::audit::verify(&self.node.store).map_err(internal)? {
            crate::audit::Verdict::Intact { records } => proto::VerifyAuditReply {
                intact: true,
                records,
                first_broken: 0,
                reason: String::new(),
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
            },
        };
        Ok(Response::new(reply))
    }

    async fn list_audit(
        &self,
        request: Request<proto::ListAuditRequest>,
    ) -> Result<Response<proto::ListAuditReply>, Status> {
        self.authorise(&request)?;
        let job = request.into_inner().job_id;
        let records = crate::audit::records(&self.node.store)
            .map_err(internal)?
            .into_iter()
            .filter(|r| job.is_empty() || r.job_id == job)
            .map(|r| proto::AuditRecord {
                seq: r.seq,
                unix_ms: r.unix_ms,
                event: r.event,
                job_id: r.job_id,
                peer: r.peer,
                detail_json: r.detail.to_string(),
                hash: r.hash,
            })
            .collect();
        Ok(Response::new(proto::ListAuditReply { records }))
    }

    async fn get_model(
        &self,
        request: Request<proto::ModelRef>,
    ) -> Result<Response<proto::Model>, Status> {
        self.authorise(&request)?;
        let model_id = request.into_inner().model_id;
        let model = self
            .node
            .store
            .model(&model_id)
            .map_err(internal)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no model {model_id:?} on {}",
                    self.node.config.party
                ))
            })?;
        Ok(Response::new(proto::Model {
            summary: Some(summary_proto(&model)),
            part_json: model.part_json,
            report_json: model.report_json,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_audited_once_per_address_per_window() {
        let mut throttle = RefusalThrottle::default();
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert_eq!(throttle.admit(a), Some(1));
        assert_eq!(throttle.admit(a), None);
        assert_eq!(throttle.admit(a), None);
        assert_eq!(throttle.admit(b), Some(1));
        // The window has passed: the next record carries the refusals it stands for.
        throttle.by_ip.get_mut(&a).unwrap().0 -= REFUSAL_AUDIT_EVERY;
        assert_eq!(throttle.admit(a), Some(3));
    }
}
