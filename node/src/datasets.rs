//! A configured dataset as a [`fedlearn::Table`].

use std::io::Read;
use std::time::Duration;

use fedlearn::{Chunk, FedError, Reading, Table};

use crate::config::{DatasetConfig, NodeConfig, PostgresSource};
use crate::error::NodeError;

/// Loads dataset `name` of this node (with its label column if `with_labels`), keeping the
/// configured feature columns, each read as `reading` says (a job's preparation or a
/// model's). A cell that cannot be read fails the whole load.
pub fn load_table(
    config: &NodeConfig,
    name: &str,
    with_labels: bool,
    reading: &dyn Fn(&str) -> Reading,
) -> Result<Table, NodeError> {
    read(config, name, with_labels, reading, false).map(|(table, _)| table)
}

/// [`load_table`] for scoring (no labels): a row with a cell that cannot be read is left out
/// and returned as (id, error text) instead, so it fails alone. The texts name files, lines
/// and values: they stay on this node.
pub(crate) fn load_scoring_table(
    config: &NodeConfig,
    name: &str,
    reading: &dyn Fn(&str) -> Reading,
) -> Result<(Table, Vec<(String, String)>), NodeError> {
    read(config, name, false, reading, true)
}

/// Reads dataset `name` of this node as [`load_table`] does, handing its rows to `sink` in
/// chunks ([`fedlearn::Chunk`]): returns the columns read (no rows), before the dataset's
/// `features` selection, and that selection, which the caller applies.
pub(crate) fn read_chunks(
    config: &NodeConfig,
    name: &str,
    with_labels: bool,
    reading: &dyn Fn(&str) -> Reading,
    sink: &mut dyn FnMut(Chunk) -> Result<(), FedError>,
) -> Result<(Table, Option<Vec<String>>), NodeError> {
    let (table, _) = read_all(config, name, with_labels, reading, false, Some(sink))?;
    let features = config.datasets.get(name).and_then(|d| d.features.clone());
    Ok((table, features))
}

fn read(
    config: &NodeConfig,
    name: &str,
    with_labels: bool,
    reading: &dyn Fn(&str) -> Reading,
    keep_going: bool,
) -> Result<(Table, Vec<(String, String)>), NodeError> {
    let (table, bad_rows) = read_all(config, name, with_labels, reading, keep_going, None)?;
    let features = config.datasets[name].features.as_deref();
    Ok((with_features(name, table, features)?, bad_rows))
}

/// `table` (of dataset `name`) with only the columns `features` names, in that order; all
/// of them when it names none.
pub(crate) fn with_features(
    name: &str,
    table: Table,
    features: Option<&[String]>,
) -> Result<Table, NodeError> {
    let Some(features) = features else {
        return Ok(table);
    };
    let names: Vec<&str> = features.iter().map(String::as_str).collect();
    table
        .select_columns(&names)
        .map_err(|e| NodeError::Dataset {
            name: name.to_owned(),
            reason: e.to_string(),
        })
}

/// The dataset's table with every column read (or, with a `sink`, the columns alone and the
/// rows handed over in chunks).
fn read_all(
    config: &NodeConfig,
    name: &str,
    with_labels: bool,
    reading: &dyn Fn(&str) -> Reading,
    keep_going: bool,
    mut sink: Option<&mut dyn FnMut(Chunk) -> Result<(), FedError>>,
) -> Result<(Table, Vec<(String, String)>), NodeError> {
    let error = |reason: String| NodeError::Dataset {
        name: name.to_owned(),
        reason,
    };
    let dataset = config
        .datasets
        .get(name)
        .ok_or_else(|| error("not in this node's configuration".into()))?;
    let format = dataset.csv_format();
    let label = match (with_labels, &dataset.label_column) {
        (false, _) => None,
        (true, Some(label)) => Some(label.as_str()),
        (true, None) => return Err(error("no label_column configured".into())),
    };
    let parquet = dataset
        .path
        .as_deref()
        .filter(|p| crate::columnar::is_parquet(p));
    let (table, bad_rows) = if let Some(path) = parquet {
        let layout = crate::columnar::Layout {
            id_column: &dataset.id_column,
            label_column: label,
            missing: dataset.missing,
            reading,
            keep_going,
        };
        crate::columnar::read_table(path, &layout, sink).map_err(error)?
    } else {
        with_input(dataset, &mut |source, input| {
            if let Some(sink) = sink.as_mut() {
                let table = Table::read_csv_chunks(
                    source,
                    input,
                    format,
                    &dataset.id_column,
                    label,
                    dataset.missing,
                    reading,
                    &mut **sink,
                )
                .map_err(|e| e.to_string())?;
                return Ok((table, Vec::new()));
            }
            if keep_going {
                return Table::read_csv_rows(
                    source,
                    input,
                    format,
                    &dataset.id_column,
                    dataset.missing,
                    reading,
                )
                .map_err(|e| e.to_string());
            }
            let table = Table::read_csv(
                source,
                input,
                format,
                &dataset.id_column,
                label,
                dataset.missing,
                reading,
            )
            .map_err(|e| e.to_string())?;
            Ok((table, Vec::new()))
        })
        .map_err(error)?
    };
    let bad_rows = bad_rows
        .into_iter()
        .map(|(id, e)| (id, crate::error::capped(&e.to_string())))
        .collect();
    Ok((table, bad_rows))
}

