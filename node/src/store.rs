//! The node's embedded store (redb, one file under the data directory): jobs with their event
//! history, and this node's model parts with their reports. Records are JSON, so a later
//! version can read them; every update is one committed transaction.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::NodeError;
use crate::sealing::StoreKey;

/// Pages of the store kept in memory (redb's cache).
const STORE_CACHE_BYTES: usize = 64 << 20;

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const MODELS: TableDefinition<&str, &[u8]> = TableDefinition::new("models");
/// What is left of a deleted model: who it was for and when it went (never its weights), so
/// its version is not made again and a host's disclosure budget still counts it.
const DELETED: TableDefinition<&str, &[u8]> = TableDefinition::new("deleted_models");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// Per peer, the latest head of that peer's audit log it gave this node to keep.
const ANCHORS: TableDefinition<&str, &[u8]> = TableDefinition::new("anchors");
/// Job events by (job id, index): appended one by one, never rewritten.
const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
/// What an unfinished training job resumes from, by (job id, part), sealed: the guest's
/// spec or a host's proposal ("job"), the plan of its PSI ("psi plan") and the parts PSI
/// finished ("psi part 0000000012"), the aligned rows ("aligned") and the last two
/// checkpoints ("epoch 0000000007"). Deleted when the job ends.
const RESUME: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("resume");

/// Metrics of one evaluation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsRecord {
    /// Area under the ROC curve.
    pub auc: f64,
    /// Kolmogorov–Smirnov statistic.
    pub ks: f64,
    /// Log-loss.
    pub log_loss: f64,
    /// Accuracy at 0.5.
    pub accuracy: f64,
}

impl From<&fedlearn::Metrics> for MetricsRecord {
    fn from(m: &fedlearn::Metrics) -> Self {
        MetricsRecord {
            auc: m.auc,
            ks: m.ks,
            log_loss: m.log_loss,
            accuracy: m.accuracy,
        }
    }
}

/// One progress event of a job.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Job state after the event.
    pub state: String,
    /// Detail.
    pub message: String,
    /// Epoch (training).
    pub epoch: u32,
    /// The final model's metrics on the training rows (guest, in the event that ends
    /// training, when the job has no validation split: the job's one reveal).
    pub train: Option<MetricsRecord>,
    /// The final model's metrics on the validation rows (guest, in the event that ends
    /// training: the job's one reveal).
    pub validation: Option<MetricsRecord>,
    /// Per-epoch Taylor log-loss on the training rows (guest).
    #[serde(default)]
    pub train_loss: Option<f64>,
    /// Per-epoch Taylor log-loss on the validation rows (guest).
    #[serde(default)]
    pub validation_loss: Option<f64>,
    /// Bytes sent by this node in the job so far.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Rows after PSI.
    pub aligned_rows: u64,
    /// PSI progress in [0, 1].
    pub psi_progress: f64,
    /// Time.
    pub unix_ms: i64,
}

/// A job as this node saw it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Job id (32 hex digits).
    pub job_id: String,
    /// Kind ("train").
    pub kind: String,
    /// "guest" or "host".
    pub role: String,
    /// "queued", "psi", "training", "interrupted" (waiting to resume), "succeeded",
    /// "failed", "cancelled".
    pub state: String,
    /// Model trained.
    pub model_id: String,
    /// Failure or cancellation reason.
    pub error: String,
    /// Creation time.
    pub created_unix_ms: i64,
    /// Last update.
    pub updated_unix_ms: i64,
    /// Guest (on a host) or hosts (on the guest).
    pub peers: Vec<String>,
    /// This node's dataset.
    pub dataset: String,
    /// Epochs requested.
    pub max_epochs: u32,
    /// The attempt running or last run (0, then one more each time the job resumed).
    #[serde(default)]
    pub attempt: u32,
    /// A binning job's statistics on the guest (`fedlearn::BinningReport` as JSON).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub report: String,
    /// The bins this node fitted in a binning job (`Vec<fedlearn::KeptBins>` as JSON), for a
    /// training job on them; they never leave the node.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kept_bins: String,
    /// Every event so far (stored in their own table, one row per event).
    #[serde(default, skip_serializing)]
    pub events: Vec<EventRecord>,
}

impl JobRecord {
    /// Whether the job has ended.
    pub fn is_final(&self) -> bool {
        matches!(self.state.as_str(), "succeeded" | "failed" | "cancelled")
    }

