//! A three-party federation on one machine: a bank (guest, with labels), a tax bureau and a
//! utility company (hosts), each with its own certificate from a fresh CA (`unseen cert`), its
//! own CSV derived from the credit data, its own configuration file and data directory, and
//! a modeller identity for the CLI and a platform identity for scoring. Nodes listen on loopback ports chosen at preparation.
//!
//! The datasets differ a little in their ids, so PSI has work to do: the bank drops every
//! 53rd row of the FATE guest table; the tax bureau holds the first half of the host columns
//! without every 71st row; the utility company the other half without every 97th row, in
//! reverse order. A fourth dataset, `meters`, exists at the utility company but its policy
//! does not share it.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use node::config::NodeConfig;
use node::{NodeError, RunningNode};

/// The parties, guest first.
pub const PARTIES: [&str; 3] = ["bank", "tax", "utilities"];

/// The hosts, in residual-chain order.
pub const HOSTS: [&str; 2] = ["tax", "utilities"];

/// Rows of the credit data (ids 1..=30000 in the FATE files' order).
pub fn aligned_rows_expected() -> usize {
    (1..=30000usize)
        .filter(|i| i % 53 != 0 && i % 71 != 0 && i % 97 != 0)
        .count()
}

/// Files and addresses of a federation that has not started yet.
pub struct Plan {
    /// Root directory: certs/, the CSVs, `<party>.toml`, state/<party>/.
    pub dir: PathBuf,
    /// Where each party listens.
    pub listen: BTreeMap<String, SocketAddr>,
    /// Where the other parties reach each party (defaults to `listen`; a test may put a
    /// relay in between).
    pub reach: BTreeMap<String, SocketAddr>,
    /// Extra lines of every node's `[federation]` table.
    pub federation: String,
    /// Models the platform may score with at the bank.
    pub scoring_models: Vec<String>,
    /// The platform's rate limit (calls per second, and burst).
    pub scoring_rate: f64,
    /// Extra lines of each host's `[[policy]]` rule for the bank (disclosure budget).
    pub policy: String,
}

/// A running federation.
pub struct LocalFederation {
    /// Root directory.
    pub dir: PathBuf,
    /// The nodes by party.
    pub nodes: BTreeMap<String, RunningNode>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> NodeError + '_ {
    move |e| NodeError::Io {
        path: path.to_owned(),
        source: e,
    }
}

fn free_port() -> Result<SocketAddr, NodeError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| NodeError::Server(format!("no free loopback port: {e}")))
}

