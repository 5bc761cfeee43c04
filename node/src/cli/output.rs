//! How the CLI prints: JSON lines with `--json`, tables and progress lines otherwise.

use crate::proto;

fn metrics_json(m: &Option<proto::Metrics>) -> serde_json::Value {
    match m {
        Some(m) => {
            serde_json::json!({"auc": m.auc, "ks": m.ks, "log_loss": m.log_loss, "accuracy": m.accuracy})
        }
        None => serde_json::Value::Null,
    }
}

pub(super) fn status_json(s: &proto::JobStatus) -> serde_json::Value {
    serde_json::json!({
        "job_id": s.job_id, "kind": s.kind, "role": s.role, "state": s.state,
        "model_id": s.model_id, "error": s.error, "peers": s.peers,
        "created_unix_ms": s.created_unix_ms, "updated_unix_ms": s.updated_unix_ms,
        "aligned_rows": s.aligned_rows, "epochs": s.epochs,
        "bytes_sent": s.bytes_sent, "bytes_received": s.bytes_received,
        "train": metrics_json(&s.train), "validation": metrics_json(&s.validation),
        "binning": serde_json::from_str::<serde_json::Value>(&s.binning_report).ok(),
    })
}

pub(super) fn event_json(e: &proto::JobEvent) -> serde_json::Value {
    serde_json::json!({
        "job_id": e.job_id, "state": e.state, "message": e.message, "epoch": e.epoch,
        "max_epochs": e.max_epochs, "train": metrics_json(&e.train),
        "validation": metrics_json(&e.validation), "bytes_sent": e.bytes_sent,
        "bytes_received": e.bytes_received, "aligned_rows": e.aligned_rows,
        "psi_progress": e.psi_progress, "unix_ms": e.unix_ms,
        "train_loss": e.train_loss, "validation_loss": e.validation_loss,
    })
}

pub(super) fn metrics_line(m: &Option<proto::Metrics>) -> String {
    match m {
        Some(m) => format!("AUC {:.4}  KS {:.4}  loss {:.4}", m.auc, m.ks, m.log_loss),
        None => "-".into(),
    }
}

/// An epoch's aggregate losses (the only per-epoch figures of training v2).
pub(super) fn loss_line(event: &proto::JobEvent) -> String {
    match (event.train_loss, event.validation_loss) {
        (Some(train), Some(validation)) => {
            format!("Taylor loss {train:.4} (validation {validation:.4})")
        }
        (Some(train), None) => format!("Taylor loss {train:.4}"),
        _ => String::new(),
    }
}

pub(super) fn print_status(s: &proto::JobStatus) {
    let rows = [
        ("job", s.job_id.clone()),
        ("state", s.state.clone()),
        ("role", s.role.clone()),
        ("model", s.model_id.clone()),
        ("peers", s.peers.join(", ")),
        ("aligned rows", s.aligned_rows.to_string()),
        ("epochs", s.epochs.to_string()),
        ("train", metrics_line(&s.train)),
        ("validation", metrics_line(&s.validation)),
        ("bytes sent", s.bytes_sent.to_string()),
        ("bytes received", s.bytes_received.to_string()),
    ];
    for (key, value) in rows {
        println!("{key:<15} {value}");
    }
    if !s.error.is_empty() {
        println!("{:<15} {}", "error", s.error);
    }
    if let Ok(report) = serde_json::from_str::<fedlearn::BinningReport>(&s.binning_report) {
        print_binning(&report);
    }
}

/// The IV table of a binning job, strongest first, with the usual reading of IV (below 0.02
/// useless, 0.1 weak, 0.3 medium, 0.5 strong, above: check for a leak of the label).
fn print_binning(report: &fedlearn::BinningReport) {
    println!(
        "\n{} rows, {} events ({:.2}%)",
        report.rows,
        report.events,
        100.0 * report.events as f64 / report.rows.max(1) as f64
    );
    println!(
        "{:<12} {:<24} {:>5} {:>8}  strength",
        "party", "column", "bins", "IV"
    );
    let mut columns: Vec<&fedlearn::ColumnStats> = report.columns.iter().collect();
    columns.sort_by(|a, b| b.iv.total_cmp(&a.iv));
    for c in columns {
        let strength = match c.iv {
            iv if iv < 0.02 => "useless",
            iv if iv < 0.1 => "weak",
            iv if iv < 0.3 => "medium",
            iv if iv < 0.5 => "strong",
            _ => "suspicious",
        };
        println!(
            "{:<12} {:<24} {:>5} {:>8.4}  {strength}",
            c.party,
            c.name,
            c.bins.len(),
            c.iv
        );
    }
}

/// "red", "yellow", "blue" (or "-") for a [`crate::proto::RiskBand`] value.
pub fn band_name(band: i32) -> &'static str {
    match crate::proto::RiskBand::try_from(band) {
        Ok(crate::proto::RiskBand::Red) => "red",
        Ok(crate::proto::RiskBand::Yellow) => "yellow",
        Ok(crate::proto::RiskBand::Blue) => "blue",
        _ => "-",
    }
}

/// Prints scores as a table: id, probability, points, band — or the reason an id has none.
pub fn print_scores(scores: &[crate::proto::Score]) {
    println!("{:<20} {:>11} {:>7}  band", "id", "probability", "points");
    for s in scores {
        if s.status == crate::proto::ScoreStatus::Ok as i32 {
            println!(
                "{:<20} {:>11.4} {:>7.1}  {}",
                s.id,
                s.probability,
                s.points,
                band_name(s.band)
            );
        } else {
            println!("{:<20} {}", s.id, s.error);
        }
    }
}