    /// The record without its events.
    pub fn head(&self) -> JobRecord {
        JobRecord {
            job_id: self.job_id.clone(),
            kind: self.kind.clone(),
            role: self.role.clone(),
            state: self.state.clone(),
            model_id: self.model_id.clone(),
            error: self.error.clone(),
            created_unix_ms: self.created_unix_ms,
            updated_unix_ms: self.updated_unix_ms,
            peers: self.peers.clone(),
            dataset: self.dataset.clone(),
            max_epochs: self.max_epochs,
            attempt: self.attempt,
            report: self.report.clone(),
            kept_bins: self.kept_bins.clone(),
            events: Vec::new(),
        }
    }

    /// The last event, if any.
    pub fn last(&self) -> Option<&EventRecord> {
        self.events.last()
    }
}

/// This node's part of a trained model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// Model id.
    pub model_id: String,
    /// Job that trained it.
    pub job_id: String,
    /// "guest" or "host".
    pub role: String,
    /// Number of this node's features.
    pub features: u32,
    /// Creation time.
    pub created_unix_ms: i64,
    /// fedlearn's ModelPart JSON.
    pub part_json: String,
    /// Training report JSON.
    pub report_json: String,
    /// The model's guest.
    #[serde(default)]
    pub guest: String,
    /// The model's hosts, in chain order.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// This node's dataset the model scores.
    #[serde(default)]
    pub dataset: String,
    /// Host only: hex seeds of the pairwise scoring masks, by other host.
    #[serde(default)]
    pub pair_seeds: std::collections::BTreeMap<String, String>,
    /// When an operator archived it (no longer scored; weights and report kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived_unix_ms: Option<i64>,
}

/// What the store keeps of a deleted model.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedModel {
    /// Model id.
    pub model_id: String,
    /// Job that trained it.
    pub job_id: String,
    /// "guest" or "host".
    pub role: String,
    /// The model's guest.
    pub guest: String,
    /// This node's dataset it scored.
    pub dataset: String,
    /// When it was made.
    pub created_unix_ms: i64,
    /// When it was deleted.
    pub deleted_unix_ms: i64,
    /// The operator who deleted it.
    pub operator: String,
}

/// The latest record of an audit log, as a peer keeps it: signed by the log's node, so the
/// keeper holds evidence of what that log held.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    /// Its sequence number.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
    /// When the keeper received it.
    pub unix_ms: i64,
    /// When the log's node signed it.
    #[serde(default)]
    pub signed_unix_ms: i64,
    /// The signature's scheme (TLS code point).
    #[serde(default)]
    pub scheme: u16,
    /// The log's node's signature (hex) over the head (`audit::head_message`).
    #[serde(default)]
    pub signature: String,
    /// The certificate it was verified with when kept (hex DER).
    #[serde(default)]
    pub certificate: String,
}

/// The store.
pub struct Store {
    db: Database,
    path: PathBuf,
    /// Seals model records (model parts, pairwise scoring seeds).
    key: StoreKey,
    /// Tests only: audit appends fail (a full disk, a broken file) while set.
    audit_broken: std::sync::atomic::AtomicBool,
}

