//! The `unseen` command line: the daemon (`serve`) and its workers (`worker`), the modeller's commands (`train`, `job`,
//! `model`) and certificates for a test federation (`cert`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tonic::transport::{Channel, Endpoint};

use crate::config::NodeConfig;
use crate::proto::jobs_client::JobsClient;

mod audit;
mod jobs;
mod models;
mod output;
mod worker;

pub use jobs::follow;
pub use output::{band_name, print_scores};

use crate::tls::Identity;
use audit::audit_command;
use jobs::{job_command, submit};
use models::{model_command, score, score_file, ScoreFiles};

/// unseen: private set intersection and vertical federated logistic regression for joint
/// credit modelling.
#[derive(Parser, Debug)]
#[command(name = "unseen", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The job spec's defaults, for `unseen train --help` (the README lists the same).
const TRAIN_DEFAULTS: &str = "\
Job spec defaults ([train]; full-batch block-Jacobi steps, η 0.7 (2.34/parties from 4 on), μ 0.3):
  max_epochs = 100
  early_stopping = { kind = \"loss\", patience = 5, min_delta = 1e-4 }   # keeps the best epoch
  l2 = 0, validation_fraction = 0, seed drawn and recorded

Column preparation ([prep] for the bank's columns; a host's `prep` for its own; a host
without one takes the bank's prep.default): every column standardised, nothing else.
  winsorise = [0.01, 0.99]                        # clip at training quantiles
  log1p = true                                    # sign(x)·ln(1 + |x|)
  bins = { kind = \"quantile\", count = 10 }      # or equal_width, cuts = [...], categorical

Or, instead of [prep], the bins of a binning job, merged and chosen from its counts
([select]; chosen by `cargo run --release --example defaults -- selection`):
  binning_job = \"<id>\"                         # required: `unseen binning` prints it
  merge = \"monotone\"                            # or \"chi\", \"none\"
  min_iv = 0.02                                   # per column, after merging
  top_k: none, columns: every column              # per party

A job that ends unconverged (best loss not below the base rate's, or still falling by more
than 5e-4 per epoch) says so in its summary and report.";

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs a node (until SIGINT or SIGTERM).
    Serve {
        /// The node's TOML configuration.
        #[arg(long)]
        config: PathBuf,
    },
    /// Runs a worker of this party (until SIGINT or SIGTERM): takes PSI work from the node,
    /// which must list the identity's certificate name in `workers`.
    Worker {
        /// The node as NAME@HOST:PORT (NAME is the name in its certificate).
        #[arg(long, env = "UNSEEN_NODE")]
        node: String,
        /// Directory with ca.crt, node.crt and node.key of the worker (see `unseen cert`).
        #[arg(long, env = "UNSEEN_IDENTITY")]
        identity: PathBuf,
    },
    /// Submits a training job and follows it to the end (exit status 1 if it fails).
    #[command(after_long_help = TRAIN_DEFAULTS)]
    Train {
        #[command(flatten)]
        target: Target,
        /// The TOML job spec.
        spec: PathBuf,
    },
    /// Computes the binning statistics of a job spec's columns (its hosts, datasets and
    /// `[prep]`; `[train]` is ignored): per-bin counts, WOE and IV, printed strongest first.
    Binning {
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
        /// A model's name (its latest version) or `name@version`; a file is scored by one
        /// version throughout.
        #[arg(long)]
        model: String,
        /// Enterprise ids (or --input).
        #[arg(required_unless_present = "input", conflicts_with = "input")]
        ids: Vec<String>,
        /// A CSV file of ids to score (a header row; the ids in --id-column), or a Parquet
        /// file (named *.parquet or *.parq), streamed in batches; needs --output.
        #[arg(long, requires = "output")]
        input: Option<PathBuf>,
        /// Where the scores go: id, probability, points, band, error (one row per input id, in
        /// order), as CSV, or as Parquet when named *.parquet or *.parq. Written whole, then renamed
        /// into place.
        #[arg(long, requires = "input")]
        output: Option<PathBuf>,
        /// The column of --input holding the ids.
        #[arg(long, default_value = "id")]
        id_column: String,
        /// Ids per call (at most the node's scoring.max_batch).
        #[arg(long, default_value_t = 1024)]
        batch: usize,
    },
    /// The node's hash-chained audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The node's configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
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
    /// Lists jobs, oldest first.
    List {
        #[command(flatten)]
        target: Target,
        /// Only jobs created in the last AGE (e.g. 90s, 30m, 12h, 7d).
        #[arg(long, value_name = "AGE", value_parser = parse_age)]
        since: Option<Duration>,
        /// At most this many jobs.
        #[arg(long)]
        limit: Option<u64>,
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
        /// Model id: `name@version`, or a name for its latest version.
        model: String,
    },
    /// Archives one version: it is no longer scored; this node keeps its part and report.
    Archive {
        #[command(flatten)]
        target: Target,
        /// `name@version`.
        model: String,
    },
    /// Deletes this node's part of one version: its weights and report are erased and it can
    /// no longer be scored (by any party, as every party's part is needed). The version is
    /// never made again; a host's disclosure budget still counts it.
    Delete {
        #[command(flatten)]
        target: Target,
        /// `name@version`.
        model: String,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Reads the node's configuration file again (as SIGHUP does): datasets, policy and
    /// scoring settings take effect without a restart; a file that changes another key, or
    /// does not load, is refused and the running configuration stays in force.
    Reload {
        #[command(flatten)]
        target: Target,
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
        /// Only records of the last AGE (e.g. 90s, 30m, 12h, 7d).
        #[arg(long, value_name = "AGE", value_parser = parse_age)]
        since: Option<Duration>,
        /// At most this many records.
        #[arg(long)]
        limit: Option<u64>,
        /// After the records so far, print new ones as they are appended (until interrupted).
        #[arg(long)]
        follow: bool,
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
    /// Revokes the certificates of NAMEs issued by the CA in DIR: adds them to DIR/ca.crl (copy
    /// it to every node that trusts this CA; nodes read it again when it changes) and moves
    /// DIR/NAME to DIR/revoked/.
    Revoke {
        /// Directory holding ca.crt and ca.key.
        #[arg(long)]
        dir: PathBuf,
        /// Names whose certificates are revoked.
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
        Command::Worker { node, identity } => {
            init_logging();
            runtime()?.block_on(worker::worker(node, identity))
        }
        Command::Train { target, spec } => runtime()?.block_on(async {
            let mut client = connect(&target).await?;
            let status = submit(&mut client, &spec, None).await?;
            if !target.json {
                eprintln!("job {} submitted to {}", status.job_id, target.node);
            }
            follow(&mut client, &status.job_id, target.json).await
        }),
        Command::Binning { target, spec } => runtime()?.block_on(async {
            let mut client = connect(&target).await?;
            let status = submit(&mut client, &spec, Some("binning")).await?;
            if !target.json {
                eprintln!("job {} submitted to {}", status.job_id, target.node);
            }
            follow(&mut client, &status.job_id, target.json).await
        }),
        Command::Job { command } => runtime()?.block_on(job_command(command)),
        Command::Model { command } => runtime()?.block_on(model_command(command)),
        Command::Score {
            target,
            model,
            input: Some(input),
            output: Some(output),
            id_column,
            batch,
            ..
        } => runtime()?.block_on(score_file(
            target,
            model,
            ScoreFiles {
                input,
                output,
                id_column,
                batch,
            },
        )),
        Command::Score {
            target, model, ids, ..
        } => runtime()?.block_on(score(target, model, ids)),
        Command::Audit { command } => runtime()?.block_on(audit_command(command)),
        Command::Config {
            command: ConfigCommand::Reload { target },
        } => runtime()?.block_on(async {
            let mut client = connect(&target).await?;
            let reply = client
                .reload_config(crate::proto::ReloadConfigRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            if reply.changed.is_empty() {
                println!("{}: configuration read again; nothing changed", target.node);
            } else {
                let changed = reply.changed.join(", ");
                println!(
                    "{}: configuration read again; in force: {changed}",
                    target.node
                );
            }
            Ok(ExitCode::SUCCESS)
        }),
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
                CertCommand::Revoke { dir, names } => {
                    let crl = crate::certs::revoke(dir, names).map_err(|e| e.to_string())?;
                    println!("{}", crl.display());
                    return Ok(ExitCode::SUCCESS);
                }
            };
            for name in names {
                println!("{}", dir.join(name).display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Logs to stderr, at `RUST_LOG` or info.
fn init_logging() {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
}

fn serve(path: &Path) -> Result<ExitCode, String> {
    init_logging();
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
    endpoint(node, identity_dir)?
        .connect()
        .await
        .map_err(|e| connect_error(node, identity_dir, &error_chain(&e)))
}

/// The endpoint of [`channel`], to connect with more settings.
fn endpoint(node: &str, identity_dir: &Path) -> Result<Endpoint, String> {
    let (name, address) = node
        .split_once('@')
        .ok_or_else(|| format!("--node {node:?}: expected NAME@HOST:PORT"))?;
    let identity = Identity::load_dir(identity_dir).map_err(|e| e.to_string())?;
    // The handshake would only say "transport error" of an expired or foreign certificate.
    identity
        .check_own(tokio_rustls::rustls::pki_types::UnixTime::now())
        .map_err(|reason| format!("{}: {reason}", identity_dir.join("node.crt").display()))?;
    Endpoint::from_shared(format!("https://{address}"))
        .map_err(|e| format!("--node {node:?}: {e}"))?
        .tls_config(identity.client_config(name))
        .map_err(|e| format!("TLS: {e}"))
        .map(|endpoint| endpoint.connect_timeout(Duration::from_secs(10)))
}

/// A failed connection in the operator's terms, with the transport's own words after them.
fn connect_error(node: &str, identity_dir: &Path, chain: &str) -> String {
    let (name, address) = node.split_once('@').unwrap_or((node, node));
    let cause = if chain.contains("UnknownIssuer") {
        format!(
            "the server's certificate is not from your CA ({})",
            identity_dir.join("ca.crt").display()
        )
    } else if chain.contains("Expired") {
        "the server's certificate has expired".to_owned()
    } else if chain.contains("NotValidForName") {
        format!("the server's certificate is not for the name {name:?}")
    } else if chain.contains("Connection refused") {
        format!("nothing listens at {address}")
    } else if ["closed", "reset", "Broken pipe", "eof"]
        .iter()
        .any(|w| chain.contains(w))
    {
        "the node closed the connection".to_owned()
    } else {
        return format!("cannot reach {node}: {chain}");
    };
    format!("cannot reach {node}: {cause} ({chain})")
}

async fn connect(target: &Target) -> Result<JobsClient<Channel>, String> {
    Ok(JobsClient::new(
        channel(&target.node, &target.identity).await?,
    ))
}

/// An error and its sources, each said once (a source often repeats its wrapper's text).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(&format!(": {part}"));
        }
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

/// An age such as `90s`, `30m`, `12h` or `7d`.
fn parse_age(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?}: an age is a number and s, m, h or d (e.g. 30m)");
    let (number, seconds) = [("s", 1), ("m", 60), ("h", 3600), ("d", 86_400)]
        .into_iter()
        .find_map(|(unit, seconds)| text.strip_suffix(unit).map(|n| (n, seconds)))
        .ok_or_else(bad)?;
    let number: u64 = number.parse().map_err(|_| bad())?;
    Ok(Duration::from_secs(number.saturating_mul(seconds)))
}

/// The time `age` ago, in Unix milliseconds (0 without an age: any time).
fn since_unix_ms(age: Option<Duration>) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    age.map_or(0, |age| now.saturating_sub(age).as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_a_number_and_a_unit() {
        assert_eq!(parse_age("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in ["", "m", "5", "5µ", "-1h", "1.5h", "2w"] {
            assert!(parse_age(bad).unwrap_err().contains("an age is"), "{bad}");
        }
    }

    /// The defaults `unseen train --help` prints are the ones a spec without `[train]` gets.
    #[test]
    fn train_help_states_the_real_defaults() {
        let stated: String = TRAIN_DEFAULTS
            .lines()
            .skip(1)
            .take_while(|l| !l.trim().is_empty())
            .filter(|l| !l.trim_start().starts_with("l2"))
            .map(|l| format!("{}\n", l.split(" #").next().unwrap_or(l).trim()))
            .collect();
        let spec = |train: &str| {
            crate::spec::JobSpec::parse(&format!(
                "model_id = \"m\"\ndataset = \"d\"\n[[hosts]]\nparty = \"p\"\ndataset = \"d\"\n\
                 [train]\nseed = 1\n{train}"
            ))
            .unwrap()
            .train
        };
        assert_eq!(spec(&stated), spec(""), "{stated}");
        assert_eq!(stated.lines().count(), 2);
        let defaults = fedlearn::TrainConfig::default();
        assert_eq!(defaults.l2, 0.0);
        assert_eq!(defaults.validation_fraction, 0.0);
    }

    /// Connection failures say the cause in the operator's terms, once.
    #[test]
    fn connection_failures_name_their_cause() {
        let dir = Path::new("certs/modeller");
        let foreign = connect_error(
            "bank@10.0.0.1:7001",
            dir,
            "transport error: invalid peer certificate: UnknownIssuer",
        );
        assert!(
            foreign
                .contains("the server's certificate is not from your CA (certs/modeller/ca.crt)"),
            "{foreign}"
        );
        let down = connect_error(
            "bank@10.0.0.1:7001",
            dir,
            "tcp connect error: Connection refused (os error 111)",
        );
        assert!(down.contains("nothing listens at 10.0.0.1:7001"), "{down}");
        let other = connect_error("bank@10.0.0.1:7001", dir, "dns error");
        assert_eq!(other, "cannot reach bank@10.0.0.1:7001: dns error");
    }

    /// So are the `[select]` defaults it prints.
    #[test]
    fn train_help_states_the_real_select_defaults() {
        let stated: String = TRAIN_DEFAULTS
            .lines()
            .filter(|l| l.starts_with("  merge") || l.starts_with("  min_iv"))
            .map(|l| format!("{}\n", l.split(" #").next().unwrap_or(l).trim()))
            .collect();
        assert_eq!(stated.lines().count(), 2, "{stated}");
        let parse = |extra: &str| -> fedlearn::Selection {
            toml::from_str(&format!("binning_job = \"j\"\n{extra}")).unwrap()
        };
        let defaults = parse("");
        assert_eq!(parse(&stated), defaults, "{stated}");
        assert_eq!(defaults.top_k, None);
        assert!(defaults.columns.is_empty());
    }
}
