//! Who may call what: peers by the certificate name the configuration gives them; operators,
//! workers and scoring clients by their certificate names, scoring clients within their call
//! rate.
//! Every refusal is logged, counted and audited, with the name the caller claimed, the names
//! its certificate carries and its address.

use tokio_rustls::rustls::pki_types::CertificateDer;
use tonic::Request;

use crate::error::{NodeError, Refusal};
use crate::state::NodeState;
use crate::tls::Distrust;

/// Counts and logs a refusal.
pub(crate) fn deny(node: &NodeState, refusal: Refusal) -> NodeError {
    tracing::warn!(reason = %refusal, "refused a call");
    node.metrics
        .add("unseen_refused_total", &[("reason", refusal.metric())], 1.0);
    refusal.into()
}

/// Counts, logs and audits a refusal as `event` (with `detail` and the reason).
pub(crate) fn deny_audited(
    node: &NodeState,
    refusal: Refusal,
    event: &str,
    job: &str,
    peer: &str,
    mut detail: serde_json::Value,
) -> NodeError {
    detail["reason"] = refusal.to_string().into();
    crate::audit::record(&node.store, event, job, peer, detail);
    deny(node, refusal)
}

/// Whether a throttled audit record under `key` is due: at most one a minute per key, so a
/// caller repeating a refused call cannot turn each one into a durable write.
pub(crate) fn once_a_minute(node: &NodeState, key: String) -> bool {
    let now = std::time::Instant::now();
    let mut audits = node
        .refusal_audits
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if audits.len() > 10_000 {
        audits.clear();
    }
    let due = audits
        .get(&key)
        .is_none_or(|last| now.duration_since(*last).as_secs() >= 60);
    if due {
        audits.insert(key, now);
    }
    due
}

/// The client certificates of a call.
fn certs<T>(request: &Request<T>) -> Option<std::sync::Arc<Vec<CertificateDer<'static>>>> {
    request.peer_certs()
}

/// Who made a call, as its transport shows: the certificate's names and the address.
fn caller<T>(request: &Request<T>) -> serde_json::Value {
    let certs = certs(request);
    serde_json::json!({
        "certificate": crate::tls::cert_names(certs.as_deref().map(|c| &c[..])),
        "address": request.remote_addr().map(|a| a.to_string()),
    })
}

/// Checks that the caller's certificate is valid for the configured certificate name of peer
/// `claimed` (at most 64 characters of it are kept).
pub(crate) fn peer<T>(
    node: &NodeState,
    request: &Request<T>,
    claimed: &str,
    call: &'static str,
) -> Result<(), NodeError> {
    let claimed: String = claimed.chars().take(64).collect();
    let certs = certs(request);
    let config = node.config();
    let expected = config.peer(&claimed).map(|p| p.certificate_name());
    let presented = certs.as_deref().map(|c| &c[..]);
    let refusal = match expected {
        // Valid for the peer's name, and from the CA that vouches for that peer (its own when
        // it keeps its own PKI): another party's CA cannot speak for it.
        Some(name) if crate::tls::peer_name(presented, [name]).is_some() => {
            match node.identity.vouches_for(presented, Some(&claimed)) {
                Ok(()) => return Ok(()),
                Err(Distrust::Revoked) => Refusal::Revoked { call },
                Err(Distrust::NotVouched) => Refusal::PeerCertificate {
                    call,
                    claimed: claimed.clone(),
                    certificate: name.to_owned(),
                },
            }
        }
        Some(name) => Refusal::PeerCertificate {
            call,
            claimed: claimed.clone(),
            certificate: name.to_owned(),
        },
        None => Refusal::NotAPeer {
            call,
            claimed: claimed.clone(),
            party: node.config().party.clone(),
        },
    };
    // Recorded under the name the certificate carries, not the one the caller claimed.
    let mut detail = caller(request);
    detail["call"] = call.into();
    detail["claimed"] = claimed.clone().into();
    let shown = detail["certificate"][0].as_str().unwrap_or("").to_owned();
    Err(deny_audited(
        node,
        refusal,
        "peer.refused",
        "",
        &shown,
        detail,
    ))
}