/// Hands `read` the dataset's rows as CSV, named for errors, record by record: memory holds
/// the table, not the file or the query's result. A PostgreSQL source is read with `COPY …
/// TO STDOUT` as CSV over a connection opened for this load.
fn with_input<T>(
    dataset: &DatasetConfig,
    read: &mut dyn FnMut(&str, &mut dyn Read) -> Result<T, String>,
) -> Result<T, String> {
    match (&dataset.path, &dataset.postgres) {
        (Some(path), _) => {
            let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            read(
                &path.display().to_string(),
                &mut std::io::BufReader::new(file),
            )
        }
        (None, Some(source)) => {
            let name = source.name();
            let failed = |e: postgres::Error| format!("{name}: {}", database_error(&e));
            let mut settings = source.settings().map_err(|e| format!("{name}: {e}"))?;
            if let Some(password) = password(source).map_err(|e| format!("{name}: {e}"))? {
                settings.password(password);
            }
            settings
                .application_name("unseen")
                .connect_timeout(Duration::from_secs(10));
            let mut client = match &source.ca {
                Some(ca) => {
                    let config = crate::tls::database_client_config(ca)
                        .map_err(|e| format!("{name}: ca: {e}"))?;
                    settings.connect(DatabaseTls(config))
                }
                None => settings.connect(postgres::NoTls),
            }
            .map_err(failed)?;
            let mut rows = client
                .copy_out(&source.copy_statement(&dataset.id_column))
                .map_err(failed)?;
            // Lines of the COPY output: line 1 is the header, line n + 1 the n-th row.
            read(&format!("{name} (as CSV)"), &mut rows)
        }
        (None, None) => Err("neither path nor postgres is set".into()),
    }
}

/// The database's own words for an error (its message and detail), or the client's with its
/// causes (a TLS handshake's says why the certificate was refused).
fn database_error(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_owned(),
        },
        None => {
            let mut text = error.to_string();
            let mut cause = std::error::Error::source(error);
            while let Some(e) = cause {
                let said = e.to_string();
                if !text.contains(&said) {
                    text = format!("{text}: {said}");
                }
                cause = e.source();
            }
            text
        }
    }
}

/// The password of a PostgreSQL source: from its environment variable or its file (which
/// must be its owner's alone), or none.
fn password(source: &PostgresSource) -> Result<Option<String>, String> {
    if let Some(variable) = &source.password_env {
        return std::env::var(variable)
            .map(Some)
            .map_err(|_| format!("password_env: {variable} is not set"));
    }
    let Some(file) = &source.password_file else {
        return Ok(None);
    };
    if let Some(mode) = crate::tls::readable_by_others(file).map_err(|e| e.to_string())? {
        return Err(format!(
            "password_file: {} can be read by other users (mode {mode:o}); chmod 600 it",
            file.display()
        ));
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("password_file: {}: {e}", file.display()))?;
    Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()))
}

/// TLS to a database server (a PostgreSQL source with `ca`): rustls over the client's
/// socket, trusting only that CA and checking the server's certificate against the host
/// connected to. SCRAM authentication runs inside it without channel binding.
struct DatabaseTls(std::sync::Arc<tokio_rustls::rustls::ClientConfig>);

struct DatabaseTlsConnect {
    config: std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
    host: tokio_rustls::rustls::pki_types::ServerName<'static>,
}

struct DatabaseTlsStream(tokio_rustls::client::TlsStream<postgres::Socket>);

impl postgres::tls::MakeTlsConnect<postgres::Socket> for DatabaseTls {
    type Stream = DatabaseTlsStream;
    type TlsConnect = DatabaseTlsConnect;
    type Error = tokio_rustls::rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, host: &str) -> Result<DatabaseTlsConnect, Self::Error> {
        Ok(DatabaseTlsConnect {
            config: self.0.clone(),
            host: tokio_rustls::rustls::pki_types::ServerName::try_from(host)?.to_owned(),
        })
    }
}

impl postgres::tls::TlsConnect<postgres::Socket> for DatabaseTlsConnect {
    type Stream = DatabaseTlsStream;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<DatabaseTlsStream>> + Send>,
    >;

    fn connect(self, socket: postgres::Socket) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config);
        Box::pin(async move {
            let stream = connector.connect(self.host, socket).await?;
            Ok(DatabaseTlsStream(stream))
        })
    }
}

impl tokio::io::AsyncRead for DatabaseTlsStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for DatabaseTlsStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl postgres::tls::TlsStream for DatabaseTlsStream {
    fn channel_binding(&self) -> postgres::tls::ChannelBinding {
        postgres::tls::ChannelBinding::none()
    }
}
