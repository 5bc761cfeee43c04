//! Weight of evidence and information value of a column's bins, from their row and event
//! counts: WOE = ln(share of the non-events in a bin / share of the events in it) — positive
//! is safer, in the credit convention — with 0.5 in place of an empty count; IV =
//! Σ (share of non-events − share of events)·WOE.

use serde::{Deserialize, Serialize};

/// One bin's counts and weight of evidence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BinStats {
    /// The bin (its range or category for the guest's own columns, its position for a host's).
    pub label: String,
    /// Rows in the bin.
    pub rows: u64,
    /// Events (label 1) among them.
    pub events: u64,
    /// ln(share of non-events / share of events).
    pub woe: f64,
    /// The bin's share of the column's IV.
    pub iv: f64,
    /// The bin holds the rows with a missing value, and only them.
    #[serde(default)]
    pub missing: bool,
}

/// One column's bins and information value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColumnStats {
    /// The party holding the column.
    pub party: String,
    /// Its name, or the host's alias for it.
    pub name: String,
    /// A text column: its bins are categories, in no order.
    #[serde(default)]
    pub categorical: bool,
    /// Its non-empty bins.
    pub bins: Vec<BinStats>,
    /// Information value.
    pub iv: f64,
}

/// One bin's label, rows, events, and whether it is the missing bin alone.
pub(crate) type BinCounts = (String, u64, u64, bool);

impl ColumnStats {
    pub(crate) fn new(
        party: &str,
        (name, categorical): (String, bool),
        bins: Vec<BinCounts>,
        rows: u64,
        events: u64,
    ) -> ColumnStats {
        let non_events = rows - events;
        // An empty count counts as 0.5, so that WOE stays finite.
        let share = |count: u64, total: u64| {
            (if count == 0 { 0.5 } else { count as f64 }) / total.max(1) as f64
        };
        let bins: Vec<BinStats> = bins
            .into_iter()
            .filter(|&(_, n, _, _)| n > 0)
            .map(|(label, n, e, missing)| {
                let (good, bad) = (share(n - e, non_events), share(e, events));
                let woe = (good / bad).ln();
                BinStats {
                    label,
                    rows: n,
                    events: e,
                    woe,
                    iv: (good - bad) * woe,
                    missing,
                }
            })
            .collect();
        ColumnStats {
            party: party.to_owned(),
            name,
            categorical,
            iv: bins.iter().map(|b| b.iv).sum(),
            bins,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn woe_and_iv_follow_the_credit_convention() {
        // 100 rows, 20 events; a bin with 10 of 20 events and 10 of 80 non-events.
        let stats = ColumnStats::new(
            "bank",
            ("x".into(), false),
            vec![
                ("a".into(), 20, 10, false),
                ("b".into(), 80, 10, false),
                ("c".into(), 0, 0, true),
            ],
            100,
            20,
        );
        assert_eq!(stats.bins.len(), 2, "empty bins are left out");
        let risky = &stats.bins[0];
        assert!((risky.woe - (0.125f64 / 0.5).ln()).abs() < 1e-12);
        assert!(risky.woe < 0.0, "more events than average: negative WOE");
        let iv = (0.125 - 0.5) * (0.125f64 / 0.5).ln() + (0.875 - 0.5) * (0.875f64 / 0.5).ln();
        assert!((stats.iv - iv).abs() < 1e-12);
    }
}