/// The operator a jobs call comes from.
pub(crate) fn operator<T>(node: &NodeState, request: &Request<T>) -> Result<String, NodeError> {
    let config = node.config();
    let refusal = Refusal::NotAnOperator {
        party: config.party.clone(),
    };
    own_role(
        node,
        request,
        &config.operators,
        "jobs",
        refusal,
        "operator.refused",
    )
}

/// The worker a workers call comes from.
pub(crate) fn worker<T>(node: &NodeState, request: &Request<T>) -> Result<String, NodeError> {
    let config = node.config();
    let refusal = Refusal::NotAWorker {
        party: config.party.clone(),
    };
    own_role(
        node,
        request,
        &config.workers,
        "workers",
        refusal,
        "worker.refused",
    )
}

/// The name among `names` the caller's certificate carries, if this node's own CA vouches for
/// it (never a peer's own PKI: a peer cannot issue this party's operators or workers);
/// otherwise `refusal`, audited as `event` (or a revoked certificate's refusal).
fn own_role<T>(
    node: &NodeState,
    request: &Request<T>,
    names: &[String],
    call: &'static str,
    refusal: Refusal,
    event: &str,
) -> Result<String, NodeError> {
    let certs = certs(request);
    let presented = certs.as_deref().map(|c| &c[..]);
    let name = crate::tls::peer_name(presented, names.iter().map(String::as_str));
    let refusal = match name.map(|name| (name, node.identity.vouches_for(presented, None))) {
        Some((name, Ok(()))) => return Ok(name.to_owned()),
        Some((_, Err(Distrust::Revoked))) => Refusal::Revoked { call },
        Some((_, Err(Distrust::NotVouched))) | None => refusal,
    };
    Err(deny_audited(node, refusal, event, "", "", caller(request)))
}

/// The scoring client a call comes from, if it may score with `model` and is within its rate.
pub(crate) fn scoring_client<T>(
    node: &NodeState,
    request: &Request<T>,
    model: &str,
) -> Result<String, NodeError> {
    let config = node.config();
    let clients = &config.scoring.clients;
    let certs = certs(request);
    let presented = certs.as_deref().map(|c| &c[..]);
    // Only this node's CA vouches for its scoring clients (not a peer's own PKI).
    let name = crate::tls::peer_name(presented, clients.iter().map(|c| c.name.as_str()));
    let trust = name.map(|_| node.identity.vouches_for(presented, None));
    let refused = |refusal: Refusal| {
        let event = match refusal {
            Refusal::CallRate { .. } => "score.rate_limited",
            _ => "score.refused",
        };
        // At most one audit record a minute per certificate and kind of refusal: a client
        // over its rate must not turn every call into a durable write. Metrics count all.
        let names = crate::tls::cert_names(certs.as_deref().map(|c| &c[..]));
        if !once_a_minute(node, format!("{event} {}", names.join(","))) {
            return deny(node, refusal);
        }
        let mut detail = caller(request);
        detail["model"] = model.chars().take(64).collect::<String>().into();
        deny_audited(node, refusal, event, "", "", detail)
    };
    if trust == Some(Err(Distrust::Revoked)) {
        return Err(refused(Refusal::Revoked { call: "scoring" }));
    }
    let Some(client) = name
        .filter(|_| trust == Some(Ok(())))
        .and_then(|name| clients.iter().find(|c| c.name == name))
    else {
        return Err(refused(Refusal::NotAScoringClient));
    };
    if !client.may_score(model) {
        return Err(refused(Refusal::ModelNotAllowed {
            client: client.name.clone(),
            model: model.chars().take(64).collect(),
        }));
    }
    if !node
        .scores
        .take(&client.name, client.burst, client.calls_per_second, 1.0)
    {
        return Err(refused(Refusal::CallRate {
            client: client.name.clone(),
            per_second: client.calls_per_second,
        }));
    }
    Ok(client.name.clone())
}
