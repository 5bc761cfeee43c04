//! What every party of a training job derives from its own table: its design columns,
//! their preparation, the job's split, and the standardised and quantised values.

use crate::config::TrainConfig;
use crate::data::Table;
use crate::error::FedError;
use crate::masks::{random_bytes, Split};
use crate::model::{ModelPart, Standardised};
use crate::prep::{Fitted, Prep};
use crate::protocol::{linear_scores, Quantised};

/// A party's data in a job: its design columns prepared, standardised and quantised on the
/// training rows of the job's split.
pub(crate) struct Data {
    pub(crate) party: String,
    /// The party's design columns (its prepared columns, see [`crate::prep`]).
    pub(crate) table: Table,
    fitted: Fitted,
    pub(crate) split: Split,
    pub(crate) standardised: Standardised,
    pub(crate) quantised: Quantised,
    /// Whether the last weight is an intercept (the guest's).
    intercept: bool,
}

impl Data {
    /// Prepares, standardises and quantises the party's table on the training rows derived
    /// from the job's seed.
    pub(crate) fn new(
        party: &str,
        table: &Table,
        prep: &Prep,
        config: &TrainConfig,
        intercept: bool,
    ) -> Result<Data, FedError> {
        let split = Split::new(table.rows(), config.seed, config.validation_fraction);
        let fitted = Fitted::fit(party, prep, table, &split.train)?;
        let table = fitted.design(table)?;
        let standardised = Standardised::fit(party, &table, &split.train)?;
        let quantised = Quantised::new(standardised.values.view(), &split.train, intercept);
        Ok(Data {
            party: party.to_owned(),
            table,
            fitted,
            split,
            standardised,
            quantised,
            intercept,
        })
    }

    /// This party's partial scores on `rows` with `weights` (the intercept included).
    pub(crate) fn scores_with(&self, weights: &[f64], rows: &[usize]) -> Vec<f64> {
        let width = self.table.features();
        let mut z = linear_scores(self.standardised.values.view(), rows, &weights[..width]);
        if self.intercept {
            for z in &mut z {
                *z += weights[width];
            }
        }
        z
    }

    /// This party's model part with the given weights.
    pub(crate) fn model(&self, model_id: &str, weights: &[f64]) -> ModelPart {
        let width = self.table.features();
        self.standardised.model(
            &self.fitted,
            model_id,
            &self.party,
            self.table.missing(),
            &weights[..width],
            self.intercept.then(|| weights[width]),
        )
    }
}

/// Draws a random 16-byte job nonce.
pub(crate) fn job_nonce() -> Result<[u8; 16], FedError> {
    let mut nonce = [0u8; 16];
    random_bytes(&mut nonce)?;
    Ok(nonce)
}
