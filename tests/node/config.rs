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
