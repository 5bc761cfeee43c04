//! The `unseen` command line: the daemon (`serve`), the modeller's commands (`train`, `job`,
//! `model`) and certificates for a test federation (`cert`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use tonic::transport::{Channel, Endpoint};

use crate::config::NodeConfig;
use crate::proto::jobs_client::JobsClient;
use crate::proto::{self, JobRef, ListJobsRequest, ListModelsRequest, ModelRef, SubmitRequest};
use crate::tls::Identity;

/// unseen: private set intersection and vertical federated logistic regression for joint
/// credit modelling.
#[derive(Parser, Debug)]
#[command(name = "unseen", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs a node (until SIGINT or SIGTERM).
    Serve {
        /// The node's TOML configuration.
        #[arg(long)]
        config: PathBuf,
    },
    /// Submits a training job and follows it to the end (exit status 1 if it fails).
    Train {
        #[command(flatten)]
        target: Target,
        /// The TOML job spec.
        spec: PathBuf,
    },
    /// Jobs on a node.
    Job {
        #[command(subcommand)]
        command: JobCommand,
    },
    /// Models (this node's parts) on a node.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Scores ids with a model (as a platform: the identity must be a scoring client).
    Score {
        #[command(flatten)]
        target: Target,
        /// Model id.
        #[arg(long)]
        model: String,
        /// Enterprise ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// The node's hash-chained audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Creates a CA and certificates for a test federation.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
}

#[derive(Args, Debug, Clone)]
struct Target {
    /// The node as NAME@HOST:PORT (NAME is the name in its certificate).
    #[arg(long, env = "UNSEEN_NODE")]
    node: String,
    /// Directory with ca.crt, node.crt and node.key of an operator (see `unseen cert`).
    #[arg(long, env = "UNSEEN_IDENTITY")]
    identity: PathBuf,
    /// Machine-readable JSON output.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum JobCommand {
    /// Submits a job and returns at once.
    Submit {
        #[command(flatten)]
        target: Target,
        /// The TOML job spec.
        spec: PathBuf,
    },
    /// Follows a job's progress to the end.
    Watch {
        #[command(flatten)]
        target: Target,
        /// Job id.
        job: String,
    },
    /// Lists jobs.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Shows a job.
    Status {
        #[command(flatten)]
        target: Target,
        /// Job id.
        job: String,
    },
    /// Cancels a job (its peers are told to stop).
    Cancel {
        #[command(flatten)]
        target: Target,
        /// Job id.
        job: String,
    },
}

