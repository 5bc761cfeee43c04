//! Refusals reach the modeller clearly and the node logs them.

use std::process::Command;

use unseen::local::HOSTS;

use crate::common::*;

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
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("the server's certificate is not from your CA")
            && said.matches("UnknownIssuer").count() == 1,
        "{said}"
    );
    // The node counts the failed handshake on its own task, which may finish after the
    // client has given up: wait for it (at most 10 s).
    let counted = || {
        let text = federation.state("bank").metrics.render();
        text.contains("unseen_refused_total{reason=\"tls\"}")
            .then_some(())
            .ok_or(text)
    };
    let mut waited = 0;
    while counted().is_err() && waited < 200 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        waited += 1;
    }
    if let Err(text) = counted() {
        panic!("no TLS refusal counted:\n{text}");
    }

    // A certificate from the right CA but for another name cannot speak for the bank.
    node::certs::issue(&federation.dir.join("certs"), &["mallory".to_string()]).unwrap();
    let mut client = federation.peer_client("tax", "mallory").await;
    let error = client
        .propose(proposal("0".repeat(32), "stolen"))
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
    let channel = federation.channel_as("bank", "mallory").await;
    let error = node::proto::jobs_client::JobsClient::new(channel)
        .list(node::proto::ListJobsRequest::default())
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
    let job = training(&federation, &long).await;
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
    let mut as_bank = federation.peer_client("tax", "bank").await;
    let proposal = proposal("ab".repeat(16), "retried");
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
        model_id: "other@1".into(),
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
        attempt: 0,
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

    // A host shutting down mid-job tells its peers: the job fails at once, naming it. (With
    // utilities alone: tax's budget of models for the bank is spent.)
    let doomed = federation.spec(
        "doomed.toml",
        &TRAIN
            .replace("max_epochs = 8", "max_epochs = 500")
            .replace("sme-credit", "doomed")
            .replace("[[hosts]]\nparty = \"tax\"\ndataset = \"tax\"\n\n", ""),
    );
    let doomed = training(&federation, &doomed).await;
    let utilities = federation.inner.nodes.remove("utilities").unwrap();
    let utilities_state = utilities.state.clone();
    let stopping = std::time::Instant::now();
    utilities.shutdown().await.unwrap();
    let (ok, _, stderr) = federation.cli(&["job", "watch", &doomed]).await;
    assert!(
        !ok && stderr.contains("utilities stopped the job: utilities shut down"),
        "{stderr}"
    );
    assert!(
        stopping.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        stopping.elapsed()
    );
    let record = utilities_state.store.job(&doomed).unwrap().unwrap();
    assert_eq!(
        (record.state.as_str(), record.error.as_str()),
        ("cancelled", "utilities shut down")
    );

    // A job a crash left unfinished in the store is failed at the next start, with its end
    // audited (its peers are told too, one attempt each).
    let ghost = unfinished(&record, &"ef".repeat(16));
    utilities_state.store.put_job(&ghost).unwrap();
    drop(utilities_state);
    let config = node::config::NodeConfig::load(&federation.dir.join("utilities.toml")).unwrap();
    let restarted = node::start(config).await.unwrap();
    let failed = restarted.state.store.job(&ghost.job_id).unwrap().unwrap();
    assert_eq!(failed.state, "failed");
    let mut ended = false;
    for _ in 0..50 {
        ended = node::audit::records(&restarted.state.store)
            .unwrap()
            .iter()
            .any(|r| r.job_id == ghost.job_id && r.event == "job.ended");
        if ended {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ended, "the interrupted job's end is audited");
    restarted.shutdown().await.unwrap();

    // A host that is down fails the job with a message naming it, after the retries.
    let again = federation.spec("again.toml", &TRAIN.replace("sme-credit", "again"));
    let (ok, _, stderr) = federation.cli(&["train", &again]).await;
    assert!(!ok);
    assert!(
        stderr.contains("peer utilities: propose failed (after 4 attempts)"),
        "{stderr}"
    );
    federation.stop().await;
}