impl Plan {
    /// Writes certificates and datasets under `dir` (which must not hold a CA yet) from the
    /// FATE credit tables in `data` and picks loopback ports.
    pub fn prepare(dir: &Path, data: &Path) -> Result<Plan, NodeError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let names: Vec<String> = PARTIES
            .iter()
            .chain(&["modeller", "platform"])
            .map(|s| s.to_string())
            .collect();
        node::certs::init(&dir.join("certs"), &names)?;
        write_datasets(dir, data)?;
        let mut listen = BTreeMap::new();
        for party in PARTIES {
            listen.insert(party.to_string(), free_port()?);
        }
        Ok(Plan {
            dir: dir.to_owned(),
            reach: listen.clone(),
            listen,
            federation: String::new(),
            scoring_models: vec!["sme-credit".into()],
            scoring_rate: 1000.0,
            policy: String::new(),
        })
    }

    /// The configuration text of one party.
    pub fn config(&self, party: &str) -> String {
        let mut text = format!(
            "party = \"{party}\"\nlisten = \"{}\"\ndata_dir = \"state/{party}\"\n\
             store_key = \"keys/{party}.key\"\n\
             metrics_listen = \"127.0.0.1:0\"\noperators = [\"modeller\"]\n\n\
             [tls]\ncert = \"certs/{party}/node.crt\"\nkey = \"certs/{party}/node.key\"\n\
             ca = \"certs/{party}/ca.crt\"\n\n[federation]\n{}\n",
            self.listen[party], self.federation
        );
        for other in PARTIES.iter().filter(|p| **p != party) {
            text.push_str(&format!(
                "[[peers]]\nname = \"{other}\"\naddress = \"{}\"\n\n",
                self.reach[*other]
            ));
        }
        if party == "bank" {
            let models: Vec<String> = self
                .scoring_models
                .iter()
                .map(|m| format!("{m:?}"))
                .collect();
            text.push_str(&format!(
                "[[scoring.clients]]\nname = \"platform\"\nmodels = [{}]\ncalls_per_second = {:?}\nburst = {:?}\n\n",
                models.join(", "),
                self.scoring_rate,
                self.scoring_rate
            ));
        }
        text.push_str(match party {
            "bank" => {
                "[datasets.bank]\npath = \"bank.csv\"\nid_column = \"id\"\nlabel_column = \"y\"\n"
            }
            "tax" => {
                "[datasets.tax]\npath = \"tax.csv\"\nid_column = \"id\"\n\n\
                 [[policy]]\npeer = \"bank\"\njobs = [\"train\", \"score\", \"binning\"]\ndatasets = [\"tax\"]\n"
            }
            _ => {
                // The utility company names the ids it lacks; the tax bureau keeps the default.
                "[datasets.utilities]\npath = \"utilities.csv\"\nid_column = \"id\"\n\n\
                 [datasets.meters]\npath = \"meters.csv\"\nid_column = \"id\"\n\n\
                 [[policy]]\npeer = \"bank\"\njobs = [\"train\", \"score\", \"binning\"]\ndatasets = [\"utilities\"]\n\
                 name_missing_ids = true\n"
            }
        });
        if party != "bank" {
            text.push_str(&self.policy);
        }
        text
    }

    /// Writes `<party>.toml` for every party and starts the nodes (on the current runtime).
    pub async fn start(self) -> Result<LocalFederation, NodeError> {
        let mut nodes = BTreeMap::new();
        for party in PARTIES {
            let path = self.dir.join(format!("{party}.toml"));
            std::fs::write(&path, self.config(party)).map_err(io(&path))?;
            nodes.insert(
                party.to_string(),
                node::start(NodeConfig::load(&path)?).await?,
            );
        }
        Ok(LocalFederation {
            dir: self.dir,
            nodes,
        })
    }
}

impl LocalFederation {
    /// `--node` argument of a party: NAME@ADDRESS.
    pub fn node_arg(&self, party: &str) -> String {
        format!("{party}@{}", self.nodes[party].address)
    }

    /// The platform's identity directory (a scoring client of the bank).
    pub fn platform(&self) -> PathBuf {
        self.dir.join("certs/platform")
    }

    /// The modeller's identity directory (`--identity`).
    pub fn modeller(&self) -> PathBuf {
        self.dir.join("certs/modeller")
    }

    /// Stops every node.
    pub async fn stop(self) -> Result<(), NodeError> {
        for node in self.nodes.into_values() {
            node.shutdown().await?;
        }
        Ok(())
    }
}

fn write_datasets(dir: &Path, data: &Path) -> Result<(), NodeError> {
    let read = |name: &str| {
        let path = data.join(name);
        std::fs::read_to_string(&path).map_err(io(&path))
    };
    let guest = read("default_credit_hetero_guest.csv")?;
    let host = read("default_credit_hetero_host.csv")?;
    let keep = |text: &str, every: usize| -> Vec<String> {
        text.lines()
            .enumerate()
            .filter(|(i, _)| *i == 0 || i % every != 0)
            .map(|(_, l)| l.to_owned())
            .collect()
    };
    let width = host
        .lines()
        .next()
        .unwrap_or("")
        .split(',')
        .count()
        .saturating_sub(1);
    let half = width.div_ceil(2);
    let columns = |line: &String, from: usize, to: usize| -> String {
        let cells: Vec<&str> = line.split(',').collect();
        std::iter::once(cells[0])
            .chain(cells.iter().skip(1 + from).take(to - from).copied())
            .collect::<Vec<_>>()
            .join(",")
    };
    let tax: Vec<String> = keep(&host, 71)
        .iter()
        .map(|l| columns(l, 0, half))
        .collect();
    let mut utilities: Vec<String> = keep(&host, 97)
        .iter()
        .map(|l| columns(l, half, width))
        .collect();
    utilities[1..].reverse();
    let files = [
        ("bank.csv", keep(&guest, 53)),
        ("tax.csv", tax),
        ("utilities.csv", utilities.clone()),
        ("meters.csv", utilities),
    ];
    for (name, lines) in files {
        let path = dir.join(name);
        std::fs::write(&path, lines.join("\n") + "\n").map_err(io(&path))?;
    }
    Ok(())
}
