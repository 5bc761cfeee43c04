//! The node's TOML configuration (`unseen serve --config node.toml`).
//!
//! ```toml
//! party = "tax"                      # this node's party name = the name in its certificate
//! listen = "0.0.0.0:7002"            # gRPC (federation + jobs), mutual TLS
//! data_dir = "data"                  # embedded store
//! store_key = "keys/store.key"     # seals the store's model records (outside data_dir)
//! metrics_listen = "127.0.0.1:9102"  # optional Prometheus endpoint (plain HTTP)
//! operators = ["tax-operator"]       # certificate names allowed to use the jobs API
//! workers = ["tax-worker"]           # optional: certificate names of this party's workers
//!
//! [tls]
//! cert = "certs/tax/node.crt"
//! key = "certs/tax/node.key"
//! ca = "certs/tax/ca.crt"
//! crls = ["certs/tax/ca.crl"]        # optional: revocation lists, read again when changed
//!
//! [[peers]]
//! name = "bank"
//! address = "bank.example:7001"
//! certificate_name = "bank"          # optional, defaults to `name`
//!
//! [datasets.tax]
//! path = "tax.csv"                 # or a Parquet file: "tax.parquet"
//! id_column = "id"
//! features = ["x0", "x1"]            # optional: every other column by default
//! missing = "reject"                 # or "mean"
//! delimiter = ","                    # or ";", "\t", …
//!
//! [[policy]]                         # who may run which jobs on which datasets
//! peer = "bank"
//! jobs = ["train", "score", "binning"]
//! datasets = ["tax"]
//! max_models = 2                     # disclosure budget (defaults shown): models whose
//!                                    # per-row scores may reach the peer, per dataset
//! min_batch_rows = 1024              # fewest training rows (every step uses all)
//! max_guest_features = 64            # most features the guest may bring to a job
//! name_missing_ids = false           # scoring: one generic status for ids lacked or unscorable
//! scores_per_minute = 60000          # ids the peer may have scored per minute
//! max_binning_jobs = 2               # binning jobs whose bin counts may reach the peer
//! min_bin_rows = 100                 # fewest rows in a bin whose counts reach the peer
//! min_bin_share = 0.05               # … and smallest share of the aligned rows
//! publish_column_names = false       # binning: column names, or aliases (tax:1, tax:2, …)
//!
//! [scoring]                          # the guest's scoring service (defaults shown)
//! base_score = 600                   # points at base_odds (good : bad)
//! base_odds = 50
//! points_to_double_odds = 20
//! yellow_from = 0.2                  # probability of default from which an id is yellow
//! red_from = 0.5                     # … and red
//! max_batch = 1024
//!
//! [[scoring.clients]]                # platforms, by certificate name
//! name = "city-platform"
//! models = ["sme-credit", "sme-*"]   # a name grants its every version, "name@3" one
//!                                    # version; a trailing * every model so named, "*" all
//! calls_per_second = 50
//! burst = 100
//! ```
//!
//! Relative paths are relative to the configuration file. Unknown keys, missing files and
//! references to undeclared peers or datasets are refused at start-up, naming the key.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fedlearn::Missing;
use serde::Deserialize;

use crate::error::{NodeError, Refusal};

/// Job kinds a policy may allow: training a model, scoring with a model trained on the
/// dataset, and binning statistics (per-bin counts of the dataset's columns).
pub const JOB_KINDS: &[&str] = &["train", "score", "binning"];