/// A host whose data is bad stops the job; what reaches the bank, the other host and every
/// audit log is a category and an error id, not the file, line, column or value, which the
/// host keeps in its job record under that id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosts_bad_cell_stays_on_the_host() {
    let federation = Federation::start("leaks", false).await;
    let csv = federation.dir.join("tax.csv");
    let mut text = std::fs::read_to_string(&csv).unwrap();
    let width = text.lines().next().unwrap().split(',').count();
    text.push_str(&format!(
        "new-firm,{}\n",
        vec!["secret-cell-7"; width - 1].join(",")
    ));
    std::fs::write(&csv, text).unwrap();
    let spec = federation.spec(
        "job.toml",
        &TRAIN.replace("max_epochs = 8", "max_epochs = 1"),
    );
    let (ok, _, stderr) = federation.cli(&["train", &spec]).await;
    assert!(
        !ok && stderr.contains("tax stopped the job: bad data (error "),
        "{stderr}"
    );
    assert!(
        !stderr.contains("secret-cell-7") && !stderr.contains("tax.csv"),
        "{stderr}"
    );
    let error_id: String = stderr
        .split("(error ")
        .nth(1)
        .unwrap()
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    assert_eq!(error_id.len(), 12, "{stderr}");
    let last_job = |party: &str| {
        let mut jobs = federation.state(party).store.jobs().unwrap();
        jobs.sort_by_key(|j| j.created_unix_ms);
        jobs.pop().unwrap()
    };
    // Every party's job ends; only tax's record holds the cell, under the id the bank read.
    for party in ["bank", "tax", "utilities"] {
        let record = loop {
            let record = last_job(party);
            if record.is_final() {
                break record;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        assert_eq!(record.state, "failed", "{party}");
        let holds = record.error.contains("secret-cell-7") && record.error.contains("tax.csv");
        assert_eq!(holds, party == "tax", "{party}: {}", record.error);
        assert!(
            record.error.contains(&error_id),
            "{party}: {}",
            record.error
        );
        let audit = serde_json::to_string(&audit_lines(&federation, party, "").await).unwrap();
        assert!(!audit.contains("secret-cell-7"), "{party}'s audit log");
    }
    federation.stop().await;
}

/// Submits the job of `spec` and waits until the bank has seen its first epoch; its id.
async fn training(federation: &Federation, spec: &str) -> String {
    let (ok, job, stderr) = federation.cli(&["job", "submit", spec]).await;
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
    job
}

/// A job record as a crash leaves it: not final.
fn unfinished(like: &node::store::JobRecord, job_id: &str) -> node::store::JobRecord {
    node::store::JobRecord {
        job_id: job_id.to_owned(),
        state: "training".into(),
        error: String::new(),
        ..like.head()
    }
}

/// A flood of proposals: a host runs at most `federation.max_jobs_per_peer` (4) of a guest's
/// jobs at once and refuses the rest as busy, naming the key; they do not pile up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_proposals_is_refused_as_busy() {
    let federation = Federation::start_with("flood", false, "max_models = 10\n").await;
    let mut as_bank = federation.peer_client("tax", "bank").await;
    let (mut accepted, mut busy) = (0, 0);
    for k in 0..7u32 {
        let reply = as_bank
            .propose(proposal(
                format!("{:032x}", 0xf00 + k),
                &format!("flood{k}"),
            ))
            .await
            .unwrap()
            .into_inner();
        if reply.accepted {
            accepted += 1;
        } else {
            assert!(
                reply.reason.contains("tax is busy: 4 jobs run for bank")
                    && reply.reason.contains("federation.max_jobs_per_peer is 4"),
                "{}",
                reply.reason
            );
            busy += 1;
        }
    }
    assert_eq!((accepted, busy), (4, 3));
    let live = (0..7u32)
        .filter(|k| {
            federation
                .state("tax")
                .live(&format!("{:032x}", 0xf00 + k))
                .is_some()
        })
        .count();
    assert_eq!(live, 4);
    federation.stop().await;
}

/// A bank that deviates from resuming is refused by its hosts: a new attempt whose proposal
/// differs from the job's first, or one beyond the attempts a job may have; and once an epoch
/// has ended, a plan to align the rows again (a second PSI and a second training run). The
/// job then fails on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_refuses_a_bank_that_deviates_from_resuming() {
    use prost::Message as _;
    let federation = Federation::start("deviate", false).await;
    // A job that outlasts the deviations below: 500 epochs, no early stop.
    let spec = federation.spec(
        "long.toml",
        &TRAIN.replace(
            "max_epochs = 8",
            "max_epochs = 500\n\
             early_stopping = { kind = \"loss\", patience = 100000, min_delta = 0 }",
        ),
    );
    let job = training(&federation, &spec).await;
    let tax = federation.state("tax");
    while tax.store.checkpoint_epochs(&job).unwrap().is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let kept = tax.store.resume_part(&job, "job").unwrap().unwrap();
    let first = node::proto::JobProposal::decode(kept.as_slice()).unwrap();
    let mut as_bank = federation.peer_client("tax", "bank").await;
    for (deviating, why) in [
        (
            node::proto::JobProposal {
                attempt: 1,
                guest_features: first.guest_features - 1,
                ..first.clone()
            },
            "differs from the accepted job",
        ),
        (
            node::proto::JobProposal {
                attempt: 8,
                ..first.clone()
            },
            "attempt 8 is beyond the 8 a job may have",
        ),
    ] {
        let reply = as_bank.propose(deviating).await.unwrap().into_inner();
        assert!(!reply.accepted && reply.reason.contains(why), "{reply:?}");
    }
    // A proper next attempt is accepted: tax says it kept its rows and an epoch.
    let reply = as_bank
        .propose(node::proto::JobProposal {
            attempt: 1,
            ..first.clone()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(reply.accepted && reply.aligned, "{reply:?}");
    assert!(reply.checkpoint.is_some(), "{reply:?}");
    // Then the plan: align again (0) instead of reusing the rows (1).
    let plan = node::proto::Chunk {
        version: node::FEDERATION_VERSION,
        job_id: job.clone(),
        sender: "bank".into(),
        seq: 0,
        kind: "plan".into(),
        index: 0,
        count: 1,
        total_bytes: 1,
        data: vec![0],
        attempt: 1,
    };
    as_bank.deliver(tokio_stream::iter([plan])).await.unwrap();
    for party in ["tax", "bank"] {
        let state = federation.state(party);
        let mut waited = 0;
        let record = loop {
            let record = state.job(&job).unwrap().unwrap();
            if record.is_final() {
                break record;
            }
            assert!(waited < 600, "{party}: {record:?}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            waited += 1;
        };
        assert_eq!(record.state, "failed", "{party}: {record:?}");
        if party == "tax" {
            assert!(
                record
                    .error
                    .contains("training had begun; align again it may not"),
                "{}",
                record.error
            );
        }
    }
    federation.stop().await;
}
