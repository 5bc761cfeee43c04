//! A job end to end: training like the simulator, scoring, audit and metrics.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;

use fedlearn::{Missing, Reading, Table, TrainConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use unseen::local::HOSTS;

use crate::common::*;

/// PSI and training over the nodes match the simulator despite a cut connection; every party
/// stores only its own part. Returns the job's final status.
async fn trains_like_the_simulator_despite_a_dropped_connection(
    federation: &Federation,
) -> serde_json::Value {
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

    // With 4 MiB of unread messages per job, senders were held back, and took what arrived
    // meanwhile instead of waiting on each other.
    assert!(
        ["bank", "tax", "utilities"].iter().any(|p| federation
            .state(p)
            .metrics
            .get("unseen_deliveries_held_back_total", &[("peer", "bank")])
            + federation
                .state(p)
                .metrics
                .get("unseen_deliveries_held_back_total", &[("peer", "tax")])
            > 0.0),
        "no delivery was held back"
    );

    let auc = status["train"]["auc"].as_f64().unwrap();
    let config = TrainConfig {
        max_epochs: 8,
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
            .model("sme-credit@1")
            .unwrap()
            .unwrap();
        let part = fedlearn::ModelPart::from_json(party, &model.part_json).unwrap();
        assert_eq!(part.party, party);
        assert_eq!(part.features.len(), features, "{party}");
    }
    let (ok, shown, _) = federation.cli(&["model", "show", "sme-credit"]).await;
    assert!(ok && shown.contains("\"history\""), "{shown}");
    status.clone()
}

/// The joint scores the platform gets equal the plaintext joint probability of the stored
/// parts, with per-id errors for ids a party lacks. Returns (the ids every party holds, every
/// id asked, the platform's scores, each party's partial score of each known id).
async fn scores_are_the_plaintext_joint_probability(
    federation: &Federation,
) -> (Vec<String>, Vec<String>, serde_json::Value, Vec<Vec<f64>>) {
    // The platform gets p = σ(z_bank + z_tax + z_utilities) — equal to the
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
                .model("sme-credit@1")
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
            Table::parse_csv(file, &text, "id", label, Missing::Reject, &|_| {
                Reading::Number
            })
            .unwrap()
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
        // The bank's part holds the calibration it fitted on the job's one reveal.
        let calibration = parts[0]
            .calibration
            .expect("the guest's part is calibrated");
        assert!(calibration.slope > 0.0, "{calibration:?}");
        let expected = parts[0].probability(z);
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

    let partials = (0..3)
        .map(|k| known.iter().map(|id| partial(k, id)).collect())
        .collect();
    (known, ids, scored, partials)
}

/// Rows a host cannot read (bad cells, a 10 MB cell) make their ids unscorable and nothing
/// else: the other ids score as before, and no cell, file or line leaves the host.
async fn a_bad_row_fails_alone(
    federation: &Federation,
    ids: &[String],
    scored: &serde_json::Value,
) {
    let append = |file: &str, rows: &[String]| {
        let path = federation.dir.join(file);
        let mut text = std::fs::read_to_string(&path).unwrap();
        let width = text.lines().next().unwrap().split(',').count();
        for row in rows {
            text.push_str(&format!(
                "{row},{}\n",
                vec!["secret-cell-9"; width - 1].join(",")
            ));
        }
        std::fs::write(&path, text).unwrap();
    };
    // ids[0] stays sound; ids[1] gets a second, unreadable row at the utility company (which
    // names unscorable ids); ids[6], which the tax bureau lacked, an unreadable one there.
    let kept = ["utilities.csv", "tax.csv"].map(|f| std::fs::read(federation.dir.join(f)).unwrap());
    let huge = format!("big-firm,{}", "7".repeat(10 << 20));
    append("utilities.csv", &[ids[1].clone(), huge]);
    append("tax.csv", &[ids[6].clone()]);
    let (ok, again, stderr) = federation.score("sme-credit", &["--json"], &ids[..7]).await;
    assert!(ok, "{stderr}");
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again[0]["probability"], scored[0]["probability"], "{again}");
    let error = |i: usize| again[i]["error"].as_str().unwrap_or("").to_owned();
    assert!(error(1).contains("utilities: unscorable"), "{again}");
    assert!(error(6).contains("tax: cannot score"), "{again}");
    let said = format!("{again}{stderr}");
    assert!(
        !said.contains("secret-cell") && !said.contains(".csv"),
        "{said}"
    );
    for (file, bytes) in ["utilities.csv", "tax.csv"].iter().zip(kept) {
        std::fs::write(federation.dir.join(file), bytes).unwrap();
    }
}

