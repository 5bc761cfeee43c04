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
use std::time::{Instant, SystemTime};

use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::store::ModelRecord;

pub(crate) mod host;
pub(crate) mod masks;

/// Partial scores of one model for every row of this node's dataset.
pub(crate) struct ScoreIndex {
    by_id: HashMap<String, Result<f64, String>>,
    part: fedlearn::ModelPart,
}

impl ScoreIndex {
    /// The partial score of `id`: `None` for an id the dataset lacks, `Some(Err)` for a row
    /// the model cannot score.
    pub(crate) fn get(&self, id: &str) -> Option<&Result<f64, String>> {
        self.by_id.get(id)
    }

    /// The probability of a joint score, with the model's calibration (on the guest's index).
    pub(crate) fn probability(&self, joint_score: f64) -> f64 {
        self.part.probability(joint_score)
    }
}

/// An index and the modification time of the dataset it was built from.
/// An index, and what it was built from: the dataset's configuration and when it changed.
type Stamped = (Stamp, Arc<ScoreIndex>);
type Stamp = (Option<crate::config::DatasetConfig>, Option<SystemTime>);

/// Cached indexes, rebuilt when the dataset file changes, and the rate-limit token buckets
/// of scoring clients and guests.
#[derive(Default)]
pub struct ScoreCache {
    indexes: Mutex<HashMap<String, Stamped>>,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl ScoreCache {
    /// Takes `cost` tokens from bucket `key` (refilled at `per_second` up to `capacity`);
    /// false if there are not enough.
    pub fn take(&self, key: &str, capacity: f64, per_second: f64, cost: f64) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let (tokens, last) = buckets.entry(key.to_owned()).or_insert((capacity, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * per_second).min(capacity);
        *last = now;
        if *tokens < cost {
            return false;
        }
        *tokens -= cost;
        true
    }
}

impl ScoreCache {
    /// Forgets a model's index (its scores), as when the model is archived or deleted.
    pub(crate) fn forget_model(&self, model_id: &str) {
        self.indexes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(model_id);
    }

    /// Forgets every scoring index (the datasets they were built from may have moved).
    pub(crate) fn forget_indexes(&self) {
        self.indexes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// When the dataset last changed: a file's modification time; for a database, the start of
/// the current five minutes (its index is built again at most that often).
fn modified(config: &NodeConfig, dataset: &str) -> Option<SystemTime> {
    match &config.datasets.get(dataset)?.path {
        Some(path) => std::fs::metadata(path).and_then(|m| m.modified()).ok(),
        None => {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .ok()?
                .as_secs();
            Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(now - now % 300))
        }
    }
}

/// This node's index for a model (building it on first use or after the dataset changed).
pub(crate) fn index(
    cache: &ScoreCache,
    config: &NodeConfig,
    model: &ModelRecord,
) -> Result<Arc<ScoreIndex>, NodeError> {
    // A dataset configured anew (another file, table or query) is another index.
    let stamp = (
        config.datasets.get(&model.dataset).cloned(),
        modified(config, &model.dataset),
    );
    if let Some((seen, index)) = cache
        .indexes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&model.model_id)
    {
        if *seen == stamp {
            return Ok(index.clone());
        }
    }
    let unusable = |reason: String| NodeError::Unusable {
        model: model.model_id.clone(),
        party: config.party.clone(),
        reason,
    };
    let part = fedlearn::ModelPart::from_json(&model.model_id, &model.part_json)
        .map_err(|e| unusable(e.to_string()))?;
    // A row with a cell that cannot be read fails alone: its id is unscorable.
    let (table, bad_rows) =
        crate::datasets::load_scoring_table(config, &model.dataset, &|c| part.reading(c))
            .map_err(|e| unusable(e.to_string()))?;
    let rows = part
        .row_scores(&table)
        .map_err(|e| unusable(e.to_string()))?;
    let mut by_id: HashMap<String, Result<f64, String>> = table
        .ids()
        .iter()
        .map(str::to_owned)
        .zip(rows.into_iter().map(|r| r.map_err(|e| e.to_string())))
        .collect();
    for (id, reason) in bad_rows {
        by_id.insert(id, Err(reason));
    }
    let index = Arc::new(ScoreIndex { by_id, part });
    cache
        .indexes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(model.model_id.clone(), (stamp, index.clone()));
    Ok(index)
}
