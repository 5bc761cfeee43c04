//! Model versions and their lifecycle.
//!
//! A training job names a model (`sme-credit`); the guest gives the job the name's next
//! version (`sme-credit@3`), one no model, deleted model or earlier job of this node had, and
//! every party stores its part under that id. A name that is served needs the spec's
//! `replace = true` to train again: the new version then answers for the name. Scoring a name
//! uses its latest version that is not archived; `name@version` pins one. An archived model
//! keeps its weights and report but is no longer scored; a deleted one leaves only a
//! tombstone (who it was for and when), so its version is never made again and a host's
//! disclosure budget still counts it.

use crate::config::split_model_id;
use crate::error::NodeError;
use crate::store::{DeletedModel, JobRecord, ModelRecord, Store};

/// Who may use a model, by its role here and its guest.
pub(crate) type Owner<'a> = &'a dyn Fn(&str, &str) -> bool;

/// The model a scoring call or a peer's request means by `asked`: the exact model for
/// `name@version` (or an unversioned id), else the name's latest version; only models whose
/// role and guest `owner` takes, never an archived or deleted one. The error says which of
/// these it was (to whom `owner` takes only).
pub(crate) fn serving(
    store: &Store,
    party: &str,
    asked: &str,
    owner: Owner<'_>,
) -> Result<ModelRecord, NodeError> {
    resolve(store, party, asked, owner, true)
}

/// The model an operator means by `asked` (archived ones included): the exact one, else the
/// name's latest version.
pub(crate) fn held(store: &Store, party: &str, asked: &str) -> Result<ModelRecord, NodeError> {
    resolve(store, party, asked, &|_, _| true, false)
}

fn resolve(
    store: &Store,
    party: &str,
    asked: &str,
    owner: Owner<'_>,
    scored: bool,
) -> Result<ModelRecord, NodeError> {
    use NodeError::NotFound;
    let none = || NotFound(format!("{party} has no model {asked:?}"));
    let Some((name, version)) = split_model_id(asked) else {
        return Err(none());
    };
    let ours = |m: &ModelRecord| owner(&m.role, &m.guest);
    let usable = |m: &ModelRecord| ours(m) && !(scored && m.archived_unix_ms.is_some());
    if version.is_none() {
        // A name: its latest version; an unversioned model of that id (made before versions)
        // only when the name has no usable version.
        let mut versions = versions(store, name)?;
        versions.sort_unstable_by(|a, b| b.cmp(a));
        for version in versions {
            match store.model(&format!("{name}@{version}"))? {
                Some(model) if usable(&model) => return Ok(model),
                _ => {}
            }
        }
    }
    match store.model(asked)? {
        Some(model) if !ours(&model) => Err(none()),
        Some(model) if scored && model.archived_unix_ms.is_some() => Err(NotFound(format!(
            "model {asked:?} is archived on {party}: it is no longer scored"
        ))),
        Some(model) => Ok(model),
        None => match store.deleted_model(asked)? {
            Some(gone) if owner(&gone.role, &gone.guest) => {
                Err(NotFound(format!("model {asked:?} was deleted on {party}")))
            }
            _ => Err(none()),
        },
    }
}

/// The versions of `name` held here (archived included).
fn versions(store: &Store, name: &str) -> Result<Vec<u32>, NodeError> {
    Ok(store
        .model_ids()?
        .iter()
        .filter_map(|id| version_of(id, name))
        .collect())
}

fn version_of(id: &str, name: &str) -> Option<u32> {
    match split_model_id(id)? {
        (of, Some(version)) if of == name => Some(version),
        _ => None,
    }
}

/// Guest: the versioned id a new training job of `name` trains — one past every version a
/// model, a deleted model or a job (`jobs`: stored and live) of this node had. Refused while
/// the name is served here (a guest model not archived) or trained by a live job, unless
/// `replace`.
pub(crate) fn next_version(
    store: &Store,
    party: &str,
    jobs: &[JobRecord],
    name: &str,
    replace: bool,
) -> Result<String, NodeError> {
    let held = versions(store, name)?;
    let deleted = store.deleted_models()?;
    let highest = held
        .iter()
        .copied()
        .chain(deleted.iter().filter_map(|m| version_of(&m.model_id, name)))
        .chain(jobs.iter().filter_map(|j| version_of(&j.model_id, name)))
        .max()
        .unwrap_or(0);
    let next = format!("{name}@{}", highest + 1);
    if replace {
        return Ok(next);
    }
    let training = jobs
        .iter()
        .find(|j| !j.is_final() && version_of(&j.model_id, name).is_some());
    if let Some(job) = training {
        return Err(NodeError::Spec(format!(
            "model_id: job {} trains {:?} on {party}; set replace = true to train {next} as well",
            job.job_id, job.model_id
        )));
    }
    if let Ok(served) = serving(store, party, name, &|role, _| role == "guest") {
        return Err(NodeError::Spec(format!(
            "model_id: {name:?} is served on {party} as {}; set replace = true to train {next}, \
             which then answers for {name:?}",
            served.model_id
        )));
    }
    Ok(next)
}