/// An operation whose audit record cannot be written does not happen: no partial score leaves
/// a host, no score reaches the platform, no job starts.
async fn nothing_happens_unaudited(federation: &Federation, known: &[String]) {
    let (ok, _, _) = federation.score("sme-credit", &[], &known[..1]).await;
    assert!(ok, "scoring works before");
    federation.state("tax").store.break_audit_for_tests(true);
    let (ok, _, stderr) = federation.score("sme-credit", &[], &known[..1]).await;
    assert!(!ok && stderr.contains("tax"), "{stderr}");
    federation.state("tax").store.break_audit_for_tests(false);
    let bank = &federation.state("bank").store;
    bank.break_audit_for_tests(true);
    let (ok, out, stderr) = federation.score("sme-credit", &[], &known[..1]).await;
    assert!(!ok && out.is_empty(), "{out}{stderr}");
    let spec = federation.spec("unaudited.toml", &TRAIN.replace("sme-credit", "unaudited"));
    let (ok, _, stderr) = federation.cli(&["job", "submit", &spec]).await;
    assert!(!ok && stderr.contains("audit"), "{stderr}");
    bank.break_audit_for_tests(false);
    let jobs = bank.jobs().unwrap();
    let unaudited = jobs.iter().find(|j| j.model_id == "unaudited@1").unwrap();
    let ended = loop {
        let record = bank.job(&unaudited.job_id).unwrap().unwrap();
        if record.is_final() {
            break record;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(ended.state, "failed", "{}", ended.error);
    assert!(ended.error.contains("not started"), "{}", ended.error);
    let (ok, _, stderr) = federation.score("sme-credit", &[], &known[..1]).await;
    assert!(ok, "scoring works again: {stderr}");
}

/// A second job of a served name needs `replace = true` and makes version 2, which then
/// answers for the name; version 1 stays pinnable. An archived version is no longer scored
/// and the name falls back to the version before; a version any party deleted can no longer
/// be scored, and is never made again.
async fn models_have_versions(federation: &Federation, known: &[String]) {
    let probabilities = |out: &str| -> Vec<Option<f64>> {
        let scores: serde_json::Value = serde_json::from_str(out).unwrap();
        let scores = scores.as_array().unwrap().iter();
        scores.map(|s| s["probability"].as_f64()).collect()
    };
    let ids = &known[..5];
    let score = |model: &'static str| async move {
        let (ok, out, stderr) = federation.score(model, &["--json"], ids).await;
        assert!(ok, "{model}: {stderr}");
        probabilities(&out)
    };
    let first = score("sme-credit").await;

    let again = federation.spec("again.toml", TRAIN);
    let (ok, _, stderr) = federation.cli(&["train", &again]).await;
    assert!(
        !ok && stderr.contains("\"sme-credit\" is served on bank as sme-credit@1")
            && stderr.contains("replace = true to train sme-credit@2"),
        "{stderr}"
    );
    let replacing = TRAIN
        .replace(
            "model_id = \"sme-credit\"",
            "model_id = \"sme-credit\"\nreplace = true",
        )
        .replace("max_epochs = 8", "max_epochs = 2");
    let replacing = federation.spec("replacing.toml", &replacing);
    let (ok, _, stderr) = federation.cli(&["train", &replacing]).await;
    assert!(ok, "{stderr}");
    for party in ["bank", "tax", "utilities"] {
        let store = &federation.state(party).store;
        assert!(store.model("sme-credit@2").unwrap().is_some(), "{party}");
    }
    let second = score("sme-credit@2").await;
    assert_ne!(first, second, "two epochs instead of eight");
    assert_eq!(
        score("sme-credit").await,
        second,
        "the latest answers for the name"
    );
    assert_eq!(
        score("sme-credit@1").await,
        first,
        "an earlier version stays pinnable"
    );

    let on = |party: &str| format!("--node={}", federation.node_arg(party));
    let bank = on("bank");
    let (ok, out, stderr) = federation
        .cli(&["model", "archive", &bank, "sme-credit@2"])
        .await;
    assert!(
        ok && out.contains("sme-credit@2: archived"),
        "{out}{stderr}"
    );
    let (ok, _, stderr) = federation.score("sme-credit@2", &[], ids).await;
    assert!(!ok && stderr.contains("is archived"), "{stderr}");
    assert_eq!(
        score("sme-credit").await,
        first,
        "the name falls back to version 1"
    );
    let (ok, listed, _) = federation.cli(&["model", "list", &bank, "--json"]).await;
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let archived: Vec<_> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["archived_unix_ms"] != 0)
        .collect();
    assert!(
        ok && archived.len() == 1 && archived[0]["model_id"] == "sme-credit@2",
        "{listed}"
    );

    // A host withdraws its part: no joint score is possible any more.
    let utilities = on("utilities");
    let delete = |node: String, model: &'static str| async move {
        federation.cli(&["model", "delete", &node, model]).await
    };
    let (ok, _, stderr) = delete(utilities.clone(), "sme-credit").await;
    assert!(!ok && stderr.contains("not one version"), "{stderr}");
    let (ok, out, stderr) = delete(utilities.clone(), "sme-credit@1").await;
    assert!(ok && out.contains("sme-credit@1: deleted"), "{out}{stderr}");
    let store = &federation.state("utilities").store;
    assert!(store.model("sme-credit@1").unwrap().is_none());
    assert!(store.deleted_model("sme-credit@1").unwrap().is_some());
    let (ok, _, stderr) = federation.score("sme-credit", &[], ids).await;
    let said = "model \"sme-credit@1\" was deleted on utilities";
    assert!(!ok && stderr.contains(said), "{stderr}");
    let (ok, _, stderr) = federation
        .cli(&["model", "show", &utilities, "sme-credit@1"])
        .await;
    assert!(!ok && stderr.contains(said), "{stderr}");
    let (ok, _, stderr) = delete(bank, "sme-credit@2").await;
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = federation.score("sme-credit@2", &[], ids).await;
    let said = "model \"sme-credit@2\" was deleted on bank";
    assert!(!ok && stderr.contains(said), "{stderr}");
    let audit = store.audit_records().unwrap();
    let deleted = audit.iter().rev().find_map(|(_, bytes)| {
        let record: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        (record["event"] == "model.deleted").then_some(record)
    });
    let by_whom = deleted
        .as_ref()
        .map(|r| (&r["peer"], &r["detail"]["model"]));
    assert_eq!(
        by_whom,
        Some((&"modeller".into(), &"sme-credit@1".into())),
        "{deleted:?}"
    );
}

