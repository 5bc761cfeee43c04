//! Start-up shared by every node test: three real nodes (bank as guest, tax bureau and
//! utility company as hosts) in one process, over loopback gRPC with mutual TLS and
//! certificates from `unseen cert`; the modeller's side is the real `unseen` binary.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use fedlearn::{GuestJob, HostJob, Missing, Reading, Table, TrainConfig};
use node::proto::federation_client::FederationClient;
use node::proto::JobProposal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::Channel;
use unseen::local::{LocalFederation, Plan, HOSTS};

pub(crate) struct Federation {
    pub(crate) inner: LocalFederation,
    pub(crate) dir: PathBuf,
    pub(crate) proxy_drops: Arc<AtomicUsize>,
}

/// A TCP relay to `target` that cuts its first connection once `cut_after` bytes went
/// through it (the bytes already sent still arrive; the rest of that call fails).
async fn flaky_proxy(target: SocketAddr, cut_after: usize, drops: Arc<AtomicUsize>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let armed = Arc::new(AtomicBool::new(true));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(target).await else {
                continue;
            };
            let cut = armed.swap(false, Ordering::SeqCst);
            let drops = drops.clone();
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let upstream = async {
                    let mut buf = vec![0u8; 16384];
                    let mut sent = 0;
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        sent += n;
                        if cut && sent >= cut_after {
                            drops.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                };
                let downstream = async {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                };
                tokio::select! {
                    _ = upstream => {}
                    _ = downstream => {}
                }
            });
        }
    });
    address
}

impl Federation {
    /// Three nodes; the others reach the tax bureau through a relay that drops one
    /// connection when `drop_once` is set.
    pub(crate) async fn start(name: &str, drop_once: bool) -> Federation {
        Federation::start_with(name, drop_once, "").await
    }

