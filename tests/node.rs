//! Three real nodes (bank as guest, tax bureau and utility company as hosts) in one process,
//! over loopback gRPC with mutual TLS and certificates from `unseen cert`; the modeller's
//! side is the real `unseen` binary.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use fedlearn::{GuestJob, HostJob, Missing, Table, TrainConfig};
use node::config::NodeConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use unseen::local::{LocalFederation, Plan, HOSTS};

struct Federation {
    inner: LocalFederation,
    dir: PathBuf,
    proxy_drops: Arc<AtomicUsize>,
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
    async fn start(name: &str, drop_once: bool) -> Federation {
        Federation::start_with(name, drop_once, "").await
    }

    /// [`Federation::start`] with extra lines in each host's policy rule for the bank.
    async fn start_with(name: &str, drop_once: bool, policy: &str) -> Federation {
        let dir = std::env::temp_dir().join(format!("unseen-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
        let mut plan = Plan::prepare(&dir, &data).unwrap();
        plan.federation = "receive_timeout_secs = 120\nbackoff_ms = 100\nretries = 3\n".into();
        plan.policy = policy.into();
        let proxy_drops = Arc::new(AtomicUsize::new(0));
        if drop_once {
            let proxy = flaky_proxy(plan.listen["tax"], 300_000, proxy_drops.clone()).await;
            plan.reach.insert("tax".into(), proxy);
        }
        Federation {
            inner: plan.start().await.unwrap(),
            dir,
            proxy_drops,
        }
    }

    fn node_arg(&self, party: &str) -> String {
        self.inner.node_arg(party)
    }

    fn state(&self, party: &str) -> &node::NodeState {
        &self.inner.nodes[party].state
    }

    /// Runs the `unseen` binary as the modeller; returns (success, stdout, stderr).
    async fn cli(&self, args: &[&str]) -> (bool, String, String) {
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

    fn spec(&self, name: &str, text: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    async fn stop(self) {
        self.inner.stop().await.unwrap();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const TRAIN: &str = r#"
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
batch_size = "full"
learning_rate = 0.05
seed = 11
"#;

/// The same job in fedlearn's in-process simulator, on the intersection computed in the
/// clear (the test may; the nodes may not).
fn simulated_auc(dir: &Path, config: &TrainConfig) -> f64 {
    let load = |name: &str, label: Option<&str>| {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        Table::parse_csv(name, &text, "id", label, Missing::Reject).unwrap()
    };
    let bank = load("bank.csv", Some("y"));
    let hosts = [load("tax.csv", None), load("utilities.csv", None)];
    let index: Vec<HashMap<&str, usize>> = hosts
        .iter()
        .map(|t| {
            t.ids()
                .iter()
                .enumerate()
                .map(|(i, id)| (id.as_str(), i))
                .collect()
        })
        .collect();
    let rows: Vec<usize> = (0..bank.rows())
        .filter(|&r| index.iter().all(|m| m.contains_key(bank.ids()[r].as_str())))
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
                        .map(|&r| map[bank.ids()[r].as_str()])
                        .collect::<Vec<_>>(),
                )
                .unwrap(),
        })
        .collect();
    let guest = GuestJob {
        party: "bank".into(),
        model_id: "reference".into(),
        table: bank.select_rows(&rows).unwrap(),
        hosts: HOSTS.map(String::from).to_vec(),
        config: config.clone(),
    };
    let run = fedlearn::simulate(guest, host_jobs, false, &mut |_| {}).unwrap();
    run.guest.evaluation.metrics.auc
}

/// A node's audit records (read in process; the CLI path is exercised on the bank).
async fn audit_lines(federation: &Federation, party: &str, job: &str) -> Vec<serde_json::Value> {
    node::audit::records(&federation.state(party).store)
        .unwrap()
        .into_iter()
        .filter(|r| job.is_empty() || r.job_id == job)
        .map(|r| serde_json::to_value(r).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_train_over_mutual_tls_like_the_simulator_despite_a_dropped_connection() {
    let mut federation = Federation::start("train", true).await;
    let spec = federation.spec("job.toml", TRAIN);
    let (ok, stdout, stderr) = federation.cli(&["train", "--json", &spec]).await;
    assert!(ok, "unseen train failed:\n{stderr}\n{stdout}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let status = lines.last().unwrap();
    assert_eq!(status["state"], "succeeded", "{status}");
    assert!(lines
        .iter()
        .any(|e| e["state"] == "psi" && e["psi_progress"].as_f64() > Some(0.0)));
    // One event per epoch with its aggregate losses, then one with the final model's metrics
    // (no validation split: on the training rows).
    assert_eq!(
        lines
            .iter()
            .filter(|e| e["state"] == "training" && e["train_loss"].as_f64().is_some())
            .count(),
        8
    );
    assert_eq!(
        lines
            .iter()
            .filter(|e| e["state"] == "training" && e["train"]["auc"].as_f64().is_some())
            .count(),
        1
    );

    // PSI found the rows all three hold.
    let expected_rows = unseen::local::aligned_rows_expected();
    assert_eq!(
        status["aligned_rows"].as_u64().unwrap() as usize,
        expected_rows
    );

    // The connection was cut mid-job, the bank retried, and the retry changed nothing.
    assert_eq!(federation.proxy_drops.load(Ordering::SeqCst), 1);
    let bank = federation.state("bank");
    let errors = bank.metrics.render();
    assert!(
        errors.contains("unseen_peer_call_errors_total{peer=\"tax\""),
        "{errors}"
    );

    let auc = status["train"]["auc"].as_f64().unwrap();
    let config = TrainConfig {
        // The full batch: PSI hands the rows to training in a random order, so only then
        // does the simulator on the bank's file order see the same updates.
        max_epochs: 8,
        batch_size: None,
        learning_rate: 0.05,
        seed: 11,
        ..TrainConfig::default()
    };
    config.validate().unwrap();
    let reference = simulated_auc(&federation.dir, &config);
    assert!(
        (auc - reference).abs() < 1e-3,
        "nodes {auc} vs simulator {reference}"
    );
    assert!(auc > 0.7, "{auc}");

    // Every party stored its own part, and only its own features.
    for (party, features) in [("bank", 13), ("tax", 5), ("utilities", 5)] {
        let model = federation.inner.nodes[party]
            .state
            .store
            .model("sme-credit")
            .unwrap()
            .unwrap();
        let part = fedlearn::ModelPart::from_json(party, &model.part_json).unwrap();
        assert_eq!(part.party, party);
        assert_eq!(part.features.len(), features, "{party}");
    }
    let (ok, shown, _) = federation.cli(&["model", "show", "sme-credit"]).await;
    assert!(ok && shown.contains("\"history\""), "{shown}");

    // Scoring: the platform gets p = σ(z_bank + z_tax + z_utilities) — equal to the
    // plaintext joint probability of the stored parts — and per-id errors for ids a party
    // lacks; the hosts' replies are masked, and the masks cancel only in the sum.
    let guest_ids: Vec<String> = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/default_credit_hetero_guest.csv"),
    )
    .unwrap()
    .lines()
    .skip(1)
    .map(|l| l.split(',').next().unwrap().to_string())
    .collect();
    // Line i of the file is guest_ids[i - 1]; the bank lacks every 53rd line, tax every 71st.
    let known: Vec<String> = [1usize, 2, 3, 500, 29_999]
        .iter()
        .map(|&i| guest_ids[i - 1].clone())
        .collect();
    let (no_bank, no_tax) = (guest_ids[53 - 1].clone(), guest_ids[71 - 1].clone());
    let mut ids = known.clone();
    ids.extend([no_bank.clone(), no_tax.clone(), "nobody".to_string()]);
    let mut args = vec!["score", "--json", "--model", "sme-credit", "--identity"];
    let platform = federation.inner.platform().display().to_string();
    args.push(&platform);
    args.extend(ids.iter().map(String::as_str));
    let (ok, scored, stderr) = federation.cli(&args).await;
    assert!(ok, "{stderr}");
    let scored: serde_json::Value = serde_json::from_str(&scored).unwrap();
    let parts: Vec<fedlearn::ModelPart> = ["bank", "tax", "utilities"]
        .iter()
        .map(|p| {
            let record = federation
                .state(p)
                .store
                .model("sme-credit")
                .unwrap()
                .unwrap();
            fedlearn::ModelPart::from_json(p, &record.part_json).unwrap()
        })
        .collect();
    let tables: Vec<Table> = ["bank.csv", "tax.csv", "utilities.csv"]
        .iter()
        .enumerate()
        .map(|(k, file)| {
            let text = std::fs::read_to_string(federation.dir.join(file)).unwrap();
            let label = (k == 0).then_some("y");
            Table::parse_csv(file, &text, "id", label, Missing::Reject).unwrap()
        })
        .collect();
    // Party k's partial score of one id, in the clear (the test may; the nodes may not).
    let partial = |k: usize, id: &str| -> f64 {
        let row = tables[k].ids().iter().position(|x| x == id).unwrap();
        parts[k]
            .partial_scores(&tables[k].select_rows(&[row]).unwrap())
            .unwrap()[0]
    };
    for (i, id) in known.iter().enumerate() {
        let z = partial(0, id) + partial(1, id) + partial(2, id);
        let expected = fedlearn::sigmoid(z);
        let got = &scored[i];
        assert_eq!(got["id"], id.as_str());
        assert!(
            (got["probability"].as_f64().unwrap() - expected).abs() < 1e-6,
            "{got} vs {expected}"
        );
        let odds = (1.0 - expected) / expected;
        let points = 600.0 + 20.0 / std::f64::consts::LN_2 * (odds / 50.0).ln();
        assert!(
            (got["points"].as_f64().unwrap() - points).abs() < 1e-3,
            "{got}"
        );
        let band = if expected >= 0.5 {
            "red"
        } else if expected >= 0.2 {
            "yellow"
        } else {
            "blue"
        };
        assert_eq!(got["band"], band);
    }
    assert!(
        scored[5]["error"]
            .as_str()
            .unwrap()
            .contains("bank: unknown id"),
        "{scored}"
    );
    assert!(
        scored[6]["error"]
            .as_str()
            .unwrap()
            .contains("tax: cannot score"),
        "{scored}"
    );
    assert!(
        scored[7]["error"].as_str().unwrap().contains("unknown id"),
        "{scored}"
    );

    // The Python client example gets the same scores (when python3 has grpcio and grpcio-tools).
    let python = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .output();
    if python.is_ok_and(|o| o.status.success()) {
        let mut command = Command::new("python3");
        command
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python/score.py"))
            .args([
                "--node",
                &federation.node_arg("bank"),
                "--identity",
                &platform,
                "--model",
                "sme-credit",
            ])
            .args(&ids);
        let output = tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let from_python: Vec<serde_json::Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(from_python.len(), ids.len());
        for (a, b) in from_python.iter().zip(scored.as_array().unwrap()) {
            assert_eq!(a["id"], b["id"]);
            assert_eq!(a["band"], b["band"]);
            if let Some(p) = b["probability"].as_f64() {
                assert!((a["probability"].as_f64().unwrap() - p).abs() < 1e-12);
            } else {
                assert_eq!(a["error"], b["error"]);
            }
        }
    } else {
        println!("notice: skipped the Python client example: python3 with grpcio and grpcio-tools is not available");
    }

    // What the guest receives from each host, asked directly with the bank's certificate.
    let mut masked = Vec::new();
    for (k, host) in HOSTS.iter().enumerate() {
        let channel = node::cli::channel(
            &federation.node_arg(host),
            &federation.dir.join("certs/bank"),
        )
        .await
        .unwrap();
        let reply = node::proto::federation_client::FederationClient::new(channel)
            .partial_scores(node::proto::PartialScoresRequest {
                version: node::FEDERATION_VERSION,
                guest: "bank".into(),
                model_id: "sme-credit".into(),
                ids: known.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        for (i, id) in known.iter().enumerate() {
            let plain = (partial(k + 1, id) * 4_294_967_296.0).round() as i64 as u64;
            assert_ne!(
                reply.masked[i], plain,
                "{host} sent its partial score of {id} unmasked"
            );
        }
        masked.push(reply.masked);
    }
    for (i, id) in known.iter().enumerate() {
        let sum = masked[0][i].wrapping_add(masked[1][i]) as i64 as f64 / 4_294_967_296.0;
        let plain = partial(1, id) + partial(2, id);
        assert!((sum - plain).abs() < 1e-6, "{id}: {sum} vs {plain}");
    }
    // The modeller is not a scoring client.
    let mut args = vec!["score", "--model", "sme-credit"];
    args.push(&known[0]);
    let (ok, _, stderr) = federation.cli(&args).await;
    assert!(
        !ok && stderr.contains("names no scoring client"),
        "{stderr}"
    );

    // The audit trail holds the job, its message kinds and the scoring call, and verifies.
    let (ok, out, stderr) = federation.cli(&["audit", "verify"]).await;
    assert!(ok && out.contains("intact"), "{out}{stderr}");
    let job_id = status["job_id"].as_str().unwrap();
    let (ok, out, _) = federation
        .cli(&["audit", "show", "--json", "--job", job_id])
        .await;
    assert!(ok);
    for needle in [
        "job.submitted",
        "job.proposed",
        "job.accepted_by",
        "fedlearn.product",
        "psi.points",
        "job.ended",
    ] {
        assert!(out.contains(needle), "{needle} missing from\n{out}");
    }
    let events: Vec<serde_json::Value> = audit_lines(&federation, "tax", "").await;
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "score.partial" && e["detail"]["ids"] == 5),
        "{events:?}"
    );
    let bank_events = audit_lines(&federation, "bank", "").await;
    assert!(bank_events
        .iter()
        .any(|e| e["event"] == "score" && e["peer"] == "platform" && e["detail"]["ids"] == 8));

    // Metrics endpoint.
    let address = federation.inner.nodes["bank"].metrics_address.unwrap();
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    assert!(
        body.contains("unseen_jobs_total{role=\"guest\",state=\"succeeded\"} 1"),
        "{body}"
    );

    // With a host down, scoring fails as unavailable (worth retrying), naming the host.
    let utilities = federation.inner.nodes.remove("utilities").unwrap();
    utilities.shutdown().await.unwrap();
    let channel = node::cli::channel(&federation.node_arg("bank"), &federation.inner.platform())
        .await
        .unwrap();
    let error = node::proto::scoring_client::ScoringClient::new(channel)
        .score(node::proto::ScoreRequest {
            model_id: "sme-credit".into(),
            ids: known[..1].to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::Unavailable, "{error}");
    assert!(
        error
            .message()
            .contains("peer utilities: partial_scores failed"),
        "{error}"
    );
    federation.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_clear_to_the_modeller_and_logged_by_the_node() {
    let mut federation = Federation::start("refusals", false).await;

    // A host whose policy does not share the dataset refuses; the CLI says why.
    let forbidden = federation.spec(
        "forbidden.toml",
        &TRAIN.replace("dataset = \"utilities\"", "dataset = \"meters\""),
    );
    let (ok, _, stderr) = federation.cli(&["train", &forbidden]).await;
    assert!(!ok);
    assert!(
        stderr.contains("utilities")
            && stderr.contains("does not let bank run train jobs on dataset \"meters\""),
        "{stderr}"
    );
    assert!(federation.inner.nodes["utilities"]
        .state
        .metrics
        .render()
        .contains("unseen_refused_total{reason=\"policy\"} 1"));

    // A malformed spec and an unknown dataset are refused before anything starts.
    let malformed = federation.spec("malformed.toml", &TRAIN.replace("max_epochs", "max_epoch"));
    let (ok, _, stderr) = federation.cli(&["train", &malformed]).await;
    assert!(
        !ok && stderr.contains("max_epoch") && stderr.contains("malformed.toml"),
        "{stderr}"
    );
    let missing = federation.spec(
        "missing.toml",
        &TRAIN.replacen("dataset = \"bank\"", "dataset = \"loans\"", 1),
    );
    let (ok, _, stderr) = federation.cli(&["job", "submit", &missing]).await;
    assert!(
        !ok && stderr.contains("\"loans\" is not a dataset of bank"),
        "{stderr}"
    );

    // An operator certificate from another CA is refused in the handshake and counted.
    let rogue = federation.dir.join("rogue");
    node::certs::init(&rogue, &["modeller".to_string()]).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_unseen"));
    command
        .args(["job", "list", "--identity"])
        .arg(rogue.join("modeller"))
        .args(["--node", &federation.node_arg("bank")]);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(!output.status.success());
    let text = federation.state("bank").metrics.render();
    assert!(
        text.contains("unseen_refused_total{reason=\"tls\"}"),
        "{text}"
    );

    // A certificate from the right CA but for another name cannot speak for the bank.
    node::certs::issue(&federation.dir.join("certs"), &["mallory".to_string()]).unwrap();
    let channel = node::cli::channel(
        &federation.node_arg("tax"),
        &federation.dir.join("certs/mallory"),
    )
    .await
    .unwrap();
    let mut client = node::proto::federation_client::FederationClient::new(channel);
    let error = client
        .propose(node::proto::JobProposal {
            version: node::FEDERATION_VERSION,
            job_id: "0".repeat(32),
            kind: "train".into(),
            guest: "bank".into(),
            dataset: "tax".into(),
            hosts: vec!["tax".into()],
            model_id: "stolen".into(),
            batch_rows: 4096,
            guest_features: 13,
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::PermissionDenied, "{error}");
    assert!(
        error.message().contains("not valid for \"bank\""),
        "{error}"
    );
    // Nor use the jobs service, which is for operators.
    let (ok, _, _) = federation.cli(&["job", "list"]).await;
    assert!(ok, "the modeller may list jobs");
    let channel = node::cli::channel(
        &federation.node_arg("bank"),
        &federation.dir.join("certs/mallory"),
    )
    .await
    .unwrap();
    let error = node::proto::jobs_client::JobsClient::new(channel)
        .list(node::proto::ListJobsRequest {})
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::PermissionDenied);

    // The refused job is on record as failed, with the host's reason.
    let (ok, listed, _) = federation.cli(&["job", "list", "--json"]).await;
    assert!(ok);
    let jobs: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(jobs.as_array().unwrap().len(), 1, "{jobs}");
    assert_eq!(jobs[0]["state"], "failed");
    assert!(jobs[0]["error"].as_str().unwrap().contains("meters"));

    // gRPC health answers for both services (grpcurl's health check uses this).
    let channel = node::cli::channel(&federation.node_arg("bank"), &federation.inner.modeller())
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["unseen.v1.Federation", "unseen.v1.Jobs"] {
        let reply = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            reply.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }

    // A running job cancelled by the modeller stops on every node.
    let long = federation.spec(
        "long.toml",
        &TRAIN
            .replace("max_epochs = 8", "max_epochs = 500")
            .replace("sme-credit", "long"),
    );
    let (ok, job, stderr) = federation.cli(&["job", "submit", &long]).await;
    assert!(ok, "{stderr}");
    let job = job.trim().to_string();
    let bank = federation.state("bank");
    while bank
        .job(&job)
        .unwrap()
        .unwrap()
        .events
        .iter()
        .all(|e| e.epoch == 0)
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (ok, _, stderr) = federation.cli(&["job", "cancel", &job]).await;
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = federation.cli(&["job", "watch", &job]).await;
    assert!(!ok && stderr.contains("cancelled"), "{stderr}");
    for host in HOSTS {
        let state = federation.state(host);
        let record = loop {
            let record = state.job(&job).unwrap().unwrap();
            if record.is_final() {
                break record;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        assert_eq!(record.state, "failed", "{host}");
        assert!(record.error.contains("bank"), "{host}: {}", record.error);
        assert!(state.store.model("long").unwrap().is_none());
    }

    // A proposal retried after a lost reply is accepted again; a clash of job ids is not.
    // An abort from the guest then ends the host's job.
    let channel = node::cli::channel(
        &federation.node_arg("tax"),
        &federation.dir.join("certs/bank"),
    )
    .await
    .unwrap();
    let mut as_bank = node::proto::federation_client::FederationClient::new(channel);
    let proposal = node::proto::JobProposal {
        version: node::FEDERATION_VERSION,
        job_id: "ab".repeat(16),
        kind: "train".into(),
        guest: "bank".into(),
        dataset: "tax".into(),
        hosts: vec!["tax".into()],
        model_id: "retried".into(),
        batch_rows: 4096,
        guest_features: 13,
    };
    for _ in 0..2 {
        let reply = as_bank
            .propose(proposal.clone())
            .await
            .unwrap()
            .into_inner();
        assert!(reply.accepted, "{}", reply.reason);
    }
    // A guest cannot be one of the hosts (it would receive the hosts' pairwise masks), nor
    // propose a kind other than training.
    for (bad, why) in [
        (
            node::proto::JobProposal {
                job_id: "cd".repeat(16),
                hosts: vec!["tax".into(), "bank".into()],
                ..proposal.clone()
            },
            "distinct parties other than the guest",
        ),
        (
            node::proto::JobProposal {
                job_id: "ef".repeat(16),
                kind: "score".into(),
                ..proposal.clone()
            },
            "not a job kind a guest can propose",
        ),
    ] {
        let reply = as_bank.propose(bad).await.unwrap().into_inner();
        assert!(
            !reply.accepted && reply.reason.contains(why),
            "{}",
            reply.reason
        );
    }
    let clash = node::proto::JobProposal {
        model_id: "other".into(),
        ..proposal.clone()
    };
    let reply = as_bank.propose(clash).await.unwrap().into_inner();
    assert!(
        !reply.accepted && reply.reason.contains("already known"),
        "{}",
        reply.reason
    );
    let abort = node::proto::Chunk {
        version: node::FEDERATION_VERSION,
        job_id: proposal.job_id.clone(),
        sender: "bank".into(),
        seq: 0,
        kind: "abort".into(),
        index: 0,
        count: 1,
        total_bytes: 4,
        data: b"test".to_vec(),
    };
    as_bank.deliver(tokio_stream::iter([abort])).await.unwrap();
    let tax = federation.state("tax");
    let record = loop {
        let record = tax.job(&proposal.job_id).unwrap().unwrap();
        if record.is_final() {
            break record;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(
        record.error.contains("bank stopped the job: test"),
        "{}",
        record.error
    );

    // A host that is down fails the job with a message naming it, after the retries.
    let utilities = federation.inner.nodes.remove("utilities").unwrap();
    utilities.shutdown().await.unwrap();
    let again = federation.spec("again.toml", &TRAIN.replace("sme-credit", "again"));
    let (ok, _, stderr) = federation.cli(&["train", &again]).await;
    assert!(!ok);
    assert!(
        stderr.contains("peer utilities: propose failed (after 4 attempts)"),
        "{stderr}"
    );
    federation.stop().await;
}

#[test]
fn configuration_errors_name_the_key_or_file() {
    let dir = std::env::temp_dir().join(format!("unseen-config-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    node::certs::init(&dir.join("certs"), &["bank".to_string()]).unwrap();
    let base = "party = \"bank\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"state\"\n[tls]\ncert = \"certs/bank/node.crt\"\nkey = \"certs/bank/node.key\"\nca = \"certs/bank/ca.crt\"\n";
    let path = dir.join("node.toml");
    let cases = [
        (format!("{base}colour = \"blue\"\n"), "colour"),
        (base.replace("node.key", "gone.key"), "tls.key"),
        (
            format!("{base}[datasets.bank]\npath = \"nowhere.csv\"\nid_column = \"id\"\n"),
            "datasets.bank.path",
        ),
        (
            format!("{base}[[policy]]\npeer = \"tax\"\njobs = [\"train\"]\ndatasets = []\n"),
            "policy[0].peer",
        ),
        (
            base.replace(
                "[tls]",
                "operators = [\"ops\"]\n[[scoring.clients]]\nname = \"ops\"\nmodels = []\n[tls]",
            ),
            "both an operator and a scoring client",
        ),
    ];
    for (text, key) in cases {
        std::fs::write(&path, text).unwrap();
        let error = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(
            error.contains(key) && error.contains("node.toml"),
            "{key}: {error}"
        );
    }
    std::fs::write(&path, base).unwrap();
    NodeConfig::load(&path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_enforce_their_disclosure_budget() {
    let federation =
        Federation::start_with("budget", false, "max_models = 1\nscores_per_minute = 10\n").await;
    let quick = TRAIN.replace("max_epochs = 8", "max_epochs = 1");
    let first = federation.spec("first.toml", &quick);
    let (ok, _, stderr) = federation.cli(&["train", &first]).await;
    assert!(ok, "{stderr}");

    // The second model would be a second linear view of the hosts' data: refused, naming the
    // policy key.
    let second = federation.spec("second.toml", &quick.replace("sme-credit", "second"));
    let (ok, _, stderr) = federation.cli(&["train", &second]).await;
    assert!(
        !ok && stderr.contains("policy key max_models") && stderr.contains("allows 1"),
        "{stderr}"
    );
    // Batches below the policy's minimum are refused before anything runs.
    let small = federation.spec(
        "small.toml",
        &quick
            .replace("sme-credit", "small")
            .replace("batch_size = \"full\"", "batch_size = 512"),
    );
    let (ok, _, stderr) = federation.cli(&["train", &small]).await;
    assert!(
        !ok && stderr.contains("policy key min_batch_rows") && stderr.contains("512"),
        "{stderr}"
    );
    // Too many guest features (a proposal as the bank would send it).
    let channel = node::cli::channel(
        &federation.node_arg("tax"),
        &federation.dir.join("certs/bank"),
    )
    .await
    .unwrap();
    let mut as_bank = node::proto::federation_client::FederationClient::new(channel);
    let reply = as_bank
        .propose(node::proto::JobProposal {
            version: node::FEDERATION_VERSION,
            job_id: "12".repeat(16),
            kind: "train".into(),
            guest: "bank".into(),
            dataset: "tax".into(),
            hosts: vec!["tax".into()],
            model_id: "wide".into(),
            batch_rows: 4096,
            guest_features: 500,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !reply.accepted && reply.reason.contains("policy key max_guest_features"),
        "{}",
        reply.reason
    );

    // Scoring beyond the hosts' rate is refused, naming the key.
    let ids: Vec<String> = std::fs::read_to_string(federation.dir.join("bank.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .take(11)
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect();
    let platform = federation.inner.platform().display().to_string();
    let mut args = vec!["score", "--model", "sme-credit", "--identity", &platform];
    args.extend(ids.iter().map(String::as_str));
    let (ok, _, stderr) = federation.cli(&args).await;
    assert!(!ok && stderr.contains("scores_per_minute"), "{stderr}");
    let mut args = vec!["score", "--model", "sme-credit", "--identity", &platform];
    args.extend(ids[..3].iter().map(String::as_str));
    let (ok, _, stderr) = federation.cli(&args).await;
    assert!(ok, "{stderr}");

    // Every disclosure is an audit record on each host: one final reveal and one scoring
    // call; the refusal by rate is recorded too (once per attempt: the bank retries once).
    for host in HOSTS {
        let records = audit_lines(&federation, host, "").await;
        let count = |event: &str| records.iter().filter(|r| r["event"] == event).count();
        assert_eq!(count("disclosure.final_scores"), 1, "{host}");
        assert_eq!(count("score.partial"), 1, "{host}");
        assert!(count("score.rate_limited") >= 1, "{host}");
    }
    federation.stop().await;
}
