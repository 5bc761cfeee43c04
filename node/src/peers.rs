//! Calls to other nodes: one lazily connected, TLS-verified channel per configured peer
//! (opened anew when the revocation lists change, so a revoked peer certificate is not used
//! through a connection made before), per-call deadlines, and retries with exponential backoff for failures a retry can cure
//! (unreachable peer, dropped connection, deadline). Deliveries are idempotent on the
//! receiving side, so retrying a message that did arrive is harmless.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::config::{FederationSettings, NodeConfig};
use crate::error::{NodeError, PeerFault};
use crate::mailbox::Liveness;
use crate::metrics::Metrics;
use crate::proto::federation_client::FederationClient;
use crate::proto::{AliveReply, AliveRequest, AnchorRequest, Chunk, JobProposal, ProposalReply};
use crate::tls::{Identity, Lists, Revocations};
use crate::wire::FEDERATION_VERSION;

/// Clients of every configured peer.
pub struct Peers {
    party: String,
    settings: FederationSettings,
    /// How to reach each peer.
    endpoints: HashMap<String, (Endpoint, PeerConnector)>,
    revocations: Arc<Revocations>,
    /// Each peer's channel, and the revocation lists in force when they were made.
    channels: Mutex<(Arc<Lists>, HashMap<String, Channel>)>,
    metrics: Arc<Metrics>,
}

/// Opens connections to one peer: TCP to its address, then a TLS handshake that presents
/// this node's certificate and verifies the peer's (its CA, its certificate name, the
/// revocation lists in force).
#[derive(Clone)]
struct PeerConnector {
    address: String,
    name: ServerName<'static>,
    tls: Arc<ClientConfig>,
}

impl tower_service::Service<Uri> for PeerConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(&this.address).await?;
            tcp.set_nodelay(true)?;
            let tls = TlsConnector::from(this.tls).connect(this.name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// Whether a call's failure means the peer did not answer at all (as opposed to answering
/// with an error).
fn unanswered(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    )
}

/// What a delivery does when the peer holds it back (it has as much of the job's messages
/// unread as it takes: `ResourceExhausted`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenHeld {
    /// Waits until the peer takes it, up to the receive timeout, without spending retries.
    Wait,
    /// Returns the refusal at once (the caller reads its own messages meanwhile).
    Return,
}

fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Cancelled
            | Code::Aborted
            | Code::Internal
            | Code::ResourceExhausted
    )
}

impl Peers {
    /// Prepares a channel per peer (connections open on first use).
    pub fn new(
        config: &NodeConfig,
        identity: &Identity,
        metrics: Arc<Metrics>,
    ) -> Result<Peers, NodeError> {
        let settings = config.federation.clone();
        let mut endpoints = HashMap::new();
        for peer in &config.peers {
            let bad_address = |reason: String| NodeError::Peer {
                peer: peer.name.clone(),
                fault: PeerFault::BadAddress {
                    address: peer.address.clone(),
                    reason,
                },
            };
            let name = ServerName::try_from(peer.certificate_name().to_owned())
                .map_err(|e| bad_address(format!("certificate name: {e}")))?;
            let connector = PeerConnector {
                address: peer.address.clone(),
                name,
                tls: identity.peer_client_config(&peer.name)?,
            };
            // TLS is the connector's: the URI's scheme only names the transport to tonic.
            let endpoint = Endpoint::from_shared(format!("http://{}", peer.address))
                .map_err(|e| bad_address(e.to_string()))?
                // A peer that stops answering (a frozen process, a cut cable: no reset comes)
                // is found by HTTP/2 pings well within peer_dead_secs, even mid-call.
                .connect_timeout(settings.peer_dead() / 2)
                .timeout(settings.call_timeout())
                .http2_keep_alive_interval(settings.probe_interval())
                .keep_alive_timeout(settings.peer_dead() / 2)
                .keep_alive_while_idle(true);
            endpoints.insert(peer.name.clone(), (endpoint, connector));
        }
        let revocations = identity.revocations().clone();
        let channels = Peers::connect(&endpoints);
        Ok(Peers {
            party: config.party.clone(),
            settings,
            channels: Mutex::new((revocations.current(), channels)),
            endpoints,
            revocations,
            metrics,
        })
    }

    fn connect(endpoints: &HashMap<String, (Endpoint, PeerConnector)>) -> HashMap<String, Channel> {
        endpoints
            .iter()
            .map(|(peer, (endpoint, connector))| {
                let channel = endpoint.connect_with_connector_lazy(connector.clone());
                (peer.clone(), channel)
            })
            .collect()
    }

