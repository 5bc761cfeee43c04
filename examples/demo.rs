//! The three-party demo: `cargo run --release --example demo`.
//!
//! Generates a CA and certificates, starts three nodes on loopback with mutual TLS — a bank
//! (labels and its own features), a tax bureau and a utility company (disjoint feature subsets
//! of the credit data; every party's ids differ a little) — then, as the bank's modeller,
//! trains a joint credit model (PSI, then federated logistic regression) with live progress;
//! as a platform, scores a few enterprises through the scoring service; scores every aligned
//! enterprise for the report (ROC, KS, per-epoch loss and AUC; HTML with inline SVG); and
//! prints where everything is. Everything lives under `./unseen-demo/` (replaced on each run).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use node::proto::jobs_client::JobsClient;
use node::proto::scoring_client::ScoringClient;
use node::proto::{ModelRef, ScoreRequest, ScoreStatus, SubmitRequest};
use unseen::local::{Plan, HOSTS};

const MARKER: &str = ".unseen-demo";

/// The binning statistics: every party's columns in 10 training-quantile bins, with their
/// counts, WOE and IV.
const BINNING: &str = r#"kind = "binning"
model_id = "sme-credit-bins"
dataset = "bank"

[[hosts]]
party = "tax"
dataset = "tax"

[[hosts]]
party = "utilities"
dataset = "utilities"
"#;

/// The model, on the bins of the binning job (`BINNING_JOB` is replaced by its id): merged
/// to monotone default rates, columns with IV ≥ 0.02, the training defaults, a fifth of the
/// rows held out for the final metrics.
const JOB: &str = r#"model_id = "sme-credit"
dataset = "bank"

[[hosts]]
party = "tax"
dataset = "tax"

[[hosts]]
party = "utilities"
dataset = "utilities"

[select]
binning_job = "BINNING_JOB"

[train]
validation_fraction = 0.2
"#;