/// Archives one version (`name@version`, or an unversioned id) for `operator`: no longer
/// scored, its part and report kept. Audited.
pub(crate) fn archive(
    store: &Store,
    party: &str,
    asked: &str,
    operator: &str,
) -> Result<ModelRecord, NodeError> {
    let model = one_version(store, party, asked)?;
    let model = store
        .archive_model(&model.model_id, crate::clock::now_ms())?
        .ok_or_else(|| NodeError::NotFound(format!("{party} has no model {asked:?}")))?;
    crate::audit::append(
        store,
        "model.archived",
        &model.job_id,
        operator,
        serde_json::json!({"model": model.model_id, "role": model.role}),
    )?;
    Ok(model)
}

/// Deletes one version for `operator`: its part, seeds and report are erased; a tombstone
/// stays. Audited.
pub(crate) fn delete(
    store: &Store,
    party: &str,
    asked: &str,
    operator: &str,
) -> Result<DeletedModel, NodeError> {
    let model = one_version(store, party, asked)?;
    let gone = DeletedModel {
        model_id: model.model_id,
        job_id: model.job_id,
        role: model.role,
        guest: model.guest,
        dataset: model.dataset,
        created_unix_ms: model.created_unix_ms,
        deleted_unix_ms: crate::clock::now_ms(),
        operator: operator.to_owned(),
    };
    if !store.delete_model(&gone)? {
        return Err(NodeError::NotFound(format!(
            "{party} has no model {asked:?}"
        )));
    }
    crate::audit::append(
        store,
        "model.deleted",
        &gone.job_id,
        operator,
        serde_json::json!({"model": gone.model_id, "role": gone.role}),
    )?;
    Ok(gone)
}

/// The model `asked` names exactly: a name alone is refused, so that an operator archives
/// or deletes the version meant.
fn one_version(store: &Store, party: &str, asked: &str) -> Result<ModelRecord, NodeError> {
    if let Some((name, None)) = split_model_id(asked) {
        // An unversioned id is a model of its own (made before versions), or a name.
        return store.model(asked)?.ok_or_else(|| {
            NodeError::BadRequest(format!(
                "{asked:?} names a model, not one version: say which, as {name}@version \
                 (`unseen model list` shows them)"
            ))
        });
    }
    held(store, party, asked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sealing::StoreKey;

    fn model(id: &str, role: &str) -> ModelRecord {
        ModelRecord {
            model_id: id.into(),
            job_id: "j".into(),
            role: role.into(),
            features: 1,
            created_unix_ms: 1,
            part_json: "{}".into(),
            report_json: "{}".into(),
            guest: "bank".into(),
            hosts: vec!["tax".into()],
            dataset: "d".into(),
            pair_seeds: Default::default(),
            archived_unix_ms: None,
        }
    }

    #[test]
    fn a_name_means_its_latest_usable_version() {
        let dir = std::env::temp_dir().join(format!("unseen-models-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir, StoreKey::generate()).unwrap();
        let guest = |role: &str, _: &str| role == "guest";
        let served = |asked: &str| serving(&store, "bank", asked, &guest).map(|m| m.model_id);
        // A model made before versions answers for its name until the name has a version.
        store.put_model(&model("m", "guest")).unwrap();
        assert_eq!(served("m").unwrap(), "m");
        let refused = next_version(&store, "bank", &[], "m", false).unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("set replace = true to train m@1"),
            "{refused}"
        );
        assert_eq!(next_version(&store, "bank", &[], "m", true).unwrap(), "m@1");
        store.put_model(&model("m@1", "guest")).unwrap();
        store.put_model(&model("m@2", "guest")).unwrap();
        store.put_model(&model("m@3", "host")).unwrap();
        assert_eq!(
            served("m").unwrap(),
            "m@2",
            "the latest of this node's role"
        );
        archive(&store, "bank", "m@2", "ops").unwrap();
        assert_eq!(served("m").unwrap(), "m@1");
        assert!(served("m@2")
            .unwrap_err()
            .to_string()
            .contains("is archived"));
        assert_eq!(held(&store, "bank", "m@2").unwrap().model_id, "m@2");
        delete(&store, "bank", "m@1", "ops").unwrap();
        assert_eq!(served("m").unwrap(), "m", "no version left: the old model");
        assert!(served("m@1")
            .unwrap_err()
            .to_string()
            .contains("was deleted"));
        // Versions go on past every one made, deleted or held by another role.
        assert_eq!(next_version(&store, "bank", &[], "m", true).unwrap(), "m@4");
        // An operator names one version; an unversioned model is its own exact id.
        store.put_model(&model("n@1", "guest")).unwrap();
        let error = delete(&store, "bank", "n", "ops").unwrap_err().to_string();
        assert!(error.contains("names a model, not one version"), "{error}");
        delete(&store, "bank", "m", "ops").unwrap();
        assert!(served("m").is_err());
        assert!(store.model("m@3").unwrap().is_some(), "not a version");
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