/// A validated node configuration with absolute paths.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's party name (must be the name in its certificate).
    pub party: String,
    /// Address of the gRPC server.
    pub listen: SocketAddr,
    /// Directory of the embedded store.
    pub data_dir: PathBuf,
    /// File of the key that seals the store's model records, outside `data_dir` (created on
    /// first start); without it, the key comes from `UNSEEN_STORE_KEY`.
    #[serde(default)]
    pub store_key: Option<PathBuf>,
    /// Address of the Prometheus endpoint, if any.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Certificate names allowed to call the jobs service.
    #[serde(default)]
    pub operators: Vec<String>,
    /// Certificate names of this party's workers (`unseen worker`), issued by its own CA: they
    /// take PSI work from this node. Any number of workers may share one name.
    #[serde(default)]
    pub workers: Vec<String>,
    /// Certificate, key and CA bundle.
    pub tls: TlsFiles,
    /// Other nodes.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Datasets by name.
    #[serde(default)]
    pub datasets: BTreeMap<String, DatasetConfig>,
    /// What peers may do.
    #[serde(default)]
    pub policy: Vec<PolicyRule>,
    /// Transport settings.
    #[serde(default)]
    pub federation: FederationSettings,
    /// Scoring service (guest).
    #[serde(default)]
    pub scoring: ScoringSettings,
    /// The file this configuration was read from.
    #[serde(skip)]
    pub source: PathBuf,
}

/// The scorecard, the bands and the platforms allowed to score.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoringSettings {
    /// Points at `base_odds`.
    pub base_score: f64,
    /// Odds (good : bad) that score `base_score`.
    pub base_odds: f64,
    /// Points that double the odds.
    pub points_to_double_odds: f64,
    /// Probability of default from which an id is yellow.
    pub yellow_from: f64,
    /// Probability of default from which an id is red.
    pub red_from: f64,
    /// Most ids per call.
    pub max_batch: usize,
    /// Platforms (certificate names) and what they may score.
    pub clients: Vec<ScoringClient>,
}

impl Default for ScoringSettings {
    fn default() -> Self {
        ScoringSettings {
            base_score: 600.0,
            base_odds: 50.0,
            points_to_double_odds: 20.0,
            yellow_from: 0.2,
            red_from: 0.5,
            max_batch: 1024,
            clients: Vec::new(),
        }
    }
}

/// A platform allowed to score.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoringClient {
    /// Certificate name.
    pub name: String,
    /// Models it may score: a model id, a prefix followed by `*` (every model whose id
    /// starts with it), or `*` (every model of this node).
    pub models: Vec<String>,
    /// Sustained calls per second.
    #[serde(default = "default_rate")]
    pub calls_per_second: f64,
    /// Calls allowed in a burst.
    #[serde(default = "default_burst")]
    pub burst: f64,
}

fn default_rate() -> f64 {
    50.0
}

fn default_burst() -> f64 {
    100.0
}

/// PEM files of the node's identity.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain of this node.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates that sign the federation's nodes and operators.
    pub ca: PathBuf,
    /// Certificate revocation lists (PEM or DER), of this node's CA or of peers' own CAs:
    /// read again when a file changes, without a restart.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
}

/// Another node.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Party name.
    pub name: String,
    /// host:port of its gRPC server.
    pub address: String,
    /// Name its certificate must be valid for (defaults to `name`).
    #[serde(default)]
    pub certificate_name: Option<String>,
    /// Its own CA, when it keeps its own PKI: its certificates must chain to this CA (and only
    /// this one); without it, to this node's `tls.ca`.
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

impl PeerConfig {
    /// The name the peer's certificate must be valid for.
    pub fn certificate_name(&self) -> &str {
        self.certificate_name.as_deref().unwrap_or(&self.name)
    }
}

/// A dataset this node may use in jobs: a CSV or Parquet file, or a PostgreSQL table or query.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    /// The CSV file (header row, one row per entity), or a Parquet file (a name ending in
    /// `.parquet` or `.parq`), unless `postgres` is set.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// A PostgreSQL table or query, instead of `path`.
    #[serde(default)]
    pub postgres: Option<PostgresSource>,
    /// Column of entity ids.
    pub id_column: String,
    /// Column of 0/1 labels (a guest's dataset).
    #[serde(default)]
    pub label_column: Option<String>,
    /// Feature columns; every other column when absent.
    #[serde(default)]
    pub features: Option<Vec<String>>,
    /// Missing values: refuse them, or score them as the training mean.
    #[serde(default = "default_missing")]
    pub missing: Missing,
    /// The CSV field delimiter: one ASCII character other than a quote or a line break.
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
}

