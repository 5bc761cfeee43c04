//! `unseen model …` and `unseen score`.

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
                    .map(|m| serde_json::json!({"model_id": m.model_id, "job_id": m.job_id, "role": m.role, "features": m.features, "created_unix_ms": m.created_unix_ms}))
                    .collect();
                println!("{}", serde_json::Value::Array(all));
            } else {
                println!("{:<24}  {:<5}  {:>8}  job", "model", "role", "features");
                for m in &models {
                    println!(
                        "{:<24}  {:<5}  {:>8}  {}",
                        m.model_id, m.role, m.features, m.job_id
                    );
                }
            }
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
