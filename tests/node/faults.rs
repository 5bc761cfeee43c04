//! Faults injected into real node processes on loopback (`unseen serve`, one process per
//! party): a party killed with SIGKILL or stopped with SIGTERM in the middle of training. The
//! other parties stop the job within seconds and name the party at fault; a party that
//! restarts records the job it lost, and the model id is free again everywhere.

use std::collections::BTreeMap;
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
        let dir = std::env::temp_dir().join(format!("unseen-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
        let mut plan = Plan::prepare(&dir, &data).unwrap();
        plan.federation = "receive_timeout_secs = 300\nbackoff_ms = 100\n".into();
        plan.policy = "max_models = 10\n".into();
        for party in PARTIES {
            std::fs::write(dir.join(format!("{party}.toml")), plan.config(party)).unwrap();
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
                 [train]\nmax_epochs = {epochs}\nbatch_size = 4096\nlearning_rate = 0.001\nseed = 3\n"
            ),
        )
        .unwrap();
        let (ok, out, err) = self.cli("bank", &["job", "submit", spec.to_str().unwrap()]);
        assert!(ok, "{err}");
        out.trim().to_owned()
    }

    /// Waits until `party`'s record of `job` is past its first epoch.
    fn wait_epoch(&self, party: &str, job: &str) {
        let started = Instant::now();
        loop {
            let status = self.status(party, job);
            let state = status["state"].as_str().unwrap();
            assert!(["queued", "psi", "training"].contains(&state), "{status}");
            if status["epochs"].as_u64().unwrap() >= 1 {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(300), "{status}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `job` has ended on `party`; its status and how long that took.
    fn wait_end(&self, party: &str, job: &str, since: Instant) -> (serde_json::Value, Duration) {
        loop {
            let status = self.status(party, job);
            if !["queued", "psi", "training"].contains(&status["state"].as_str().unwrap()) {
                return (status, since.elapsed());
            }
            assert!(
                since.elapsed() < Duration::from_secs(120),
                "{party} still runs the job: {status}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
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

/// How soon the others must name a killed party (its port refuses at once: a call's retries
/// stop after `peer_dead_secs`, 8 s) and a frozen one (nothing answers: a stuck call waits
/// for 8 s of unanswered probes, a waiting job as long). The bounds leave room for a loaded
/// machine (alone, this machine takes 6.5 s and 18 s); the receive timeout, 300 s here, is
/// what noticed either before, ten times the bound.
const KILLED: Duration = Duration::from_secs(30);
const FROZEN: Duration = Duration::from_secs(45);

/// The others' view of a job after `party` failed: failed, naming `party`, within seconds.
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

#[test]
fn a_party_killed_or_stopped_mid_training_is_named_within_seconds() {
    let mut processes = Processes::start("faults");

    // A host killed: the bank and the other host name it; restarted, it records the job it
    // lost, and the model id is free again on every node.
    let job = processes.train("killed-host", 500);
    processes.wait_epoch("bank", &job);
    let killed = processes.kill("tax", "-KILL");
    assert_named(&processes, &job, "tax", killed, "tax killed", KILLED);
    let _ = processes.children.get_mut("tax").unwrap().wait();
    processes.spawn("tax");
    let (status, _) = processes.wait_end("tax", &job, Instant::now());
    assert_eq!(status["state"], "failed", "{status}");
    assert!(
        status["error"].as_str().unwrap().contains("restart"),
        "{status}"
    );
    let again = processes.train("killed-host", 1);
    let (status, _) = processes.wait_end("bank", &again, Instant::now());
    assert_eq!(status["state"], "succeeded", "{status}");

    // The guest killed: both hosts name it.
    let job = processes.train("killed-guest", 500);
    processes.wait_epoch("bank", &job);
    let killed = processes.kill("bank", "-KILL");
    for host in ["tax", "utilities"] {
        let (status, took) = processes.wait_end(host, &job, killed);
        let error = status["error"].as_str().unwrap();
        eprintln!("bank killed: {host} stopped the job after {took:.1?}: {error}");
        assert_eq!(status["state"], "failed", "{host}: {status}");
        assert!(error.contains("bank"), "{host}: {error}");
        assert!(took < KILLED, "{host} took {took:?}");
    }
    let _ = processes.children.get_mut("bank").unwrap().wait();
    processes.spawn("bank");
    let (status, _) = processes.wait_end("bank", &job, Instant::now());
    assert_eq!(status["state"], "failed", "{status}");
    // Nothing a killed node had written is lost: its jobs, its model and its audit chain.
    let (ok, listed, stderr) = processes.cli("bank", &["job", "list", "--json"]);
    assert!(ok, "{stderr}");
    let jobs: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    assert_eq!(jobs.len(), 3, "{listed}");
    let (ok, models, stderr) = processes.cli("bank", &["model", "list"]);
    assert!(ok && models.contains("killed-host"), "{models}{stderr}");
    for party in ["bank", "tax"] {
        let (ok, verified, stderr) = processes.cli(party, &["audit", "verify"]);
        assert!(
            ok && verified.contains("intact"),
            "{party}: {verified}{stderr}"
        );
    }

    // A host frozen (SIGSTOP: its sockets stay open, nothing answers, as with a cut cable):
    // named too; thawed, it ends the job by itself.
    let job = processes.train("frozen-host", 500);
    processes.wait_epoch("bank", &job);
    let frozen = processes.kill("tax", "-STOP");
    assert_named(&processes, &job, "tax", frozen, "tax frozen", FROZEN);
    processes.kill("tax", "-CONT");
    let (status, took) = processes.wait_end("tax", &job, Instant::now());
    eprintln!(
        "tax thawed: it stopped the job after {took:.1?}: {}",
        status["error"]
    );
    assert_eq!(status["state"], "failed", "{status}");

    // A host stopped with SIGTERM: it tells its peers before it exits.
    let job = processes.train("stopped-host", 500);
    processes.wait_epoch("bank", &job);
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
