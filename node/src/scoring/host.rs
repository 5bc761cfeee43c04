//! The host's side of joint scoring: masked partial scores for a guest's ids, within the
//! guest's disclosure budget. The caller (the federation service) authenticates the guest and
//! audits the outcome.

use crate::config::{NodeConfig, PolicyRule};
use crate::error::{NodeError, Refusal};
use crate::proto::{PartialScoresReply, PartialScoresRequest};
use crate::scoring::masks::{mask, to_fixed};
use crate::scoring::{index, ScoreCache};
use crate::store::{ModelRecord, Store};
use crate::wire::FEDERATION_VERSION;

/// What a host answers for an id it lacks or cannot score, unless its policy names which.
const CANNOT_SCORE: &str = "cannot score";

/// A host's answer and how many of the ids its dataset lacks.
pub(crate) struct Answer {
    /// The reply to the guest.
    pub reply: PartialScoresReply,
    /// Ids this node does not hold.
    pub unknown: usize,
}

/// Answers a guest's partial-score request (the caller authenticated the guest).
pub(crate) fn partial_scores(
    config: &NodeConfig,
    store: &Store,
    cache: &ScoreCache,
    request: &PartialScoresRequest,
) -> Result<Answer, NodeError> {
    if request.version != FEDERATION_VERSION {
        return Err(Refusal::Version {
            got: request.version,
        }
        .into());
    }
    let owner = |role: &str, guest: &str| role == "host" && guest == request.guest;
    let model = crate::models::serving(store, &config.party, &request.model_id, &owner)?;
    let rule = config.allows(&request.guest, "score", &model.dataset)?;
    within_budget(config, store, cache, rule, &model, request.ids.len())?;
    let seeds: Vec<(bool, Vec<u8>)> = model
        .pair_seeds
        .iter()
        .map(|(other, seed)| (config.party < *other, hex::decode(seed).unwrap_or_default()))
        .collect();
    let index = index(cache, config, &model)?;
    let mut masked = Vec::with_capacity(request.ids.len());
    let mut errors = Vec::with_capacity(request.ids.len());
    let mut unknown = 0;
    for id in &request.ids {
        match index.get(id) {
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
                // The row's column and value stay here.
                tracing::debug!(model = %model.model_id, error = %reason, "an id cannot be scored");
                masked.push(0);
                errors.push(if rule.name_missing_ids {
                    "unscorable".into()
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
    Ok(Answer {
        reply: PartialScoresReply { masked, errors },
        unknown,
    })
}

/// Refuses partial scores of a model beyond the guest's disclosure budget on the dataset
/// (its models by creation, the first `max_models` of them), or beyond its rate.
fn within_budget(
    config: &NodeConfig,
    store: &Store,
    cache: &ScoreCache,
    rule: &PolicyRule,
    model: &ModelRecord,
    ids: usize,
) -> Result<(), NodeError> {
    // Deleted models count: their views reached the guest before they went.
    let same = |role: &str, guest: &str, dataset: &str| {
        role == "host" && guest == model.guest && dataset == model.dataset
    };
    let mut models: Vec<(i64, String)> = store
        .models()?
        .into_iter()
        .filter(|m| same(&m.role, &m.guest, &m.dataset))
        .map(|m| (m.created_unix_ms, m.model_id))
        .collect();
    models.extend(
        store
            .deleted_models()?
            .into_iter()
            .filter(|m| same(&m.role, &m.guest, &m.dataset))
            .map(|m| (m.created_unix_ms, m.model_id)),
    );
    models.sort();
    let rank = models
        .iter()
        .position(|(_, id)| *id == model.model_id)
        .unwrap_or(models.len());
    if rank >= rule.max_models as usize {
        return Err(Refusal::ScoreModels {
            model: model.model_id.clone(),
            max: rule.max_models,
            party: config.party.clone(),
            guest: model.guest.clone(),
            dataset: model.dataset.clone(),
        }
        .into());
    }
    let per_minute = f64::from(rule.scores_per_minute);
    let key = format!("peer {}", model.guest);
    if !cache.take(&key, per_minute, per_minute / 60.0, ids as f64) {
        return Err(Refusal::ScoreRate {
            guest: model.guest.clone(),
            ids,
            party: config.party.clone(),
            per_minute: rule.scores_per_minute,
        }
        .into());
    }
    Ok(())
}
