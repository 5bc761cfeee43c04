//! Whether this node takes part in a job: pure checks of a job spec (guest) and of a proposal
//! and its training offer (host) against the configuration and what the node already holds.
//! Each refusal is a typed [`Refusal`] whose text is the reply; nothing here touches the
//! network or the store.

use fedlearn::{Prep, Proposal};

use crate::config::{split_model_id, NodeConfig, PolicyRule};
use crate::error::{NodeError, Refusal};
use crate::proto::JobProposal;
use crate::spec::JobSpec;
use crate::store::JobRecord;
use crate::wire::{FEDERATION_VERSION, MAX_PREP_BYTES};

/// Guest: a spec names a dataset of this node that holds labels, and hosts that are peers.
pub fn check_spec(config: &NodeConfig, spec: &JobSpec) -> Result<(), NodeError> {
    let dataset = config.datasets.get(&spec.dataset).ok_or_else(|| {
        NodeError::Spec(format!(
            "dataset: {:?} is not a dataset of {} (known: {})",
            spec.dataset,
            config.party,
            config
                .datasets
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    if dataset.label_column.is_none() {
        return Err(NodeError::Spec(format!(
            "dataset: {:?} has no label_column; the guest's dataset holds the labels",
            spec.dataset
        )));
    }
    for (i, host) in spec.hosts.iter().enumerate() {
        if config.peer(&host.party).is_none() {
            return Err(NodeError::Spec(format!(
                "hosts[{i}].party: {:?} is not a peer of {}",
                host.party, config.party
            )));
        }
    }
    Ok(())
}

/// Host: the proposal's preparation of this node's columns (checked against the data when
/// it is fitted).
pub fn host_prep(config: &NodeConfig, proposal: &JobProposal) -> Result<Prep, Refusal> {
    let refusal = |reason: String| Refusal::BadPrep {
        party: config.party.clone(),
        reason,
    };
    if proposal.prep.is_empty() {
        return Ok(Prep::default());
    }
    if proposal.prep.len() > MAX_PREP_BYTES {
        return Err(refusal(format!(
            "{} bytes (at most {MAX_PREP_BYTES})",
            proposal.prep.len()
        )));
    }
    let prep: Prep = serde_json::from_str(&proposal.prep).map_err(|e| refusal(e.to_string()))?;
    prep.validate().map_err(|e| refusal(e.to_string()))?;
    Ok(prep)
}

/// Host: what the configuration alone says of a proposal; returns the policy rule that
/// allows it.
pub fn check_proposal<'c>(
    config: &'c NodeConfig,
    proposal: &JobProposal,
) -> Result<&'c PolicyRule, Refusal> {
    if proposal.version != FEDERATION_VERSION {
        return Err(Refusal::Version {
            got: proposal.version,
        });
    }
    if proposal.job_id.len() != 32 || !proposal.job_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Refusal::BadJobId);
    }
    if proposal.kind != "train" && proposal.kind != "binning" {
        return Err(Refusal::JobKind {
            kind: proposal.kind.chars().take(64).collect(),
        });
    }
    // A model trained is a version of its name; binning statistics go by a name.
    let fits = split_model_id(&proposal.model_id)
        .is_some_and(|(_, version)| version.is_some() == (proposal.kind == "train"));
    if !fits {
        return Err(Refusal::BadName {
            key: "model_id",
            name: proposal.model_id.chars().take(64).collect(),
        });
    }
    let rule = config.allows(&proposal.guest, &proposal.kind, &proposal.dataset)?;
    if proposal.kind == "train" {
        check_shape(config, rule, proposal)?;
    }
    host_prep(config, proposal)?;
    let distinct: std::collections::BTreeSet<&String> = proposal.hosts.iter().collect();
    if distinct.len() != proposal.hosts.len() || distinct.contains(&proposal.guest) {
        return Err(Refusal::HostsNotDistinct);
    }
    if !proposal.hosts.contains(&config.party) {
        return Err(Refusal::NotAHost {
            party: config.party.clone(),
        });
    }
    if let Some(host) = proposal
        .hosts
        .iter()
        .find(|h| **h != config.party && config.peer(h).is_none())
    {
        return Err(Refusal::UnknownHost {
            host: host.clone(),
            party: config.party.clone(),
        });
    }
    Ok(rule)
}

