//! Trust per peer: a tax bureau keeps its own PKI. Its certificate comes from its own CA,
//! which the bank and the utility company pin for it (`[[peers]] ca`), and it pins the
//! others' CA. Jobs run across the two PKIs; a certificate for "tax" from the bank's CA cannot
//! speak for the tax bureau, and a certificate from the tax bureau's CA cannot operate the
//! bank's node.

use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use node::config::NodeConfig;
use unseen::local::{LocalFederation, Plan, PARTIES};

use crate::common::{Federation, TRAIN};

/// `config` with `ca` pinned for its `[[peers]]` entry of `peer`.
fn pin(config: &str, peer: &str, ca: &str) -> String {
    let entry = format!("[[peers]]\nname = \"{peer}\"\n");
    assert!(config.contains(&entry), "{config}");
    config.replace(&entry, &format!("{entry}ca = \"{ca}\"\n"))
}

/// The three nodes of `configs` (in the order of [`PARTIES`]), started in `dir`.
async fn start(dir: &Path, configs: [String; 3]) -> Federation {
    let mut nodes = std::collections::BTreeMap::new();
    for (party, config) in PARTIES.iter().zip(configs) {
        let path = dir.join(format!("{party}.toml"));
        std::fs::write(&path, config).unwrap();
        let running = node::start(NodeConfig::load(&path).unwrap()).await.unwrap();
        nodes.insert(party.to_string(), running);
    }
    Federation {
        inner: LocalFederation {
            dir: dir.to_owned(),
            nodes,
        },
        dir: dir.to_owned(),
        proxy_drops: Arc::new(AtomicUsize::new(0)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_may_keep_its_own_pki() {
    let dir = std::env::temp_dir().join(format!("unseen-pki-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let mut plan = Plan::prepare(&dir, &data).unwrap();
    plan.federation = "anchor_secs = 1\n".into();
    node::certs::init(&dir.join("taxpki"), &["tax".into(), "modeller".into()]).unwrap();
    let configs = [
        pin(&plan.config("bank"), "tax", "taxpki/ca.crt"),
        pin(
            &pin(
                &plan.config("tax").replace("certs/tax/", "taxpki/tax/"),
                "bank",
                "certs/ca.crt",
            ),
            "utilities",
            "certs/ca.crt",
        ),
        pin(&plan.config("utilities"), "tax", "taxpki/ca.crt"),
    ];
    let federation = start(&dir, configs).await;

    // A job runs across both PKIs: every party reaches and accepts every other.
    let spec = federation.spec(
        "job.toml",
        &TRAIN.replace("max_epochs = 8", "max_epochs = 1"),
    );
    let (ok, _, stderr) = federation.cli(&["train", &spec]).await;
    assert!(ok, "{stderr}");

    // The bank's CA also issued a "tax" certificate (the plan's): it cannot speak for tax.
    let mut impostor = federation.peer_client("bank", "tax").await;
    let error = impostor
        .alive(node::proto::AliveRequest {
            version: node::FEDERATION_VERSION,
            job_id: String::new(),
            sender: "tax".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::PermissionDenied, "{error}");
    assert!(
        error
            .message()
            .contains("not from the CA that vouches for tax"),
        "{error}"
    );

    // The tax bureau's CA issued a "modeller" certificate: the bank trusts that CA for tax
    // only, so it cannot operate the bank's node (a certificate of the bank's CA can).
    let mixed = dir.join("mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    for file in ["node.crt", "node.key"] {
        std::fs::copy(dir.join("taxpki/modeller").join(file), mixed.join(file)).unwrap();
    }
    // Its client trusts both CAs (its own, and the bank's for the server).
    let bundle = ["certs/ca.crt", "taxpki/ca.crt"]
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap())
        .concat();
    std::fs::write(mixed.join("ca.crt"), bundle).unwrap();
    let channel = node::cli::channel(&federation.node_arg("bank"), &mixed)
        .await
        .unwrap();
    let error = node::proto::jobs_client::JobsClient::new(channel)
        .list(node::proto::ListJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::PermissionDenied, "{error}");
    let (ok, _, stderr) = federation.cli(&["job", "list"]).await;
    assert!(ok, "{stderr}");
    federation.stop().await;
}

/// A certificate revoked while the nodes run is refused from the next look at the list on
/// (about a second), without a restart: a peer's calls — on a connection opened before — and
/// connections to it, an operator's calls, and a job that needs the revoked peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_certificates_are_refused_without_a_restart() {
    let dir = std::env::temp_dir().join(format!("unseen-revoked-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let mut plan = Plan::prepare(&dir, &data).unwrap();
    plan.federation = "anchor_secs = 1\nretries = 2\nbackoff_ms = 100\n".into();
    let certs = dir.join("certs");
    node::certs::revoke(&certs, &[]).unwrap();
    let configs = PARTIES.map(|party| {
        let ca = format!("ca = \"certs/{party}/ca.crt\"\n");
        let config = plan.config(party);
        assert!(config.contains(&ca), "{config}");
        config.replace(&ca, &format!("{ca}crls = [\"certs/ca.crl\"]\n"))
    });
    let federation = start(&dir, configs).await;
    let alive = || node::proto::AliveRequest {
        version: node::FEDERATION_VERSION,
        job_id: String::new(),
        sender: "utilities".into(),
    };
    // Connections opened before anything is revoked.
    let mut utilities = federation.peer_client("bank", "utilities").await;
    utilities.alive(alive()).await.unwrap();
    let mut jobs =
        node::proto::jobs_client::JobsClient::new(federation.channel_as("bank", "modeller").await);
    jobs.list(node::proto::ListJobsRequest::default())
        .await
        .unwrap();

    node::certs::revoke(&certs, &["utilities".to_string()]).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let error = utilities.alive(alive()).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::PermissionDenied, "{error}");
    assert!(
        error.message().contains("certificate is revoked"),
        "{error}"
    );
    // The bank no longer reaches the utility company either: its server certificate is
    // refused at the handshake, so a job with it as host fails, naming it.
    let spec = federation.spec(
        "job.toml",
        &TRAIN.replace("max_epochs = 8", "max_epochs = 1"),
    );
    let (ok, stdout, stderr) = federation.cli(&["train", &spec]).await;
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("utilities"), "{stderr}");
    // A job without it runs.
    let without = TRAIN
        .replace(
            "[[hosts]]\nparty = \"utilities\"\ndataset = \"utilities\"\n",
            "",
        )
        .replace("sme-credit", "sme-credit-tax")
        .replace("max_epochs = 8", "max_epochs = 1");
    let spec = federation.spec("tax-only.toml", &without);
    let (ok, _, stderr) = federation.cli(&["train", &spec]).await;
    assert!(ok, "{stderr}");

    node::certs::revoke(&certs, &["modeller".to_string()]).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let error = jobs
        .list(node::proto::ListJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::PermissionDenied, "{error}");
    assert!(
        error.message().contains("certificate is revoked"),
        "{error}"
    );
    let audit = crate::common::audit_lines(&federation, "bank", "").await;
    for event in ["operator.refused", "peer.refused"] {
        assert!(
            audit.iter().any(|r| r["event"] == event
                && r["detail"]["reason"]
                    .as_str()
                    .is_some_and(|reason| reason.contains("certificate is revoked"))),
            "{event}: {audit:?}"
        );
    }
    federation.stop().await;
}
