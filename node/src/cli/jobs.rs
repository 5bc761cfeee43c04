//! `unseen train` and `unseen job …`: submit, follow, list, show, cancel.

use std::io::IsTerminal;
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};
use tonic::transport::Channel;

use crate::proto::jobs_client::JobsClient;
use crate::proto::{self, JobRef, ListJobsRequest, SubmitRequest};

use super::output::*;
use super::*;

pub(super) async fn submit(
    client: &mut JobsClient<Channel>,
    spec: &Path,
    kind: Option<&str>,
) -> Result<proto::JobStatus, String> {
    let mut spec_toml =
        std::fs::read_to_string(spec).map_err(|e| format!("{}: {e}", spec.display()))?;
    if let Some(kind) = kind {
        // The same spec serves training and its binning statistics: the kind is set here
        // unless the spec names another.
        let table: toml::Table = toml::from_str(&spec_toml)
            .map_err(|e| format!("{}: {}", spec.display(), e.message()))?;
        match table.get("kind").and_then(toml::Value::as_str) {
            None => spec_toml = format!("kind = \"{kind}\"\n{spec_toml}"),
            Some(named) if named == kind => {}
            Some(named) => {
                return Err(format!(
                    "{}: kind = {named:?}; this command runs {kind} jobs",
                    spec.display()
                ))
            }
        }
    }
    client
        .submit(SubmitRequest { spec_toml })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("{}: {}", spec.display(), status_error(s)))
}

/// Follows a job until it ends; prints progress bars (or JSON lines) and a summary, and fails
/// with the reason when the job does not succeed.
pub async fn follow(
    client: &mut JobsClient<Channel>,
    job_id: &str,
    json: bool,
) -> Result<ExitCode, String> {
    let mut stream = client
        .watch(JobRef {
            job_id: job_id.to_owned(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    // On a terminal, progress bars; piped (tee, CI, a log file), one line per step on stdout.
    let plain = !json && !std::io::stderr().is_terminal();
    let psi = ProgressBar::hidden();
    let epochs = ProgressBar::hidden();
    if !json && !plain {
        psi.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        psi.set_length(1000);
        psi.set_style(
            ProgressStyle::with_template("PSI      [{bar:40}] {percent:>3}% {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
    }
    let mut last_state = String::new();
    let (mut last_epoch, mut last_tenth) = (0, 0);
    // The job's closing message (a training job's convergence verdict, say), printed with
    // the status.
    let mut summary = String::new();
    while let Some(event) = stream.message().await.map_err(status_error)? {
        if matches!(event.state.as_str(), "succeeded" | "failed" | "cancelled") {
            summary = event.message.clone();
        }
        if json {
            println!("{}", event_json(&event));
            continue;
        }
        if plain {
            if event.state != last_state {
                println!("{}: {}", event.state, event.message);
                last_state = event.state.clone();
            }
            let tenth = (event.psi_progress * 10.0).floor() as u32;
            if event.state == "psi" && tenth > last_tenth {
                println!("PSI {}%", tenth * 10);
                last_tenth = tenth;
            }
            if event.epoch > last_epoch {
                println!(
                    "epoch {}/{} {}",
                    event.epoch,
                    event.max_epochs,
                    loss_line(&event)
                );
                last_epoch = event.epoch;
            }
            continue;
        }
        psi.set_position((event.psi_progress * 1000.0) as u64);
        if event.state == "psi" {
            psi.set_message(event.message.clone());
        }
        if event.state == "training" && epochs.is_hidden() && event.max_epochs > 0 {
            psi.finish_with_message(format!("{} rows aligned", event.aligned_rows));
            epochs.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            epochs.set_length(u64::from(event.max_epochs));
            epochs.set_style(
                ProgressStyle::with_template("training [{bar:40}] {pos}/{len} epochs {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
        }
        if event.epoch > 0 {
            epochs.set_position(u64::from(event.epoch));
            epochs.set_message(loss_line(&event));
        }
        if event.state != last_state {
            psi.println(format!("{}: {}", event.state, event.message));
            last_state = event.state.clone();
        }
    }
    psi.finish_and_clear();
    epochs.finish_and_clear();
    let status = client
        .get(JobRef {
            job_id: job_id.to_owned(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        println!("{}", status_json(&status));
    } else {
        print_status(&status);
        if status.state == "succeeded" && !summary.is_empty() {
            println!("{:<15} {summary}", "summary");
        }
    }
    let _ = std::io::stdout().flush();
    match status.state.as_str() {
        "succeeded" => Ok(ExitCode::SUCCESS),
        state => Err(format!("job {job_id} {state}: {}", status.error)),
    }
}

pub(super) async fn job_command(command: JobCommand) -> Result<ExitCode, String> {
    match command {
        JobCommand::Submit { target, spec } => {
            let mut client = connect(&target).await?;
            let status = submit(&mut client, &spec, None).await?;
            if target.json {
                println!("{}", status_json(&status));
            } else {
                println!("{}", status.job_id);
            }
        }
        JobCommand::Watch { target, job } => {
            let mut client = connect(&target).await?;
            return follow(&mut client, &job, target.json).await;
        }
        JobCommand::List {
            target,
            since,
            limit,
        } => {
            let mut client = connect(&target).await?;
            let mut request = ListJobsRequest {
                since_unix_ms: since_unix_ms(since),
                after_job_id: String::new(),
                limit: 0,
            };
            let mut left = limit.unwrap_or(u64::MAX);
            let mut jobs = Vec::new();
            while left > 0 {
                request.limit = left.min(100) as u32;
                let page = client
                    .list(request.clone())
                    .await
                    .map_err(status_error)?
                    .into_inner();
                left -= page.jobs.len() as u64;
                jobs.extend(page.jobs);
                match jobs.last() {
                    Some(last) if page.more => request.after_job_id = last.job_id.clone(),
                    _ => break,
                }
            }
            if target.json {
                let all: Vec<_> = jobs.iter().map(status_json).collect();
                println!("{}", serde_json::Value::Array(all));
            } else {
                println!(
                    "{:<32}  {:<5}  {:<10}  {:<20}  {:>6}  final model",
                    "job", "role", "state", "model", "epochs"
                );
                for s in &jobs {
                    println!(
                        "{:<32}  {:<5}  {:<10}  {:<20}  {:>6}  {}",
                        s.job_id,
                        s.role,
                        s.state,
                        s.model_id,
                        s.epochs,
                        metrics_line(if s.validation.is_some() {
                            &s.validation
                        } else {
                            &s.train
                        })
                    );
                }
            }
        }
        JobCommand::Status { target, job } => {
            let mut client = connect(&target).await?;
            let status = client
                .get(JobRef { job_id: job })
                .await
                .map_err(status_error)?
                .into_inner();
            if target.json {
                println!("{}", status_json(&status));
            } else {
                print_status(&status);
            }
        }
        JobCommand::Cancel { target, job } => {
            let mut client = connect(&target).await?;
            let status = client
                .cancel(JobRef { job_id: job })
                .await
                .map_err(status_error)?
                .into_inner();
            if target.json {
                println!("{}", status_json(&status));
            } else {
                println!(
                    "cancel requested: job {} was {}",
                    status.job_id, status.state
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