    /// The channel to `to`: made anew, for every peer, when the revocation lists changed
    /// since the channels were made (calls under way finish on the old ones).
    fn channel(&self, to: &str) -> Result<Channel, NodeError> {
        let lists = self.revocations.current();
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&channels.0, &lists) {
            tracing::info!("revocation lists changed: connections to peers are made anew");
            *channels = (lists, Peers::connect(&self.endpoints));
        }
        channels.1.get(to).cloned().ok_or_else(|| NodeError::Peer {
            peer: to.to_owned(),
            fault: PeerFault::NotConfigured,
        })
    }

    /// One call to `to` with up to `retries` retries. While an attempt runs, the peer is asked
    /// every probe interval whether it answers at all: an attempt stuck on a peer that has
    /// answered nothing for `peer_dead_secs` fails at once, without retries.
    async fn call<T, F, Fut>(
        &self,
        to: &str,
        method: &str,
        retries: u32,
        held: Option<WhenHeld>,
        mut f: F,
    ) -> Result<T, NodeError>
    where
        F: FnMut(FederationClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let channel = self.channel(to)?;
        let mut attempt = 0;
        // When the peer last showed it answers: the call's start, then its probes' answers.
        let mut answered = Instant::now();
        // Since when the peer has held this delivery back (its job's unread bound).
        let mut waited_full: Option<Instant> = None;
        loop {
            let started = Instant::now();
            let client = FederationClient::new(channel.clone())
                .max_decoding_message_size(8 << 20)
                .max_encoding_message_size(8 << 20);
            let mut unanswered = false;
            let outcome = tokio::select! {
                outcome = f(client) => outcome,
                () = self.unanswering(&channel, &mut answered) => {
                    unanswered = true;
                    let seconds = self.settings.peer_dead_secs;
                    Err(Status::unavailable(format!("it answered nothing for {seconds} s")))
                }
            };
            match outcome {
                Ok(response) => {
                    self.metrics.observe(
                        "unseen_peer_call_seconds",
                        &[("peer", to), ("method", method)],
                        started.elapsed(),
                    );
                    return Ok(response.into_inner());
                }
                // A peer holding as much of the job's messages as it may: it answered, and
                // this sender waits until it has read some, up to the receive timeout,
                // without spending its retries.
                Err(status)
                    if held == Some(WhenHeld::Wait)
                        && status.code() == Code::ResourceExhausted
                        && waited_full.get_or_insert_with(Instant::now).elapsed()
                            < self.settings.receive_timeout() =>
                {
                    answered = Instant::now();
                    self.metrics
                        .add("unseen_deliveries_held_back_total", &[("peer", to)], 1.0);
                    let held = waited_full.map_or(Duration::ZERO, |since| since.elapsed());
                    let pause = (held / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
                    tokio::time::sleep(pause).await;
                }
                Err(status) => {
                    let code = format!("{:?}", status.code());
                    self.metrics.add(
                        "unseen_peer_call_errors_total",
                        &[("peer", to), ("code", &code)],
                        1.0,
                    );
                    // Retries stop once the peer would stay unanswering longer than a dead
                    // peer may.
                    let wait = self.settings.backoff(attempt);
                    let dead = unanswered || answered.elapsed() + wait > self.settings.peer_dead();
                    let held_back = held.is_some() && status.code() == Code::ResourceExhausted;
                    if !retryable(status.code()) || attempt >= retries || dead || held_back {
                        let tried = if attempt > 0 {
                            format!(" (after {} attempts)", attempt + 1)
                        } else {
                            String::new()
                        };
                        return Err(NodeError::PeerCall {
                            peer: to.to_owned(),
                            reason: format!("{method} failed{tried}: {}", describe(&status)),
                            code: status.code(),
                        });
                    }
                    tracing::warn!(peer = to, method, attempt, error = %describe(&status), "peer call failed; retrying in {wait:?}");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }

    /// Returns once the peer behind `channel` has answered no liveness probe for
    /// `peer_dead_secs` since `answered`, which it moves on at every answer (any answer
    /// counts: the question is whether it answers at all).
    async fn unanswering(&self, channel: &Channel, answered: &mut Instant) {
        let interval = self.settings.probe_interval();
        loop {
            tokio::time::sleep(interval).await;
            let mut probe = tonic::Request::new(AliveRequest {
                version: FEDERATION_VERSION,
                job_id: String::new(),
                sender: self.party.clone(),
            });
            probe.set_timeout(interval);
            // Enforced here: a request's own deadline starts only once a connection is up,
            // and a frozen peer's connection never comes up.
            let mut client = FederationClient::new(channel.clone());
            let answer = tokio::time::timeout(interval, client.alive(probe)).await;
            if matches!(&answer, Ok(Ok(_)))
                || matches!(&answer, Ok(Err(s)) if !unanswered(s.code()))
            {
                *answered = Instant::now();
            } else if answered.elapsed() >= self.settings.peer_dead() {
                return;
            }
        }
    }

    /// Asks `to` to take part in a job.
    pub async fn propose(
        &self,
        to: &str,
        proposal: JobProposal,
    ) -> Result<ProposalReply, NodeError> {
        self.call(to, "propose", self.settings.retries, None, |mut client| {
            let proposal = proposal.clone();
            async move { client.propose(proposal).await }
        })
        .await
    }

    /// Asks host `to` for its masked partial scores (one retry; scoring is interactive).
    pub async fn partial_scores(
        &self,
        to: &str,
        request: crate::proto::PartialScoresRequest,
        timeout: Duration,
    ) -> Result<crate::proto::PartialScoresReply, NodeError> {
        self.call(to, "partial_scores", 1, None, |mut client| {
            let mut request = tonic::Request::new(request.clone());
            request.set_timeout(timeout);
            async move { client.partial_scores(request).await }
        })
        .await
    }

    /// Whether `to` still runs `job` with this node in it, or is between two attempts of it
    /// (one attempt within `deadline`; an error when it does not answer).
    pub async fn alive(
        &self,
        to: &str,
        job: &str,
        deadline: Duration,
    ) -> Result<Liveness, NodeError> {
        let request = AliveRequest {
            version: FEDERATION_VERSION,
            job_id: job.to_owned(),
            sender: self.party.clone(),
        };
        let call = self.call(to, "alive", 0, None, |mut client| {
            let request = request.clone();
            async move { client.alive(request).await }
        });
        // Enforced here (see `unanswering`).
        match tokio::time::timeout(deadline, call).await {
            // A peer that answers without telling (an older release, a refusal) is alive: the
            // receive timeout is then what bounds the wait.
            Ok(Err(NodeError::PeerCall { code, .. })) if !unanswered(code) => Ok(Liveness::Running),
            Ok(reply) => Ok(match reply? {
                AliveReply { running: true, .. } => Liveness::Running,
                AliveReply { resuming: true, .. } => Liveness::Resuming,
                _ => Liveness::Gone,
            }),
            Err(_) => Err(NodeError::PeerCall {
                peer: to.to_owned(),
                reason: format!("alive: no answer within {deadline:?}"),
                code: Code::DeadlineExceeded,
            }),
        }
    }

    /// Gives `to` this node's signed audit head to keep (when `head` is set); the head it
    /// keeps.
    pub async fn anchor(
        &self,
        to: &str,
        head: Option<crate::store::AuditHead>,
    ) -> Result<Option<crate::store::AuditHead>, NodeError> {
        let request = AnchorRequest {
            version: FEDERATION_VERSION,
            sender: self.party.clone(),
            head: head.map(crate::audit::head_to_wire),
        };
        let reply = self
            .call(to, "anchor", 1, None, |mut client| {
                let request = request.clone();
                async move { client.anchor(request).await }
            })
            .await?;
        Ok(reply.kept.map(crate::audit::head_from_wire))
    }

    /// Delivers message `seq` of a job's `attempt` to `to` in chunks, retrying as configured
    /// and, when the peer holds it back, as `held` says.
    #[allow(clippy::too_many_arguments)]
    pub async fn deliver(
        &self,
        to: &str,
        job: &str,
        attempt: u32,
        seq: u64,
        kind: &str,
        bytes: &[u8],
        retry: bool,
        held: WhenHeld,
    ) -> Result<(), NodeError> {
        let chunks = self.chunks(job, attempt, seq, kind, bytes);
        let retries = if retry { self.settings.retries } else { 0 };
        self.call(to, "deliver", retries, Some(held), |mut client| {
            let stream = tokio_stream::iter(chunks.clone());
            async move { client.deliver(stream).await }
        })
        .await?;
        self.metrics.add(
            "unseen_bytes_sent_total",
            &[("peer", to), ("kind", kind)],
            bytes.len() as f64,
        );
        Ok(())
    }

    fn chunks(&self, job: &str, attempt: u32, seq: u64, kind: &str, bytes: &[u8]) -> Vec<Chunk> {
        let size = self.settings.chunk_bytes;
        let count = bytes.len().div_ceil(size).max(1);
        (0..count)
            .map(|index| Chunk {
                version: FEDERATION_VERSION,
                job_id: job.to_owned(),
                sender: self.party.clone(),
                seq,
                attempt,
                kind: kind.to_owned(),
                index: index as u32,
                count: count as u32,
                total_bytes: bytes.len() as u64,
                data: bytes[(index * size).min(bytes.len())..((index + 1) * size).min(bytes.len())]
                    .to_vec(),
            })
            .collect()
    }
}

/// A status as one line: the message, and the transport error behind it if any.
fn describe(status: &Status) -> String {
    use std::error::Error;
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut source = status.source();
    while let Some(error) = source {
        // hyper and tonic repeat their causes ("tcp connect error: tcp connect error: …").
        let said = error.to_string();
        if !text.contains(&said) {
            text.push_str(&format!(": {said}"));
        }
        source = error.source();
    }
    text
}
