//! `unseen audit show` and `unseen job list` page through logs and lists of any length
//! (`--since`, `--limit`), and `audit show --follow` prints records as they are appended.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::common::{Federation, TRAIN};

fn seqs(listed: &str) -> Vec<u64> {
    listed
        .lines()
        .map(|l| {
            let record: serde_json::Value = serde_json::from_str(l).unwrap();
            record["seq"].as_u64().unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_audit_logs_and_job_lists_come_in_pages() {
    let federation = Federation::start("listing", false).await;

    // Five jobs (refused by the utility company, so they end at once).
    let forbidden = federation.spec(
        "forbidden.toml",
        &TRAIN.replace("dataset = \"utilities\"", "dataset = \"meters\""),
    );
    for _ in 0..5 {
        let (ok, _, _) = federation.cli(&["train", &forbidden]).await;
        assert!(!ok);
    }
    let (ok, listed, stderr) = federation.cli(&["job", "list", "--json"]).await;
    assert!(ok, "{stderr}");
    let all: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    assert_eq!(all.len(), 5);
    // Pages of two through the API: every job once, oldest first.
    let channel = federation.channel_as("bank", "modeller").await;
    let mut jobs = node::proto::jobs_client::JobsClient::new(channel);
    let mut request = node::proto::ListJobsRequest {
        limit: 2,
        ..Default::default()
    };
    let mut paged = Vec::new();
    loop {
        let page = jobs.list(request.clone()).await.unwrap().into_inner();
        assert!(page.jobs.len() <= 2);
        paged.extend(page.jobs.iter().map(|j| j.job_id.clone()));
        if !page.more {
            break;
        }
        request.after_job_id = page.jobs.last().unwrap().job_id.clone();
    }
    let ids: Vec<&str> = all.iter().map(|j| j["job_id"].as_str().unwrap()).collect();
    assert_eq!(paged, ids);
    let (ok, listed, _) = federation
        .cli(&["job", "list", "--json", "--limit", "3"])
        .await;
    assert!(ok);
    let first: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    assert_eq!(first.len(), 3);
    assert_eq!(first[2]["job_id"], ids[2]);
    let (ok, listed, _) = federation
        .cli(&["job", "list", "--json", "--since", "1h"])
        .await;
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(&listed)
            .unwrap()
            .len(),
        5
    );
    let (ok, _, stderr) = federation.cli(&["job", "list", "--since", "soon"]).await;
    assert!(!ok && stderr.contains("an age is a number"), "{stderr}");

    // An audit log of thousands of records prints whole, in order, each record once.
    let store = &federation.state("bank").store;
    for k in 0..2500 {
        node::audit::record(store, "test.filler", "", "", serde_json::json!({ "k": k }));
    }
    let (ok, listed, stderr) = federation.cli(&["audit", "show", "--json"]).await;
    assert!(ok, "{stderr}");
    let seqs_all = seqs(&listed);
    assert!(seqs_all.len() > 2500, "{}", seqs_all.len());
    assert!(seqs_all.iter().enumerate().all(|(i, s)| *s == i as u64));
    let (ok, listed, _) = federation
        .cli(&["audit", "show", "--json", "--limit", "1500"])
        .await;
    assert!(ok);
    assert_eq!(seqs(&listed), seqs_all[..1500]);
    let job = ids[4];
    let (ok, listed, _) = federation
        .cli(&["audit", "show", "--json", "--job", job])
        .await;
    assert!(ok);
    let of_job: Vec<serde_json::Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!of_job.is_empty() && of_job.iter().all(|r| r["job_id"] == job));
    let (ok, listed, _) = federation
        .cli(&["audit", "show", "--json", "--since", "1d"])
        .await;
    assert!(ok);
    assert_eq!(seqs(&listed), seqs_all);

    // Following: the records so far, then each new one as it is appended.
    let mut follower = Command::new(env!("CARGO_BIN_EXE_unseen"))
        .args(["audit", "show", "--json", "--follow", "--since", "1s"])
        .env("UNSEEN_IDENTITY", federation.inner.modeller())
        .env("UNSEEN_NODE", federation.node_arg("bank"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    node::audit::record(store, "test.followed", "", "", serde_json::json!({}));
    let seen = tokio::task::spawn_blocking(move || {
        lines
            .find(|l| l.as_ref().unwrap().contains("test.followed"))
            .is_some()
    });
    let seen = tokio::time::timeout(std::time::Duration::from_secs(30), seen).await;
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(
        matches!(seen, Ok(Ok(true))),
        "the new record was not printed"
    );
    federation.stop().await;
}

/// A node's peers keep its audit head: cutting the log's tail, which the hash chain alone
/// cannot show (what is left still chains), fails `unseen audit verify`, naming the peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_anchor_the_audit_log_so_a_cut_tail_is_found() {
    let federation = Federation::start("anchors", false).await;
    let store = &federation.state("bank").store;
    for k in 0..20 {
        node::audit::record(store, "test.filler", "", "", serde_json::json!({ "k": k }));
    }
    let (head, _) = node::audit::head(store).unwrap().unwrap();
    // Both hosts keep the head within a few anchoring rounds (one a second here).
    for host in ["tax", "utilities"] {
        let kept = || federation.state(host).store.anchor("bank").unwrap();
        let mut waited = 0;
        while kept().is_none_or(|k| k.seq < head) {
            assert!(waited < 100, "{host} keeps {:?}", kept());
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            waited += 1;
        }
    }
    let (ok, out, stderr) = federation.cli(&["audit", "verify"]).await;
    assert!(
        ok && out.contains("intact") && out.contains("(signed by this node): agrees"),
        "{out}{stderr}"
    );
    // What a host keeps is the bank's signed word: it verifies with the bank's certificate,
    // and not once any field is changed.
    let bank = node::tls::Identity::load_dir(&federation.dir.join("certs/bank")).unwrap();
    let bank_cert = bank.certificate().unwrap().to_vec();
    let kept = federation
        .state("tax")
        .store
        .anchor("bank")
        .unwrap()
        .unwrap();
    assert!(node::audit::head_signed_by(
        &kept, "bank", "tax", &bank_cert
    ));
    assert!(!node::audit::head_signed_by(
        &kept,
        "bank",
        "utilities",
        &bank_cert
    ));
    let mut forged = kept.clone();
    forged.seq -= 1;
    assert!(!node::audit::head_signed_by(
        &forged, "bank", "tax", &bank_cert
    ));
    // A peer's head that its own key did not sign is not kept: here tax offers one signed by
    // nobody, then the bank's signed head as its own.
    let mut tax = federation.peer_client("bank", "tax").await;
    let bank_signature = (0..kept.signature.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&kept.signature[i..i + 2], 16).unwrap())
        .collect();
    for signature in [vec![0u8; 64], bank_signature] {
        let error = tax
            .anchor(node::proto::AnchorRequest {
                version: node::FEDERATION_VERSION,
                sender: "tax".into(),
                head: Some(node::proto::AuditHead {
                    seq: kept.seq,
                    hash: kept.hash.clone(),
                    signed_unix_ms: kept.signed_unix_ms,
                    scheme: kept.scheme.into(),
                    signature,
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument, "{error}");
        assert!(
            error.message().contains("signature does not verify"),
            "{error}"
        );
    }
    let kept_before: Vec<u64> = ["tax", "utilities"]
        .iter()
        .map(|h| {
            federation
                .state(h)
                .store
                .anchor("bank")
                .unwrap()
                .unwrap()
                .seq
        })
        .collect();

    // The last ten records go; the rest still chains.
    store.truncate_audit_for_tests(head - 9).unwrap();
    assert!(matches!(
        node::audit::verify(store).unwrap(),
        node::audit::Verdict::Intact { .. }
    ));
    let (ok, out, stderr) = federation.cli(&["audit", "verify"]).await;
    assert!(!ok, "{out}");
    assert!(
        stderr.contains("keeps record #") && stderr.contains("the log was cut"),
        "{out}{stderr}"
    );
    assert!(
        out.contains("tax keeps #") && out.contains("utilities keeps #"),
        "{out}"
    );
    // The log grows past the cut again: its anchors do not move on (the node offers a head
    // only while its log agrees with the kept one), so the cut stays found.
    for k in 0..15 {
        node::audit::record(store, "test.after", "", "", serde_json::json!({ "k": k }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(3000)).await;
    for (host, before) in ["tax", "utilities"].iter().zip(kept_before) {
        let kept = federation
            .state(host)
            .store
            .anchor("bank")
            .unwrap()
            .unwrap();
        assert_eq!(kept.seq, before, "{host}: {kept:?}");
    }
    let (ok, out, stderr) = federation.cli(&["audit", "verify"]).await;
    assert!(
        !ok && stderr.contains("the log was rewritten"),
        "{out}{stderr}"
    );
    federation.stop().await;
}

/// Server reflection answers in both versions clients speak: v1 (grpcurl) and v1alpha
/// (grpcio-reflection's Python client, older grpcurl), listing the node's services.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_answers_v1_and_v1alpha() {
    use tonic_reflection::pb::{v1, v1alpha};
    let federation = Federation::start("reflection", false).await;
    let channel = federation.channel_as("bank", "modeller").await;
    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut replies = alpha
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        reply.message_response
    else {
        panic!("{reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.iter().any(|n| n == "unseen.v1.Jobs"), "{names:?}");

    let mut current = v1::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut replies = current
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    assert!(
        matches!(
            reply.message_response,
            Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(_))
        ),
        "{reply:?}"
    );
    federation.stop().await;
}
