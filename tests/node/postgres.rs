//! A host's dataset in PostgreSQL. The tests need a server: `bash .ci/run` starts one (so does
//! `source .ci/test-env`), whose connection settings and password come in
//! `UNSEEN_TEST_POSTGRES` and `UNSEEN_TEST_POSTGRES_PASSWORD`.

use crate::common::{load_tax, trains_as_from_csv, Federation};

fn server() -> String {
    std::env::var("UNSEEN_TEST_POSTGRES").expect(
        "UNSEEN_TEST_POSTGRES is not set: the PostgreSQL tests need a server; `source \
         .ci/test-env` starts one (bash .ci/run does)",
    )
}

/// A connection to the test server as its superuser.
fn client() -> postgres::Client {
    let mut settings: postgres::Config = server().parse().unwrap();
    settings.password(std::env::var("UNSEEN_TEST_POSTGRES_PASSWORD").unwrap());
    settings.connect(postgres::NoTls).unwrap()
}

/// Runs `sql` statements on the test server, and copies `csv` (with its header) into `table`
/// when given.
async fn setup(sql: Vec<String>, copy: Option<(String, String)>) {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut client = client();
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

/// The tax bureau moves its dataset from its CSV into a PostgreSQL table (configuration read
/// again, no restart): the same job trains the same model on it, bit for bit; a NULL where a
/// number must be is named by table, line and column, and makes that id alone unscorable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosts_dataset_in_postgresql_trains_as_its_csv_does() {
    let federation = Federation::start("postgres", false).await;
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
    let database = format!(
        "[datasets.tax]\npostgres = {{ connection = \"{}\", table = \"{table}\", \
         password_env = \"UNSEEN_TEST_POSTGRES_PASSWORD\" }}\n",
        server()
    );
    trains_as_from_csv(&federation, &database).await;

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
    let error = load_tax((*federation.state("tax").config()).clone())
        .await
        .unwrap_err();
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
        let error = load_tax(config).await.unwrap_err();
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

/// Runs `sql` on the test server and returns the first column of the first row of the last
/// statement, as text (for `SHOW`).
async fn query_one(sql: &'static str) -> String {
    tokio::task::spawn_blocking(move || {
        let row = client().query_one(sql, &[]).unwrap();
        row.get::<_, String>(0)
    })
    .await
    .unwrap()
}

/// A database on another machine is reached only over TLS, with the server's certificate
/// checked against the dataset's `ca` and the host named: the same rows load over it; a
/// server without TLS, a certificate from another CA and one for another host are refused,
/// naming the dataset; a remote host without `ca` does not pass the configuration's checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_elsewhere_is_read_over_verified_tls() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = std::env::temp_dir().join(format!("unseen-pgtls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    node::certs::init(&dir.join("ours"), &["localhost".into()]).unwrap();
    node::certs::init(&dir.join("other"), &["localhost".into()]).unwrap();
    // The server's certificate and key, readable by the server's user.
    let owner = std::fs::metadata(query_one("SHOW data_directory").await)
        .unwrap()
        .uid();
    let serving = dir.join("serving");
    std::fs::create_dir_all(&serving).unwrap();
    std::fs::set_permissions(&serving, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (file, mode) in [("node.crt", 0o644), ("node.key", 0o600)] {
        let to = serving.join(file);
        std::fs::copy(dir.join("ours/localhost").join(file), &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode)).unwrap();
        std::os::unix::fs::chown(&to, Some(owner), None).unwrap();
    }
    let ssl = |on: bool| {
        let statements = if on {
            vec![
                format!(
                    "ALTER SYSTEM SET ssl_cert_file = '{}'",
                    serving.join("node.crt").display()
                ),
                format!(
                    "ALTER SYSTEM SET ssl_key_file = '{}'",
                    serving.join("node.key").display()
                ),
                "ALTER SYSTEM SET ssl = on".to_string(),
                "SELECT pg_reload_conf()".to_string(),
            ]
        } else {
            vec![
                "ALTER SYSTEM RESET ssl".to_string(),
                "SELECT pg_reload_conf()".to_string(),
            ]
        };
        setup(statements, None)
    };
    let table = format!("remote_{}", std::process::id());
    setup(
        vec![
            format!("DROP TABLE IF EXISTS {table}"),
            format!("CREATE TABLE {table} (id text primary key, x double precision)"),
            format!("INSERT INTO {table} VALUES ('a', 1.5), ('b', -2.0), ('c', 4.25)"),
        ],
        None,
    )
    .await;
    let port = server()
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("port="))
        .unwrap()
        .to_owned();
    for file in ["node.crt", "node.key", "ca.crt"] {
        std::fs::write(dir.join(file), "").unwrap();
    }
    let config = |host: &str, ca: Option<&str>| {
        let ca = ca.map_or(String::new(), |ca| format!(", ca = \"{ca}\""));
        let text = format!(
            "party = \"tax\"\nlisten = \"127.0.0.1:7002\"\ndata_dir = \"data\"\n\
             [tls]\ncert = \"node.crt\"\nkey = \"node.key\"\nca = \"ca.crt\"\n\
             [datasets.tax]\nid_column = \"id\"\n\
             postgres = {{ connection = \"host={host} port={port} user=postgres dbname=postgres\", \
             table = \"{table}\", password_env = \"UNSEEN_TEST_POSTGRES_PASSWORD\"{ca} }}\n"
        );
        node::config::NodeConfig::parse(&dir.join("tax.toml"), &text)
    };
    // Not on this machine and no ca: refused when the configuration is read.
    let error = config("db.tax.example", None).unwrap_err().to_string();
    assert!(
        error.contains("datasets.tax.postgres.connection: a server not on this machine needs ca"),
        "{error}"
    );
    assert!(config("db.tax.example", Some("ours/ca.crt")).is_ok());
    let error = config("localhost", Some("missing.crt"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("datasets.tax.postgres.ca:") && error.contains("does not exist"),
        "{error}"
    );

    // A server without TLS is not spoken to in the clear.
    ssl(false).await;
    let error = load_tax(config("localhost", Some("ours/ca.crt")).unwrap())
        .await
        .unwrap_err();
    assert!(error.starts_with("dataset tax: postgres table"), "{error}");

    ssl(true).await;
    let started = std::time::Instant::now();
    let table_read = loop {
        match load_tax(config("localhost", Some("ours/ca.crt")).unwrap()).await {
            Ok(table) => break table,
            // The server takes up a reloaded configuration within moments.
            Err(e) if started.elapsed() < std::time::Duration::from_secs(10) => {
                eprintln!("not yet: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(table_read.ids().to_vec(), ["a", "b", "c"]);
    assert_eq!(table_read.values().column(0).to_vec(), [1.5, -2.0, 4.25]);

    // Another CA's certificate, or a certificate for another host: refused.
    let error = load_tax(config("localhost", Some("other/ca.crt")).unwrap())
        .await
        .unwrap_err();
    assert!(
        error.starts_with("dataset tax:") && error.contains("UnknownIssuer"),
        "{error}"
    );
    let error = load_tax(config("127.0.0.1", Some("ours/ca.crt")).unwrap())
        .await
        .unwrap_err();
    assert!(
        error.starts_with("dataset tax:") && error.contains("certificate not valid for name"),
        "{error}"
    );

    ssl(false).await;
    setup(vec![format!("DROP TABLE {table}")], None).await;
    std::fs::remove_dir_all(&dir).unwrap();
}
