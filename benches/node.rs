//! The cost of the node: one training job end to end (PSI + training) on three nodes over
//! loopback gRPC with mutual TLS, against the same job in one process (psi's in-memory driver
//! and fedlearn's simulator, every message still encoded and decoded).
//!
//! `cargo bench --bench node` prepares the three-party federation of `unseen::local` (bank,
//! tax bureau, utility company; the credit data with ids that differ a little), then for each
//! setting runs the job through the bank's jobs API and in process, three times each, and
//! prints the median seconds, their ratio (the gRPC/TLS overhead; goal ≤ 1.2) and the bytes
//! each party sent.
//!
//! `-- --portable` makes PSI use curve25519-dalek even on a CPU with AVX-512 IFMA, to show what
//! the multi-buffer arithmetic gains through the nodes.
//!
//! `cargo bench --bench node flood` sends 200 proposals at once from the bank's certificate to
//! the tax bureau's node (one per job id, each for a model of its own) and prints how many it
//! accepted and refused as busy, and this process's resident memory and threads before, at the
//! peak and once the accepted jobs ended (the bank knows none of them, so they end as soon as
//! the tax node asks it whether they still run).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use fedlearn::{GuestJob, HostJob, Missing, Reading, Table, TrainConfig};
use psi::{DuplicatePolicy, GuestConfig, HostInput, IdColumn};
use unseen::local::{LocalFederation, Plan, HOSTS, PARTIES};

const RUNS: usize = 3;

fn load(dir: &Path, name: &str, label: Option<&str>) -> Table {
    let text = std::fs::read_to_string(dir.join(name)).expect("dataset");
    Table::parse_csv(name, &text, "id", label, Missing::Reject, &|_| {
        Reading::Number
    })
    .expect("table")
}

/// PSI with psi's in-memory driver, then fedlearn's simulator; returns the bytes each party
/// sent.
fn in_process(dir: &Path, config: &TrainConfig) -> BTreeMap<String, u64> {
    let bank = load(dir, "bank.csv", Some("y"));
    let hosts = [load(dir, "tax.csv", None), load(dir, "utilities.csv", None)];
    let inputs = hosts
        .iter()
        .zip(HOSTS)
        .map(|(table, name)| HostInput {
            name: name.into(),
            ids: IdColumn::from_ids(table.ids()).expect("ids"),
            duplicates: DuplicatePolicy::Reject,
        })
        .collect();
    let mut sent: BTreeMap<String, u64> = BTreeMap::new();
    let ids = IdColumn::from_ids(bank.ids()).expect("ids");
    let outcome = psi::run_in_memory(ids, GuestConfig::default(), inputs, &mut |m| {
        let from = if m.from == psi::GUEST { "bank" } else { m.from };
        *sent.entry(from.to_string()).or_default() += m.payload.len() as u64;
    })
    .expect("psi");
    let rows = |r: &[u32]| r.iter().map(|&i| i as usize).collect::<Vec<_>>();
    let host_jobs = hosts
        .iter()
        .zip(HOSTS)
        .zip(&outcome.hosts)
        .map(|((table, party), out)| HostJob {
            party: party.into(),
            guest: "bank".into(),
            table: table
                .select_rows(&rows(&out.as_ref().expect("both sides").aligned_rows))
                .expect("rows"),
            prep: Default::default(),
            checkpoints: Vec::new(),
        })
        .collect();
    let guest = GuestJob {
        party: "bank".into(),
        model_id: "bench".into(),
        table: bank
            .select_rows(&rows(&outcome.guest.aligned_rows))
            .expect("rows"),
        hosts: HOSTS.map(String::from).to_vec(),
        config: config.clone(),
        prep: Default::default(),
        resume: None,
    };
    let run = fedlearn::simulate(guest, host_jobs, true, &mut |_| {}).expect("training");
    for (sender, bytes) in run.bytes_by_sender() {
        *sent.entry(sender).or_default() += bytes as u64;
    }
    sent
}

