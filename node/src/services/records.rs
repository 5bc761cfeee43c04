//! Stored records (jobs, events, models, audit records) as the jobs service's replies.

use crate::proto;
use crate::store::{EventRecord, JobRecord, MetricsRecord, ModelRecord};

/// Metrics as protobuf.
pub(crate) fn metrics_proto(m: Option<MetricsRecord>) -> Option<proto::Metrics> {
    m.map(|m| proto::Metrics {
        auc: m.auc,
        ks: m.ks,
        log_loss: m.log_loss,
        accuracy: m.accuracy,
    })
}

/// A job record as a status message.
pub(crate) fn status_proto(record: &JobRecord) -> proto::JobStatus {
    let last = record.last().cloned().unwrap_or_default();
    let best = record
        .events
        .iter()
        .rev()
        .find(|e| e.train.is_some() || e.validation.is_some())
        .cloned()
        .unwrap_or_default();
    proto::JobStatus {
        job_id: record.job_id.clone(),
        kind: record.kind.clone(),
        role: record.role.clone(),
        state: record.state.clone(),
        model_id: record.model_id.clone(),
        error: record.error.clone(),
        created_unix_ms: record.created_unix_ms,
        updated_unix_ms: record.updated_unix_ms,
        peers: record.peers.clone(),
        aligned_rows: last.aligned_rows,
        epochs: record.events.iter().map(|e| e.epoch).max().unwrap_or(0),
        bytes_sent: last.bytes_sent,
        bytes_received: last.bytes_received,
        train: metrics_proto(best.train),
        validation: metrics_proto(best.validation),
        binning_report: record.report.clone(),
    }
}

/// An event of a job as protobuf.
pub(crate) fn event_proto(job_id: &str, max_epochs: u32, event: &EventRecord) -> proto::JobEvent {
    proto::JobEvent {
        job_id: job_id.to_owned(),
        state: event.state.clone(),
        message: event.message.clone(),
        epoch: event.epoch,
        max_epochs,
        train: metrics_proto(event.train),
        validation: metrics_proto(event.validation),
        bytes_sent: event.bytes_sent,
        bytes_received: event.bytes_received,
        aligned_rows: event.aligned_rows,
        psi_progress: event.psi_progress,
        unix_ms: event.unix_ms,
        train_loss: event.train_loss,
        validation_loss: event.validation_loss,
    }
}

/// A model's summary as protobuf.
pub(crate) fn summary_proto(model: &ModelRecord) -> proto::ModelSummary {
    proto::ModelSummary {
        model_id: model.model_id.clone(),
        job_id: model.job_id.clone(),
        role: model.role.clone(),
        features: model.features,
        created_unix_ms: model.created_unix_ms,
        archived_unix_ms: model.archived_unix_ms.unwrap_or(0),
        deleted_unix_ms: 0,
    }
}

/// Whether an event's state ends its job.
pub(crate) fn is_final(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "cancelled")
}

/// An audit record as protobuf.
pub(crate) fn audit_proto(r: crate::audit::AuditRecord) -> proto::AuditRecord {
    proto::AuditRecord {
        seq: r.seq,
        unix_ms: r.unix_ms,
        event: r.event,
        job_id: r.job_id,
        peer: r.peer,
        detail_json: r.detail.to_string(),
        hash: r.hash,
    }
}