fn fresh_dir() -> Result<PathBuf, String> {
    let dir = std::env::current_dir()
        .map_err(|e| e.to_string())?
        .join("unseen-demo");
    if dir.exists() {
        if !dir.join(MARKER).exists() {
            return Err(format!(
                "{} exists and was not made by the demo; move it away",
                dir.display()
            ));
        }
        std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::write(
        dir.join(MARKER),
        "made by `cargo run --example demo`; deleted by the next run\n",
    )
    .map_err(|e| e.to_string())?;
    Ok(dir)
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let started = std::time::Instant::now();
    let dir = fresh_dir()?;
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let mut plan = Plan::prepare(&dir, &data).map_err(|e| e.to_string())?;
    // The hosts let the bank bring its binned columns (each bin counts as a feature).
    plan.policy = "max_guest_features = 160\n".into();
    let federation = plan.start().await.map_err(|e| e.to_string())?;
    println!("three nodes on loopback, mutual TLS with certificates from a fresh CA:");
    for (party, node) in &federation.nodes {
        println!(
            "  {party:<10} {}  (metrics http://{})",
            node.address,
            node.metrics_address.map_or("-".into(), |a| a.to_string())
        );
    }

    // The bank's modeller runs the binning statistics, then trains on the bins they choose,
    // following progress over the jobs API.
    let channel = node::cli::channel(&federation.node_arg("bank"), &federation.modeller()).await?;
    let mut jobs = JobsClient::new(channel);
    std::fs::write(dir.join("binning.toml"), BINNING).map_err(|e| e.to_string())?;
    let binning = jobs
        .submit(SubmitRequest {
            spec_toml: BINNING.into(),
        })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    println!(
        "\nbinning job {} (PSI, then every column's bin counts, WOE and IV):",
        binning.job_id
    );
    node::cli::follow(&mut jobs, &binning.job_id, false).await?;
    let job = JOB.replace("BINNING_JOB", &binning.job_id);
    std::fs::write(dir.join("job.toml"), &job).map_err(|e| e.to_string())?;
    let status = jobs
        .submit(SubmitRequest { spec_toml: job })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    println!(
        "\ntraining job {} (PSI, then federated logistic regression):",
        status.job_id
    );
    node::cli::follow(&mut jobs, &status.job_id, false).await?;
    let model = jobs
        .get_model(ModelRef {
            model_id: "sme-credit".into(),
        })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();

    // A platform scores a few enterprises — and one nobody knows.
    let platform = node::cli::channel(&federation.node_arg("bank"), &federation.platform()).await?;
    let mut scoring = ScoringClient::new(platform);
    let bank_csv = std::fs::read_to_string(dir.join("bank.csv")).map_err(|e| e.to_string())?;
    let mut ids = Vec::new();
    let mut labels = std::collections::HashMap::new();
    for line in bank_csv.lines().skip(1) {
        let mut cells = line.split(',');
        let (Some(id), Some(y)) = (cells.next(), cells.next()) else {
            continue;
        };
        ids.push(id.to_string());
        labels.insert(id.to_string(), y == "1");
    }
    let few: Vec<String> = ids
        .iter()
        .take(5)
        .cloned()
        .chain(["unknown-enterprise".to_string()])
        .collect();
    let reply = scoring
        .score(ScoreRequest {
            model_id: "sme-credit".into(),
            ids: few,
        })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    println!("\nthe platform scores a few enterprises (secure aggregation of the hosts' partial scores):");
    node::cli::print_scores(&reply.scores);

    // Score every enterprise the three parties share, for the report.
    let (mut scores, mut truth) = (Vec::new(), Vec::new());
    for chunk in ids.chunks(1024) {
        let reply = scoring
            .score(ScoreRequest {
                model_id: "sme-credit".into(),
                ids: chunk.to_vec(),
            })
            .await
            .map_err(|e| e.message().to_string())?
            .into_inner();
        for s in reply
            .scores
            .iter()
            .filter(|s| s.status == ScoreStatus::Ok as i32)
        {
            scores.push(s.probability);
            truth.push(labels[&s.id]);
        }
    }
    let report: serde_json::Value =
        serde_json::from_str(&model.report_json).map_err(|e| e.to_string())?;
    let history: Vec<(u32, f64, f64)> = report["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|e| {
                    (
                        e["epoch"].as_u64().unwrap_or(0) as u32,
                        e["train_loss"].as_f64().unwrap_or(f64::NAN),
                        e["validation_loss"].as_f64().unwrap_or(f64::NAN),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let (_, auc) = unseen::report::roc(&scores, &truth);
    let ks = unseen::report::ks(&scores, &truth);
    let charts = [
        unseen::report::roc_svg(&scores, &truth),
        unseen::report::ks_svg(&scores, &truth),
        unseen::report::training_svg(&history),
    ];
    for (name, svg) in ["roc.svg", "ks.svg", "training.svg"].iter().zip(&charts) {
        std::fs::write(dir.join(name), svg).map_err(|e| e.to_string())?;
    }
    let figures = vec![
        ("model".to_string(), "sme-credit".to_string()),
        (
            "parties".into(),
            format!("bank (guest), {}", HOSTS.join(", ")),
        ),
        ("enterprises scored".into(), scores.len().to_string()),
        ("AUC".into(), format!("{auc:.4}")),
        (
            "KS".into(),
            format!(
                "{:.4} at the riskiest {:.1}% (p ≥ {:.3})",
                ks.statistic,
                ks.at * 100.0,
                ks.threshold
            ),
        ),
        ("best epoch".into(), report["best_epoch"].to_string()),
        (
            "stopped".into(),
            report["stop"].as_str().unwrap_or("").to_string(),
        ),
    ];
    let html = unseen::report::html(
        "unseen demo: joint SME credit model",
        &figures,
        &charts,
        &report_tables(&report),
    );
    let page = dir.join("report.html");
    std::fs::write(&page, html).map_err(|e| e.to_string())?;

    let identity = federation.modeller();
    let bank = federation.node_arg("bank");
    federation.stop().await.map_err(|e| e.to_string())?;
    println!(
        "\ndone in {:.0} s. Everything is under {}:",
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    println!(
        "  report      {}  (AUC {auc:.4}, KS {:.4} over {} enterprises)",
        page.display(),
        ks.statistic,
        scores.len()
    );
    println!("  charts      roc.svg, ks.svg, training.svg");
    println!("  configs     bank.toml, tax.toml, utilities.toml   (run one with `unseen serve --config bank.toml`)");
    println!("  data        bank.csv, tax.csv, utilities.csv");
    println!("  certs       certs/<name>/  (CA key: certs/ca.key)");
    println!("  node state  state/<party>/unseen.redb  (jobs, models, audit log)");
    println!("  job specs   binning.toml, job.toml");
    println!("\nnext: start the nodes with `unseen serve`, then e.g. `unseen job list --node {bank} --identity {}`", identity.display());
    Ok(())
}

/// The training report's tables: the bank's scorecard, the chosen columns, the bands and the
/// reliability of the held-out rows.
fn report_tables(report: &serde_json::Value) -> Vec<unseen::report::HtmlTable> {
    let list = |v: &serde_json::Value| v.as_array().cloned().unwrap_or_default();
    let number = |v: &serde_json::Value, digits: usize| {
        v.as_f64().map_or("-".into(), |x| format!("{x:.digits$}"))
    };
    let rate = |events: &serde_json::Value, rows: &serde_json::Value| {
        let (e, n) = (events.as_f64().unwrap_or(0.0), rows.as_f64().unwrap_or(0.0));
        format!("{:.1}%", 100.0 * e / n.max(1.0))
    };
    let text = |v: &serde_json::Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    let mut scorecard = Vec::new();
    for column in list(&report["scorecard"]) {
        for (i, bin) in list(&column["bins"]).iter().enumerate() {
            scorecard.push(vec![
                if i == 0 {
                    format!(
                        "{} (IV {})",
                        text(&column["column"]),
                        number(&column["iv"], 3)
                    )
                } else {
                    String::new()
                },
                text(&bin["label"]),
                bin["rows"].to_string(),
                rate(&bin["events"], &bin["rows"]),
                number(&bin["woe"], 3),
                number(&bin["score_points"], 1),
            ]);
        }
    }
    let chosen = list(&report["selection"]["columns"])
        .iter()
        .map(|c| {
            vec![
                text(&c["stats"]["party"]),
                text(&c["stats"]["name"]),
                number(&c["stats"]["iv"], 3),
                list(&c["stats"]["bins"]).len().to_string(),
            ]
        })
        .collect();
    let evaluation = &report["evaluation"];
    let bands = list(&evaluation["bands"])
        .iter()
        .map(|b| {
            vec![
                text(&b["band"]),
                format!("p ≥ {}", number(&b["from"], 2)),
                b["rows"].to_string(),
                number(&b["mean_probability"], 4),
                number(&b["observed_rate"], 4),
            ]
        })
        .collect();
    let reliability = list(&evaluation["reliability"])
        .iter()
        .enumerate()
        .map(|(i, g)| {
            vec![
                (i + 1).to_string(),
                g["count"].to_string(),
                number(&g["mean_probability"], 4),
                number(&g["observed_rate"], 4),
            ]
        })
        .collect();
    let header = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
    vec![
        unseen::report::HtmlTable {
            title: "Scorecard: the bank's columns (points on the [scoring] scale)".into(),
            header: header(&["column", "bin", "rows", "default rate", "WOE", "points"]),
            rows: scorecard,
        },
        unseen::report::HtmlTable {
            title: "Columns chosen from the binning job (hosts' under aliases)".into(),
            header: header(&["party", "column", "IV after merging", "bins"]),
            rows: chosen,
        },
        unseen::report::HtmlTable {
            title: "Bands on the held-out rows".into(),
            header: header(&["band", "from", "rows", "mean PD", "observed default rate"]),
            rows: bands,
        },
        unseen::report::HtmlTable {
            title: "Reliability on the held-out rows (ten equal-count groups)".into(),
            header: header(&["group", "rows", "mean PD", "observed default rate"]),
            rows: reliability,
        },
    ]
}