fn default_delimiter() -> String {
    ",".into()
}

/// A dataset in PostgreSQL: a table, or the rows of a query, read with `COPY … TO STDOUT`
/// (streamed, as CSV) over one connection per load.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSource {
    /// Connection settings without the password, as libpq takes them:
    /// `"host=db.tax.example port=5432 user=unseen dbname=tax"`.
    pub connection: String,
    /// The CA certificate (PEM) that signed the server's certificate: the connection is then
    /// TLS, and the server's certificate must be valid for the host named. Needed unless the
    /// server is on this machine (loopback or a Unix socket directory).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The table (`name` or `schema.name`), read whole, ordered by the id column.
    #[serde(default)]
    pub table: Option<String>,
    /// Or a query whose rows are the dataset.
    #[serde(default)]
    pub query: Option<String>,
    /// The environment variable that holds the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Or a file that holds it (readable by its owner only).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

impl PostgresSource {
    /// The connection settings, checked: no password; a server on this machine unless the
    /// connection is TLS (`ca`), which it must then be.
    pub fn settings(&self) -> Result<postgres::Config, String> {
        let settings: postgres::Config = self
            .connection
            .parse()
            .map_err(|e| format!("connection: {e}"))?;
        if settings.get_password().is_some() {
            return Err("connection: holds a password; use password_env or password_file".into());
        }
        let local = |host: &postgres::config::Host| match host {
            postgres::config::Host::Tcp(name) => {
                name == "localhost"
                    || name
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            #[cfg(unix)]
            postgres::config::Host::Unix(_) => true,
        };
        if self.ca.is_some() {
            let mut settings = settings;
            settings.ssl_mode(postgres::config::SslMode::Require);
            return Ok(settings);
        }
        // A hostaddr is where the client connects, whatever the host says.
        let addresses_local = settings.get_hostaddrs().iter().all(|ip| ip.is_loopback());
        if settings.get_hosts().is_empty()
            || !settings.get_hosts().iter().all(local)
            || !addresses_local
        {
            return Err(
                "connection: a server not on this machine needs ca (the CA certificate that \
                 signed the server's certificate), so that the connection is encrypted and the \
                 server verified"
                    .into(),
            );
        }
        Ok(settings)
    }

    /// The rows to read, as a `COPY … TO STDOUT` statement (CSV with a header).
    pub fn copy_statement(&self, id_column: &str) -> String {
        let select = match (&self.table, &self.query) {
            (Some(table), _) => {
                let quote = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
                let table: Vec<String> = table.split('.').map(quote).collect();
                format!(
                    "SELECT * FROM {} ORDER BY {}",
                    table.join("."),
                    quote(id_column)
                )
            }
            (None, query) => query
                .as_deref()
                .unwrap_or("")
                .trim()
                .trim_end_matches(';')
                .to_owned(),
        };
        format!("COPY ({select}) TO STDOUT WITH (FORMAT csv, HEADER true)")
    }

    /// How errors name it: the table, or "query".
    pub fn name(&self) -> String {
        match &self.table {
            Some(table) => format!("postgres table {table:?}"),
            None => "postgres query".into(),
        }
    }
}

impl ScoringClient {
    /// Whether this client may score with `model` (a name, whose latest version is meant, or
    /// `name@version`): a grant names the model (every version), one version, or a prefix of
    /// names followed by `*`.
    pub fn may_score(&self, model: &str) -> bool {
        let name = split_model_id(model).map_or(model, |(name, _)| name);
        self.models
            .iter()
            .any(|granted| match granted.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => granted == name || granted == model,
            })
    }
}

