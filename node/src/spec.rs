//! Job specs: what a modeller submits (`unseen train job.toml`, or `unseen binning job.toml`
//! for the binning statistics of the same columns: `kind = "binning"`).
//!
//! ```toml
//! model_id = "sme-credit"         # the model's name: this job trains its next version
//! replace = false                  # true: train although the name is served; the new
//!                                  # version then answers for it
//! dataset = "bank"                 # the guest's dataset (with the label column)
//!
//! [[hosts]]                        # in residual-chain order
//! party = "tax"
//! dataset = "tax"
//!
//! [[hosts]]
//! party = "utilities"
//! dataset = "utilities"
//!
//! [train]                          # fedlearn::TrainConfig; omitted fields take defaults
//! max_epochs = 20                  # full-batch steps (secret-shared block Jacobi)
//! l2 = 0.001
//! early_stopping = { kind = "loss", patience = 3, min_delta = 1e-4 }
//! validation_fraction = 0.2
//!
//! [prep.default]                   # fedlearn::Prep: how the guest prepares its columns
//! winsorise = [0.01, 0.99]
//! bins = { kind = "quantile", count = 10 }
//! [prep.columns.industry]          # one column's own preparation
//! bins = { kind = "categorical", min_share = 0.02 }
//! ```
//!
//! A host's `prep` (an inline table in its `[[hosts]]` entry, naming its own columns) is sent
//! to that host only; a host without one prepares its columns by the guest's `prep.default`.
//!
//! Or, instead of `[prep]` and the hosts' `prep`, a training job trains on the bins of an
//! earlier binning job, merged and chosen from its counts (`fedlearn::Selection`):
//!
//! ```toml
//! [select]
//! binning_job = "0123…"            # the binning job's id (on the guest)
//! merge = "monotone"               # or "chi", "none"
//! min_iv = 0.02                    # drop columns below (after merging)
//! top_k = 10                       # keep at most this many per party
//! columns = { tax = ["tax:1", "tax:4"] }   # choose only from these (names as reported)
//! ```
//!
//! Without `train.seed` the node draws one (it splits the validation rows; it is not a key)
//! and records it in the report.

use std::collections::BTreeSet;

use fedlearn::{Prep, Selection, TrainConfig};
use serde::{Deserialize, Serialize};

use crate::config::check_name;
use crate::error::NodeError;

/// One host of a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    /// The host's party name (a peer of the guest).
    pub party: String,
    /// The host's dataset name (in the host's configuration).
    pub dataset: String,
    /// How the host prepares its columns; without it, the guest's `prep.default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prep: Option<Prep>,
}

/// What a job does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Trains a model.
    Train,
    /// Computes binning statistics (per-bin counts, WOE and IV of every party's columns)
    /// and trains nothing; `[train]` is ignored.
    Binning,
}

impl JobKind {
    /// The kind's name (in specs, proposals, policies and job records).
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Train => "train",
            JobKind::Binning => "binning",
        }
    }
}

/// A job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Training or binning statistics.
    #[serde(default = "train_kind")]
    pub kind: JobKind,
    /// Model name (a training job trains its next version, `name@version`, which the guest
    /// fills in here when it takes the job); a binning job's statistics go by it too.
    pub model_id: String,
    /// Train even though the name is served: the new version then answers for the name.
    #[serde(default)]
    pub replace: bool,
    /// The guest's dataset.
    pub dataset: String,
    /// Hosts in chain order.
    pub hosts: Vec<HostSpec>,
    /// Training settings, seed filled in.
    pub train: TrainConfig,
    /// How the guest prepares its columns.
    #[serde(default)]
    pub prep: Prep,
    /// Columns and bins chosen from a binning job, instead of `prep` and the hosts' `prep`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select: Option<Selection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    #[serde(default = "default_kind")]
    kind: String,
    model_id: String,
    #[serde(default)]
    replace: bool,
    dataset: String,
    hosts: Vec<HostSpec>,
    #[serde(default)]
    train: Option<toml::Table>,
    #[serde(default)]
    prep: Prep,
    #[serde(default)]
    select: Option<Selection>,
}

fn default_kind() -> String {
    "train".into()
}

fn train_kind() -> JobKind {
    JobKind::Train
}

impl JobSpec {
    /// How `host` prepares its columns in this job.
    pub fn host_prep(&self, host: &HostSpec) -> Prep {
        host.prep.clone().unwrap_or_else(|| Prep {
            default: self.prep.default.clone(),
            ..Prep::default()
        })
    }