/// The job through the bank's jobs API; returns the bytes each party sent.
fn over_grpc(federation: &LocalFederation, spec: &str) -> BTreeMap<String, u64> {
    let bank = &federation.nodes["bank"].state;
    let record = bank.submit(spec, "bench").expect("submit");
    let final_record = |party: &str| loop {
        let job = federation.nodes[party]
            .state
            .job(&record.job_id)
            .expect("job");
        match job {
            Some(job) if job.is_final() => break job,
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let mut sent = BTreeMap::new();
    for party in PARTIES {
        let job = final_record(party);
        assert_eq!(job.state, "succeeded", "{party}: {}", job.error);
        sent.insert(party.to_string(), job.last().map_or(0, |e| e.bytes_sent));
    }
    sent
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// This process's resident memory (MiB) and threads, from /proc.
fn usage() -> (f64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:") as f64 / 1024.0, field("Threads:"))
}

/// 200 concurrent proposals to tax as the bank, in round `round`; prints what the node did
/// with them.
fn flood(runtime: &tokio::runtime::Runtime, federation: &LocalFederation, round: u32) {
    use node::proto::federation_client::FederationClient;
    let (rss_before, threads_before) = usage();
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak = (0.0f64, 0u64);
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                let (rss, threads) = usage();
                peak = (peak.0.max(rss), peak.1.max(threads));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let started = Instant::now();
    let replies = runtime.block_on(async {
        let channel = node::cli::channel(
            &federation.node_arg("tax"),
            &federation.dir.join("certs/bank"),
        )
        .await
        .expect("channel");
        let calls: Vec<_> = (0..200u32)
            .map(|k| {
                let mut client = FederationClient::new(channel.clone());
                tokio::spawn(async move {
                    let proposal = node::proto::JobProposal {
                        version: node::FEDERATION_VERSION,
                        job_id: format!("{:032x}", 0xf100 + 1000 * round + k),
                        kind: "train".into(),
                        guest: "bank".into(),
                        dataset: "tax".into(),
                        hosts: vec!["tax".into()],
                        model_id: format!("flood-{round}-{k}"),
                        guest_features: 13,
                        prep: String::new(),
                        attempt: 0,
                    };
                    client.propose(proposal).await.map(|r| r.into_inner())
                })
            })
            .collect();
        let mut replies = Vec::new();
        for call in calls {
            replies.push(call.await.expect("call"));
        }
        replies
    });
    let answered = started.elapsed();
    let accepted = replies
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r.accepted))
        .count();
    let busy = replies
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r.reason.contains("busy")))
        .count();
    let tax = federation.nodes["tax"].state.clone();
    let live = || {
        (0..200u32).any(|k| {
            tax.live(&format!("{:032x}", 0xf100 + 1000 * round + k))
                .is_some()
        })
    };
    while live() && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let ended = started.elapsed();
    // Idle blocking threads of the runtime exit after 10 s.
    std::thread::sleep(Duration::from_secs(12));
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let (rss_peak, threads_peak) = sampler.join().expect("sampler");
    let (rss_after, threads_after) = usage();
    println!(
        "flood {round}: 200 proposals answered in {:.2} s: {accepted} accepted, {busy} refused as busy, \
         {} other; accepted jobs ended after {:.1} s",
        answered.as_secs_f64(),
        replies.len() - accepted - busy,
        ended.as_secs_f64()
    );
    println!(
        "flood {round}: process RSS {rss_before:.0} MiB before, {rss_peak:.0} MiB at the peak, \
         {rss_after:.0} MiB after; threads {threads_before}, {threads_peak}, {threads_after}"
    );
}

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    psi::internal::force_portable(std::env::args().any(|a| a == "--portable"));
    let dir = std::env::temp_dir().join(format!("unseen-bench-node-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut plan = Plan::prepare(&dir, &data).expect("prepare");
    // Every run trains a new model with the hosts' data.
    plan.policy = "max_models = 1000\n".into();
    let federation = runtime.block_on(plan.start()).expect("start");
    // Ten secret-shared steps without early stopping (the number of epochs the job report
    // shows for the credit data with the default rule is about this).
    let settings = [(
        "10-steps",
        "max_epochs = 10\nearly_stopping = { kind = \"loss\", patience = 1000, min_delta = 0 }\n",
    )];
    println!("credit data, bank + tax + utilities, PSI then training; median of {RUNS} runs");
    println!(
        "PSI arithmetic: {}; CPU: {}",
        psi::arithmetic(),
        unseen::cpu_summary()
    );
    println!(
        "{:<12} {:>10} {:>10} {:>7}   bytes sent (nodes | in process)",
        "setting", "nodes s", "in-proc s", "ratio"
    );
    if filter.as_deref() == Some("flood") {
        // The second round shows whether what the first kept is held for good or reused.
        for round in 1..=2 {
            flood(&runtime, &federation, round);
        }
        runtime.block_on(federation.stop()).expect("stop");
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let mut model = 0;
    for (name, train) in settings {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let config = node::spec::JobSpec::parse(&format!(
            "model_id = \"m\"\ndataset = \"bank\"\nhosts = [{{ party = \"tax\", dataset = \"tax\" }}]\n[train]\n{train}"
        ))
        .expect("spec")
        .train;
        let (mut grpc, mut local) = (Vec::new(), Vec::new());
        let (mut grpc_bytes, mut local_bytes) = (BTreeMap::new(), BTreeMap::new());
        for _ in 0..RUNS {
            model += 1;
            let spec = format!(
                "model_id = \"bench-{model}\"\ndataset = \"bank\"\n[[hosts]]\nparty = \"tax\"\ndataset = \"tax\"\n\
                 [[hosts]]\nparty = \"utilities\"\ndataset = \"utilities\"\n[train]\n{train}seed = 1\n"
            );
            let started = Instant::now();
            grpc_bytes = over_grpc(&federation, &spec);
            grpc.push(started.elapsed().as_secs_f64());
            let started = Instant::now();
            local_bytes = in_process(
                &dir,
                &TrainConfig {
                    seed: 1,
                    ..config.clone()
                },
            );
            local.push(started.elapsed().as_secs_f64());
        }
        let (g, l) = (median(grpc), median(local));
        let bytes: Vec<String> = PARTIES
            .iter()
            .map(|p| {
                format!(
                    "{p} {:.1} | {:.1} MB",
                    grpc_bytes[*p] as f64 / 1e6,
                    local_bytes[*p] as f64 / 1e6
                )
            })
            .collect();
        println!(
            "{name:<12} {g:>10.2} {l:>10.2} {:>7.2}   {}",
            g / l,
            bytes.join(", ")
        );
    }
    runtime.block_on(federation.stop()).expect("stop");
    let _ = std::fs::remove_dir_all(&dir);
}