impl Store {
    /// Opens (or creates) `<data_dir>/unseen.redb`, readable by this node's user only (it
    /// holds model parts and pairwise scoring seeds).
    pub fn open(data_dir: &Path, key: StoreKey) -> Result<Store, NodeError> {
        let path = data_dir.join("unseen.redb");
        // The directory and the file are private before anything is written to them.
        #[cfg(unix)]
        {
            use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(data_dir)
                .map_err(|e| NodeError::io(data_dir, e))?;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(|e| NodeError::io(&path, e))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| NodeError::io(&path, e))?;
        }
        #[cfg(not(unix))]
        std::fs::create_dir_all(data_dir).map_err(|e| NodeError::io(data_dir, e))?;
        // redb caches up to 1 GiB of pages by default: a job's kept PSI parts (4 bytes per
        // aligned row) would stay resident with the set's size. The store's hot data (jobs,
        // events, model records) is small.
        let db = redb::Builder::new()
            .set_cache_size(STORE_CACHE_BYTES)
            .create(&path)
            .map_err(|e| NodeError::Store {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let store = Store {
            db,
            path,
            key,
            audit_broken: Default::default(),
        };
        store.write(|txn| {
            txn.open_table(JOBS)?;
            txn.open_table(MODELS)?;
            txn.open_table(DELETED)?;
            txn.open_table(AUDIT)?;
            txn.open_table(ANCHORS)?;
            txn.open_table(EVENTS)?;
            txn.open_table(RESUME)?;
            Ok(())
        })?;
        Ok(store)
    }

    fn error(&self, e: impl std::fmt::Display) -> NodeError {
        NodeError::Store {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), NodeError> {
        let txn = self.db.begin_write().map_err(|e| self.error(e))?;
        f(&txn).map_err(|e| self.error(e))?;
        txn.commit().map_err(|e| self.error(e))
    }

    fn put<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &T,
    ) -> Result<(), NodeError> {
        let bytes = serde_json::to_vec(value).map_err(|e| self.error(e))?;
        self.write(|txn| {
            txn.open_table(table)?.insert(key, bytes.as_slice())?;
            Ok(())
        })
    }

    fn get<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, NodeError> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = txn.open_table(table).map_err(|e| self.error(e))?;
        match table.get(key).map_err(|e| self.error(e))? {
            Some(value) => serde_json::from_slice(value.value())
                .map(Some)
                .map_err(|e| self.error(format!("record {key:?}: {e}"))),
            None => Ok(None),
        }
    }

    fn all<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, NodeError> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = txn.open_table(table).map_err(|e| self.error(e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| self.error(e))? {
            let (key, value) = entry.map_err(|e| self.error(e))?;
            out.push(
                serde_json::from_slice(value.value())
                    .map_err(|e| self.error(format!("record {:?}: {e}", key.value())))?,
            );
        }
        Ok(out)
    }

    /// Writes a job record (without its events).
    pub fn put_job(&self, job: &JobRecord) -> Result<(), NodeError> {
        self.put(JOBS, &job.job_id, job)
    }

    /// Writes a job record and appends event `index`, in one transaction.
    pub fn put_job_event(
        &self,
        job: &JobRecord,
        index: u64,
        event: &EventRecord,
    ) -> Result<(), NodeError> {
        let record = serde_json::to_vec(job).map_err(|e| self.error(e))?;
        let event = serde_json::to_vec(event).map_err(|e| self.error(e))?;
        self.write(|txn| {
            txn.open_table(JOBS)?
                .insert(job.job_id.as_str(), record.as_slice())?;
            txn.open_table(EVENTS)?
                .insert((job.job_id.as_str(), index), event.as_slice())?;
            Ok(())
        })
    }

