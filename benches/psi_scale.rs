//! PSI at scale through three real nodes: `unseen serve` processes on loopback with mutual
//! TLS (bank, tax bureau, utility company), each holding `--n` ids (default 10^6) of which
//! 90% are common to all three, one feature column each.
//!
//! `cargo bench --bench psi_scale -- --n 10000000 [--partition-rows N]` writes the three
//! datasets, starts the nodes, submits a training job at the bank and times its PSI (from the
//! submission to the bank's first training event, polled every 0.2 s) and prints each
//! node's peak resident memory (`VmHWM`: the process served only this job) twice: at the
//! bank's first event reporting 90% or more of PSI's batches done (PSI's own peak: reading the dataset into the job's
//! file, splitting the parts, one part's session at a time) and when the bank starts
//! training (the nodes are then reading the aligned rows back into memory), then cancels the
//! job.
//!
//! With `--workers K`, every party also runs K workers (`unseen worker`, processes on the same
//! loopback with their own certificates) that take the group operations of PSI from its node.
//! Either way the benchmark prints the CPU time of every process (user + system, from
//! /proc/PID/stat) spent from the submission to the end of PSI, per id of the bank: workers
//! should cost the same CPU time per id as a node alone, plus the moving of work to them.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use unseen::local::{Plan, PARTIES};

fn arg(name: &str) -> Option<u64> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1)?.parse().ok()
}

/// Writes `party`'s dataset: ids `from..from + n` (the bank with a label), one feature.
fn write_dataset(dir: &Path, party: &str, from: u64, n: u64) {
    let path = dir.join(format!("{party}.csv"));
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).expect("dataset"));
    let header = if party == "bank" { "id,y,x" } else { "id,x" };
    writeln!(out, "{header}").expect("write");
    for i in from..from + n {
        // A cheap mix, so that the label and the feature are not the id's order.
        let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
        if party == "bank" {
            writeln!(out, "sme-{i:010},{},{}", u8::from(h % 7 == 0), h % 1000).expect("write");
        } else {
            writeln!(out, "sme-{i:010},{}", h % 977).expect("write");
        }
    }
    out.flush().expect("flush");
}

/// Memory of process `pid` in MiB: `field` of /proc/PID/status (`VmRSS:` now, `VmHWM:` its
/// peak).
fn memory(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    kib as f64 / 1024.0
}

/// User + system CPU seconds of process `pid` so far (/proc/PID/stat fields 14 and 15).
fn cpu_seconds(pid: u32, ticks_per_second: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (in parentheses, and it may hold spaces) start with
    // field 3: utime (14) and stime (15) are the 12th and 13th of them.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / ticks_per_second
}

fn clock_ticks() -> f64 {
    let output = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("CLK_TCK")
}

