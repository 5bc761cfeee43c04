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

/// Where the ids of a batch-scoring run come from: a CSV file's column, or a Parquet file's.
enum IdSource {
    Csv {
        input: String,
        column: String,
        records: csv::StringRecordsIntoIter<std::fs::File>,
        at: usize,
        line: usize,
    },
    Parquet(crate::columnar::Ids),
}

impl IdSource {
    fn open(input: &Path, id_column: &str, batch: usize) -> Result<IdSource, String> {
        if crate::columnar::is_parquet(input) {
            return crate::columnar::Ids::open(input, id_column, batch).map(IdSource::Parquet);
        }
        let named = |e: &dyn std::fmt::Display| format!("{}: {e}", input.display());
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_path(input)
            .map_err(|e| named(&e))?;
        let headers = reader.headers().map_err(|e| named(&e))?.clone();
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
        Ok(IdSource::Csv {
            input: input.display().to_string(),
            column: id_column.to_owned(),
            records: reader.into_records(),
            at,
            line: 2,
        })
    }

    /// Up to `batch` more ids, with where the first was read ("line 7", "row 1"); `None` at
    /// the end.
    fn next(&mut self, batch: usize) -> Result<Option<(String, Vec<String>)>, String> {
        match self {
            IdSource::Csv {
                input,
                column,
                records,
                at,
                line,
            } => {
                let first = format!("line {line}");
                let mut ids = Vec::with_capacity(batch);
                for record in records.by_ref().take(batch) {
                    let record = record.map_err(|e| format!("{input}: {e}"))?;
                    let id = record
                        .get(*at)
                        .ok_or_else(|| format!("{input}: line {line}: no field {column:?}"))?;
                    ids.push(id.to_owned());
                    *line = record.position().map_or(*line, |p| p.line() as usize + 1);
                }
                Ok((!ids.is_empty()).then_some((first, ids)))
            }
            IdSource::Parquet(ids) => Ok(ids
                .next_batch()?
                .map(|(row, ids)| (format!("row {row}"), ids))),
        }
    }
}

/// Where the scores go: CSV, or Parquet when the output's name ends in `.parquet`.
enum ScoreSink {
    Csv(csv::Writer<std::fs::File>),
    Parquet(crate::columnar::ScoreWriter),
}

impl ScoreSink {
    fn create(path: &Path, like: &Path) -> Result<ScoreSink, String> {
        if crate::columnar::is_parquet(like) {
            return crate::columnar::ScoreWriter::create(path).map(ScoreSink::Parquet);
        }
        let named = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
        let mut writer = csv::Writer::from_path(path).map_err(|e| named(&e))?;
        writer
            .write_record(["id", "probability", "points", "band", "error"])
            .map_err(|e| named(&e))?;
        Ok(ScoreSink::Csv(writer))
    }

    fn write(&mut self, rows: &[crate::columnar::ScoreRow]) -> Result<(), String> {
        match self {
            ScoreSink::Parquet(writer) => writer.write(rows),
            ScoreSink::Csv(writer) => {
                for r in rows {
                    let number = |v: Option<f64>| v.map_or_else(String::new, |v| v.to_string());
                    let row = [
                        r.id.clone(),
                        number(r.probability),
                        number(r.points),
                        r.band.clone().unwrap_or_default(),
                        r.error.clone().unwrap_or_default(),
                    ];
                    writer.write_record(&row).map_err(|e| e.to_string())?;
                }
                Ok(())
            }
        }
    }

    fn finish(self) -> Result<(), String> {
        match self {
            ScoreSink::Parquet(writer) => writer.finish(),
            ScoreSink::Csv(mut writer) => writer.flush().map_err(|e| e.to_string()),
        }
    }
}

/// Scores every id of a CSV or Parquet file in batches, writing one row per id, in order, to
/// the output (CSV, or Parquet for a `.parquet` name; whole, then renamed into place). A batch
/// refused for the rate (the bank's for this client, or a host's) is sent again after a pause
/// that grows to 30 s; any other failure stops the run, naming where its batch starts.
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
    let mut source = IdSource::open(&input, &id_column, batch)?;
    let partial = output.with_extension("partial");
    let mut sink = ScoreSink::create(&partial, &output)?;
    let mut client = crate::proto::scoring_client::ScoringClient::new(
        channel(&target.node, &target.identity).await?,
    );
    let (mut scored, mut unscorable) = (0usize, 0usize);
    while let Some((first, ids)) = source.next(batch)? {
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
                        "{}: the batch from {first}: {}",
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
        let rows: Vec<crate::columnar::ScoreRow> = reply
            .scores
            .into_iter()
            .map(|score| {
                if score.status == ok {
                    scored += 1;
                    crate::columnar::ScoreRow {
                        id: score.id,
                        probability: Some(score.probability),
                        points: Some(score.points),
                        band: Some(band_name(score.band).to_owned()),
                        error: None,
                    }
                } else {
                    unscorable += 1;
                    crate::columnar::ScoreRow {
                        id: score.id,
                        probability: None,
                        points: None,
                        band: None,
                        error: Some(score.error),
                    }
                }
            })
            .collect();
        sink.write(&rows)
            .map_err(|e| format!("{}: {e}", partial.display()))?;
        eprintln!("{} ids scored, {unscorable} without a score", scored);
    }
    sink.finish()
        .map_err(|e| format!("{}: {e}", partial.display()))?;
    std::fs::rename(&partial, &output).map_err(|e| format!("{}: {e}", output.display()))?;
    println!(
        "{}: {scored} ids scored with {model}, {unscorable} without a score",
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}