    fn with_events(&self, mut job: JobRecord) -> Result<JobRecord, NodeError> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = txn.open_table(EVENTS).map_err(|e| self.error(e))?;
        let id = job.job_id.as_str();
        for entry in table
            .range((id, 0)..=(id, u64::MAX))
            .map_err(|e| self.error(e))?
        {
            let (_, value) = entry.map_err(|e| self.error(e))?;
            job.events.push(
                serde_json::from_slice(value.value())
                    .map_err(|e| self.error(format!("event of job {}: {e}", job.job_id)))?,
            );
        }
        Ok(job)
    }

    /// Reads a job record with its events.
    pub fn job(&self, job_id: &str) -> Result<Option<JobRecord>, NodeError> {
        match self.get(JOBS, job_id)? {
            Some(job) => self.with_events(job).map(Some),
            None => Ok(None),
        }
    }

    /// Every job with its events, oldest first.
    pub fn jobs(&self) -> Result<Vec<JobRecord>, NodeError> {
        let mut jobs: Vec<JobRecord> = self.all(JOBS)?;
        jobs.sort_by_key(|j| j.created_unix_ms);
        jobs.into_iter().map(|j| self.with_events(j)).collect()
    }

    /// Writes a new model record, sealed with the store key; refuses an id that a model has
    /// or had (a deleted one's included).
    pub fn put_model(&self, model: &ModelRecord) -> Result<(), NodeError> {
        let id = model.model_id.as_str();
        let sealed = self.seal_model(model)?;
        let mut taken = false;
        self.write(|txn| {
            let mut models = txn.open_table(MODELS)?;
            taken = models.get(id)?.is_some() || txn.open_table(DELETED)?.get(id)?.is_some();
            if !taken {
                models.insert(id, sealed.as_slice())?;
            }
            Ok(())
        })?;
        if taken {
            return Err(self.error(format!("model {id:?} exists or existed")));
        }
        Ok(())
    }

    fn seal_model(&self, model: &ModelRecord) -> Result<Vec<u8>, NodeError> {
        let bytes = serde_json::to_vec(model).map_err(|e| self.error(e))?;
        Ok(self.key.seal(&model_context(&model.model_id), &bytes))
    }

    /// Marks a model archived at `unix_ms` (kept, no longer scored); returns it, or `None`
    /// if there is no such model. Archiving twice keeps the first time.
    pub fn archive_model(
        &self,
        model_id: &str,
        unix_ms: i64,
    ) -> Result<Option<ModelRecord>, NodeError> {
        let Some(mut model) = self.model(model_id)? else {
            return Ok(None);
        };
        if model.archived_unix_ms.is_some() {
            return Ok(Some(model));
        }
        model.archived_unix_ms = Some(unix_ms);
        let sealed = self.seal_model(&model)?;
        let mut gone = false;
        self.write(|txn| {
            let mut models = txn.open_table(MODELS)?;
            gone = models.get(model_id)?.is_none();
            if !gone {
                models.insert(model_id, sealed.as_slice())?;
            }
            Ok(())
        })?;
        Ok((!gone).then_some(model))
    }

    /// Deletes a model's record (its weights, seeds and report) and keeps `gone` in its place,
    /// in one transaction; `false` if there was no such model.
    pub fn delete_model(&self, gone: &DeletedModel) -> Result<bool, NodeError> {
        let bytes = serde_json::to_vec(gone).map_err(|e| self.error(e))?;
        let mut found = false;
        self.write(|txn| {
            found = txn
                .open_table(MODELS)?
                .remove(gone.model_id.as_str())?
                .is_some();
            if found {
                txn.open_table(DELETED)?
                    .insert(gone.model_id.as_str(), bytes.as_slice())?;
            }
            Ok(())
        })?;
        Ok(found)
    }

    /// Every deleted model, oldest first.
    pub fn deleted_models(&self) -> Result<Vec<DeletedModel>, NodeError> {
        let mut gone: Vec<DeletedModel> = self.all(DELETED)?;
        gone.sort_by_key(|m| m.created_unix_ms);
        Ok(gone)
    }

    /// A deleted model's record.
    pub fn deleted_model(&self, model_id: &str) -> Result<Option<DeletedModel>, NodeError> {
        self.get(DELETED, model_id)
    }

    /// The ids of every model held (archived ones included), without opening their records.
    pub fn model_ids(&self) -> Result<Vec<String>, NodeError> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = txn.open_table(MODELS).map_err(|e| self.error(e))?;
        let mut ids = Vec::new();
        for entry in table.iter().map_err(|e| self.error(e))? {
            ids.push(entry.map_err(|e| self.error(e))?.0.value().to_owned());
        }
        Ok(ids)
    }

    fn open_model(&self, model_id: &str, sealed: &[u8]) -> Result<ModelRecord, NodeError> {
        let bytes = self
            .key
            .open(&model_context(model_id), sealed)
            .map_err(|e| self.error(e))?;
        serde_json::from_slice(&bytes).map_err(|e| self.error(format!("model {model_id:?}: {e}")))
    }

    /// Reads a model record.
    pub fn model(&self, model_id: &str) -> Result<Option<ModelRecord>, NodeError> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = txn.open_table(MODELS).map_err(|e| self.error(e))?;
        match table.get(model_id).map_err(|e| self.error(e))? {
            Some(sealed) => self.open_model(model_id, sealed.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Every model, oldest first.
    pub fn models(&self) -> Result<Vec<ModelRecord>, NodeError> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = txn.open_table(MODELS).map_err(|e| self.error(e))?;
        let mut models = Vec::new();
        for entry in table.iter().map_err(|e| self.error(e))? {
            let (key, sealed) = entry.map_err(|e| self.error(e))?;
            models.push(self.open_model(key.value(), sealed.value())?);
        }
        models.sort_by_key(|m| m.created_unix_ms);
        Ok(models)
    }

    /// Appends the record `make` builds from the next sequence number and the last record
    /// (in one transaction, so the chain has no gaps or forks).
    pub fn append_audit(
        &self,
        make: impl FnOnce(u64, Option<&[u8]>) -> Vec<u8>,
    ) -> Result<(), NodeError> {
        if self.audit_broken.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(self.error("the audit table cannot be written (a test's fault)"));
        }
        self.write(|txn| {
            let mut table = txn.open_table(AUDIT)?;
            let last = table.last()?.map(|(k, v)| (k.value(), v.value().to_vec()));
            let (seq, record) = match &last {
                Some((seq, bytes)) => (seq + 1, make(seq + 1, Some(bytes))),
                None => (0, make(0, None)),
            };
            table.insert(seq, record.as_slice())?;
            Ok(())
        })
    }

    /// Every audit record (raw), in sequence order.
    pub fn audit_records(&self) -> Result<Vec<(u64, Vec<u8>)>, NodeError> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = txn.open_table(AUDIT).map_err(|e| self.error(e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| self.error(e))? {
            let (key, value) = entry.map_err(|e| self.error(e))?;
            out.push((key.value(), value.value().to_vec()));
        }
        Ok(out)
    }

    /// Keeps `peer`'s audit head unless it goes back on the kept one (an earlier record, or
    /// the same record with another hash), in one transaction; `Err` holds the kept head.
    pub fn advance_anchor(
        &self,
        peer: &str,
        head: &AuditHead,
    ) -> Result<Result<(), AuditHead>, NodeError> {
        let bytes = serde_json::to_vec(head).map_err(|e| self.error(e))?;
        let mut refused = None;
        self.write(|txn| {
            let mut table = txn.open_table(ANCHORS)?;
            let kept: Option<AuditHead> = table
                .get(peer)?
                .and_then(|v| serde_json::from_slice(v.value()).ok());
            match kept {
                Some(kept)
                    if head.seq < kept.seq || (head.seq == kept.seq && head.hash != kept.hash) =>
                {
                    refused = Some(kept);
                }
                _ => {
                    table.insert(peer, bytes.as_slice())?;
                }
            }
            Ok(())
        })?;
        Ok(refused.map_or(Ok(()), Err))
    }

    /// The head of `peer`'s audit log this node keeps, if any.
    pub fn anchor(&self, peer: &str) -> Result<Option<AuditHead>, NodeError> {
        self.get(ANCHORS, peer)
    }

    /// The last audit record (raw), if any.
    pub fn last_audit_record(&self) -> Result<Option<(u64, Vec<u8>)>, NodeError> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = txn.open_table(AUDIT).map_err(|e| self.error(e))?;
        let last = table.last().map_err(|e| self.error(e))?;
        Ok(last.map(|(k, v)| (k.value(), v.value().to_vec())))
    }

    /// Up to `count` audit records (raw) from sequence number `from` on, in order.
    pub fn audit_range(&self, from: u64, count: usize) -> Result<Vec<(u64, Vec<u8>)>, NodeError> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = txn.open_table(AUDIT).map_err(|e| self.error(e))?;
        let mut out = Vec::new();
        for entry in table.range(from..).map_err(|e| self.error(e))?.take(count) {
            let (key, value) = entry.map_err(|e| self.error(e))?;
            out.push((key.value(), value.value().to_vec()));
        }
        Ok(out)
    }

    /// Deletes the audit records from `from` on, as someone covering their tracks would: only
    /// for tests that check peers' anchors detect it.
    #[doc(hidden)]
    pub fn truncate_audit_for_tests(&self, from: u64) -> Result<(), NodeError> {
        self.write(|txn| {
            let mut table = txn.open_table(AUDIT)?;
            table.retain(|seq, _| seq < from)?;
            Ok(())
        })
    }

    /// Makes audit appends fail (or work again): only for tests that check an operation
    /// fails when its audit record cannot be written.
    #[doc(hidden)]
    pub fn break_audit_for_tests(&self, broken: bool) {
        self.audit_broken
            .store(broken, std::sync::atomic::Ordering::SeqCst);
    }

    /// Overwrites one audit record: only for tests that check tampering is detected.
    #[doc(hidden)]
    pub fn overwrite_audit_record_for_tests(
        &self,
        seq: u64,
        bytes: &[u8],
    ) -> Result<(), NodeError> {
        self.write(|txn| {
            txn.open_table(AUDIT)?.insert(seq, bytes)?;
            Ok(())
        })
    }

    /// Keeps `part` of what job `job_id` resumes from (sealed to the job and the part).
    pub fn put_resume(&self, job_id: &str, part: &str, bytes: &[u8]) -> Result<(), NodeError> {
        let sealed = self.key.seal(&resume_context(job_id, part), bytes);
        self.write(|txn| {
            txn.open_table(RESUME)?
                .insert((job_id, part), sealed.as_slice())?;
            Ok(())
        })
    }

    /// `part` of what job `job_id` resumes from, if kept.
    pub fn resume_part(&self, job_id: &str, part: &str) -> Result<Option<Vec<u8>>, NodeError> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = txn.open_table(RESUME).map_err(|e| self.error(e))?;
        match table.get((job_id, part)).map_err(|e| self.error(e))? {
            Some(sealed) => self
                .key
                .open(&resume_context(job_id, part), sealed.value())
                .map(Some)
                .map_err(|e| self.error(e)),
            None => Ok(None),
        }
    }

    /// Keeps a job's checkpoint of `epoch`, and of the others only the one before it.
    pub fn put_checkpoint(&self, job_id: &str, epoch: u64, bytes: &[u8]) -> Result<(), NodeError> {
        let part = checkpoint_part(epoch);
        let sealed = self.key.seal(&resume_context(job_id, &part), bytes);
        let older = self.checkpoint_epochs(job_id)?;
        self.write(|txn| {
            let mut table = txn.open_table(RESUME)?;
            table.insert((job_id, part.as_str()), sealed.as_slice())?;
            // The one before stays; later ones are of an earlier run that started over.
            let previous = older.iter().copied().filter(|&e| e < epoch).max();
            for e in older {
                if e != epoch && Some(e) != previous {
                    table.remove((job_id, checkpoint_part(e).as_str()))?;
                }
            }
            Ok(())
        })
    }

    /// The epochs a job keeps checkpoints of, in order.
    pub fn checkpoint_epochs(&self, job_id: &str) -> Result<Vec<u64>, NodeError> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = txn.open_table(RESUME).map_err(|e| self.error(e))?;
        let mut epochs = Vec::new();
        for entry in table
            .range((job_id, "epoch ")..(job_id, "epoch!"))
            .map_err(|e| self.error(e))?
        {
            let (key, _) = entry.map_err(|e| self.error(e))?;
            let part = key.value().1;
            if let Some(epoch) = part.strip_prefix("epoch ").and_then(|e| e.parse().ok()) {
                epochs.push(epoch);
            }
        }
        Ok(epochs)
    }

    /// A job's checkpoint of `epoch`, if kept.
    pub fn checkpoint(&self, job_id: &str, epoch: u64) -> Result<Option<Vec<u8>>, NodeError> {
        self.resume_part(job_id, &checkpoint_part(epoch))
    }

    /// `job_id`'s kept parts whose names start with `prefix`, by name, each as it opened
    /// (a damaged one as its error).
    #[allow(clippy::type_complexity)]
    pub fn resume_parts(
        &self,
        job_id: &str,
        prefix: &str,
    ) -> Result<Vec<(String, Result<Vec<u8>, NodeError>)>, NodeError> {
        let names: Vec<String> = {
            let txn = self.db.begin_read().map_err(|e| self.error(e))?;
            let table = txn.open_table(RESUME).map_err(|e| self.error(e))?;
            let mut names = Vec::new();
            for entry in table.range((job_id, prefix)..).map_err(|e| self.error(e))? {
                let (key, _) = entry.map_err(|e| self.error(e))?;
                let (job, part) = key.value();
                if job != job_id || !part.starts_with(prefix) {
                    break;
                }
                names.push(part.to_owned());
            }
            names
        };
        Ok(names
            .into_iter()
            .filter_map(|name| {
                let part = self.resume_part(job_id, &name).transpose()?;
                Some((name, part))
            })
            .collect())
    }

    /// Forgets the kept parts of `job_id` that `forget` names.
    pub fn forget_resume(
        &self,
        job_id: &str,
        forget: impl Fn(&str) -> bool,
    ) -> Result<(), NodeError> {
        self.write(|txn| {
            let mut table = txn.open_table(RESUME)?;
            let parts: Vec<String> = table
                .range((job_id, "")..)?
                .map_while(|entry| {
                    let (key, _) = entry.ok()?;
                    let (job, part) = key.value();
                    (job == job_id).then(|| part.to_owned())
                })
                .filter(|part| forget(part))
                .collect();
            for part in parts {
                table.remove((job_id, part.as_str()))?;
            }
            Ok(())
        })
    }

    /// Forgets what a job resumes from (it ended), or with `keep_job` all but what the job
    /// was started with.
    pub fn clear_resume(&self, job_id: &str, keep_job: bool) -> Result<(), NodeError> {
        self.forget_resume(job_id, |part| {
            !(keep_job && (part == "job" || part == "settings"))
        })
    }

    /// The jobs a restart interrupted: marks those that cannot resume failed and returns
    /// them, then (when `resume` allows any) the training jobs that keep what they resume
    /// from.
    pub fn interrupted_jobs(
        &self,
        resume: bool,
    ) -> Result<(Vec<JobRecord>, Vec<JobRecord>), NodeError> {
        let mut failed = Vec::new();
        let mut resumable = Vec::new();
        for mut job in self.jobs()? {
            if job.is_final() {
                continue;
            }
            if resume && job.kind == "train" && self.resume_part(&job.job_id, "job")?.is_some() {
                resumable.push(job);
                continue;
            }
            // What it kept to resume from (weights, aligned rows) goes with it.
            self.clear_resume(&job.job_id, false)?;
            let now = crate::clock::now_ms();
            job.state = "failed".into();
            job.error =
                "interrupted by a restart of the node (it kept nothing to resume from)".into();
            job.updated_unix_ms = now;
            let mut event = job.last().cloned().unwrap_or_default();
            event.state = job.state.clone();
            event.message = job.error.clone();
            event.unix_ms = now;
            self.put_job_event(&job.head(), job.events.len() as u64, &event)?;
            failed.push(job.head());
        }
        Ok((failed, resumable))
    }
}

