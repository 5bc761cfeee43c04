//! Starting a node: TLS listener (handshake failures are logged and counted), the federation
//! jobs, scoring and workers services, gRPC health and reflection, and the metrics endpoint.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::proto::federation_server::FederationServer;
use crate::proto::jobs_server::JobsServer;
use crate::proto::scoring_server::ScoringServer;
use crate::proto::workers_server::WorkersServer;
use crate::services::federation::FederationService;
use crate::services::jobs::JobsService;
use crate::services::scoring::ScoringService;
use crate::services::workers::WorkersService;
use crate::state::NodeState;
use crate::store::Store;
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
    /// Stops its live jobs (telling their peers), stops accepting calls and waits for the
    /// server to finish.
    pub async fn shutdown(mut self) -> Result<(), NodeError> {
        let reason = format!("{} shut down", self.state.config().party);
        self.state.stop_all(&reason, Duration::from_secs(5)).await;
        // Workers' streams would keep the server from ending.
        self.state.workers.close();
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
    let mut identity = Identity::load(&config.tls.cert, &config.tls.key, &config.tls.ca)?;
    for peer in &config.peers {
        if let Some(ca) = &peer.ca {
            identity.pin_peer_ca(&peer.name, ca)?;
        }
    }
    identity.check_revocations(&config.tls.crls)?;
    if !identity.is_for(&config.party) {
        return Err(NodeError::Tls(format!(
            "{}: the certificate is not valid for this node's party name {:?}",
            config.tls.cert.display(),
            config.party
        )));
    }
    // An expired certificate, or one the CA file did not sign, would only fail later at
    // every peer's handshake, blamed on the peer.
    let now = tokio_rustls::rustls::pki_types::UnixTime::now();
    identity
        .check_own(now)
        .map_err(|reason| NodeError::Tls(format!("{}: {reason}", config.tls.cert.display())))?;
    let server_tls = identity.server_config()?;
    let key = crate::sealing::StoreKey::load(config.store_key.as_deref(), &config.data_dir)?;
    let store = Store::open(&config.data_dir, key)?;
    // Parts of ids a crashed job left on disk: its next attempt splits them again.
    crate::jobs::forget_spilled(&config.data_dir)?;
    let (interrupted, resumable) = store.interrupted_jobs(config.federation.resume_secs > 0)?;
    for job in &interrupted {
        tracing::warn!(job = %job.job_id, "marked failed: a restart interrupted it");
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
        identity,
        peers,
        metrics.clone(),
        tokio::runtime::Handle::current(),
    ));

    #[cfg(unix)]
    background.push(tokio::spawn(reload_on_hangup(state.clone())));
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
    health.set_serving::<ScoringServer<ScoringService>>().await;
    health.set_serving::<WorkersServer<WorkersService>>().await;
    // Both versions of reflection: grpcurl speaks v1, older clients (grpcio-reflection's
    // Python client among them) v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::DESCRIPTOR)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| NodeError::Server(format!("reflection: {e}")))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| NodeError::Server(format!("reflection: {e}")))?;
    let federation = FederationServer::new(FederationService {
        node: state.clone(),
    })
    .max_decoding_message_size(8 << 20);
    let jobs = JobsServer::new(JobsService {
        node: state.clone(),
    });
    let scoring = ScoringServer::new(ScoringService {
        node: state.clone(),
    });
    // Larger units of work the node runs itself.
    let workers = WorkersServer::new(WorkersService {
        node: state.clone(),
    })
    .max_decoding_message_size(crate::workers::MAX_MESSAGE_BYTES);
    let (shutdown, stop) = oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            // A client that stops answering pings (a frozen worker or peer, a cut network)
            // loses its streams within 40 s instead of holding them until TCP gives up.
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(federation)
            .add_service(jobs)
            .add_service(scoring)
            .add_service(workers)
            .serve_with_incoming_shutdown(ReceiverStream::new(incoming), async {
                let _ = stop.await;
            }),
    );
    state.resume_interrupted(resumable);
    if !interrupted.is_empty() {
        let node = state.clone();
        background.push(tokio::spawn(async move {
            node.report_interrupted(&interrupted).await;
        }));
    }
    background.push(tokio::spawn(anchor_audit(state.clone())));
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

/// Reads the configuration again on every SIGHUP (as `unseen config reload` does); the log
/// says what changed, or why the running configuration stays in force.
#[cfg(unix)]
async fn reload_on_hangup(node: Arc<NodeState>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("SIGHUP cannot be handled here: use unseen config reload");
        return;
    };
    while hangups.recv().await.is_some() {
        let reloading = node.clone();
        match tokio::task::spawn_blocking(move || reloading.reload()).await {
            Ok(Ok(changed)) => tracing::info!(?changed, "SIGHUP: configuration read again"),
            Ok(Err(e)) => tracing::error!(error = %e, "SIGHUP: configuration not read again"),
            Err(e) => tracing::error!(error = %e, "SIGHUP: configuration not read again"),
        }
    }
}

/// Every `federation.anchor_secs`, gives every peer this node's audit head to keep, so that
/// cutting or rewriting the log shows in `unseen audit verify`.
async fn anchor_audit(node: Arc<NodeState>) {
    let every = Duration::from_secs(node.config().federation.anchor_secs);
    loop {
        tokio::time::sleep(every).await;
        let head = match crate::audit::head(&node.store) {
            Ok(Some(head)) => head,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(error = %e, "could not read the audit head");
                continue;
            }
        };
        for peer in &node.config().peers {
            // Advance a peer's anchor only while this log still agrees with it: a cut or
            // rewritten log leaves its anchors where they were, for `audit verify` to show.
            let kept = match node.peers.anchor(&peer.name, None).await {
                Ok(kept) => kept,
                Err(e) => {
                    tracing::debug!(peer = %peer.name, error = %e, "audit head not anchored");
                    continue;
                }
            };
            if let Some(kept) = kept {
                if let Err(e) = crate::audit::check_anchor(&node.store, &peer.name, &kept) {
                    tracing::error!(peer = %peer.name, error = %e, "the audit log disagrees with a peer's anchor; run unseen audit verify");
                    continue;
                }
            }
            let signed = crate::audit::sign_head(
                &node.identity,
                &node.config().party,
                &peer.name,
                head.clone(),
            );
            let signed = match signed {
                Ok(signed) => signed,
                Err(e) => {
                    tracing::error!(error = %e, "could not sign the audit head");
                    continue;
                }
            };
            if let Err(e) = node.peers.anchor(&peer.name, Some(signed)).await {
                tracing::debug!(peer = %peer.name, error = %e, "audit head not anchored");
            }
        }
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