/// The policy's limits on a proposed job's shape, before anything runs: the guest's features
/// (the training rows, which every step uses, are checked on the offer, once PSI has counted
/// them).
fn check_shape(config: &NodeConfig, rule: &PolicyRule, p: &JobProposal) -> Result<(), Refusal> {
    if p.guest_features > rule.max_guest_features {
        return Err(Refusal::GuestFeatures {
            party: config.party.clone(),
            guest: p.guest.clone(),
            dataset: p.dataset.clone(),
            got: p.guest_features,
            max: rule.max_guest_features,
        });
    }
    Ok(())
}

/// A proposal whose job id this node knows: `Ok` for a retry of the same proposal (the first
/// reply was lost) while the job runs; a refusal otherwise.
pub fn check_known(proposal: &JobProposal, known: &JobRecord) -> Result<(), Refusal> {
    let same = known.role == "host"
        && known.peers == [proposal.guest.clone()]
        && known.dataset == proposal.dataset
        && known.model_id == proposal.model_id;
    if !same {
        return Err(Refusal::JobKnown {
            job: proposal.job_id.clone(),
        });
    }
    if known.is_final() {
        return Err(Refusal::JobEnded {
            job: proposal.job_id.clone(),
            state: known.state.clone(),
        });
    }
    Ok(())
}

/// A new job: for training, its model id is free here and the guest has budget left on the
/// dataset (`disclosed` models counted against `max_models`); for binning statistics,
/// `disclosed` binning jobs counted against `max_binning_jobs`.
pub fn check_new(
    config: &NodeConfig,
    rule: &PolicyRule,
    proposal: &JobProposal,
    model_in_use: bool,
    disclosed: usize,
) -> Result<(), Refusal> {
    if proposal.kind == "binning" {
        if disclosed >= rule.max_binning_jobs as usize {
            return Err(Refusal::BinningBudget {
                guest: proposal.guest.clone(),
                dataset: proposal.dataset.clone(),
                party: config.party.clone(),
                done: disclosed,
                max: rule.max_binning_jobs,
            });
        }
        return Ok(());
    }
    if model_in_use {
        return Err(Refusal::ModelInUse {
            model: proposal.model_id.clone(),
            party: config.party.clone(),
        });
    }
    if disclosed >= rule.max_models as usize {
        return Err(Refusal::Budget {
            guest: proposal.guest.clone(),
            dataset: proposal.dataset.clone(),
            party: config.party.clone(),
            disclosed,
            max: rule.max_models,
        });
    }
    Ok(())
}

