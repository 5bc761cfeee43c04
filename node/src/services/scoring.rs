//! The scoring service of the guest's node: a platform asks for joint scores of some ids;
//! the guest computes its partial scores, asks every host for its masked partial scores
//! (`crate::scoring::host`), and answers probability, scorecard points and band per id. What
//! each party learns: [`crate::scoring`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};

use crate::error::NodeError;
use crate::proto::scoring_server::Scoring;
use crate::proto::{PartialScoresRequest, Score, ScoreReply, ScoreRequest, ScoreStatus};
use crate::scoring::index;
use crate::scoring::masks::{from_fixed, scorecard};
use crate::services::{auth, blocking};
use crate::state::NodeState;
use crate::wire::FEDERATION_VERSION;

/// The scoring service of the guest's node.
pub(crate) struct ScoringService {
    pub(crate) node: Arc<NodeState>,
}

#[tonic::async_trait]
impl Scoring for ScoringService {
    async fn score(&self, request: Request<ScoreRequest>) -> Result<Response<ScoreReply>, Status> {
        let started = Instant::now();
        let model_id = request.get_ref().model_id.clone();
        let client = auth::scoring_client(&self.node, &request, &model_id)?;
        let ids = request.into_inner().ids;
        let node = &self.node;
        let max = node.config().scoring.max_batch;
        if ids.is_empty() || ids.len() > max {
            return Err(NodeError::BadRequest(format!(
                "{} ids: a call scores 1 to {max}",
                ids.len()
            ))
            .into());
        }
        let party = node.config().party.clone();
        let model =
            crate::models::serving(&node.store, &party, &model_id, &|role, _| role == "guest")
                .map_err(|e| match e {
                    NodeError::NotFound(_) => e.into(),
                    e => e.public_status("scoring"),
                })?;
        // The version that answers: every host is asked for it, the reply names it.
        let model_id = model.model_id.clone();
        let own = {
            let node = self.node.clone();
            let model = model.clone();
            blocking(move || index(&node.scores, &node.config(), &model))
                .await?
                .map_err(|e| e.public_status("scoring"))?
        };
        let ids = Arc::new(ids);
        let mut calls = Vec::with_capacity(model.hosts.len());
        for host in &model.hosts {
            let node = self.node.clone();
            let request = PartialScoresRequest {
                version: FEDERATION_VERSION,
                guest: node.config().party.clone(),
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
            let reply = reply?;
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
            let own_error = match own.get(id) {
                Some(Ok(_)) => None,
                Some(Err(e)) => {
                    // The row's details (its column, its value) stay here.
                    tracing::debug!(model = %model_id, error = %e, "an id cannot be scored");
                    Some((
                        ScoreStatus::Unscorable,
                        format!("{}: unscorable", node.config().party),
                    ))
                }
                None => Some((
                    ScoreStatus::UnknownId,
                    format!("{}: unknown id", node.config().party),
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
                    let z_guest = match own.get(id) {
                        Some(Ok(z)) => *z,
                        _ => 0.0,
                    };
                    let (probability, points, band) = scorecard(
                        &node.config().scoring,
                        own.probability(z_guest + from_fixed(sums[i])),
                    );
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
        crate::audit::append(
            &node.store,
            "score",
            "",
            &client,
            serde_json::json!({"model": model_id, "ids": ids.len(), "not_scored": unknown}),
        )
        .map_err(|e| e.public_status("a score call's audit record"))?;
        Ok(Response::new(ScoreReply { model_id, scores }))
    }
}
