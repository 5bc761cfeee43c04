//! Joint scoring. A platform asks the guest's node for scores of some ids; the guest computes
//! its partial score z_G, asks every host for its partial score z_k, and returns
//! p = σ(z_G + Σ_k z_k) with scorecard points and a risk band.
//!
//! **What each party learns.** Every host adds, for each other host, a mask derived from a
//! seed the two hosts agreed at the end of training (sent host to host over their mutually
//! authenticated channel; the guest never sees it): the lower-named host adds it, the higher
//! subtracts it, so the masks cancel in the sum. The guest learns Σ_k z_k per id (with a single
//! host that is z_1 itself) and which ids each host lacks or cannot score; a host learns which
//! ids are scored with which model, and when — as in FATE-Serving. Masks depend only on the
//! seed, the model and the id, so asking for the same id twice returns the same values and
//! reveals nothing new.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::jobs::NodeState;
use crate::proto::scoring_server::Scoring;
use crate::proto::{
    PartialScoresReply, PartialScoresRequest, RiskBand, Score, ScoreReply, ScoreRequest,
    ScoreStatus,
};
use crate::store::ModelRecord;
use crate::FEDERATION_VERSION;

/// Fixed-point scale of masked partial scores.
const SCALE: f64 = 4_294_967_296.0;

/// Partial scores of one model for every row of this node's dataset.
pub struct ScoreIndex {
    by_id: HashMap<String, Result<f64, String>>,
}

/// An index and the modification time of the dataset it was built from.
type Stamped = (Option<SystemTime>, Arc<ScoreIndex>);

/// Cached indexes, rebuilt when the dataset file changes.
#[derive(Default)]
pub struct ScoreCache {
    indexes: Mutex<HashMap<String, Stamped>>,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

fn modified(node: &NodeState, dataset: &str) -> Option<SystemTime> {
    let path = &node.config.datasets.get(dataset)?.path;
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// This node's index for a model (building it on first use or after the dataset changed).
pub fn index(node: &NodeState, model: &ModelRecord) -> Result<Arc<ScoreIndex>, Status> {
    let stamp = modified(node, &model.dataset);
    if let Some((seen, index)) = node
        .scores
        .indexes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&model.model_id)
    {
        if *seen == stamp {
            return Ok(index.clone());
        }
    }
    let unavailable = |reason: String| {
        Status::failed_precondition(format!(
            "model {} on {}: {reason}",
            model.model_id, node.config.party
        ))
    };
    let part = fedlearn::ModelPart::from_json(&model.model_id, &model.part_json)
        .map_err(|e| unavailable(e.to_string()))?;
    let table = node
        .load_table(&model.dataset, false)
        .map_err(|e| unavailable(e.to_string()))?;
    let rows = part
        .row_scores(&table)
        .map_err(|e| unavailable(e.to_string()))?;
    let by_id = table
        .ids()
        .iter()
        .cloned()
        .zip(rows.into_iter().map(|r| r.map_err(|e| e.to_string())))
        .collect();
    let index = Arc::new(ScoreIndex { by_id });
    node.scores
        .indexes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(model.model_id.clone(), (stamp, index.clone()));
    Ok(index)
}

/// The pairwise mask of (seed, model, id), a uniform 64-bit value.
fn mask(seed: &[u8], model: &str, id: &str) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(b"unseen scoring mask v1\0");
    hasher.update(seed);
    hasher.update((model.len() as u64).to_le_bytes());
    hasher.update(model.as_bytes());
    hasher.update((id.len() as u64).to_le_bytes());
    hasher.update(id.as_bytes());
    let digest = hasher.finalize();
    let mut word = [0u8; 8];
    word.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(word)
}

fn to_fixed(z: f64) -> u64 {
    (z * SCALE).round() as i64 as u64
}

fn from_fixed(x: u64) -> f64 {
    x as i64 as f64 / SCALE
}