impl DatasetConfig {
    /// The file's CSV layout (the delimiter is checked when the configuration loads).
    pub fn csv_format(&self) -> fedlearn::CsvFormat {
        fedlearn::CsvFormat {
            delimiter: self.delimiter.bytes().next().unwrap_or(b','),
        }
    }
}

fn default_missing() -> Missing {
    Missing::Reject
}

/// Lets `peer` run jobs of the listed kinds on the listed datasets of this node, within a
/// disclosure budget.
///
/// Every model trained with this node's data reveals one linear view of it to the guest: the
/// final model's joint scores of the validation rows, and then its scores of every id the
/// guest asks for. `max_models` bounds the number of such views per guest and dataset; the
/// other limits bound what one job can isolate.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    /// Peer party name.
    pub peer: String,
    /// Job kinds ("train", "score", "binning").
    pub jobs: Vec<String>,
    /// Dataset names.
    pub datasets: Vec<String>,
    /// Models trained with the peer on a dataset whose per-row scores may reach it (each
    /// is one linear view of the dataset).
    #[serde(default = "default_max_models")]
    pub max_models: u32,
    /// Fewest training rows: every secret-shared step, and the Gram products of the set-up,
    /// aggregate over all of them, so at least this many enterprises.
    #[serde(default = "default_min_batch_rows")]
    pub min_batch_rows: u64,
    /// Most features the guest may bring (each is one more column of the Gram products its
    /// shares are computed from, and one more term of the one final reveal's model).
    #[serde(default = "default_max_guest_features")]
    pub max_guest_features: u32,
    /// Whether scoring names the ids this node lacks or cannot score; by default the peer
    /// gets one generic "cannot score" status for both.
    #[serde(default)]
    pub name_missing_ids: bool,
    /// Ids the peer may have scored per minute (partial scores, over all models).
    #[serde(default = "default_scores_per_minute")]
    pub scores_per_minute: u32,
    /// Binning jobs with the peer on a dataset whose per-bin counts may reach it.
    #[serde(default = "default_max_binning_jobs")]
    pub max_binning_jobs: u32,
    /// Fewest rows in a bin whose size and event count reach the peer (smaller bins are
    /// merged first).
    #[serde(default = "default_min_bin_rows")]
    pub min_bin_rows: u64,
    /// Smallest share of the aligned rows in such a bin.
    #[serde(default = "default_min_bin_share")]
    pub min_bin_share: f64,
    /// Whether binning statistics name this node's columns; by default they go by aliases.
    #[serde(default)]
    pub publish_column_names: bool,
}

fn default_max_binning_jobs() -> u32 {
    2
}

fn default_min_bin_rows() -> u64 {
    100
}

fn default_min_bin_share() -> f64 {
    0.05
}

fn default_max_models() -> u32 {
    2
}

fn default_min_batch_rows() -> u64 {
    1024
}

fn default_max_guest_features() -> u32 {
    64
}

fn default_scores_per_minute() -> u32 {
    60_000
}

/// Timeouts, retries and chunking of peer calls.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationSettings {
    /// Largest chunk of a streamed message.
    pub chunk_bytes: usize,
    /// Largest message a peer may send.
    pub max_message_bytes: usize,
    /// Deadline of one peer call.
    pub call_timeout_secs: u64,
    /// How long a job waits for a peer's next message.
    pub receive_timeout_secs: u64,
    /// A peer that answers no liveness probe (and no retried call) for this long is reported
    /// dead and the job stops, naming it. A waiting job probes every quarter of this.
    pub peer_dead_secs: u64,
    /// Attempts after the first failed call.
    pub retries: u32,
    /// First backoff; doubles per retry, capped at 10 s.
    pub backoff_ms: u64,
    /// Largest id set a peer may announce for PSI (bounds the memory a peer can make this
    /// node reserve).
    pub max_peer_rows: u64,
    /// As a guest, distinct own ids per PSI part (at least `psi::MIN_PART_ROWS`): PSI runs one
    /// part at a time, so this bounds the guest's own share of a session's memory and sets the
    /// number of parts (hosts' parts grow with their sets).
    pub psi_partition_rows: u64,
    /// How often this node gives every peer its audit head to keep.
    pub anchor_secs: u64,
    /// Most jobs this node runs at once (guest and host); more are refused as busy.
    pub max_jobs: usize,
    /// Most jobs it runs at once for one guest.
    pub max_jobs_per_peer: usize,
    /// Most bytes of a job's messages that may wait unread (from all its peers); a peer that
    /// runs further ahead waits.
    pub max_buffered_bytes: usize,
    /// How long an interrupted training job waits for every party to be back (a restarted
    /// node, a peer found again) before it fails; 0 fails it at once, as a job that cannot
    /// resume.
    pub resume_secs: u64,
}

