//! Configuration errors name the key or the file.

use node::config::NodeConfig;

#[test]
fn configuration_errors_name_the_key_or_file() {
    let dir = std::env::temp_dir().join(format!("unseen-config-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    node::certs::init(&dir.join("certs"), &["bank".to_string()]).unwrap();
    let base = "party = \"bank\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"state\"\n[tls]\ncert = \"certs/bank/node.crt\"\nkey = \"certs/bank/node.key\"\nca = \"certs/bank/ca.crt\"\n";
    let path = dir.join("node.toml");
    let cases = [
        (format!("{base}colour = \"blue\"\n"), "colour"),
        (base.replace("node.key", "gone.key"), "tls.key"),
        (
            format!("{base}[datasets.bank]\npath = \"nowhere.csv\"\nid_column = \"id\"\n"),
            "datasets.bank.path",
        ),
        (
            format!("{base}[[policy]]\npeer = \"tax\"\njobs = [\"train\"]\ndatasets = []\n"),
            "policy[0].peer",
        ),
        (
            format!(
                "{base}[datasets.bank]\npath = \"node.toml\"\nid_column = \"id\"\n\
                 delimiter = \";;\"\n"
            ),
            "datasets.bank.delimiter",
        ),
        (
            format!(
                "{base}[datasets.bank]\nid_column = \"id\"\npostgres = {{ connection = \
                 \"host=db.example user=u\", table = \"t\" }}\n"
            ),
            "datasets.bank.postgres.connection: a server not on this machine needs ca",
        ),
        (
            format!(
                "{base}[datasets.bank]\nid_column = \"id\"\npostgres = {{ connection = \
                 \"host=127.0.0.1 user=u password=p\", table = \"t\" }}\n"
            ),
            "datasets.bank.postgres.connection: holds a password",
        ),
        (
            format!(
                "{base}[datasets.bank]\nid_column = \"id\"\npostgres = {{ connection = \
                 \"host=/run/postgresql user=u\", table = \"t\", query = \"SELECT 1\" }}\n"
            ),
            "datasets.bank.postgres: set one of table and query",
        ),
        (
            format!("{base}[datasets.bank]\nid_column = \"id\"\n"),
            "datasets.bank: set one of path",
        ),
        (
            base.replace(
                "[tls]",
                "operators = [\"ops\"]\n[[scoring.clients]]\nname = \"ops\"\nmodels = []\n[tls]",
            ),
            "both an operator and a scoring client",
        ),
    ];
    for (text, key) in cases {
        std::fs::write(&path, text).unwrap();
        let error = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(
            error.contains(key) && error.contains("node.toml"),
            "{key}: {error}"
        );
    }
    std::fs::write(&path, base).unwrap();
    NodeConfig::load(&path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A node whose own certificate was not signed by its configured CA refuses to start, and
/// says so (instead of failing every handshake later and blaming the peers).
#[tokio::test]
async fn a_node_refuses_to_start_with_a_certificate_its_ca_did_not_sign() {
    let dir = std::env::temp_dir().join(format!("unseen-own-cert-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    node::certs::init(&dir.join("certs"), &["bank".to_string()]).unwrap();
    node::certs::init(&dir.join("other"), &["bank".to_string()]).unwrap();
    let path = dir.join("node.toml");
    std::fs::write(
        &path,
        "party = \"bank\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"state\"\n[tls]\n\
         cert = \"certs/bank/node.crt\"\nkey = \"certs/bank/node.key\"\nca = \"other/ca.crt\"\n",
    )
    .unwrap();
    let config = NodeConfig::load(&path).unwrap();
    let error = match node::start(config).await {
        Ok(_) => panic!("the node started"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("certs/bank/node.crt") && error.contains("not signed by the CA"),
        "{error}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A node does not start without the key that seals its store's models, and says where to put
/// one.
#[tokio::test]
async fn a_node_refuses_to_start_without_a_store_key() {
    let dir = std::env::temp_dir().join(format!("unseen-no-key-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    node::certs::init(&dir.join("certs"), &["bank".to_string()]).unwrap();
    let path = dir.join("node.toml");
    let base = "party = \"bank\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"state\"\n";
    let tls = "[tls]\ncert = \"certs/bank/node.crt\"\nkey = \"certs/bank/node.key\"\n\
               ca = \"certs/bank/ca.crt\"\n";
    std::fs::write(&path, format!("{base}{tls}")).unwrap();
    let error = match node::start(NodeConfig::load(&path).unwrap()).await {
        Ok(_) => panic!("the node started"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("no store key") && error.contains("UNSEEN_STORE_KEY"),
        "{error}"
    );
    std::fs::write(&path, format!("{base}store_key = \"state/k\"\n{tls}")).unwrap();
    let error = match node::start(NodeConfig::load(&path).unwrap()).await {
        Ok(_) => panic!("the node started"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("outside data_dir"), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A modeller's day without restarts: the tax bureau takes training off its policy and puts it
/// back, and the bank grants its platform every model named `sme-*`, each by `unseen config
/// reload`; a file that changes a key that takes a restart, or that does not load, is refused
/// and the running configuration stays in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_is_read_again_without_a_restart() {
    let federation = crate::common::Federation::start("reload", false).await;
    let tax_toml = federation.dir.join("tax.toml");
    let original = std::fs::read_to_string(&tax_toml).unwrap();
    let tax = federation.node_arg("tax");
    let shared = &federation;
    let reload =
        |node: String| async move { shared.cli(&["config", "reload", "--node", &node]).await };
    let (ok, out, err) = reload(tax.clone()).await;
    assert!(ok && out.contains("nothing changed"), "{out}{err}");

    let all_jobs = "jobs = [\"train\", \"score\", \"binning\"]";
    assert!(original.contains(all_jobs), "{original}");
    let no_training = original.replace(all_jobs, "jobs = [\"score\", \"binning\"]");
    std::fs::write(&tax_toml, &no_training).unwrap();
    let (ok, out, err) = reload(tax.clone()).await;
    assert!(ok && out.contains("in force: policy"), "{out}{err}");
    let spec = federation.spec(
        "job.toml",
        &crate::common::TRAIN.replace("max_epochs = 8", "max_epochs = 1"),
    );
    let (ok, _, stderr) = federation.cli(&["train", &spec]).await;
    assert!(
        !ok && stderr.contains("the policy of tax does not let bank run train jobs"),
        "{stderr}"
    );

    // A key that takes a restart, and a file that does not load: refused, named; training
    // stays off.
    let restart = original.replace("anchor_secs = 1", "anchor_secs = 2");
    assert_ne!(restart, original);
    for (text, why) in [
        (
            restart.as_str(),
            "federation differs from the running configuration",
        ),
        ("party = ", "tax.toml"),
    ] {
        std::fs::write(&tax_toml, text).unwrap();
        let (ok, out, err) = reload(tax.clone()).await;
        assert!(!ok && err.contains(why), "{out}{err}");
    }
    let (ok, _, stderr) = federation.cli(&["train", &spec]).await;
    assert!(
        !ok && stderr.contains("does not let bank run train"),
        "{stderr}"
    );

    std::fs::write(&tax_toml, &original).unwrap();
    let (ok, out, err) = reload(tax.clone()).await;
    assert!(ok && out.contains("in force: policy"), "{out}{err}");
    let (ok, _, stderr) = federation.cli(&["train", &spec]).await;
    assert!(ok, "{stderr}");

    // The platform may score "sme-credit" by name; granted "sme-*" instead, it still may,
    // and "*" is refused as a prefix in the middle.
    let bank_toml = federation.dir.join("bank.toml");
    let bank = std::fs::read_to_string(&bank_toml).unwrap();
    let named = "models = [\"sme-credit\"]";
    assert!(bank.contains(named), "{bank}");
    std::fs::write(&bank_toml, bank.replace(named, "models = [\"sme-*\"]")).unwrap();
    let (ok, out, err) = reload(federation.node_arg("bank")).await;
    assert!(ok && out.contains("in force: scoring"), "{out}{err}");
    let ids = federation.bank_ids(3);
    let (ok, out, err) = federation.score("sme-credit", &[], &ids).await;
    assert!(ok, "{out}{err}");
    std::fs::write(&bank_toml, bank.replace(named, "models = [\"s*e\"]")).unwrap();
    let (ok, _, err) = reload(federation.node_arg("bank")).await;
    assert!(!ok && err.contains("scoring.clients[0].models"), "{err}");

    let audit = crate::common::audit_lines(&federation, "tax", "").await;
    let reloads = audit
        .iter()
        .filter(|r| r["event"] == "config.reloaded")
        .count();
    assert_eq!(reloads, 2, "{audit:?}");
    federation.stop().await;
}

/// The configuration in deploy/kubernetes/node.yaml is one the node accepts (its paths moved
/// under a scratch directory), lists the workers' certificate name, and the workers'
/// Deployment reaches the node under its party name and port.
#[test]
fn the_kubernetes_manifests_configure_a_node_and_its_workers() {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let manifest = std::fs::read_to_string(deploy.join("node.yaml")).unwrap();
    let (_, block) = manifest.split_once("  node.toml: |\n").unwrap();
    let toml: String = block
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let dir = std::env::temp_dir().join(format!("unseen-k8s-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    node::certs::init(&dir.join("certs"), &["tax".to_string()]).unwrap();
    std::fs::write(dir.join("tax.parquet"), b"").unwrap();
    let moved = toml
        .replace("/run/unseen/tls/", &format!("{}/certs/tax/", dir.display()))
        .replace("/var/lib/unseen-data/", &format!("{}/", dir.display()))
        .replace("/var/lib/unseen", &format!("{}/state", dir.display()));
    let config = NodeConfig::parse(&dir.join("node.toml"), &moved)
        .unwrap_or_else(|e| panic!("{e}\n{moved}"));
    assert_eq!(config.workers, ["tax-worker"]);
    let workers = std::fs::read_to_string(deploy.join("workers.yaml")).unwrap();
    let target = format!(
        "value: {}@unseen-node:{}",
        config.party,
        config.listen.port()
    );
    assert!(
        workers.contains(&target),
        "workers.yaml does not say {target}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