/// The Python client (clients/python/, installed by `.ci/test-env`) gets the same scores, run from
/// outside the checkout; its stubs are generated once into its cache and reused, and it
/// leaves nothing else behind. It ships the node's scoring.proto unchanged.
async fn the_python_client_agrees(
    federation: &Federation,
    ids: &[String],
    scored: &serde_json::Value,
) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let proto = "unseen/v1/scoring.proto";
    assert_eq!(
        std::fs::read_to_string(root.join("clients/python/unseen_client/proto").join(proto))
            .unwrap(),
        std::fs::read_to_string(root.join("node/proto").join(proto)).unwrap(),
        "clients/python/unseen_client/proto/{proto} differs from node/proto/{proto}: copy it over"
    );
    let python = std::env::var("UNSEEN_TEST_PYTHON").expect(
        "UNSEEN_TEST_PYTHON is not set: the Python client's test needs it installed; `source \
         .ci/test-env` does (bash .ci/run does)",
    );
    let platform = federation.inner.platform().display().to_string();
    let elsewhere = federation.dir.join("python-cwd");
    let cache = federation.dir.join("python-cache");
    std::fs::create_dir_all(&elsewhere).unwrap();
    for _ in 0..2 {
        let mut command = Command::new(&python);
        command
            .current_dir(&elsewhere)
            .env("XDG_CACHE_HOME", &cache)
            .args(["-m", "unseen_client"])
            .args([
                "--node",
                &federation.node_arg("bank"),
                "--identity",
                &platform,
                "--model",
                "sme-credit",
            ])
            .args(ids);
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
    }
    // One set of stubs in the cache, nothing half-made beside it, nothing in the working
    // directory.
    let cached: Vec<String> = std::fs::read_dir(cache.join("unseen-client"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(!cached[0].starts_with("stubs-"), "{cached:?}");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
}

/// What the guest receives from each host, asked directly with the bank's certificate, is
/// masked; the masks cancel only in the sum. The modeller is not a scoring client.
async fn hosts_mask_their_partial_scores(
    federation: &Federation,
    known: &[String],
    partials: &[Vec<f64>],
) {
    let mut masked = Vec::new();
    for (k, host) in HOSTS.iter().enumerate() {
        let reply = federation
            .peer_client(host, "bank")
            .await
            .partial_scores(node::proto::PartialScoresRequest {
                version: node::FEDERATION_VERSION,
                guest: "bank".into(),
                model_id: "sme-credit@1".into(),
                ids: known.to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        for (i, id) in known.iter().enumerate() {
            let plain = (partials[k + 1][i] * 4_294_967_296.0).round() as i64 as u64;
            assert_ne!(
                reply.masked[i], plain,
                "{host} sent its partial score of {id} unmasked"
            );
        }
        masked.push(reply.masked);
    }
    for (i, id) in known.iter().enumerate() {
        let sum = masked[0][i].wrapping_add(masked[1][i]) as i64 as f64 / 4_294_967_296.0;
        let plain = partials[1][i] + partials[2][i];
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
    // The bank audits the refused call: who the certificate names, from where.
    let refused: Vec<serde_json::Value> = audit_lines(federation, "bank", "")
        .await
        .into_iter()
        .filter(|r| r["event"] == "score.refused")
        .collect();
    let detail = &refused.last().expect("an audited refusal")["detail"];
    assert_eq!(
        detail["certificate"],
        serde_json::json!(["modeller"]),
        "{detail}"
    );
    assert!(
        detail["address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{detail}"
    );

    // A peer claiming another's name is audited under the name its certificate carries.
    let mut as_utilities = federation.peer_client("tax", "utilities").await;
    let claim = proposal("cd".repeat(16), "impostor");
    assert!(as_utilities.propose(claim).await.is_err());
    let records = audit_lines(federation, "tax", "").await;
    let record = records
        .iter()
        .rev()
        .find(|r| r["event"] == "peer.refused")
        .expect("an audited impersonation");
    assert_eq!(record["peer"], "utilities", "{record}");
    assert_eq!(record["detail"]["claimed"], "bank", "{record}");
}

/// The audit trail holds the job, its message kinds and the scoring calls, and verifies.
async fn the_audit_trail_holds_the_job(federation: &Federation, status: &serde_json::Value) {
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
        "fedlearn.step_vector",
        "psi.points",
        "job.ended",
    ] {
        assert!(out.contains(needle), "{needle} missing from\n{out}");
    }
    let events: Vec<serde_json::Value> = audit_lines(federation, "tax", "").await;
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "score.partial" && e["detail"]["ids"] == 5),
        "{events:?}"
    );
    let bank_events = audit_lines(federation, "bank", "").await;
    assert!(bank_events
        .iter()
        .any(|e| e["event"] == "score" && e["peer"] == "platform" && e["detail"]["ids"] == 8));
}

/// `unseen score --input --output`: a platform's monthly run. Every id of the input file gets
/// one row, in order, over several calls; the scores are those of a direct call.
async fn batch_scoring_writes_every_id(
    federation: &Federation,
    ids: &[String],
    scored: &serde_json::Value,
) {
    let input = federation.dir.join("monthly.csv");
    let output = federation.dir.join("monthly-scores.csv");
    let mut all: Vec<String> = ids.to_vec();
    all.extend(federation.bank_ids(1200));
    all.push("no-such-firm".into());
    let text: String = std::iter::once("note,enterprise\n".to_string())
        .chain(all.iter().map(|id| format!("\"a, b\",{id}\n")))
        .collect();
    std::fs::write(&input, text).unwrap();
    let platform = federation.inner.platform().display().to_string();
    let score_file = |input: &std::path::Path, output: &std::path::Path| {
        let (input, output) = (input.display().to_string(), output.display().to_string());
        let platform = platform.clone();
        async move {
            let args = ["score", "--identity", &platform, "--model", "sme-credit"];
            let files = [
                "--input",
                &input,
                "--output",
                &output,
                "--id-column",
                "enterprise",
            ];
            let args: Vec<&str> = args
                .into_iter()
                .chain(files)
                .chain(["--batch", "500"])
                .collect();
            federation.cli(&args).await
        }
    };
    let (ok, stdout, stderr) = score_file(&input, &output).await;
    assert!(ok, "{stdout}{stderr}");
    let rows: Vec<Vec<String>> = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_path(&output)
        .unwrap()
        .records()
        .map(|r| r.unwrap().iter().map(String::from).collect())
        .collect();
    assert_eq!(rows[0], ["id", "probability", "points", "band", "error"]);
    assert_eq!(rows.len(), all.len() + 1);
    for (row, id) in rows[1..].iter().zip(&all) {
        assert_eq!(&row[0], id);
    }
    for (i, direct) in scored.as_array().unwrap().iter().enumerate() {
        match direct["probability"].as_f64() {
            Some(p) => assert_eq!(rows[i + 1][1].parse::<f64>().unwrap(), p, "{i}"),
            None => assert!(!rows[i + 1][4].is_empty(), "{i}: {:?}", rows[i + 1]),
        }
    }
    assert!(!rows.last().unwrap()[4].is_empty(), "{:?}", rows.last());
    assert!(stdout.contains("ids scored"), "{stdout}");

    // The same ids from a Parquet file, to a Parquet file: the same rows.
    use arrow_array::{cast::AsArray, Array};
    let input = federation.dir.join("monthly.parquet");
    let output = federation.dir.join("monthly-scores.parquet");
    let column: arrow_array::ArrayRef = std::sync::Arc::new(
        all.iter()
            .map(|id| Some(id.as_str()))
            .collect::<arrow_array::StringArray>(),
    );
    crate::parquet::write_parquet(&input, vec![("enterprise", column)], 700);
    let (ok, stdout, stderr) = score_file(&input, &output).await;
    assert!(
        ok && stdout.contains("ids scored with sme-credit@1"),
        "{stdout}{stderr}"
    );
    let file = std::fs::File::open(&output).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut from_parquet = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let text = |c: usize, row: usize| {
            let column = batch.column(c).as_string::<i32>();
            if column.is_null(row) {
                String::new()
            } else {
                column.value(row).to_string()
            }
        };
        let number = |c: usize, row: usize| {
            let column = batch
                .column(c)
                .as_primitive::<arrow_array::types::Float64Type>();
            if column.is_null(row) {
                String::new()
            } else {
                column.value(row).to_string()
            }
        };
        for row in 0..batch.num_rows() {
            from_parquet.push(vec![
                text(0, row),
                number(1, row),
                number(2, row),
                text(3, row),
                text(4, row),
            ]);
        }
    }
    assert_eq!(from_parquet, rows[1..], "Parquet in and out, as CSV");
}

/// The metrics endpoint counts the job.
async fn metrics_count_the_job(federation: &Federation) {
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_end_to_end() {
    // One trained federation serves every claim: training costs most of the test's time.
    let mut federation = Federation::start("train", true).await;
    let status = trains_like_the_simulator_despite_a_dropped_connection(&federation).await;
    let (known, ids, scored, partials) =
        scores_are_the_plaintext_joint_probability(&federation).await;
    the_python_client_agrees(&federation, &ids, &scored).await;
    batch_scoring_writes_every_id(&federation, &ids, &scored).await;
    hosts_mask_their_partial_scores(&federation, &known, &partials).await;
    the_audit_trail_holds_the_job(&federation, &status).await;
    metrics_count_the_job(&federation).await;
    a_bad_row_fails_alone(&federation, &ids, &scored).await;
    nothing_happens_unaudited(&federation, &known).await;
    models_have_versions(&federation, &known).await;

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