impl Default for FederationSettings {
    fn default() -> Self {
        FederationSettings {
            chunk_bytes: 1 << 20,
            max_message_bytes: 256 << 20,
            call_timeout_secs: 60,
            receive_timeout_secs: 600,
            peer_dead_secs: 8,
            retries: 6,
            backoff_ms: 200,
            max_peer_rows: 100_000_000,
            psi_partition_rows: psi::DEFAULT_PARTITION_ROWS,
            anchor_secs: 60,
            max_jobs: 8,
            max_jobs_per_peer: 4,
            resume_secs: 600,
            max_buffered_bytes: 1 << 30,
        }
    }
}

impl FederationSettings {
    /// Deadline of one call.
    pub fn call_timeout(&self) -> Duration {
        Duration::from_secs(self.call_timeout_secs)
    }

    /// Wait for the next message.
    pub fn receive_timeout(&self) -> Duration {
        Duration::from_secs(self.receive_timeout_secs)
    }

    /// How long an interrupted job waits for every party to be back.
    pub fn resume_window(&self) -> Duration {
        Duration::from_secs(self.resume_secs)
    }

    /// How long a peer may stay unreachable before a job reports it dead.
    pub fn peer_dead(&self) -> Duration {
        Duration::from_secs(self.peer_dead_secs)
    }

    /// How often a waiting job asks the peer it waits for whether it still runs the job
    /// (also the deadline of one probe).
    pub fn probe_interval(&self) -> Duration {
        self.peer_dead() / 4
    }

    /// Backoff before retry `attempt` (0-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ms = self.backoff_ms.saturating_mul(1 << attempt.min(16));
        Duration::from_millis(ms.min(10_000))
    }
}

impl NodeConfig {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<NodeConfig, NodeError> {
        let text = std::fs::read_to_string(path).map_err(|e| NodeError::io(path, e))?;
        NodeConfig::parse(path, &text)
    }