/// What a resume part is sealed to.
fn resume_context(job_id: &str, part: &str) -> String {
    format!("unseen resume {job_id} {part}")
}

/// The part name of a checkpoint: fixed width, so they sort by epoch.
fn checkpoint_part(epoch: u64) -> String {
    format!("epoch {epoch:010}")
}

/// What a model record is sealed to: its own key, so a record moved under another id fails.
fn model_context(model_id: &str) -> String {
    format!("unseen model record {model_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_keeps_its_last_two_checkpoints_sealed_until_it_ends() {
        let dir = std::env::temp_dir().join(format!("unseen-resume-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir, StoreKey::generate()).unwrap();
        store.put_resume("j", "job", b"spec").unwrap();
        store.put_resume("j", "aligned", b"rows").unwrap();
        store.put_resume("k", "job", b"other").unwrap();
        for epoch in 1..=5u64 {
            store
                .put_checkpoint("j", epoch, format!("weights {epoch}").as_bytes())
                .unwrap();
        }
        assert_eq!(store.checkpoint_epochs("j").unwrap(), [4, 5]);
        assert_eq!(store.checkpoint("j", 4).unwrap().unwrap(), b"weights 4");
        assert_eq!(store.checkpoint("j", 3).unwrap(), None);
        // A run that started over: its first epoch keeps nothing of the earlier run.
        store.put_checkpoint("j", 1, b"again 1").unwrap();
        assert_eq!(store.checkpoint_epochs("j").unwrap(), [1]);
        // Sealed: the file holds none of it, and a part moved under another name fails.
        let file = std::fs::read(dir.join("unseen.redb")).unwrap();
        assert!(!file.windows(7).any(|w| w == b"again 1"));
        let sealed = {
            let txn = store.db.begin_read().unwrap();
            let table = txn.open_table(RESUME).unwrap();
            let value = table
                .get(("j", "aligned"))
                .unwrap()
                .unwrap()
                .value()
                .to_vec();
            value
        };
        store
            .write(|txn| {
                txn.open_table(RESUME)?
                    .insert(("j", "job"), sealed.as_slice())?;
                Ok(())
            })
            .unwrap();
        assert!(
            store.resume_part("j", "job").is_err(),
            "moved under another part"
        );
        // Ending the job forgets it all, and only its own parts.
        store.clear_resume("j", false).unwrap();
        assert_eq!(store.resume_part("j", "aligned").unwrap(), None);
        assert_eq!(store.checkpoint_epochs("j").unwrap(), Vec::<u64>::new());
        assert_eq!(store.resume_part("k", "job").unwrap().unwrap(), b"other");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn records_survive_reopening_and_interrupted_jobs_are_failed() {
        let dir = std::env::temp_dir().join(format!("unseen-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let key_file = dir.with_extension("key");
        let _ = std::fs::remove_file(&key_file);
        let key = || StoreKey::load(Some(&key_file), &dir).unwrap();
        {
            let store = Store::open(&dir, key()).unwrap();
            for (id, state) in [("a", "training"), ("b", "succeeded")] {
                let job = JobRecord {
                    job_id: id.into(),
                    state: state.into(),
                    ..JobRecord::default()
                };
                let event = EventRecord {
                    state: state.into(),
                    ..EventRecord::default()
                };
                store.put_job_event(&job, 0, &event).unwrap();
            }
            let model = ModelRecord {
                model_id: "m".into(),
                job_id: "b".into(),
                role: "guest".into(),
                features: 3,
                created_unix_ms: 1,
                part_json: "{\"weights\": \"secret-part\"}".into(),
                report_json: "{}".into(),
                guest: "bank".into(),
                hosts: vec!["tax".into()],
                dataset: "bank".into(),
                pair_seeds: Default::default(),
                archived_unix_ms: None,
            };
            store.put_model(&model).unwrap();
            assert!(
                store.put_model(&model).is_err(),
                "a model is never replaced"
            );
        }
        let store = Store::open(&dir, key()).unwrap();
        let failed: Vec<String> = store
            .interrupted_jobs(true)
            .unwrap()
            .0
            .into_iter()
            .map(|j| j.job_id)
            .collect();
        assert_eq!(failed, ["a"]);
        let a = store.job("a").unwrap().unwrap();
        assert_eq!(a.state, "failed");
        assert!(a.error.contains("restart"), "{}", a.error);
        assert_eq!(a.events.len(), 2, "the old event and the failure");
        assert_eq!(a.events[1].state, "failed");
        assert_eq!(store.job("b").unwrap().unwrap().state, "succeeded");
        assert_eq!(store.models().unwrap()[0].features, 3);
        drop(store);
        // The model part is sealed: not in the file, and not readable under another key.
        let file = std::fs::read(dir.join("unseen.redb")).unwrap();
        assert!(!file.windows(11).any(|w| w == b"secret-part"));
        let other = Store::open(&dir, StoreKey::generate()).unwrap();
        let error = other.model("m").unwrap_err().to_string();
        assert!(
            error.contains("does not open with this node's store key"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_file(&key_file).unwrap();
    }

    #[test]
    fn archived_models_are_kept_and_deleted_ones_leave_only_a_tombstone() {
        let dir = std::env::temp_dir().join(format!("unseen-delete-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir, StoreKey::generate()).unwrap();
        let model = |id: &str| ModelRecord {
            model_id: id.into(),
            job_id: "j".into(),
            role: "host".into(),
            features: 2,
            created_unix_ms: 5,
            part_json: "{\"weights\": \"secret-part\"}".into(),
            report_json: "{}".into(),
            guest: "bank".into(),
            hosts: vec!["tax".into()],
            dataset: "filings".into(),
            pair_seeds: Default::default(),
            archived_unix_ms: None,
        };
        store.put_model(&model("m@1")).unwrap();
        store.put_model(&model("m@2")).unwrap();
        let archived = store.archive_model("m@1", 7).unwrap().unwrap();
        assert_eq!(archived.archived_unix_ms, Some(7));
        let again = store.archive_model("m@1", 9).unwrap().unwrap();
        assert_eq!(again.archived_unix_ms, Some(7), "archived once");
        let kept = store.model("m@1").unwrap().unwrap();
        assert_eq!(kept.part_json, model("m@1").part_json);
        assert!(store.archive_model("m@3", 7).unwrap().is_none());

        let gone = DeletedModel {
            model_id: "m@2".into(),
            deleted_unix_ms: 8,
            operator: "ops".into(),
            ..DeletedModel::default()
        };
        assert!(store.delete_model(&gone).unwrap());
        assert!(!store.delete_model(&gone).unwrap(), "deleted once");
        assert!(store.model("m@2").unwrap().is_none());
        assert_eq!(store.model_ids().unwrap(), ["m@1"]);
        assert_eq!(store.deleted_model("m@2").unwrap(), Some(gone));
        let error = store.put_model(&model("m@2")).unwrap_err().to_string();
        assert!(error.contains("exists or existed"), "{error}");
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