struct Nodes {
    dir: PathBuf,
    plan: Plan,
    children: BTreeMap<String, Child>,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Nodes {
    /// `unseen job watch JOB --json` at the bank, its events as lines.
    fn watch(&self, job: &str) -> Child {
        Command::new(env!("CARGO_BIN_EXE_unseen"))
            .args(["job", "watch", job, "--json"])
            .env("UNSEEN_IDENTITY", self.dir.join("certs/modeller"))
            .env("UNSEEN_NODE", format!("bank@{}", self.plan.listen["bank"]))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("unseen job watch")
    }

    fn cli(&self, args: &[&str]) -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_unseen"))
            .args(args)
            .env("UNSEEN_IDENTITY", self.dir.join("certs/modeller"))
            .env("UNSEEN_NODE", format!("bank@{}", self.plan.listen["bank"]))
            .output()
            .expect("unseen");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

fn main() {
    let n = arg("--n").unwrap_or(1_000_000);
    let partition_rows = arg("--partition-rows").unwrap_or(psi::DEFAULT_PARTITION_ROWS);
    let workers = arg("--workers").unwrap_or(0);
    // The job's hosts: the tax bureau, and the utility company unless `--hosts 1`.
    let hosts = arg("--hosts").unwrap_or(2).clamp(1, 2);
    let dir = std::env::temp_dir().join(format!("unseen-bench-psi-scale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let mut plan = Plan::prepare(&dir, &data).expect("prepare");
    plan.federation = format!(
        "receive_timeout_secs = 3600\nmax_peer_rows = {}\npsi_partition_rows = {partition_rows}\n",
        n.max(1_000_000) * 2
    );
    // 90% of each party's ids are common to all three.
    let shift = n / 20;
    for (party, from) in [("bank", 0), ("tax", shift), ("utilities", 2 * shift)] {
        write_dataset(&dir, party, from, n);
    }
    let mut nodes = Nodes {
        dir: dir.clone(),
        plan,
        children: BTreeMap::new(),
    };
    for party in PARTIES {
        let config = dir.join(format!("{party}.toml"));
        let mut text = nodes.plan.config(party);
        if workers > 0 {
            let operators = "operators = [\"modeller\"]\n";
            let listed = format!("{operators}workers = [\"{party}-worker\"]\n");
            text = text.replacen(operators, &listed, 1);
            node::certs::issue(&dir.join("certs"), &[format!("{party}-worker")]).expect("cert");
        }
        std::fs::write(&config, text).expect("config");
        let log = std::fs::File::create(dir.join(format!("{party}.log"))).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_unseen"))
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("unseen serve");
        nodes.children.insert(party.to_owned(), child);
        let started = Instant::now();
        while std::net::TcpStream::connect(nodes.plan.listen[party]).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{party} never listened"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let pids: BTreeMap<String, u32> = (nodes.children.iter())
        .map(|(party, child)| (party.clone(), child.id()))
        .collect();
    for party in PARTIES {
        for k in 0..workers {
            let log_path = dir.join(format!("{party}-worker-{k}.log"));
            let child = Command::new(env!("CARGO_BIN_EXE_unseen"))
                .arg("worker")
                .env("UNSEEN_IDENTITY", dir.join(format!("certs/{party}-worker")))
                .env(
                    "UNSEEN_NODE",
                    format!("{party}@{}", nodes.plan.listen[party]),
                )
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log_path).expect("log"))
                .spawn()
                .expect("unseen worker");
            nodes.children.insert(format!("{party}-worker-{k}"), child);
            let started = Instant::now();
            while !std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .contains("working for the node")
            {
                assert!(started.elapsed() < Duration::from_secs(60), "no worker");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let ticks = clock_ticks();
    let worker_pids: Vec<u32> = (nodes.children.iter())
        .filter(|(name, _)| name.contains("-worker-"))
        .map(|(_, child)| child.id())
        .collect();
    let cpu = |pids: &[u32]| -> f64 { pids.iter().map(|&pid| cpu_seconds(pid, ticks)).sum() };
    let node_pids: Vec<u32> = pids.values().copied().collect();
    let idle: BTreeMap<&str, f64> = (PARTIES.iter())
        .map(|p| (*p, memory(pids[*p], "VmRSS:")))
        .collect();
    let spec = dir.join("job.toml");
    let mut text =
        "model_id = \"scale\"\ndataset = \"bank\"\n\n[[hosts]]\nparty = \"tax\"\ndataset = \"tax\"\n\n"
            .to_owned();
    if hosts == 2 {
        text.push_str("[[hosts]]\nparty = \"utilities\"\ndataset = \"utilities\"\n\n");
    }
    text.push_str("[train]\nmax_epochs = 1\n");
    std::fs::write(&spec, text).expect("spec");
    println!(
        "{n} ids per party (90% common), {} nodes over loopback mTLS, {workers} workers per \
         party, parts of {partition_rows} guest ids; PSI arithmetic: {}; CPU: {}",
        hosts + 1,
        psi::arithmetic(),
        unseen::cpu_summary()
    );
    let cpu_before = (cpu(&node_pids), cpu(&worker_pids));
    let started = Instant::now();
    let job = nodes.cli(&["job", "submit", spec.to_str().expect("path")]);
    let job = job.trim().to_owned();
    let peaks = {
        let pids = pids.clone();
        move || -> BTreeMap<&'static str, f64> {
            (PARTIES.iter())
                .map(|p| (*p, memory(pids[*p], "VmHWM:")))
                .collect()
        }
    };
    // PSI's own peak: read when the bank's events report 90% of PSI's batches done.
    let mut watch = nodes.watch(&job);
    let events = std::io::BufReader::new(watch.stdout.take().expect("stdout"));
    let in_psi = std::thread::spawn({
        let peaks = peaks.clone();
        move || {
            use std::io::BufRead;
            for line in events.lines().map_while(Result::ok) {
                let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if event["psi_progress"].as_f64() >= Some(0.9) {
                    return Some(peaks());
                }
            }
            None
        }
    });
    let aligned = loop {
        std::thread::sleep(Duration::from_millis(200));
        let status: serde_json::Value =
            serde_json::from_str(&nodes.cli(&["job", "status", &job, "--json"])).expect("json");
        match status["state"].as_str().unwrap_or("") {
            "queued" | "psi" => {}
            "training" => break status["aligned_rows"].as_u64().unwrap_or(0),
            _ => panic!("the job ended: {status}"),
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let node_cpu = cpu(&node_pids) - cpu_before.0;
    let worker_cpu = cpu(&worker_pids) - cpu_before.1;
    let cpu_spent = node_cpu + worker_cpu;
    let peak = peaks();
    let _ = watch.kill();
    let _ = watch.wait();
    let in_psi = in_psi.join().expect("watch").unwrap_or_default();
    let _ = nodes.cli(&["job", "cancel", &job]);
    println!("PSI through the nodes: {seconds:.1} s (to within 0.2 s), {aligned} rows aligned");
    println!(
        "CPU time of every process: {cpu_spent:.1} s (nodes {node_cpu:.1} s, workers \
         {worker_cpu:.1} s), {:.2} µs per id of the bank",
        cpu_spent / n as f64 * 1e6
    );
    for party in PARTIES {
        println!(
            "{party:<10} peak RSS {:>7.0} MiB by 90% of PSI, {:>7.0} MiB when training starts \
             (idle before: {:.0} MiB)",
            in_psi.get(party).copied().unwrap_or(f64::NAN),
            peak[party],
            idle[party]
        );
    }
}