    /// Parses and validates configuration text; `path` locates relative paths and names errors.
    pub fn parse(path: &Path, text: &str) -> Result<NodeConfig, NodeError> {
        let error = |reason: String| NodeError::Config {
            path: path.to_owned(),
            reason,
        };
        let mut config: NodeConfig = toml::from_str(text).map_err(|e| error(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve(base);
        config.validate().map_err(error)?;
        config.source = path.to_owned();
        Ok(config)
    }

    /// What a new reading of the configuration changes: the keys read again without a
    /// restart (`datasets`, `policy`, `scoring`) that differ, or, as `Err`, the first other
    /// key that differs (it takes a restart).
    pub fn changes_to(&self, new: &NodeConfig) -> Result<Vec<&'static str>, &'static str> {
        let fixed = [
            ("party", self.party == new.party),
            ("listen", self.listen == new.listen),
            ("data_dir", self.data_dir == new.data_dir),
            ("store_key", self.store_key == new.store_key),
            ("metrics_listen", self.metrics_listen == new.metrics_listen),
            ("operators", self.operators == new.operators),
            ("workers", self.workers == new.workers),
            ("tls", self.tls == new.tls),
            ("peers", self.peers == new.peers),
            ("federation", self.federation == new.federation),
        ];
        if let Some((key, _)) = fixed.iter().find(|(_, same)| !same) {
            return Err(key);
        }
        Ok([
            ("datasets", self.datasets == new.datasets),
            ("policy", self.policy == new.policy),
            ("scoring", self.scoring == new.scoring),
        ]
        .into_iter()
        .filter(|(_, same)| !same)
        .map(|(key, _)| key)
        .collect())
    }

    fn resolve(&mut self, base: &Path) {
        let join = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        join(&mut self.data_dir);
        if let Some(key) = &mut self.store_key {
            join(key);
        }
        join(&mut self.tls.cert);
        join(&mut self.tls.key);
        join(&mut self.tls.ca);
        self.tls.crls.iter_mut().for_each(join);
        for peer in &mut self.peers {
            if let Some(ca) = &mut peer.ca {
                join(ca);
            }
        }
        for dataset in self.datasets.values_mut() {
            if let Some(path) = &mut dataset.path {
                join(path);
            }
            if let Some(source) = &mut dataset.postgres {
                for file in [&mut source.password_file, &mut source.ca]
                    .into_iter()
                    .flatten()
                {
                    join(file);
                }
            }
        }
    }

    fn validate(&self) -> Result<(), String> {
        check_name("party", &self.party)?;
        for (key, file) in [
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
            ("tls.ca", &self.tls.ca),
        ] {
            if !file.is_file() {
                return Err(format!("{key}: {} does not exist", file.display()));
            }
        }
        let mut names = BTreeSet::new();
        for (i, peer) in self.peers.iter().enumerate() {
            check_name(&format!("peers[{i}].name"), &peer.name)?;
            if peer.name == self.party {
                return Err(format!(
                    "peers[{i}].name: {:?} is this node itself",
                    peer.name
                ));
            }
            if !names.insert(peer.name.as_str()) {
                return Err(format!("peers[{i}].name: {:?} is listed twice", peer.name));
            }
            if peer.address.parse::<SocketAddr>().is_err() && !peer.address.contains(':') {
                return Err(format!(
                    "peers[{i}].address: {:?} is not host:port",
                    peer.address
                ));
            }
        }
        for (name, dataset) in &self.datasets {
            check_name(&format!("datasets.{name}"), name)?;
            match (&dataset.path, &dataset.postgres) {
                (Some(path), None) if !path.is_file() => {
                    return Err(format!(
                        "datasets.{name}.path: {} does not exist",
                        path.display()
                    ));
                }
                (Some(_), None) => {}
                (None, Some(source)) => {
                    let key = format!("datasets.{name}.postgres");
                    source.settings().map_err(|e| format!("{key}.{e}"))?;
                    if source.table.is_some() == source.query.is_some() {
                        return Err(format!("{key}: set one of table and query"));
                    }
                    if let Some(ca) = source.ca.as_ref().filter(|ca| !ca.is_file()) {
                        return Err(format!("{key}.ca: {} does not exist", ca.display()));
                    }
                    if source.password_env.is_some() && source.password_file.is_some() {
                        return Err(format!(
                            "{key}: set at most one of password_env and password_file"
                        ));
                    }
                }
                _ => {
                    return Err(format!(
                        "datasets.{name}: set one of path (a CSV or Parquet file) and postgres"
                    ))
                }
            }
            let delimiter = dataset.delimiter.as_bytes();
            if delimiter.len() != 1 || !delimiter[0].is_ascii() || b"\"\r\n".contains(&delimiter[0])
            {
                return Err(format!(
                    "datasets.{name}.delimiter: {:?} is not one ASCII character other than a \
                     quote or a line break",
                    dataset.delimiter
                ));
            }
        }
        for (i, rule) in self.policy.iter().enumerate() {
            if !names.contains(rule.peer.as_str()) {
                return Err(format!(
                    "policy[{i}].peer: {:?} is not in [[peers]]",
                    rule.peer
                ));
            }
            for kind in &rule.jobs {
                if !JOB_KINDS.contains(&kind.as_str()) {
                    return Err(format!(
                        "policy[{i}].jobs: unknown job kind {kind:?} (known: {})",
                        JOB_KINDS.join(", ")
                    ));
                }
            }
            if !(0.0..=0.5).contains(&rule.min_bin_share) {
                return Err(format!(
                    "policy[{i}].min_bin_share: {} is not in 0 … 0.5",
                    rule.min_bin_share
                ));
            }
            for dataset in &rule.datasets {
                if !self.datasets.contains_key(dataset) {
                    return Err(format!(
                        "policy[{i}].datasets: {dataset:?} is not in [datasets]"
                    ));
                }
            }
        }
        for (i, operator) in self.operators.iter().enumerate() {
            check_name(&format!("operators[{i}]"), operator)?;
        }
        for (i, worker) in self.workers.iter().enumerate() {
            check_name(&format!("workers[{i}]"), worker)?;
        }
        let roles: Vec<(&str, &str)> = self
            .peers
            .iter()
            .map(|p| ("a peer", p.certificate_name()))
            .chain(self.operators.iter().map(|o| ("an operator", o.as_str())))
            .chain(self.workers.iter().map(|w| ("a worker", w.as_str())))
            .chain(
                self.scoring
                    .clients
                    .iter()
                    .map(|c| ("a scoring client", c.name.as_str())),
            )
            .collect();
        for (i, (role, name)) in roles.iter().enumerate() {
            if let Some((other, _)) = roles[..i].iter().find(|(_, n)| n == name) {
                return Err(format!(
                    "{name:?} is both {other} and {role}; one certificate name, one role"
                ));
            }
        }
        let sc = &self.scoring;
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if !positive(sc.base_odds)
            || !positive(sc.points_to_double_odds)
            || !sc.base_score.is_finite()
        {
            return Err(
                "scoring: base_score must be finite, base_odds and points_to_double_odds positive"
                    .into(),
            );
        }
        if !(0.0 < sc.yellow_from && sc.yellow_from <= sc.red_from && sc.red_from < 1.0) {
            return Err("scoring: need 0 < yellow_from <= red_from < 1".into());
        }
        if sc.max_batch == 0 || sc.max_batch > 1 << 16 {
            return Err("scoring.max_batch: must be in 1..=65536".into());
        }
        for (i, client) in sc.clients.iter().enumerate() {
            check_name(&format!("scoring.clients[{i}].name"), &client.name)?;
            if !positive(client.calls_per_second) || client.burst < 1.0 {
                return Err(format!(
                    "scoring.clients[{i}]: calls_per_second must be positive and burst at least 1"
                ));
            }
            for model in &client.models {
                let pattern = model.strip_suffix('*').unwrap_or(model);
                if pattern.contains('*') || model.is_empty() {
                    return Err(format!(
                        "scoring.clients[{i}].models: {model:?}: a model id, a prefix followed \
                         by *, or *"
                    ));
                }
            }
        }
        let f = &self.federation;
        if f.chunk_bytes == 0 || f.chunk_bytes > 4 << 20 {
            return Err("federation.chunk_bytes: must be in 1..=4194304".into());
        }
        if f.max_message_bytes < f.chunk_bytes {
            return Err("federation.max_message_bytes: smaller than chunk_bytes".into());
        }
        if f.call_timeout_secs == 0 || f.receive_timeout_secs == 0 {
            return Err("federation: timeouts must be at least 1 second".into());
        }
        if f.peer_dead_secs < 2 || f.peer_dead_secs > f.receive_timeout_secs {
            return Err(
                "federation.peer_dead_secs: must be at least 2 and at most receive_timeout_secs"
                    .into(),
            );
        }
        if f.anchor_secs == 0 {
            return Err("federation.anchor_secs: must be at least 1".into());
        }
        if f.psi_partition_rows < psi::MIN_PART_ROWS {
            return Err(format!(
                "federation.psi_partition_rows: must be at least {} (hosts refuse smaller parts)",
                psi::MIN_PART_ROWS
            ));
        }
        if f.max_jobs == 0 || f.max_jobs_per_peer == 0 {
            return Err("federation: max_jobs and max_jobs_per_peer must be at least 1".into());
        }
        Ok(())
    }

    /// The configured peer of that name.
    pub fn peer(&self, name: &str) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.name == name)
    }