    /// [`Federation::start`] with extra lines in each host's policy rule for the bank.
    pub(crate) async fn start_with(name: &str, drop_once: bool, policy: &str) -> Federation {
        // The plan picks free loopback ports before the nodes bind them; a test running
        // beside this one can take a port in between. Such a start is tried again on fresh
        // ports (in a fresh directory); any other failure fails the test.
        for attempt in 0.. {
            let dir = std::env::temp_dir()
                .join(format!("unseen-{name}-{}-{attempt}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
            let mut plan = Plan::prepare(&dir, &data).unwrap();
            plan.federation =
                // 4 MiB of unread messages per job: PSI fits, the encrypted columns do not, so
                // training runs with senders held back. PSI runs in parts of about 4096 bank
                // ids (8 parts), so every job here aligns its rows part by part.
                "receive_timeout_secs = 120\nbackoff_ms = 100\nretries = 3\nanchor_secs = 1\n\
                 max_buffered_bytes = 4194304\npsi_partition_rows = 4096\n"
                    .into();
            plan.policy = policy.into();
            let proxy_drops = Arc::new(AtomicUsize::new(0));
            if drop_once {
                let proxy = flaky_proxy(plan.listen["tax"], 300_000, proxy_drops.clone()).await;
                plan.reach.insert("tax".into(), proxy);
            }
            match plan.start().await {
                Ok(inner) => {
                    return Federation {
                        inner,
                        dir,
                        proxy_drops,
                    }
                }
                Err(e) if attempt < 3 && e.to_string().contains("Address already in use") => {}
                Err(e) => panic!("starting the federation: {e}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    pub(crate) fn node_arg(&self, party: &str) -> String {
        self.inner.node_arg(party)
    }

    pub(crate) fn state(&self, party: &str) -> &node::NodeState {
        &self.inner.nodes[party].state
    }

    /// Runs the `unseen` binary as the modeller; returns (success, stdout, stderr).
    pub(crate) async fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_unseen"));
        command
            .args(args)
            .env("UNSEEN_IDENTITY", self.inner.modeller())
            .env("UNSEEN_NODE", self.node_arg("bank"));
        let output = tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// A channel to `party`'s node presenting the certificate in `certs/<identity>`.
    pub(crate) async fn channel_as(&self, party: &str, identity: &str) -> Channel {
        let certs = self.dir.join("certs").join(identity);
        node::cli::channel(&self.node_arg(party), &certs)
            .await
            .unwrap()
    }

    /// A federation client of `party`'s node, calling with the certificate of `identity`.
    pub(crate) async fn peer_client(
        &self,
        party: &str,
        identity: &str,
    ) -> FederationClient<Channel> {
        FederationClient::new(self.channel_as(party, identity).await)
    }

    /// The first `count` ids of the bank's CSV.
    pub(crate) fn bank_ids(&self, count: usize) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("bank.csv"))
            .unwrap()
            .lines()
            .skip(1)
            .take(count)
            .map(|l| l.split(',').next().unwrap().to_string())
            .collect()
    }

    /// `unseen score` of `ids` with model `model` as the platform, with `extra` flags.
    pub(crate) async fn score(
        &self,
        model: &str,
        extra: &[&str],
        ids: &[String],
    ) -> (bool, String, String) {
        let platform = self.inner.platform().display().to_string();
        let mut args = vec!["score"];
        args.extend_from_slice(extra);
        args.extend(["--model", model, "--identity", &platform]);
        args.extend(ids.iter().map(String::as_str));
        self.cli(&args).await
    }

    pub(crate) fn spec(&self, name: &str, text: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    pub(crate) async fn stop(self) {
        self.inner.stop().await.unwrap();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Loads dataset "tax" of `config` as the node's jobs and scoring do (on a blocking thread),
/// every column read as a number.
pub(crate) async fn load_tax(config: node::config::NodeConfig) -> Result<fedlearn::Table, String> {
    tokio::task::spawn_blocking(move || {
        node::internal::load_table(&config, "tax", false, &|_| fedlearn::Reading::Number)
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap()
}

/// One epoch trained on the tax bureau's CSV (model `sme-csv`), then its dataset moved to
/// `source` (the `[datasets.tax]` lines replacing `path = "tax.csv"`; the configuration read
/// again, no restart) and the same job trained again (`sme-credit`): the tax bureau's model
/// parts must be equal, bit for bit.
pub(crate) async fn trains_as_from_csv(federation: &Federation, source: &str) {
    let one_epoch = TRAIN.replace("max_epochs = 8", "max_epochs = 1");
    let spec = federation.spec("csv.toml", &one_epoch.replace("sme-credit", "sme-csv"));
    let (ok, _, stderr) = federation.cli(&["train", &spec]).await;
    assert!(ok, "{stderr}");
    let tax_toml = federation.dir.join("tax.toml");
    let config = std::fs::read_to_string(&tax_toml).unwrap();
    let csv_source = "[datasets.tax]\npath = \"tax.csv\"\n";
    assert!(config.contains(csv_source), "{config}");
    std::fs::write(&tax_toml, config.replace(csv_source, source)).unwrap();
    let tax = federation.node_arg("tax");
    let (ok, out, err) = federation.cli(&["config", "reload", "--node", &tax]).await;
    assert!(ok && out.contains("in force: datasets"), "{out}{err}");
    let spec = federation.spec("moved.toml", &one_epoch);
    let (ok, _, stderr) = federation.cli(&["train", &spec]).await;
    assert!(ok, "{stderr}");
    let part = |model: &str| {
        let record = federation.state("tax").store.model(model).unwrap().unwrap();
        let mut part: serde_json::Value = serde_json::from_str(&record.part_json).unwrap();
        part["model_id"] = serde_json::Value::Null;
        part
    };
    assert_close(&part("sme-csv@1"), &part("sme-credit@1"), "tax's part");
}

/// Two JSON values of the same shape whose numbers differ by less than 10^-4: two trainings
/// on the same rows draw fresh shares, whose truncations differ by units of 2^-20.
pub(crate) fn assert_close(a: &serde_json::Value, b: &serde_json::Value, what: &str) {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!((x - y).abs() < 1e-4, "{what}: {x} vs {y}");
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{what}: lengths");
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                assert_close(x, y, &format!("{what}[{i}]"));
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(
                x.keys().collect::<Vec<_>>(),
                y.keys().collect::<Vec<_>>(),
                "{what}: keys"
            );
            for (key, x) in x {
                assert_close(x, &y[key], &format!("{what}.{key}"));
            }
        }
        (x, y) => assert_eq!(x, y, "{what}"),
    }
}

/// A training proposal of the bank to the tax bureau alone, as the bank's node sends it
/// (training version 1 of the model `name`).
pub(crate) fn proposal(job_id: String, name: &str) -> JobProposal {
    JobProposal {
        version: node::FEDERATION_VERSION,
        job_id,
        kind: "train".into(),
        guest: "bank".into(),
        dataset: "tax".into(),
        hosts: vec!["tax".into()],
        model_id: format!("{name}@1"),
        guest_features: 13,
        prep: String::new(),
        attempt: 0,
    }
}

pub(crate) const TRAIN: &str = r#"
model_id = "sme-credit"
dataset = "bank"

[[hosts]]
party = "tax"
dataset = "tax"

[[hosts]]
party = "utilities"
dataset = "utilities"

[train]
max_epochs = 8
seed = 11
"#;

/// The same job in fedlearn's in-process simulator, on the intersection computed in the
/// clear (the test may; the nodes may not).
pub(crate) fn simulated_auc(dir: &Path, config: &TrainConfig) -> f64 {
    let load = |name: &str, label: Option<&str>| {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        Table::parse_csv(name, &text, "id", label, Missing::Reject, &|_| {
            Reading::Number
        })
        .unwrap()
    };
    let bank = load("bank.csv", Some("y"));
    let hosts = [load("tax.csv", None), load("utilities.csv", None)];
    let index: Vec<HashMap<&str, usize>> = hosts
        .iter()
        .map(|t| t.ids().iter().enumerate().map(|(i, id)| (id, i)).collect())
        .collect();
    let rows: Vec<usize> = (0..bank.rows())
        .filter(|&r| index.iter().all(|m| m.contains_key(&bank.ids()[r])))
        .collect();
    let host_jobs = hosts
        .iter()
        .zip(&index)
        .zip(HOSTS)
        .map(|((table, map), party)| HostJob {
            party: party.into(),
            guest: "bank".into(),
            table: table
                .select_rows(
                    &rows
                        .iter()
                        .map(|&r| map[&bank.ids()[r]])
                        .collect::<Vec<_>>(),
                )
                .unwrap(),
            prep: Default::default(),
            checkpoints: Vec::new(),
        })
        .collect();
    let guest = GuestJob {
        party: "bank".into(),
        model_id: "reference".into(),
        table: bank.select_rows(&rows).unwrap(),
        hosts: HOSTS.map(String::from).to_vec(),
        config: config.clone(),
        prep: Default::default(),
        resume: None,
    };
    let run = fedlearn::simulate(guest, host_jobs, false, &mut |_| {}).unwrap();
    run.guest.evaluation.metrics.auc
}

/// A node's audit records (read in process; the CLI path is exercised on the bank).
pub(crate) async fn audit_lines(
    federation: &Federation,
    party: &str,
    job: &str,
) -> Vec<serde_json::Value> {
    node::audit::records(&federation.state(party).store)
        .unwrap()
        .into_iter()
        .filter(|r| job.is_empty() || r.job_id == job)
        .map(|r| serde_json::to_value(r).unwrap())
        .collect()
}