    /// Parses and checks a job spec; errors name the line and key.
    pub fn parse(text: &str) -> Result<JobSpec, NodeError> {
        let raw: RawSpec = toml::from_str(text).map_err(|e| NodeError::Spec(e.to_string()))?;
        let kind = match raw.kind.as_str() {
            "train" => JobKind::Train,
            "binning" => JobKind::Binning,
            other => {
                return Err(NodeError::Spec(format!(
                    "kind: {other:?} is not a job kind (known: train, binning)"
                )))
            }
        };
        check_name("model_id", &raw.model_id).map_err(NodeError::Spec)?;
        check_name("dataset", &raw.dataset).map_err(NodeError::Spec)?;
        if raw.hosts.is_empty() {
            return Err(NodeError::Spec("hosts: at least one host is needed".into()));
        }
        let mut seen = BTreeSet::new();
        for (i, host) in raw.hosts.iter().enumerate() {
            check_name(&format!("hosts[{i}].party"), &host.party).map_err(NodeError::Spec)?;
            check_name(&format!("hosts[{i}].dataset"), &host.dataset).map_err(NodeError::Spec)?;
            if !seen.insert(host.party.as_str()) {
                return Err(NodeError::Spec(format!(
                    "hosts[{i}].party: {:?} is listed twice",
                    host.party
                )));
            }
        }
        let table = raw.train.unwrap_or_default();
        let has_seed = table.contains_key("seed");
        let mut train: TrainConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| NodeError::Spec(format!("train: {}", e.message())))?;
        if !has_seed {
            train.seed = rand::random();
        }
        train
            .validate()
            .map_err(|e| NodeError::Spec(format!("train: {e}")))?;
        raw.prep
            .validate()
            .map_err(|e| NodeError::Spec(e.to_string()))?;
        for (i, host) in raw.hosts.iter().enumerate() {
            if let Some(prep) = &host.prep {
                prep.validate()
                    .map_err(|e| NodeError::Spec(format!("hosts[{i}].{e}")))?;
            }
        }
        if let Some(select) = &raw.select {
            select
                .validate()
                .map_err(|e| NodeError::Spec(e.to_string()))?;
            if kind != JobKind::Train {
                return Err(NodeError::Spec(
                    "select: only a training job selects columns".into(),
                ));
            }
            if raw.prep != Prep::default() || raw.hosts.iter().any(|h| h.prep.is_some()) {
                return Err(NodeError::Spec(
                    "select: the binning job's bins are used; drop [prep] and the hosts' prep"
                        .into(),
                ));
            }
        }
        Ok(JobSpec {
            kind,
            model_id: raw.model_id,
            replace: raw.replace,
            dataset: raw.dataset,
            hosts: raw.hosts,
            train,
            prep: raw.prep,
            select: raw.select,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
model_id = "m1"
dataset = "bank"
[[hosts]]
party = "tax"
dataset = "tax"
[train]
max_epochs = 3
early_stopping = { kind = "loss", patience = 2, min_delta = 1e-4 }
"#;

    #[test]
    fn select_replaces_every_preparation_and_belongs_to_training() {
        let select = "[select]\nbinning_job = \"b1\"\ntop_k = 4\n";
        let spec = JobSpec::parse(&format!("{SPEC}{select}")).unwrap();
        let selection = spec.select.unwrap();
        assert_eq!(
            (selection.top_k, selection.merge, selection.min_iv),
            (Some(4), fedlearn::Merge::Monotone, 0.02)
        );
        let with_prep = format!("{SPEC}[prep.default]\nlog1p = true\n{select}");
        let err = JobSpec::parse(&with_prep).unwrap_err().to_string();
        assert!(err.contains("drop [prep]"), "{err}");
        let binning = format!("kind = \"binning\"\n{SPEC}{select}");
        let err = JobSpec::parse(&binning).unwrap_err().to_string();
        assert!(err.contains("only a training job"), "{err}");
        let empty = format!("{SPEC}[select]\nbinning_job = \"\"\n");
        let err = JobSpec::parse(&empty).unwrap_err().to_string();
        assert!(err.contains("binning_job names"), "{err}");
    }

    #[test]
    fn a_spec_parses_with_defaults_and_a_drawn_seed() {
        let spec = JobSpec::parse(SPEC).unwrap();
        assert_eq!(spec.train.max_epochs, 3);
        assert_eq!(spec.train.l2, TrainConfig::default().l2);
        let again = JobSpec::parse(SPEC).unwrap();
        assert_ne!(
            spec.train.seed, again.train.seed,
            "seeds are drawn, not fixed"
        );
        let seeded = JobSpec::parse(&format!("{SPEC}seed = 7\n")).unwrap();
        assert_eq!(seeded.train.seed, 7);
    }

    #[test]
    fn bad_specs_name_the_key() {
        let cases = [
            (SPEC.replace("max_epochs = 3", "max_epoch = 3"), "max_epoch"),
            (SPEC.replace("dataset = \"bank\"", ""), "dataset"),
            (
                SPEC.replace("max_epochs = 3", "max_epochs = 0"),
                "max_epochs",
            ),
            (SPEC.replace("\"loss\"", "\"lbfgs\""), "lbfgs"),
            // Settings of the mini-batch optimisers training no longer has.
            (format!("{SPEC}batch_size = 512\n"), "batch_size"),
            (format!("{SPEC}learning_rate = 0.1\n"), "learning_rate"),
            (format!("kind = \"score\"\n{SPEC}"), "kind"),
            (
                SPEC.replace("party = \"tax\"", "party = \"t a x\""),
                "hosts[0].party",
            ),
        ];
        for (text, key) in cases {
            let error = JobSpec::parse(&text).unwrap_err().to_string();
            assert!(error.contains(key), "{key}: {error}");
        }
    }
}