    /// The first policy rule that lets `peer` run a job of `kind` on `dataset`.
    pub fn rule(&self, peer: &str, kind: &str, dataset: &str) -> Option<&PolicyRule> {
        self.policy.iter().find(|rule| {
            rule.peer == peer
                && rule.jobs.iter().any(|j| j == kind)
                && rule.datasets.iter().any(|d| d == dataset)
        })
    }

    /// The policy rule that lets `peer` run a job of `kind` on `dataset`, or why there is none.
    pub fn allows(&self, peer: &str, kind: &str, dataset: &str) -> Result<&PolicyRule, Refusal> {
        if !self.datasets.contains_key(dataset) {
            return Err(Refusal::NoDataset {
                party: self.party.clone(),
                dataset: dataset.to_owned(),
            });
        }
        self.rule(peer, kind, dataset)
            .ok_or_else(|| Refusal::Policy {
                party: self.party.clone(),
                peer: peer.to_owned(),
                kind: kind.to_owned(),
                dataset: dataset.to_owned(),
            })
    }
}

/// Whether `name` is 1–64 of [A-Za-z0-9._-].
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// A model id: its name and, for `name@version`, the version (canonical decimal, from 1).
/// `None` if it is neither a valid name nor a valid name with a valid version.
pub fn split_model_id(id: &str) -> Option<(&str, Option<u32>)> {
    let (name, version) = match id.split_once('@') {
        Some((name, digits)) => {
            let version: u32 = digits.parse().ok().filter(|v| *v > 0)?;
            if version.to_string() != digits {
                return None;
            }
            (name, Some(version))
        }
        None => (id, None),
    };
    valid_name(name).then_some((name, version))
}

