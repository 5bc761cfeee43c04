//! Faults injected into real node processes on loopback (`unseen serve`, one process per
//! party) in the middle of training. A party killed with SIGKILL and restarted, or frozen
//! with SIGSTOP and thawed: the others notice within seconds, the job resumes after the last
//! epoch every party kept and ends with the model of an uninterrupted run, weight for weight,
//! on every node. A party that does not come back within `resume_secs` is named by the
//! others; one stopped with SIGTERM tells them before it exits.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use unseen::local::{Plan, PARTIES};

/// Three `unseen serve` processes; killed when dropped, whatever the test did.
struct Processes {
    dir: PathBuf,
    listen: BTreeMap<String, SocketAddr>,
    children: BTreeMap<String, Child>,
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Processes {
    fn start(name: &str) -> Processes {
        Processes::start_with(name, false)
    }

    /// As [`Processes::start`]; with `workers`, every party also lists a certificate name
    /// `PARTY-worker` of its workers (issued by the federation's CA) and the nodes start
    /// without any worker.
    fn start_with(name: &str, workers: bool) -> Processes {
        let dir = std::env::temp_dir().join(format!("unseen-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
        let mut plan = Plan::prepare(&dir, &data).unwrap();
        // PSI in 15 parts, so that a party can be killed after some.
        plan.federation = format!(
            "receive_timeout_secs = 300\nbackoff_ms = 100\nresume_secs = {}\n\
             psi_partition_rows = 2048\n",
            RESUME.as_secs()
        );
        plan.policy = "max_models = 10\n".into();
        plan.scoring_models = vec!["reference".into()];
        for party in PARTIES {
            let mut config = plan.config(party);
            if workers {
                let operators = "operators = [\"modeller\"]\n";
                let listed = format!("{operators}workers = [\"{party}-worker\"]\n");
                config = config.replacen(operators, &listed, 1);
                let name = format!("{party}-worker");
                node::certs::issue(&dir.join("certs"), &[name]).unwrap();
            }
            std::fs::write(dir.join(format!("{party}.toml")), config).unwrap();
        }
        let mut processes = Processes {
            dir,
            listen: plan.listen.clone(),
            children: BTreeMap::new(),
        };
        for party in PARTIES {
            processes.spawn(party);
        }
        processes
    }

    /// Starts `party`'s node and waits until it listens.
    fn spawn(&mut self, party: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{party}.log")))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_unseen"))
            .args(["serve", "--config"])
            .arg(self.dir.join(format!("{party}.toml")))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.insert(party.to_owned(), child);
        let started = Instant::now();
        while TcpStream::connect(self.listen[party]).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{party} never listened"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `unseen worker` for `party`'s node with the identity in `certs/IDENTITY`, logging to
    /// `log`.
    fn worker(&self, party: &str, identity: &str, log: &Path) -> Child {
        Command::new(env!("CARGO_BIN_EXE_unseen"))
            .arg("worker")
            .env(
                "UNSEEN_IDENTITY",
                self.dir.join(format!("certs/{identity}")),
            )
            .env("UNSEEN_NODE", format!("{party}@{}", self.listen[party]))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap()
    }

    /// Starts a worker of `party` (`unseen worker`) under the name `worker`, and waits until
    /// it works for the node.
    fn spawn_worker(&mut self, party: &str, worker: &str) {
        let path = self.dir.join(format!("{worker}.log"));
        let child = self.worker(party, &format!("{party}-worker"), &path);
        self.children.insert(worker.to_owned(), child);
        let started = Instant::now();
        while !std::fs::read_to_string(&path)
            .unwrap()
            .contains("working for the node")
        {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{worker} never connected: {}",
                std::fs::read_to_string(&path).unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `party`'s count of PSI work units run `by` ("worker" or "node"), from its metrics
    /// endpoint (the address its log gives).
    fn work_units(&self, party: &str, by: &str) -> f64 {
        use std::io::{Read, Write};
        let log = std::fs::read_to_string(self.dir.join(format!("{party}.log"))).unwrap();
        let address = log
            .rsplit("metrics_address=Some(")
            .next()
            .and_then(|rest| rest.split(')').next())
            .unwrap_or_else(|| panic!("{party} logged no metrics address: {log}"));
        let mut stream = TcpStream::connect(address).unwrap();
        stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        let series = format!("unseen_psi_work_total{{by=\"{by}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    /// A worker of `party`'s node with the identity in `certs/IDENTITY`, which the node must
    /// refuse: waits for the refusal in the worker's log, then stops it.
    fn assert_refused_worker(&mut self, party: &str, identity: &str) {
        let worker = format!("refused-{party}-{identity}");
        let path = self.dir.join(format!("{worker}.log"));
        let mut child = self.worker(party, identity, &path);
        let started = Instant::now();
        let expected = format!("not valid for any worker of {party}");
        loop {
            let log = std::fs::read_to_string(&path).unwrap();
            if log.contains(&expected) {
                break;
            }
            assert!(
                !log.contains("working for the node")
                    && started.elapsed() < Duration::from_secs(60),
                "{identity} as a worker of {party}: {log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops a worker with SIGTERM: the units of work it says it did.
    fn stop_worker(&mut self, worker: &str) -> u64 {
        self.kill(worker, "-TERM");
        let exit = self.children.get_mut(worker).unwrap().wait().unwrap();
        assert!(exit.success(), "{worker} exited with {exit}");
        let log = std::fs::read_to_string(self.dir.join(format!("{worker}.log"))).unwrap();
        let said = log
            .lines()
            .find_map(|l| l.strip_prefix("worker stopping: "))
            .unwrap_or_else(|| panic!("{worker} did not say what it did: {log}"));
        said.strip_suffix(" units of work done")
            .unwrap()
            .parse()
            .unwrap()
    }

    /// `unseen ARGS` as the modeller against `party`'s node: (success, stdout, stderr).
    fn cli(&self, party: &str, args: &[&str]) -> (bool, String, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_unseen"))
            .args(args)
            .env("UNSEEN_IDENTITY", self.dir.join("certs/modeller"))
            .env("UNSEEN_NODE", format!("{party}@{}", self.listen[party]))
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// The platform's scores of the bank's first `count` ids with the reference model:
    /// (success, stdout, stderr).
    fn score(&self, count: usize) -> (bool, String, String) {
        let bank = std::fs::read_to_string(self.dir.join("bank.csv")).unwrap();
        let ids: Vec<&str> = (bank.lines().skip(1).take(count))
            .map(|l| l.split(',').next().unwrap())
            .collect();
        let output = Command::new(env!("CARGO_BIN_EXE_unseen"))
            .args(["score", "--json", "--model", "reference"])
            .args(&ids)
            .env("UNSEEN_IDENTITY", self.dir.join("certs/platform"))
            .env("UNSEEN_NODE", format!("bank@{}", self.listen["bank"]))
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// `party`'s events of `job` so far, as JSON, one per line (follows the job until it
    /// ends; `events` waits for that).
    fn watch(&self, party: &str, job: &str) -> Child {
        Command::new(env!("CARGO_BIN_EXE_unseen"))
            .args(["job", "watch", job, "--json"])
            .env("UNSEEN_IDENTITY", self.dir.join("certs/modeller"))
            .env("UNSEEN_NODE", format!("{party}@{}", self.listen[party]))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Follows `party`'s events of `job` until it has matched part `part` of PSI (still in
    /// PSI: training must not have begun); the watch, still running, and the last part
    /// matched.
    fn matched(&self, party: &str, job: &str, part: u64) -> (Child, u64) {
        let mut watch = self.watch(party, job);
        let lines = BufReader::new(watch.stdout.take().unwrap()).lines();
        let mut matched = 0;
        for line in lines {
            let event: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
            if let Some((k, _)) = matched_part(&event) {
                matched = k;
                if k >= part {
                    break;
                }
            }
            assert_ne!(event["state"], "training", "PSI ended before part {part}");
        }
        assert!(
            matched >= part,
            "{party}'s events ended after part {matched}"
        );
        (watch, matched)
    }

    /// All of `party`'s events of an ended `job`.
    fn events(&self, party: &str, job: &str) -> Vec<serde_json::Value> {
        let (ok, events, stderr) = self.cli(party, &["job", "watch", job, "--json"]);
        assert!(ok, "{stderr}");
        events
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn status(&self, party: &str, job: &str) -> serde_json::Value {
        let (ok, out, err) = self.cli(party, &["job", "status", job, "--json"]);
        assert!(ok, "{party}: {err}");
        serde_json::from_str(&out).unwrap()
    }

    /// Submits a training job of `model` at the bank (one epoch, or enough to outlast the
    /// test) and returns its id once the bank has finished its first epoch.
    fn train(&self, model: &str, epochs: usize) -> String {
        let spec = self.dir.join(format!("{model}.toml"));
        std::fs::write(
            &spec,
            format!(
                "model_id = \"{model}\"\ndataset = \"bank\"\n\n\
                 [[hosts]]\nparty = \"tax\"\ndataset = \"tax\"\n\n\
                 [[hosts]]\nparty = \"utilities\"\ndataset = \"utilities\"\n\n\
                 [train]\nmax_epochs = {epochs}\nseed = 3\n\
                 early_stopping = {{ kind = \"loss\", patience = 100000, min_delta = 0 }}\n"
            ),
        )
        .unwrap();
        let (ok, out, err) = self.cli("bank", &["job", "submit", spec.to_str().unwrap()]);
        assert!(ok, "{err}");
        out.trim().to_owned()
    }

    /// Waits until `party`'s record of `job` is past epoch `epoch`.
    fn wait_epoch(&self, party: &str, job: &str, epoch: u64) {
        let started = Instant::now();
        loop {
            let status = self.status(party, job);
            let state = status["state"].as_str().unwrap();
            assert!(["queued", "psi", "training"].contains(&state), "{status}");
            if status["epochs"].as_u64().unwrap() >= epoch {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(300), "{status}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `job` has ended on `party`; its status and how long that took.
    fn wait_end(&self, party: &str, job: &str, since: Instant) -> (serde_json::Value, Duration) {
        self.wait_for(party, job, since, |state| {
            !["queued", "psi", "training", "interrupted"].contains(&state)
        })
    }

    /// Waits until `party` reports `job` interrupted.
    fn wait_interrupted(&self, party: &str, job: &str, since: Instant) -> Duration {
        let (status, took) = self.wait_for(party, job, since, |state| {
            !["queued", "psi", "training"].contains(&state)
        });
        assert_eq!(status["state"], "interrupted", "{party}: {status}");
        took
    }

    fn wait_for(
        &self,
        party: &str,
        job: &str,
        since: Instant,
        done: impl Fn(&str) -> bool,
    ) -> (serde_json::Value, Duration) {
        loop {
            let status = self.status(party, job);
            if done(status["state"].as_str().unwrap()) {
                return (status, since.elapsed());
            }
            assert!(
                since.elapsed() < Duration::from_secs(300),
                "{party}: {status}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `party`'s part of `model` (its weights, calibration, …) without the model's name, and
    /// the bank's training curve and final metrics.
    fn model(&self, party: &str, model: &str) -> serde_json::Value {
        let (ok, out, err) = self.cli(party, &["model", "show", model]);
        assert!(ok, "{party}: {err}");
        let mut shown: serde_json::Value = serde_json::from_str(&out).unwrap();
        shown["model"]["model_id"] = serde_json::Value::Null;
        let report = &shown["report"];
        serde_json::json!({
            "model": shown["model"],
            "history": report["history"],
            "metrics": report["evaluation"]["metrics"],
        })
    }

    /// Every node holds the same part of `model` as of `reference`, and the bank the same
    /// training curve, to the shares' fixed point (`common::assert_close`).
    fn assert_same_model(&self, reference: &str, model: &str) {
        for party in PARTIES {
            crate::common::assert_close(
                &self.model(party, model),
                &self.model(party, reference),
                &format!("{party}'s part of {model}"),
            );
        }
    }

    /// Waits for `party`'s killed process, and starts it again.
    fn restart(&mut self, party: &str) {
        let _ = self.children.get_mut(party).unwrap().wait();
        self.spawn(party);
    }

    fn kill(&mut self, party: &str, signal: &str) -> Instant {
        let child = self.children.get_mut(party).unwrap();
        let pid = child.id().to_string();
        assert!(Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success());
        Instant::now()
    }
}

/// How soon the others must notice a killed party (its port refuses at once: a call's retries
/// stop after `peer_dead_secs`, 8 s) and a frozen one (nothing answers: a stuck call waits
/// for 8 s of unanswered probes, a waiting job as long). The bounds leave room for a loaded
/// machine (alone, this machine takes 6.5 s and 8.1 s); the receive timeout, 300 s here, is
/// what noticed either before, ten times the bound.
const KILLED: Duration = Duration::from_secs(30);
const FROZEN: Duration = Duration::from_secs(45);

/// How long an interrupted job waits for its parties to be back.
const RESUME: Duration = Duration::from_secs(20);

/// Epochs of the jobs that resume (early stopping may end them sooner: the same way).
const EPOCHS: usize = 8;

/// `(k, n)` of a guest's event "part k of n matched".
fn matched_part(event: &serde_json::Value) -> Option<(u64, u64)> {
    let message = event["message"].as_str()?.strip_prefix("part ")?;
    let (k, n) = message.strip_suffix(" matched")?.split_once(" of ")?;
    Some((k.parse().ok()?, n.parse().ok()?))
}

/// The parts an attempt's PSI kept from an earlier attempt, as its events say.
fn kept_parts(attempt: &[serde_json::Value]) -> Option<u64> {
    attempt.iter().find_map(|e| {
        let message = e["message"].as_str()?;
        let (kept, _) = message
            .strip_suffix(" parts kept from an earlier attempt")?
            .split_once(" of ")?;
        kept.parse().ok()
    })
}

/// The others' view of a job after `party` failed: failed, naming `party`, within `within`.
fn assert_named(
    processes: &Processes,
    job: &str,
    party: &str,
    since: Instant,
    cause: &str,
    within: Duration,
) {
    for other in PARTIES.iter().filter(|p| **p != party) {
        let (status, took) = processes.wait_end(other, job, since);
        let error = status["error"].as_str().unwrap();
        eprintln!("{cause}: {other} stopped the job after {took:.1?}: {error}");
        assert_eq!(status["state"], "failed", "{other}: {status}");
        assert!(
            error.contains(party),
            "{other} does not name {party}: {error}"
        );
        assert!(took < within, "{other} took {took:?} to notice {party}");
    }
}

/// Waits for `job` to succeed on every node after an interruption `since`; how long the bank
/// took.
fn assert_resumed(processes: &Processes, job: &str, since: Instant, cause: &str) {
    for party in PARTIES {
        let (status, took) = processes.wait_end(party, job, since);
        assert_eq!(status["state"], "succeeded", "{party}: {status}");
        if party == "bank" {
            eprintln!("{cause}: the job resumed and ended {took:.1?} later");
        }
    }
}

#[test]
fn a_party_killed_or_frozen_mid_training_resumes_to_the_same_model() {
    let mut processes = Processes::start("faults");
    let reference = processes.train("reference", EPOCHS);
    let (status, _) = processes.wait_end("bank", &reference, Instant::now());
    assert_eq!(status["state"], "succeeded", "{status}");

    // Scoring while a host is down fails naming it, and scores the same once it is back.
    let (ok, before, stderr) = processes.score(5);
    assert!(ok && before.contains("probability"), "{before}{stderr}");
    processes.kill("tax", "-KILL");
    let _ = processes.children.get_mut("tax").unwrap().wait();
    let (ok, during, stderr) = processes.score(5);
    eprintln!("tax killed: scoring answered {ok}: {during}{stderr}");
    assert!(!during.contains("probability"), "{during}");
    assert!(
        stderr.contains("tax") || during.contains("tax"),
        "{during}{stderr}"
    );
    processes.spawn("tax");
    let (ok, after, stderr) = processes.score(5);
    assert!(ok, "{stderr}");
    assert_eq!(after, before, "the same scores after the restart");

    // A host killed after its second epoch, restarted at once.
    let job = processes.train("killed-host", EPOCHS);
    processes.wait_epoch("bank", &job, 1);
    processes.wait_epoch("tax", &job, 2);
    let killed = processes.kill("tax", "-KILL");
    let took = processes.wait_interrupted("bank", &job, killed);
    eprintln!("tax killed: the bank noticed after {took:.1?}");
    assert!(took < KILLED, "{took:?}");
    processes.restart("tax");
    assert_resumed(&processes, &job, killed, "tax killed");
    processes.assert_same_model("reference", "killed-host");

    // The guest killed after its third epoch, restarted: it takes the job up.
    let job = processes.train("killed-guest", EPOCHS);
    processes.wait_epoch("bank", &job, 3);
    let killed = processes.kill("bank", "-KILL");
    for host in ["tax", "utilities"] {
        let took = processes.wait_interrupted(host, &job, killed);
        eprintln!("bank killed: {host} noticed after {took:.1?}");
        assert!(took < KILLED, "{host}: {took:?}");
    }
    processes.restart("bank");
    assert_resumed(&processes, &job, killed, "bank killed");
    processes.assert_same_model("reference", "killed-guest");

    // A host killed during PSI after some parts: no party kept aligned rows yet, so the next
    // attempt aligns again, under the same plan and only on the parts not every party
    // finished; training starts over, to the same model.
    let job = processes.train("killed-in-psi", EPOCHS);
    let (mut watch, matched_before_kill) = processes.matched("bank", &job, 3);
    let killed = processes.kill("utilities", "-KILL");
    let _ = watch.kill();
    let _ = watch.wait();
    processes.restart("utilities");
    assert_resumed(&processes, &job, killed, "utilities killed during PSI");
    processes.assert_same_model("reference", "killed-in-psi");
    let events = processes.events("bank", &job);
    // Attempts start with "aligning …"; the second names the parts it kept.
    let attempts: Vec<&[serde_json::Value]> = events
        .split(|e| e["message"].as_str().unwrap_or("").starts_with("aligning"))
        .skip(1)
        .collect();
    assert_eq!(attempts.len(), 2, "PSI ran again: {events:?}");
    let parts_run = |attempt: &[serde_json::Value]| -> Vec<(u64, u64)> {
        attempt.iter().filter_map(matched_part).collect()
    };
    let first = parts_run(attempts[0]);
    let parts = first[0].1;
    let kept = kept_parts(attempts[1]).expect("the second attempt kept parts");
    // The guest keeps a part before its hosts have it; the one in flight runs again.
    assert!(
        kept + 1 >= first.len() as u64 && kept <= first.len() as u64,
        "{kept} kept after {first:?}"
    );
    assert!(kept >= matched_before_kill - 1 && kept >= 2, "{kept}");
    let second = parts_run(attempts[1]);
    eprintln!(
        "utilities killed after the bank matched part {matched_before_kill} of {parts}: \
         {kept} parts kept, {} run again",
        second.len()
    );
    assert_eq!(
        second,
        (kept + 1..=parts).map(|k| (k, parts)).collect::<Vec<_>>(),
        "the second attempt ran {second:?} after keeping {kept}"
    );
    // The killed host's events tell the same (the parts every party kept: none, had the
    // restarted host lost what it kept).
    let host_events = processes.events("utilities", &job);
    let host_kept: Vec<u64> = host_events
        .split(|e| e["message"].as_str().unwrap_or("").starts_with("aligning"))
        .filter_map(kept_parts)
        .collect();
    assert_eq!(host_kept, vec![kept]);

    // A host frozen (SIGSTOP: its sockets stay open, nothing answers, as with a cut cable),
    // then thawed.
    let job = processes.train("frozen-host", EPOCHS);
    processes.wait_epoch("bank", &job, 2);
    let frozen = processes.kill("utilities", "-STOP");
    let took = processes.wait_interrupted("bank", &job, frozen);
    eprintln!("utilities frozen: the bank noticed after {took:.1?}");
    assert!(took < FROZEN, "{took:?}");
    processes.kill("utilities", "-CONT");
    assert_resumed(&processes, &job, frozen, "utilities frozen");
    processes.assert_same_model("reference", "frozen-host");

    // A host whose data changed while it was down cannot resume: every node ends the job,
    // naming it, within seconds of its return.
    let job = processes.train("changed-data", EPOCHS);
    processes.wait_epoch("bank", &job, 1);
    processes.wait_epoch("tax", &job, 1);
    processes.kill("tax", "-KILL");
    let _ = processes.children.get_mut("tax").unwrap().wait();
    let csv = processes.dir.join("tax.csv");
    let original = std::fs::read_to_string(&csv).unwrap();
    let changed: Vec<String> = original
        .lines()
        .enumerate()
        .map(|(i, line)| match (i, line.split_once(',')) {
            (0, _) | (_, None) => line.to_owned(),
            (_, Some((id, rest))) => format!("{id},{}", rest.replacen(',', "1,", 1)),
        })
        .collect();
    std::fs::write(&csv, changed.join("\n") + "\n").unwrap();
    processes.spawn("tax");
    let back = Instant::now();
    for party in PARTIES {
        let (status, took) = processes.wait_end(party, &job, back);
        let error = status["error"].as_str().unwrap();
        eprintln!("tax's data changed: {party} ended the job {took:.1?} after its return: {error}");
        assert_eq!(status["state"], "failed", "{party}: {status}");
        assert!(
            error.contains("tax") && error.contains("resume"),
            "{party}: {error}"
        );
        assert!(took < KILLED, "{party}: {took:?}");
    }
    std::fs::write(&csv, original).unwrap();

    // Nothing a killed node had written is lost: its jobs, its models and its audit chain.
    let (ok, listed, stderr) = processes.cli("bank", &["job", "list", "--json"]);
    assert!(ok, "{stderr}");
    let jobs: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    assert_eq!(jobs.len(), 6, "{listed}");
    for party in PARTIES {
        let (ok, verified, stderr) = processes.cli(party, &["audit", "verify"]);
        assert!(
            ok && verified.contains("intact"),
            "{party}: {verified}{stderr}"
        );
    }

    // A host killed and not back within resume_secs: named everywhere; restarted later, it
    // ends the job too (its guest no longer runs it).
    let job = processes.train("lost-host", 500);
    processes.wait_epoch("bank", &job, 1);
    let killed = processes.kill("tax", "-KILL");
    assert_named(
        &processes,
        &job,
        "tax",
        killed,
        "tax killed for good",
        KILLED + RESUME,
    );
    processes.restart("tax");
    let (status, took) = processes.wait_end("tax", &job, Instant::now());
    eprintln!(
        "tax back too late: it ended the job after {took:.1?}: {}",
        status["error"]
    );
    assert_eq!(status["state"], "failed", "{status}");
    assert!(took < KILLED, "{took:?}");
    let again = processes.train("lost-host", 1);
    let (status, _) = processes.wait_end("bank", &again, Instant::now());
    assert_eq!(
        status["state"], "succeeded",
        "a failed job leaves the name unserved: its next version trains: {status}"
    );

    // A host stopped with SIGTERM: it tells its peers before it exits; the job ends.
    let job = processes.train("stopped-host", 500);
    processes.wait_epoch("bank", &job, 1);
    let stopped = processes.kill("utilities", "-TERM");
    assert_named(
        &processes,
        &job,
        "utilities",
        stopped,
        "utilities stopped",
        KILLED,
    );
    let exit = processes
        .children
        .get_mut("utilities")
        .unwrap()
        .wait()
        .unwrap();
    assert!(exit.success(), "utilities exited with {exit}");
    let _ = std::fs::remove_dir_all(&processes.dir);
}

/// Workers (`unseen worker`, processes on loopback) take the group operations of PSI from
/// their nodes: two per party give the model of a run without any, and workers killed in the
/// middle of PSI (one holding work the node gave it) are replaced without changing the
/// result or costing the job an attempt.
#[test]
fn workers_do_the_psi_work_and_either_may_die_mid_job() {
    let mut processes = Processes::start_with("workers", true);
    // Only the party's own workers: not an operator, a peer's node or another party's worker
    // (all from the same CA here).
    for identity in ["modeller", "tax", "tax-worker"] {
        processes.assert_refused_worker("bank", identity);
    }
    let reference = processes.train("reference", EPOCHS);
    let (status, _) = processes.wait_end("bank", &reference, Instant::now());
    assert_eq!(status["state"], "succeeded", "{status}");

    for party in PARTIES {
        for k in 1..=2 {
            processes.spawn_worker(party, &format!("{party}-{k}"));
        }
    }
    let job = processes.train("with-workers", EPOCHS);
    let (mut watch, _) = processes.matched("bank", &job, 3);
    // One worker of the bank and one of a host die; the bank's is replaced at once. The
    // bank's is frozen first, so that it dies holding work the node gave it.
    processes.kill("bank-1", "-STOP");
    std::thread::sleep(Duration::from_secs(1));
    processes.kill("bank-1", "-KILL");
    processes.kill("tax-1", "-KILL");
    processes.spawn_worker("bank", "bank-3");
    let _ = watch.kill();
    let _ = watch.wait();
    for party in PARTIES {
        let (status, _) = processes.wait_end(party, &job, Instant::now());
        assert_eq!(status["state"], "succeeded", "{party}: {status}");
    }
    processes.assert_same_model("reference", "with-workers");
    let events = processes.events("bank", &job);
    let attempts = events
        .iter()
        .filter(|e| e["message"].as_str().unwrap_or("").starts_with("aligning"))
        .count();
    assert_eq!(
        attempts, 1,
        "a worker's death cost the job an attempt: {events:?}"
    );
    for party in PARTIES {
        let by_workers = processes.work_units(party, "worker");
        let by_node = processes.work_units(party, "node");
        eprintln!("{party}: {by_workers} units of PSI work by workers, {by_node} by the node");
        assert!(by_workers > 0.0, "{party}'s workers ran nothing");
    }
    let mut done = BTreeMap::new();
    for worker in ["bank-2", "bank-3", "tax-2", "utilities-1", "utilities-2"] {
        done.insert(worker, processes.stop_worker(worker));
    }
    eprintln!("units of PSI work done by the workers alive at the end: {done:?}");
    for (worker, units) in &done {
        assert!(*units > 0, "{worker} did no work: {done:?}");
    }
    // Every node says in its audit log which workers came and went.
    for party in PARTIES {
        let expected = if party == "bank" { 3 } else { 2 };
        let started = Instant::now();
        loop {
            let (ok, out, err) = processes.cli(party, &["audit", "show", "--json"]);
            assert!(ok, "{err}");
            let joined = out.matches("worker.joined").count();
            let left = out.matches("worker.left").count();
            if party == "bank" {
                assert!(out.matches("worker.refused").count() >= 3, "{out}");
            }
            if (joined, left) == (expected, expected) {
                break;
            }
            // A worker's leaving is recorded once its node sees the stream end.
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{party}: {joined} joined, {left} left: {out}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let _ = std::fs::remove_dir_all(&processes.dir);
}