/// Host: answers a guest's partial-score request (authenticated by the caller).
pub fn partial_scores(
    node: &NodeState,
    request: &PartialScoresRequest,
) -> Result<PartialScoresReply, Status> {
    if request.version != FEDERATION_VERSION {
        return Err(Status::failed_precondition(format!(
            "federation version {} is not supported",
            request.version
        )));
    }
    let model = node
        .store
        .model(&request.model_id)
        .map_err(|e| Status::internal(e.to_string()))?
        .filter(|m| m.role == "host" && m.guest == request.guest)
        .ok_or_else(|| {
            Status::not_found(format!(
                "{} holds no part of model {:?} trained with {}",
                node.config.party, request.model_id, request.guest
            ))
        })?;
    if let Err(reason) = node.config.allows(&request.guest, "score", &model.dataset) {
        node.metrics
            .add("unseen_refused_total", &[("reason", "policy")], 1.0);
        crate::audit::record(
            &node.store,
            "score.refused",
            "",
            &request.guest,
            serde_json::json!({"model": request.model_id, "reason": reason}),
        );
        return Err(Status::permission_denied(reason));
    }
    let rule = node
        .config
        .rule(&request.guest, "score", &model.dataset)
        .ok_or_else(|| Status::permission_denied("no policy rule allows scoring"))?;
    within_budget(node, rule, &model, request.ids.len())?;
    let seeds: Vec<(bool, Vec<u8>)> = model
        .pair_seeds
        .iter()
        .map(|(other, seed)| {
            (
                node.config.party < *other,
                hex::decode(seed).unwrap_or_default(),
            )
        })
        .collect();
    let index = index(node, &model)?;
    let mut masked = Vec::with_capacity(request.ids.len());
    let mut errors = Vec::with_capacity(request.ids.len());
    let mut unknown = 0;
    for id in &request.ids {
        match index.by_id.get(id) {
            Some(Ok(z)) => {
                let mut value = to_fixed(*z);
                for (add, seed) in &seeds {
                    let m = mask(seed, &model.model_id, id);
                    value = if *add {
                        value.wrapping_add(m)
                    } else {
                        value.wrapping_sub(m)
                    };
                }
                masked.push(value);
                errors.push(String::new());
            }
            Some(Err(reason)) => {
                masked.push(0);
                errors.push(if rule.name_missing_ids {
                    format!("unscorable: {reason}")
                } else {
                    CANNOT_SCORE.into()
                });
            }
            None => {
                unknown += 1;
                masked.push(0);
                errors.push(if rule.name_missing_ids {
                    "unknown id".into()
                } else {
                    CANNOT_SCORE.into()
                });
            }
        }
    }
    crate::audit::record(
        &node.store,
        "score.partial",
        "",
        &request.guest,
        serde_json::json!({"model": request.model_id, "ids": request.ids.len(), "unknown": unknown}),
    );
    Ok(PartialScoresReply { masked, errors })
}

/// What a host answers for an id it lacks or cannot score, unless its policy names which.
const CANNOT_SCORE: &str = "cannot score";

/// Refuses partial scores of a model beyond the guest's disclosure budget on the dataset
/// (its models by creation, the first `max_models` of them), or beyond its rate.
fn within_budget(
    node: &NodeState,
    rule: &crate::config::PolicyRule,
    model: &ModelRecord,
    ids: usize,
) -> Result<(), Status> {
    let refuse = |event: &str, status: Status| {
        node.metrics
            .add("unseen_refused_total", &[("reason", "policy")], 1.0);
        crate::audit::record(
            &node.store,
            event,
            "",
            &model.guest,
            serde_json::json!({"model": model.model_id, "ids": ids, "reason": status.message()}),
        );
        status
    };
    let mut models: Vec<ModelRecord> = node
        .store
        .models()
        .map_err(|e| Status::internal(e.to_string()))?
        .into_iter()
        .filter(|m| m.role == "host" && m.guest == model.guest && m.dataset == model.dataset)
        .collect();
    models.sort_by(|a, b| (a.created_unix_ms, &a.model_id).cmp(&(b.created_unix_ms, &b.model_id)));
    let rank = models
        .iter()
        .position(|m| m.model_id == model.model_id)
        .unwrap_or(models.len());
    if rank >= rule.max_models as usize {
        return Err(refuse(
            "score.refused",
            Status::permission_denied(format!(
                "model {:?} is beyond the {} models the policy of {} lets {} score on dataset \
                 {:?} (policy key max_models)",
                model.model_id, rule.max_models, node.config.party, model.guest, model.dataset
            )),
        ));
    }
    let mut buckets = node
        .scores
        .buckets
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    let capacity = f64::from(rule.scores_per_minute);
    let (tokens, last) = buckets
        .entry(format!("peer {}", model.guest))
        .or_insert((capacity, now));
    *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * capacity / 60.0).min(capacity);
    *last = now;
    if *tokens < ids as f64 {
        return Err(refuse(
            "score.rate_limited",
            Status::resource_exhausted(format!(
                "{} asked for {ids} scores; the policy of {} allows {} per minute (policy key \
                 scores_per_minute)",
                model.guest, node.config.party, rule.scores_per_minute
            )),
        ));
    }
    *tokens -= ids as f64;
    Ok(())
}

