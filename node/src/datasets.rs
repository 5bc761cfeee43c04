//! A configured dataset as a [`fedlearn::Table`].

use fedlearn::{Reading, Table};

use crate::config::NodeConfig;
use crate::error::NodeError;

/// Loads dataset `name` of this node (with its label column if `with_labels`), keeping the
/// configured feature columns, each read as `reading` says (a job's preparation or a
/// model's). A cell that cannot be read fails the whole load.
pub(crate) fn load_table(
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

fn read(
    config: &NodeConfig,
    name: &str,
    with_labels: bool,
    reading: &dyn Fn(&str) -> Reading,
    keep_going: bool,
) -> Result<(Table, Vec<(String, String)>), NodeError> {
    let error = |reason: String| NodeError::Dataset {
        name: name.to_owned(),
        reason,
    };
    let dataset = config
        .datasets
        .get(name)
        .ok_or_else(|| error("not in this node's configuration".into()))?;
    // Read record by record: memory holds the table, not the file.
    let file = std::fs::File::open(&dataset.path)
        .map_err(|e| error(format!("{}: {e}", dataset.path.display())))?;
    let input = std::io::BufReader::new(file);
    let source = dataset.path.display().to_string();
    let format = dataset.csv_format();
    let (table, bad_rows) = if keep_going {
        Table::read_csv_rows(
            &source,
            input,
            format,
            &dataset.id_column,
            dataset.missing,
            reading,
        )
        .map_err(|e| error(e.to_string()))?
    } else {
        let label = if with_labels {
            Some(
                dataset
                    .label_column
                    .as_deref()
                    .ok_or_else(|| error("no label_column configured".into()))?,
            )
        } else {
            None
        };
        let table = Table::read_csv(
            &source,
            input,
            format,
            &dataset.id_column,
            label,
            dataset.missing,
            reading,
        )
        .map_err(|e| error(e.to_string()))?;
        (table, Vec::new())
    };
    let bad_rows = bad_rows
        .into_iter()
        .map(|(id, e)| (id, crate::error::capped(&e.to_string())))
        .collect();
    let table = match &dataset.features {
        Some(features) => {
            let names: Vec<&str> = features.iter().map(String::as_str).collect();
            table
                .select_columns(&names)
                .map_err(|e| error(e.to_string()))?
        }
        None => table,
    };
    Ok((table, bad_rows))
}