/// Party, peer and dataset names: 1–64 of [A-Za-z0-9._-].
pub fn check_name(key: &str, name: &str) -> Result<(), String> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(format!(
            "{key}: {name:?} must be 1 to 64 letters, digits, '.', '_' or '-'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_are_a_name_and_perhaps_one_canonical_version() {
        assert_eq!(split_model_id("sme-credit"), Some(("sme-credit", None)));
        assert_eq!(
            split_model_id("sme-credit@12"),
            Some(("sme-credit", Some(12)))
        );
        for bad in [
            "sme@0", "sme@01", "sme@+1", "sme@", "@1", "sme@1@2", "a/b@1", "sme@x",
        ] {
            assert_eq!(split_model_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn scoring_grants_name_models_versions_or_prefixes() {
        let client = |models: &[&str]| ScoringClient {
            name: "platform".into(),
            models: models.iter().map(|m| m.to_string()).collect(),
            calls_per_second: 1.0,
            burst: 1.0,
        };
        let named = client(&["sme-credit"]);
        assert!(named.may_score("sme-credit") && named.may_score("sme-credit@4"));
        assert!(!named.may_score("sme-credit-2") && !named.may_score("sme-credit-2@1"));
        let pinned = client(&["sme-credit@2"]);
        assert!(pinned.may_score("sme-credit@2"));
        assert!(!pinned.may_score("sme-credit") && !pinned.may_score("sme-credit@3"));
        let prefix = client(&["sme-*"]);
        assert!(prefix.may_score("sme-credit@9") && !prefix.may_score("retail@1"));
        assert!(client(&["*"]).may_score("anything@3"));
    }
}