/// The scoring service of the guest's node.
pub struct ScoringService {
    pub(crate) node: Arc<NodeState>,
}

impl ScoringService {
    /// The caller's client name, if the policy lets it score `model` and it is within its rate.
    fn authorise<T>(&self, request: &Request<T>, model: &str) -> Result<String, Status> {
        let clients = &self.node.config.scoring.clients;
        let certs = request.peer_certs();
        let name = crate::tls::peer_name(
            certs.as_deref().map(|c| &c[..]),
            clients.iter().map(|c| c.name.as_str()),
        );
        let refuse = |reason: String| {
            tracing::warn!(%reason, "refused a scoring call");
            self.node
                .metrics
                .add("unseen_refused_total", &[("reason", "scoring client")], 1.0);
            Status::permission_denied(reason)
        };
        let Some(name) = name else {
            return Err(refuse(
                "the caller's certificate names no scoring client".into(),
            ));
        };
        let client = clients
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| refuse(name.into()))?;
        if !client.models.iter().any(|m| m == model) {
            return Err(refuse(format!("{name} may not score with model {model:?}")));
        }
        let mut buckets = self
            .node
            .scores
            .buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let (tokens, last) = buckets
            .entry(name.to_owned())
            .or_insert((client.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * client.calls_per_second)
            .min(client.burst);
        *last = now;
        if *tokens < 1.0 {
            self.node
                .metrics
                .add("unseen_refused_total", &[("reason", "rate limit")], 1.0);
            return Err(Status::resource_exhausted(format!(
                "{name}: over {} calls per second",
                client.calls_per_second
            )));
        }
        *tokens -= 1.0;
        Ok(name.to_owned())
    }
}

/// Probability, scorecard points and band of a joint score.
fn scorecard(node: &NodeState, z: f64) -> (f64, f64, RiskBand) {
    let s = &node.config.scoring;
    let p = fedlearn::sigmoid(z).clamp(1e-12, 1.0 - 1e-12);
    let odds = (1.0 - p) / p;
    let points =
        s.base_score + s.points_to_double_odds / std::f64::consts::LN_2 * (odds / s.base_odds).ln();
    let band = if p >= s.red_from {
        RiskBand::Red
    } else if p >= s.yellow_from {
        RiskBand::Yellow
    } else {
        RiskBand::Blue
    };
    (p, points, band)
}