/// Host, after PSI: the guest's training offer matches the accepted proposal and its training
/// rows (every step uses all of them) are at least the policy's minimum.
pub fn check_offer(
    config: &NodeConfig,
    proposal: &JobProposal,
    offered: &Proposal,
    aligned_rows: usize,
) -> Result<(), Refusal> {
    let validation = (aligned_rows as f64 * offered.config.validation_fraction).round() as usize;
    let train_rows = aligned_rows.saturating_sub(validation) as u64;
    let rule = config.allows(&proposal.guest, "train", &proposal.dataset)?;
    if train_rows < rule.min_batch_rows {
        return Err(Refusal::BatchRows {
            party: config.party.clone(),
            guest: proposal.guest.clone(),
            dataset: proposal.dataset.clone(),
            rows: train_rows,
            min: rule.min_batch_rows,
        });
    }
    if offered.model_id != proposal.model_id
        || offered.hosts != proposal.hosts
        || offered.features > proposal.guest_features
    {
        return Err(Refusal::OfferDiffers);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NodeConfig {
        let text = r#"
            party = "tax"
            listen = "127.0.0.1:7002"
            data_dir = "data"
            operators = ["tax-operator"]
            [tls]
            cert = "node.crt"
            key = "node.key"
            ca = "ca.crt"
            [[peers]]
            name = "bank"
            address = "127.0.0.1:7001"
            [[peers]]
            name = "utilities"
            address = "127.0.0.1:7003"
            [datasets.filings]
            path = "tax.csv"
            id_column = "id"
            [[policy]]
            peer = "bank"
            jobs = ["train", "score"]
            datasets = ["filings"]
            max_models = 2
            min_batch_rows = 1024
            max_guest_features = 10
        "#;
        // Validation wants the files it names to exist.
        let dir = std::env::temp_dir().join(format!("unseen-admission-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for file in ["node.crt", "node.key", "ca.crt", "tax.csv"] {
            std::fs::write(dir.join(file), "").unwrap();
        }
        NodeConfig::parse(&dir.join("tax.toml"), text).unwrap()
    }

    fn proposal() -> JobProposal {
        JobProposal {
            version: FEDERATION_VERSION,
            job_id: "0123456789abcdef0123456789abcdef".into(),
            kind: "train".into(),
            guest: "bank".into(),
            dataset: "filings".into(),
            hosts: vec!["tax".into(), "utilities".into()],
            model_id: "sme-2026@1".into(),
            guest_features: 8,
            prep: r#"{"default": {"bins": {"kind": "quantile", "count": 5}}}"#.into(),
            attempt: 0,
        }
    }

    fn refused(change: impl FnOnce(&mut JobProposal)) -> Refusal {
        let mut p = proposal();
        change(&mut p);
        check_proposal(&config(), &p).unwrap_err()
    }

    #[test]
    fn a_proposal_within_the_policy_is_admitted() {
        let config = config();
        let rule = check_proposal(&config, &proposal()).unwrap();
        assert_eq!(rule.peer, "bank");
        check_new(&config, rule, &proposal(), false, 1).unwrap();
    }

    #[test]
    fn each_proposal_fault_has_its_refusal() {
        assert_eq!(refused(|p| p.version = 8), Refusal::Version { got: 8 });
        assert_eq!(refused(|p| p.job_id = "xyz".into()), Refusal::BadJobId);
        assert_eq!(
            refused(|p| p.job_id = "g".repeat(32)),
            Refusal::BadJobId,
            "non-hex digits"
        );
        for bad in ["../etc", "sme-2026", "sme-2026@0", "../etc@1"] {
            assert!(
                matches!(
                    refused(|p| p.model_id = bad.into()),
                    Refusal::BadName {
                        key: "model_id",
                        ..
                    }
                ),
                "a model trained is a version of a valid name: {bad}"
            );
        }
        assert!(matches!(
            refused(|p| p.kind = "score".into()),
            Refusal::JobKind { .. }
        ));
        assert!(matches!(
            refused(|p| p.dataset = "loans".into()),
            Refusal::NoDataset { .. }
        ));
        assert!(matches!(
            refused(|p| p.guest = "utilities".into()),
            Refusal::Policy { .. }
        ));
        for prep in [
            "{".to_owned(),
            r#"{"default": {"bins": {"kind": "quantile", "count": 1}}}"#.to_owned(),
            r#"{"defaults": {}}"#.to_owned(),
            format!(
                r#"{{"columns": {{"{}": {{}}}}}}"#,
                "x".repeat(MAX_PREP_BYTES)
            ),
        ] {
            assert!(
                matches!(refused(|p| p.prep = prep.clone()), Refusal::BadPrep { .. }),
                "{prep:.80}"
            );
        }
        assert!(matches!(
            refused(|p| p.guest_features = 11),
            Refusal::GuestFeatures {
                got: 11,
                max: 10,
                ..
            }
        ));
        assert_eq!(
            refused(|p| p.hosts = vec!["tax".into(), "tax".into()]),
            Refusal::HostsNotDistinct,
            "a host listed twice"
        );
        assert_eq!(
            refused(|p| p.hosts.push("bank".into())),
            Refusal::HostsNotDistinct,
            "the guest among the hosts"
        );
        assert!(matches!(
            refused(|p| p.hosts = vec!["utilities".into()]),
            Refusal::NotAHost { .. }
        ));
        assert!(matches!(
            refused(|p| p.hosts.push("power".into())),
            Refusal::UnknownHost { host, .. } if host == "power"
        ));
    }

    #[test]
    fn known_jobs_models_and_budgets_are_refused() {
        let config = config();
        let p = proposal();
        let rule = check_proposal(&config, &p).unwrap();
        let known = JobRecord {
            job_id: p.job_id.clone(),
            role: "host".into(),
            state: "training".into(),
            peers: vec!["bank".into()],
            dataset: p.dataset.clone(),
            model_id: p.model_id.clone(),
            ..JobRecord::default()
        };
        check_known(&p, &known).expect("a retried proposal of a running job");
        let ended = JobRecord {
            state: "succeeded".into(),
            ..known.clone()
        };
        assert!(matches!(
            check_known(&p, &ended),
            Err(Refusal::JobEnded { state, .. }) if state == "succeeded"
        ));
        let other = JobRecord {
            model_id: "another".into(),
            ..known
        };
        assert!(matches!(
            check_known(&p, &other),
            Err(Refusal::JobKnown { .. })
        ));
        assert!(matches!(
            check_new(&config, rule, &p, true, 0),
            Err(Refusal::ModelInUse { .. })
        ));
        assert!(matches!(
            check_new(&config, rule, &p, false, 2),
            Err(Refusal::Budget {
                disclosed: 2,
                max: 2,
                ..
            })
        ));
    }

    #[test]
    fn binning_jobs_need_their_own_policy_and_budget() {
        let config = config();
        let binning = |p: &mut JobProposal| {
            p.kind = "binning".into();
            p.model_id = "sme-2026".into();
            // Training limits do not apply: no features, no batches.
            p.guest_features = 500;
        };
        assert!(matches!(refused(binning), Refusal::Policy { .. }));
        let mut allowing = config.clone();
        allowing.policy[0].jobs.push("binning".into());
        allowing.policy[0].max_binning_jobs = 1;
        let mut p = proposal();
        binning(&mut p);
        let rule = check_proposal(&allowing, &p).unwrap();
        // A model of the same id does not matter; the binning budget does.
        check_new(&allowing, rule, &p, true, 0).unwrap();
        assert!(matches!(
            check_new(&allowing, rule, &p, false, 1),
            Err(Refusal::BinningBudget {
                done: 1,
                max: 1,
                ..
            })
        ));
    }

    #[test]
    fn an_offer_must_match_the_proposal_and_the_minimum_training_rows() {
        let config = config();
        let p = proposal();
        let offer = Proposal {
            job: [0; 16],
            model_id: p.model_id.clone(),
            config: fedlearn::TrainConfig {
                validation_fraction: 0.2,
                ..fedlearn::TrainConfig::default()
            },
            rows: 10_000,
            hosts: p.hosts.clone(),
            features: p.guest_features,
            resume: None,
        };
        check_offer(&config, &p, &offer, 10_000).unwrap();
        // Every step uses every training row: 1200 aligned rows leave 960 to train on, fewer
        // than the policy's 1024.
        assert!(matches!(
            check_offer(&config, &p, &offer, 1200),
            Err(Refusal::BatchRows { rows: 960, .. })
        ));
        // The proposal announces the most columns the guest's bins can make; fewer is fine.
        let fewer_features = Proposal {
            features: 7,
            ..offer.clone()
        };
        check_offer(&config, &p, &fewer_features, 10_000).unwrap();
        let more_features = Proposal {
            features: 9,
            ..offer
        };
        assert_eq!(
            check_offer(&config, &p, &more_features, 10_000),
            Err(Refusal::OfferDiffers)
        );
    }
}
