//! `unseen model …` and `unseen score`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::proto::{ListModelsRequest, ModelRef};

use super::output::*;
use super::*;

pub(super) async fn model_command(command: ModelCommand) -> Result<ExitCode, String> {
    match command {
        ModelCommand::List { target } => {
            let mut client = connect(&target).await?;
            let models = client
                .list_models(ListModelsRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .models;
            if target.json {
                let all: Vec<_> = models
                    .iter()
                    .map(|m| serde_json::json!({"model_id": m.model_id, "job_id": m.job_id, "role": m.role, "features": m.features, "created_unix_ms": m.created_unix_ms, "archived_unix_ms": m.archived_unix_ms}))
                    .collect();
                println!("{}", serde_json::Value::Array(all));
            } else {
                println!(
                    "{:<28}  {:<5}  {:>8}  {:<8}  job",
                    "model", "role", "features", "state"
                );
                for m in &models {
                    let state = if m.archived_unix_ms > 0 {
                        "archived"
                    } else {
                        "served"
                    };
                    println!(
                        "{:<28}  {:<5}  {:>8}  {:<8}  {}",
                        m.model_id, m.role, m.features, state, m.job_id
                    );
                }
            }
        }
        ModelCommand::Archive { target, model } => {
            let model = connect(&target)
                .await?
                .archive_model(ModelRef { model_id: model })
                .await
                .map_err(status_error)?
                .into_inner();
            println!("{}: archived (no longer scored; kept)", model.model_id);
        }
        ModelCommand::Delete { target, model } => {
            let model = connect(&target)
                .await?
                .delete_model(ModelRef { model_id: model })
                .await
                .map_err(status_error)?
                .into_inner();
            println!("{}: deleted", model.model_id);
        }
        ModelCommand::Show { target, model } => {
            let mut client = connect(&target).await?;
            let model = client
                .get_model(ModelRef { model_id: model })
                .await
                .map_err(status_error)?
                .into_inner();
            let part: serde_json::Value =
                serde_json::from_str(&model.part_json).unwrap_or(serde_json::Value::Null);
            let report: serde_json::Value =
                serde_json::from_str(&model.report_json).unwrap_or(serde_json::Value::Null);
            let both = serde_json::json!({"model": part, "report": report});
            println!(
                "{}",
                serde_json::to_string_pretty(&both).unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn score(
    target: Target,
    model: String,
    ids: Vec<String>,
) -> Result<ExitCode, String> {
    let channel = channel(&target.node, &target.identity).await?;
    let reply = crate::proto::scoring_client::ScoringClient::new(channel)
        .score(crate::proto::ScoreRequest {
            model_id: model,
            ids,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if target.json {
        let ok = crate::proto::ScoreStatus::Ok as i32;
        let all: Vec<_> = reply
            .scores
            .iter()
            .map(|s| {
                if s.status == ok {
                    serde_json::json!({"id": s.id, "probability": s.probability, "points": s.points, "band": band_name(s.band)})
                } else {
                    serde_json::json!({"id": s.id, "error": s.error})
                }
            })
            .collect();
        println!("{}", serde_json::Value::Array(all));
    } else {
        print_scores(&reply.scores);
    }
    Ok(ExitCode::SUCCESS)
}

/// `unseen score --input … --output …`: what to read and write.
pub(super) struct ScoreFiles {
    pub(super) input: PathBuf,
    pub(super) output: PathBuf,
    pub(super) id_column: String,
    pub(super) batch: usize,
}

/// Scores every id of a CSV file in batches, writing one row per id, in order, to the output
/// CSV (whole, then renamed into place). A batch refused for the rate (the bank's for this
/// client, or a host's) is sent again after a pause that grows to 30 s; any other failure
/// stops the run, naming the input line its batch starts on.
pub(super) async fn score_file(
    target: Target,
    mut model: String,
    files: ScoreFiles,
) -> Result<ExitCode, String> {
    let ScoreFiles {
        input,
        output,
        id_column,
        batch,
    } = files;
    if batch == 0 {
        return Err("--batch: at least 1".into());
    }
    let named = |e: &dyn std::fmt::Display, path: &Path| format!("{}: {e}", path.display());
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(&input)
        .map_err(|e| named(&e, &input))?;
    let headers = reader.headers().map_err(|e| named(&e, &input))?.clone();
    let at = headers
        .iter()
        .position(|h| h.trim_start_matches('\u{feff}') == id_column)
        .ok_or_else(|| {
            format!(
                "{}: no column {id_column:?} (--id-column); the header has {:?}",
                input.display(),
                headers.iter().collect::<Vec<_>>()
            )
        })?;
    let partial = output.with_extension("partial");
    let mut writer = csv::Writer::from_path(&partial).map_err(|e| named(&e, &partial))?;
    writer
        .write_record(["id", "probability", "points", "band", "error"])
        .map_err(|e| named(&e, &partial))?;
    let mut client = crate::proto::scoring_client::ScoringClient::new(
        channel(&target.node, &target.identity).await?,
    );
    let (mut scored, mut unscorable) = (0usize, 0usize);
    let mut records = reader.records();
    let mut line = 2;
    loop {
        let mut ids = Vec::with_capacity(batch);
        let first_line = line;
        for record in records.by_ref().take(batch) {
            let record = record.map_err(|e| named(&e, &input))?;
            let id = record.get(at).ok_or_else(|| {
                format!("{}: line {line}: no field {id_column:?}", input.display())
            })?;
            ids.push(id.to_owned());
            line = record.position().map_or(line, |p| p.line() as usize + 1);
        }
        if ids.is_empty() {
            break;
        }
        let mut pause = std::time::Duration::from_secs(1);
        let reply = loop {
            let request = crate::proto::ScoreRequest {
                model_id: model.clone(),
                ids: ids.clone(),
            };
            match client.score(request).await {
                Ok(reply) => break reply.into_inner(),
                Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                    eprintln!("rate limit reached; retrying in {} s", pause.as_secs());
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(30));
                }
                Err(status) => {
                    return Err(format!(
                        "{}: the batch from line {first_line}: {}",
                        input.display(),
                        status_error(status)
                    ))
                }
            }
        };
        // Every later batch asks for the version that scored the first: a version trained
        // mid-run does not mix into one file.
        if !reply.model_id.is_empty() {
            model = reply.model_id.clone();
        }
        let ok = crate::proto::ScoreStatus::Ok as i32;
        for score in &reply.scores {
            let row = if score.status == ok {
                scored += 1;
                [
                    score.id.clone(),
                    score.probability.to_string(),
                    score.points.to_string(),
                    band_name(score.band).to_owned(),
                    String::new(),
                ]
            } else {
                unscorable += 1;
                [
                    score.id.clone(),
                    String::new(),
                    String::new(),
                    String::new(),
                    score.error.clone(),
                ]
            };
            writer.write_record(&row).map_err(|e| named(&e, &partial))?;
        }
        eprintln!("{} ids scored, {unscorable} without a score", scored);
    }
    writer.flush().map_err(|e| named(&e, &partial))?;
    drop(writer);
    std::fs::rename(&partial, &output).map_err(|e| named(&e, &output))?;
    println!(
        "{}: {scored} ids scored with {model}, {unscorable} without a score",
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}