#[tonic::async_trait]
impl Scoring for ScoringService {
    async fn score(&self, request: Request<ScoreRequest>) -> Result<Response<ScoreReply>, Status> {
        let started = Instant::now();
        let model_id = request.get_ref().model_id.clone();
        let client = self.authorise(&request, &model_id)?;
        let ids = request.into_inner().ids;
        let node = &self.node;
        let max = node.config.scoring.max_batch;
        if ids.is_empty() || ids.len() > max {
            return Err(Status::invalid_argument(format!(
                "{} ids: a call scores 1 to {max}",
                ids.len()
            )));
        }
        let model = node
            .store
            .model(&model_id)
            .map_err(|e| Status::internal(e.to_string()))?
            .filter(|m| m.role == "guest")
            .ok_or_else(|| {
                Status::not_found(format!(
                    "{} has no model {model_id:?} to score with",
                    node.config.party
                ))
            })?;
        let own = {
            let node = self.node.clone();
            let model = model.clone();
            tokio::task::spawn_blocking(move || index(&node, &model))
                .await
                .map_err(|e| Status::internal(e.to_string()))??
        };
        let ids = Arc::new(ids);
        let mut calls = Vec::with_capacity(model.hosts.len());
        for host in &model.hosts {
            let node = self.node.clone();
            let request = PartialScoresRequest {
                version: FEDERATION_VERSION,
                guest: node.config.party.clone(),
                model_id: model_id.clone(),
                ids: ids.as_ref().clone(),
            };
            let host = host.clone();
            calls.push(tokio::spawn(async move {
                let reply = node
                    .peers
                    .partial_scores(&host, request, Duration::from_secs(5))
                    .await;
                (host, reply)
            }));
        }
        let mut sums = vec![0u64; ids.len()];
        let mut errors: Vec<Option<(ScoreStatus, String)>> = vec![None; ids.len()];
        for call in calls {
            let (host, reply) = call.await.map_err(|e| Status::internal(e.to_string()))?;
            let reply = reply.map_err(|e| {
                // Tell the platform whether to retry: only an unreachable host is transient.
                let code = match &e {
                    crate::NodeError::PeerCall { code, .. } => match code {
                        tonic::Code::PermissionDenied => tonic::Code::PermissionDenied,
                        tonic::Code::NotFound | tonic::Code::FailedPrecondition => {
                            tonic::Code::FailedPrecondition
                        }
                        tonic::Code::InvalidArgument => tonic::Code::Internal,
                        _ => tonic::Code::Unavailable,
                    },
                    _ => tonic::Code::Unavailable,
                };
                Status::new(code, e.to_string())
            })?;
            if reply.masked.len() != ids.len() || reply.errors.len() != ids.len() {
                return Err(Status::internal(format!(
                    "{host} answered {} of {} ids",
                    reply.masked.len(),
                    ids.len()
                )));
            }
            for (i, (value, error)) in reply.masked.iter().zip(&reply.errors).enumerate() {
                sums[i] = sums[i].wrapping_add(*value);
                if !error.is_empty() && errors[i].is_none() {
                    let status = if error == "unknown id" {
                        ScoreStatus::UnknownId
                    } else {
                        ScoreStatus::Unscorable
                    };
                    errors[i] = Some((status, format!("{host}: {error}")));
                }
            }
        }
        let mut scores = Vec::with_capacity(ids.len());
        let mut unknown = 0;
        for (i, id) in ids.iter().enumerate() {
            let own_error = match own.by_id.get(id) {
                Some(Ok(_)) => None,
                Some(Err(e)) => Some((
                    ScoreStatus::Unscorable,
                    format!("{}: unscorable: {e}", node.config.party),
                )),
                None => Some((
                    ScoreStatus::UnknownId,
                    format!("{}: unknown id", node.config.party),
                )),
            };
            match own_error.or_else(|| errors[i].clone()) {
                Some((status, error)) => {
                    unknown += 1;
                    scores.push(Score {
                        id: id.clone(),
                        status: status as i32,
                        error,
                        ..Score::default()
                    });
                }
                None => {
                    let z_guest = match own.by_id.get(id) {
                        Some(Ok(z)) => *z,
                        _ => 0.0,
                    };
                    let (probability, points, band) =
                        scorecard(node, z_guest + from_fixed(sums[i]));
                    scores.push(Score {
                        id: id.clone(),
                        status: ScoreStatus::Ok as i32,
                        error: String::new(),
                        probability,
                        points,
                        band: band as i32,
                    });
                }
            }
        }
        node.metrics.add(
            "unseen_scores_total",
            &[("model", &model_id)],
            ids.len() as f64,
        );
        node.metrics.observe(
            "unseen_score_call_seconds",
            &[("model", &model_id)],
            started.elapsed(),
        );
        crate::audit::record(
            &node.store,
            "score",
            "",
            &client,
            serde_json::json!({"model": model_id, "ids": ids.len(), "not_scored": unknown}),
        );
        Ok(Response::new(ScoreReply { model_id, scores }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairwise_masks_cancel_and_fixed_point_round_trips() {
        let seed = [7u8; 32];
        let (za, zb) = (1.25, -3.5);
        let a = to_fixed(za).wrapping_add(mask(&seed, "m", "firm-1"));
        let b = to_fixed(zb).wrapping_sub(mask(&seed, "m", "firm-1"));
        assert!((from_fixed(a.wrapping_add(b)) - (za + zb)).abs() < 1e-9);
        assert_ne!(mask(&seed, "m", "firm-1"), mask(&seed, "m", "firm-2"));
        assert_ne!(mask(&seed, "m", "firm-1"), mask(&seed, "n", "firm-1"));
        assert_ne!(mask(&seed, "m", "firm-1"), mask(&[8u8; 32], "m", "firm-1"));
    }
}
