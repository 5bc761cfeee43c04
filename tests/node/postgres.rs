//! A host's dataset in PostgreSQL. The tests need a server: `bash .ci/run` starts one (so does
//! `source .ci/test-env`), whose connection settings and password come in
//! `UNSEEN_TEST_POSTGRES` and `UNSEEN_TEST_POSTGRES_PASSWORD`.

use crate::common::{Federation, TRAIN};

fn server() -> String {
    std::env::var("UNSEEN_TEST_POSTGRES").expect(
        "UNSEEN_TEST_POSTGRES is not set: the PostgreSQL tests need a server; `source \
         .ci/test-env` starts one (bash .ci/run does)",
    )
}

/// Runs `sql` statements on the test server, and copies `csv` (with its header) into `table`
/// when given.
async fn setup(sql: Vec<String>, copy: Option<(String, String)>) {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut settings: postgres::Config = server().parse().unwrap();
        settings.password(std::env::var("UNSEEN_TEST_POSTGRES_PASSWORD").unwrap());
        let mut client = settings.connect(postgres::NoTls).unwrap();
        for statement in sql {
            client.batch_execute(&statement).unwrap();
        }
        if let Some((table, csv)) = copy {
            let mut writer = client
                .copy_in(&format!(
                    "COPY {table} FROM STDIN WITH (FORMAT csv, HEADER true)"
                ))
                .unwrap();
            writer.write_all(csv.as_bytes()).unwrap();
            writer.finish().unwrap();
        }
    })
    .await
    .unwrap();
}

/// Why loading dataset "tax" of `config` fails (on a blocking thread, as the node's jobs and
/// scoring load datasets).
async fn load_error(config: node::config::NodeConfig) -> String {
    tokio::task::spawn_blocking(move || {
        node::internal::load_table(&config, "tax", false, &|_| fedlearn::Reading::Number)
            .unwrap_err()
            .to_string()
    })
    .await
    .unwrap()
}

/// The tax bureau moves its dataset from its CSV into a PostgreSQL table (configuration read
/// again, no restart): the same job trains the same model on it, bit for bit; a NULL where a
/// number must be is named by table, line and column, and makes that id alone unscorable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosts_dataset_in_postgresql_trains_as_its_csv_does() {
    let federation = Federation::start("postgres", false).await;
    let one_epoch = TRAIN.replace("max_epochs = 8", "max_epochs = 1");
    let spec = federation.spec("csv.toml", &one_epoch.replace("sme-credit", "sme-csv"));
    let (ok, _, stderr) = federation.cli(&["train", &spec]).await;
    assert!(ok, "{stderr}");

    let table = format!("tax_{}", std::process::id());
    let csv = std::fs::read_to_string(federation.dir.join("tax.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let columns: Vec<String> = header
        .iter()
        .map(|c| match *c {
            "id" => "id text primary key".to_string(),
            feature => format!("{feature} double precision"),
        })
        .collect();
    setup(
        vec![
            format!("DROP TABLE IF EXISTS {table}"),
            format!("CREATE TABLE {table} ({})", columns.join(", ")),
        ],
        Some((table.clone(), csv.clone())),
    )
    .await;
    let tax_toml = federation.dir.join("tax.toml");
    let config = std::fs::read_to_string(&tax_toml).unwrap();
    let csv_source = "[datasets.tax]\npath = \"tax.csv\"\n";
    assert!(config.contains(csv_source), "{config}");
    let database = format!(
        "[datasets.tax]\npostgres = {{ connection = \"{}\", table = \"{table}\", \
         password_env = \"UNSEEN_TEST_POSTGRES_PASSWORD\" }}\n",
        server()
    );
    std::fs::write(&tax_toml, config.replace(csv_source, &database)).unwrap();
    let tax = federation.node_arg("tax");
    let (ok, out, err) = federation.cli(&["config", "reload", "--node", &tax]).await;
    assert!(ok && out.contains("in force: datasets"), "{out}{err}");

    let spec = federation.spec("postgres.toml", &one_epoch);
    let (ok, _, stderr) = federation.cli(&["train", &spec]).await;
    assert!(ok, "{stderr}");
    let part = |model: &str| {
        let record = federation.state("tax").store.model(model).unwrap().unwrap();
        let mut part: serde_json::Value = serde_json::from_str(&record.part_json).unwrap();
        part["model_id"] = serde_json::Value::Null;
        part
    };
    assert_eq!(part("sme-csv@1"), part("sme-credit@1"));

    // A NULL in a column read as a number: named for the tax bureau's operator.
    let tax_ids: std::collections::HashSet<&str> = csv
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').next())
        .collect();
    let ids: Vec<String> = federation
        .bank_ids(100)
        .into_iter()
        .filter(|id| tax_ids.contains(id.as_str()))
        .take(2)
        .collect();
    let first_id = &ids[0];
    let column = header[1];
    setup(
        vec![format!(
            "UPDATE {table} SET {column} = NULL WHERE id = '{first_id}'"
        )],
        None,
    )
    .await;
    let error = load_error((*federation.state("tax").config()).clone()).await;
    assert!(
        error.contains(&format!("postgres table \"{table}\" (as CSV)"))
            && error.contains(&format!("column \"{column}\""))
            && error.contains("missing value"),
        "{error}"
    );
    // A wrong password and a server that does not answer fail the load, naming the dataset
    // (for its operator).
    let wrong = federation.dir.join("wrong.password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let running = (*federation.state("tax").config()).clone();
    let source = |config: &mut node::config::NodeConfig| {
        config
            .datasets
            .get_mut("tax")
            .and_then(|d| d.postgres.as_mut())
            .unwrap()
            .clone()
    };
    let mut wrong_password = running.clone();
    let mut changed = source(&mut wrong_password);
    changed.password_env = None;
    changed.password_file = Some(wrong);
    wrong_password.datasets.get_mut("tax").unwrap().postgres = Some(changed);
    let mut unreachable = running.clone();
    let mut changed = source(&mut unreachable);
    changed.connection = "host=127.0.0.1 port=1 user=postgres dbname=postgres".into();
    unreachable.datasets.get_mut("tax").unwrap().postgres = Some(changed);
    for (config, why) in [
        (wrong_password, "password authentication failed"),
        (unreachable, "error connecting to server"),
    ] {
        let error = load_error(config).await;
        assert!(
            error.starts_with(&format!("dataset tax: postgres table \"{table}\""))
                && error.contains(why),
            "{error}"
        );
    }

    // When scoring, that id alone cannot be scored.
    let (ok, scored, stderr) = federation.score("sme-credit", &["--json"], &ids).await;
    assert!(ok, "{stderr}");
    let scored: serde_json::Value = serde_json::from_str(&scored).unwrap();
    assert!(
        scored[0]["error"]
            .as_str()
            .unwrap_or("")
            .contains("tax: cannot score"),
        "{scored}"
    );
    assert!(scored[1]["probability"].is_number(), "{scored}");
    setup(vec![format!("DROP TABLE {table}")], None).await;
    federation.stop().await;
}