#[derive(Subcommand, Debug)]
enum ModelCommand {
    /// Lists models.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Prints a model part (JSON) and its training report.
    Show {
        #[command(flatten)]
        target: Target,
        /// Model id.
        model: String,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Checks the hash chain; exit status 1 and the first broken record if it does not hold.
    Verify {
        #[command(flatten)]
        target: Target,
    },
    /// Prints audit records.
    Show {
        #[command(flatten)]
        target: Target,
        /// Only this job's records.
        #[arg(long)]
        job: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum CertCommand {
    /// Creates a CA in DIR and a certificate for each NAME (DIR/NAME/{ca.crt,node.crt,node.key}).
    Init {
        /// Output directory.
        #[arg(long)]
        dir: PathBuf,
        /// Party and operator names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Issues certificates for more names with the CA in DIR.
    Issue {
        /// Directory holding ca.crt and ca.key.
        #[arg(long)]
        dir: PathBuf,
        /// Names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// Runs a parsed command line; `Err` is the message to print.
pub fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Serve { config } => serve(&config),
        Command::Train { target, spec } => runtime()?.block_on(async {
            let mut client = connect(&target).await?;
            let status = submit(&mut client, &spec).await?;
            if !target.json {
                eprintln!("job {} submitted to {}", status.job_id, target.node);
            }
            follow(&mut client, &status.job_id, target.json).await
        }),
        Command::Job { command } => runtime()?.block_on(job_command(command)),
        Command::Model { command } => runtime()?.block_on(model_command(command)),
        Command::Score { target, model, ids } => runtime()?.block_on(score(target, model, ids)),
        Command::Audit { command } => runtime()?.block_on(audit_command(command)),
        Command::Cert { command } => {
            let (dir, names) = match &command {
                CertCommand::Init { dir, names } => {
                    crate::certs::init(dir, names).map_err(|e| e.to_string())?;
                    (dir, names)
                }
                CertCommand::Issue { dir, names } => {
                    crate::certs::issue(dir, names).map_err(|e| e.to_string())?;
                    (dir, names)
                }
            };
            for name in names {
                println!("{}", dir.join(name).display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn serve(path: &Path) -> Result<ExitCode, String> {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = NodeConfig::load(path).map_err(|e| e.to_string())?;
    runtime()?.block_on(async {
        let node = crate::start(config).await.map_err(|e| e.to_string())?;
        wait_for_signal().await;
        tracing::info!("shutting down");
        node.shutdown().await.map_err(|e| e.to_string())?;
        Ok(ExitCode::SUCCESS)
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Opens a mutually authenticated channel to a node given as NAME@HOST:PORT.
pub async fn channel(node: &str, identity_dir: &Path) -> Result<Channel, String> {
    let (name, address) = node
        .split_once('@')
        .ok_or_else(|| format!("--node {node:?}: expected NAME@HOST:PORT"))?;
    let identity = Identity::load_dir(identity_dir).map_err(|e| e.to_string())?;
    Endpoint::from_shared(format!("https://{address}"))
        .map_err(|e| format!("--node {node:?}: {e}"))?
        .tls_config(identity.client_config(name))
        .map_err(|e| format!("TLS: {e}"))?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("cannot reach {node}: {}", error_chain(&e)))
}

async fn connect(target: &Target) -> Result<JobsClient<Channel>, String> {
    Ok(JobsClient::new(
        channel(&target.node, &target.identity).await?,
    ))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(&format!(": {e}"));
        source = e.source();
    }
    text
}

fn status_error(status: tonic::Status) -> String {
    if status.message().is_empty() {
        error_chain(&status)
    } else {
        status.message().to_owned()
    }
}

async fn submit(client: &mut JobsClient<Channel>, spec: &Path) -> Result<proto::JobStatus, String> {
    let spec_toml =
        std::fs::read_to_string(spec).map_err(|e| format!("{}: {e}", spec.display()))?;
    client
        .submit(SubmitRequest { spec_toml })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("{}: {}", spec.display(), status_error(s)))
}

fn metrics_json(m: &Option<proto::Metrics>) -> serde_json::Value {
    match m {
        Some(m) => {
            serde_json::json!({"auc": m.auc, "ks": m.ks, "log_loss": m.log_loss, "accuracy": m.accuracy})
        }
        None => serde_json::Value::Null,
    }
}

fn status_json(s: &proto::JobStatus) -> serde_json::Value {
    serde_json::json!({
        "job_id": s.job_id, "kind": s.kind, "role": s.role, "state": s.state,
        "model_id": s.model_id, "error": s.error, "peers": s.peers,
        "created_unix_ms": s.created_unix_ms, "updated_unix_ms": s.updated_unix_ms,
        "aligned_rows": s.aligned_rows, "epochs": s.epochs,
        "bytes_sent": s.bytes_sent, "bytes_received": s.bytes_received,
        "train": metrics_json(&s.train), "validation": metrics_json(&s.validation),
    })
}

fn event_json(e: &proto::JobEvent) -> serde_json::Value {
    serde_json::json!({
        "job_id": e.job_id, "state": e.state, "message": e.message, "epoch": e.epoch,
        "max_epochs": e.max_epochs, "train": metrics_json(&e.train),
        "validation": metrics_json(&e.validation), "bytes_sent": e.bytes_sent,
        "bytes_received": e.bytes_received, "aligned_rows": e.aligned_rows,
        "psi_progress": e.psi_progress, "unix_ms": e.unix_ms,
        "train_loss": e.train_loss, "validation_loss": e.validation_loss,
    })
}

fn metrics_line(m: &Option<proto::Metrics>) -> String {
    match m {
        Some(m) => format!("AUC {:.4}  KS {:.4}  loss {:.4}", m.auc, m.ks, m.log_loss),
        None => "-".into(),
    }
}

/// An epoch's aggregate losses (the only per-epoch figures of training v2).
fn loss_line(event: &proto::JobEvent) -> String {
    match (event.train_loss, event.validation_loss) {
        (Some(train), Some(validation)) => {
            format!("Taylor loss {train:.4} (validation {validation:.4})")
        }
        (Some(train), None) => format!("Taylor loss {train:.4}"),
        _ => String::new(),
    }
}

fn print_status(s: &proto::JobStatus) {
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
    let psi = ProgressBar::hidden();
    let epochs = ProgressBar::hidden();
    if !json {
        psi.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        psi.set_length(1000);
        psi.set_style(
            ProgressStyle::with_template("PSI      [{bar:40}] {percent:>3}% {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
    }
    let mut last_state = String::new();
    while let Some(event) = stream.message().await.map_err(status_error)? {
        if json {
            println!("{}", event_json(&event));
            continue;
        }
        psi.set_position((event.psi_progress * 1000.0) as u64);
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
    }
    let _ = std::io::stdout().flush();
    match status.state.as_str() {
        "succeeded" => Ok(ExitCode::SUCCESS),
        state => Err(format!("job {job_id} {state}: {}", status.error)),
    }
}

async fn job_command(command: JobCommand) -> Result<ExitCode, String> {
    match command {
        JobCommand::Submit { target, spec } => {
            let mut client = connect(&target).await?;
            let status = submit(&mut client, &spec).await?;
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
        JobCommand::List { target } => {
            let mut client = connect(&target).await?;
            let jobs = client
                .list(ListJobsRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .jobs;
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

async fn model_command(command: ModelCommand) -> Result<ExitCode, String> {
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

async fn score(target: Target, model: String, ids: Vec<String>) -> Result<ExitCode, String> {
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

async fn audit_command(command: AuditCommand) -> Result<ExitCode, String> {
    match command {
        AuditCommand::Verify { target } => {
            let mut client = connect(&target).await?;
            let reply = client
                .verify_audit(crate::proto::VerifyAuditRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            if reply.intact {
                println!("audit log intact: {} records", reply.records);
                Ok(ExitCode::SUCCESS)
            } else {
                Err(format!(
                    "audit log broken at record {} of {}: {}",
                    reply.first_broken, reply.records, reply.reason
                ))
            }
        }
        AuditCommand::Show { target, job } => {
            let mut client = connect(&target).await?;
            let records = client
                .list_audit(crate::proto::ListAuditRequest {
                    job_id: job.unwrap_or_default(),
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .records;
            for r in &records {
                if target.json {
                    println!(
                        "{}",
                        serde_json::json!({"seq": r.seq, "unix_ms": r.unix_ms, "event": r.event, "job_id": r.job_id,
                            "peer": r.peer, "detail": serde_json::from_str::<serde_json::Value>(&r.detail_json).unwrap_or_default(), "hash": r.hash})
                    );
                } else {
                    println!(
                        "{:>6} {} {:<16} {:<12} {} {}",
                        r.seq, r.unix_ms, r.event, r.peer, r.job_id, r.detail_json
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
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
