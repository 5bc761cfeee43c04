//! A configured dataset as a [`fedlearn::Table`].

use fedlearn::{Reading, Table};

use crate::config::NodeConfig;
use crate::error::NodeError;

/// Loads dataset `name` of this node (with its label column if `with_labels`), keeping the
/// configured feature columns, each read as `reading` says (a job's preparation or a
/// model's).
pub(crate) fn load_table(
    config: &NodeConfig,
    name: &str,
    with_labels: bool,
    reading: &dyn Fn(&str) -> Reading,
) -> Result<Table, NodeError> {
    let error = |reason: String| NodeError::Dataset {
        name: name.to_owned(),
        reason,
    };
    let dataset = config
        .datasets
        .get(name)
        .ok_or_else(|| error("not in this node's configuration".into()))?;
    let text = std::fs::read_to_string(&dataset.path)
        .map_err(|e| error(format!("{}: {e}", dataset.path.display())))?;
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
    let source = dataset.path.display().to_string();
    let table = Table::parse_csv(
        &source,
        &text,
        &dataset.id_column,
        label,
        dataset.missing,
        reading,
    )
    .map_err(|e| error(e.to_string()))?;
    match &dataset.features {
        Some(features) => {
            let names: Vec<&str> = features.iter().map(String::as_str).collect();
            table
                .select_columns(&names)
                .map_err(|e| error(e.to_string()))
        }
        None => Ok(table),
    }
}
