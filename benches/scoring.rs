//! Scoring latency and throughput: the platform → the bank's node → tax and utilities over
//! loopback gRPC with mutual TLS (secure aggregation of the hosts' partial scores, audit record
//! per call), after a short training job on the credit data.
//!
//! `cargo bench --bench scoring` prints, for batches of 1 and of 256 ids, p50 and p99
//! latency over sequential calls and scores per second — sequential, and with 4 concurrent
//! clients. Goals on a 2-core machine: p99 ≤ 10 ms at batch 1, ≥ 5000 scores/s batched.

use std::path::Path;
use std::time::{Duration, Instant};

use node::proto::scoring_client::ScoringClient;
use node::proto::{ScoreRequest, ScoreStatus};
use tonic::transport::Channel;
use unseen::local::Plan;

const JOB: &str = "model_id = \"bench\"\ndataset = \"bank\"\n\
    [[hosts]]\nparty = \"tax\"\ndataset = \"tax\"\n[[hosts]]\nparty = \"utilities\"\ndataset = \"utilities\"\n\
    [train]\nmax_epochs = 2\n";

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

async fn run(
    client: &mut ScoringClient<Channel>,
    ids: &[String],
    batch: usize,
    calls: usize,
    offset: usize,
) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(calls);
    for call in 0..calls {
        let start = (offset + call * batch * 7919) % (ids.len() - batch);
        let request = ScoreRequest {
            model_id: "bench".into(),
            ids: ids[start..start + batch].to_vec(),
        };
        let began = Instant::now();
        let reply = client.score(request).await.expect("score").into_inner();
        latencies.push(began.elapsed());
        assert!(
            reply
                .scores
                .iter()
                .filter(|s| s.status == ScoreStatus::Ok as i32)
                .count()
                * 10
                > batch * 9
        );
    }
    latencies
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let dir = std::env::temp_dir().join(format!("unseen-bench-scoring-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let mut plan = Plan::prepare(&dir, &data).expect("prepare");
    plan.scoring_models = vec!["bench".into()];
    plan.scoring_rate = 1e6;
    plan.policy = "scores_per_minute = 1000000000\n".into();
    let federation = plan.start().await.expect("start");
    let bank = federation.nodes["bank"].state.clone();
    let job = tokio::task::spawn_blocking(move || bank.submit(JOB, "bench"))
        .await
        .unwrap()
        .expect("submit");
    loop {
        let record = federation.nodes["bank"]
            .state
            .job(&job.job_id)
            .unwrap()
            .unwrap();
        if record.is_final() {
            assert_eq!(record.state, "succeeded", "{}", record.error);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Ids every party holds (the benchmark may look at all three files).
    let column = |file: &str| -> Vec<String> {
        std::fs::read_to_string(dir.join(file))
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap().to_string())
            .collect()
    };
    let tax: std::collections::HashSet<String> = column("tax.csv").into_iter().collect();
    let utilities: std::collections::HashSet<String> =
        column("utilities.csv").into_iter().collect();
    let ids: Vec<String> = column("bank.csv")
        .into_iter()
        .filter(|id| tax.contains(id) && utilities.contains(id))
        .collect();
    let channel = node::cli::channel(&federation.node_arg("bank"), &federation.platform())
        .await
        .unwrap();
    let mut client = ScoringClient::new(channel.clone());
    run(&mut client, &ids, 1, 100, 0).await; // warm up connections and indexes

    println!(
        "scoring: platform → bank → tax + utilities, loopback mTLS, {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:<8} {:>9} {:>9} {:>14} {:>22}",
        "batch", "p50 ms", "p99 ms", "scores/s (1)", "scores/s (4 clients)"
    );
    for (batch, calls) in [(1usize, 2000usize), (256, 300)] {
        let began = Instant::now();
        let mut latencies = run(&mut client, &ids, batch, calls, 1).await;
        let sequential = (batch * calls) as f64 / began.elapsed().as_secs_f64();
        latencies.sort();
        let began = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..4 {
            let mut client = ScoringClient::new(channel.clone());
            let ids = ids.clone();
            tasks.push(tokio::spawn(async move {
                run(&mut client, &ids, batch, calls / 4, c * 31).await
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let concurrent = (batch * (calls / 4) * 4) as f64 / began.elapsed().as_secs_f64();
        println!(
            "{batch:<8} {:>9.2} {:>9.2} {sequential:>14.0} {concurrent:>22.0}",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99)
        );
    }
    federation.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
