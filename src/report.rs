//! A model report a modeller can open in a browser: ROC and KS curves of scored rows and the
//! per-epoch training loss and AUC, as self-contained HTML with inline SVG (no scripts, no
//! external assets).

use std::fmt::Write;

/// ROC curve points (false-positive rate, true-positive rate), from the highest score down,
/// and the area under it (ties count one half).
pub fn roc(scores: &[f64], labels: &[bool]) -> (Vec<(f64, f64)>, f64) {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let positives = labels.iter().filter(|&&l| l).count().max(1) as f64;
    let negatives = labels.iter().filter(|&&l| !l).count().max(1) as f64;
    let (mut tp, mut fp, mut auc) = (0.0, 0.0, 0.0);
    let mut points = vec![(0.0, 0.0)];
    let mut i = 0;
    while i < order.len() {
        let (tp0, fp0) = (tp, fp);
        let score = scores[order[i]];
        while i < order.len() && scores[order[i]] == score {
            if labels[order[i]] {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            i += 1;
        }
        auc += (fp - fp0) / negatives * (tp + tp0) / 2.0 / positives;
        points.push((fp / negatives, tp / positives));
    }
    (points, auc)
}

/// KS curves: for thresholds from the highest score down, the share of positives and of
/// negatives scored at or above it; with the largest gap and where it is (its threshold).
pub struct Ks {
    /// (share of rows at or above the threshold, cumulative positive share, cumulative
    /// negative share).
    pub curve: Vec<(f64, f64, f64)>,
    /// The KS statistic.
    pub statistic: f64,
    /// Share of rows at the largest gap.
    pub at: f64,
    /// Score at the largest gap.
    pub threshold: f64,
}

/// The KS curves of scores against labels.
pub fn ks(scores: &[f64], labels: &[bool]) -> Ks {
    let (points, _) = roc(scores, labels);
    let n = scores.len().max(1) as f64;
    let positives = labels.iter().filter(|&&l| l).count() as f64;
    let negatives = n - positives;
    let mut sorted: Vec<f64> = scores.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let mut best = Ks {
        curve: Vec::with_capacity(points.len()),
        statistic: 0.0,
        at: 0.0,
        threshold: sorted.first().copied().unwrap_or(0.0),
    };
    for &(fpr, tpr) in &points {
        let share = (tpr * positives + fpr * negatives) / n;
        best.curve.push((share, tpr, fpr));
        if tpr - fpr > best.statistic {
            best.statistic = tpr - fpr;
            best.at = share;
            let index = ((share * n).round() as usize).clamp(1, sorted.len().max(1)) - 1;
            best.threshold = sorted.get(index).copied().unwrap_or(0.0);
        }
    }
    best
}

const W: f64 = 420.0;
const H: f64 = 320.0;
const PAD: f64 = 44.0;

fn x(v: f64) -> f64 {
    PAD + v * (W - 2.0 * PAD)
}

fn y(v: f64) -> f64 {
    H - PAD - v * (H - 2.0 * PAD)
}

/// At most this many points per curve: enough for a 420-pixel chart, and files stay small.
const MAX_POINTS: usize = 400;

fn polyline(points: &[(f64, f64)], colour: &str) -> String {
    let step = points.len().div_ceil(MAX_POINTS).max(1);
    let kept = points
        .iter()
        .enumerate()
        .filter(|(i, _)| i % step == 0 || *i + 1 == points.len())
        .map(|(_, p)| p);
    let mut path = String::new();
    for (i, (a, b)) in kept.enumerate() {
        let _ = write!(
            path,
            "{}{:.1},{:.1}",
            if i == 0 { "" } else { " " },
            x(*a),
            y(*b)
        );
    }
    format!("<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{path}\"/>")
}

/// A chart frame; the x axis is labelled from `x_range.0` to `x_range.1`, the y axis 0 to 1
/// unless `y_ticks` is off.
fn frame(
    title: &str,
    x_label: &str,
    y_label: &str,
    x_range: (f64, f64),
    y_ticks: bool,
    body: &str,
) -> String {
    let mut ticks = String::new();
    for i in 0..=4 {
        let v = f64::from(i) / 4.0;
        let label = x_range.0 + v * (x_range.1 - x_range.0);
        let _ = write!(
            ticks,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
            x(v),
            H - PAD + 16.0,
            if x_range == (0.0, 1.0) {
                format!("{label:.2}")
            } else {
                format!("{label:.1}")
            }
        );
        if y_ticks {
            let _ = write!(
                ticks,
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{v:.2}</text>",
                PAD - 6.0,
                y(v) + 4.0
            );
        }
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
         <text x=\"{:.1}\" y=\"20\" font-size=\"14\" text-anchor=\"middle\">{title}</text>\
         <rect x=\"{PAD}\" y=\"{PAD}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"none\" stroke=\"#999\"/>\
         {ticks}\
         <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\">{x_label}</text>\
         <text x=\"14\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\" transform=\"rotate(-90 14 {:.1})\">{y_label}</text>\
         {body}</svg>",
        W / 2.0,
        W - 2.0 * PAD,
        H - 2.0 * PAD,
        W / 2.0,
        H - 8.0,
        H / 2.0,
        H / 2.0,
    )
}

/// The ROC curve as SVG.
pub fn roc_svg(scores: &[f64], labels: &[bool]) -> String {
    let (points, auc) = roc(scores, labels);
    let body = format!(
        "{}{}",
        polyline(&[(0.0, 0.0), (1.0, 1.0)], "#bbb"),
        polyline(&points, "#1f5fbf")
    );
    frame(
        &format!("ROC — AUC {auc:.4}"),
        "false-positive rate",
        "true-positive rate",
        (0.0, 1.0),
        true,
        &body,
    )
}

/// The KS curves as SVG.
pub fn ks_svg(scores: &[f64], labels: &[bool]) -> String {
    let k = ks(scores, labels);
    let positives: Vec<(f64, f64)> = k.curve.iter().map(|&(s, tp, _)| (s, tp)).collect();
    let negatives: Vec<(f64, f64)> = k.curve.iter().map(|&(s, _, fp)| (s, fp)).collect();
    let gap = k
        .curve
        .iter()
        .find(|&&(s, tp, fp)| s == k.at && (tp - fp - k.statistic).abs() < 1e-12)
        .map_or(String::new(), |&(s, tp, fp)| {
            format!(
                "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#c0392b\" stroke-dasharray=\"4 3\"/>",
                x(s),
                y(tp),
                x(s),
                y(fp)
            )
        });
    let body = format!(
        "{}{}{gap}",
        polyline(&positives, "#c0392b"),
        polyline(&negatives, "#1f5fbf")
    );
    frame(
        &format!("KS {:.4} (defaults red, others blue)", k.statistic),
        "share of rows, riskiest first",
        "cumulative share",
        (0.0, 1.0),
        true,
        &body,
    )
}

/// Per-epoch Taylor log-loss on the training rows and, when there is a validation split, on
/// the validation rows (`NaN` otherwise), as SVG on one scale.
pub fn training_svg(epochs: &[(u32, f64, f64)]) -> String {
    if epochs.is_empty() {
        return frame("training", "epoch", "", (0.0, 1.0), false, "");
    }
    let last = epochs.iter().map(|e| e.0).max().unwrap_or(1).max(2) as f64;
    let values = epochs
        .iter()
        .flat_map(|e| [e.1, e.2])
        .filter(|v| v.is_finite());
    let lo = values.clone().fold(f64::INFINITY, f64::min);
    let hi = values.fold(f64::NEG_INFINITY, f64::max);
    let span = if hi > lo { hi - lo } else { 1.0 };
    let at = |i: usize| (f64::from(epochs[i].0) - 1.0) / (last - 1.0);
    let curve = |pick: fn(&(u32, f64, f64)) -> f64| -> Vec<(f64, f64)> {
        (0..epochs.len())
            .filter(|&i| pick(&epochs[i]).is_finite())
            .map(|i| (at(i), (pick(&epochs[i]) - lo) / span))
            .collect()
    };
    let body = format!(
        "{}{}<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#c0392b\">training</text>\
         <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#1f5fbf\">validation</text>",
        polyline(&curve(|e| e.1), "#c0392b"),
        polyline(&curve(|e| e.2), "#1f5fbf"),
        PAD,
        PAD - 8.0,
        W / 2.0 + 8.0,
        PAD - 8.0,
    );
    frame(
        &format!(
            "Taylor log-loss over {} epochs, {lo:.4}–{hi:.4}",
            epochs.len()
        ),
        "epoch",
        "loss (scaled to its range)",
        (1.0, last),
        false,
        &body,
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A table of the report: a heading, column headers and rows of cells.
pub struct HtmlTable {
    /// Heading above the table.
    pub title: String,
    /// Column headers.
    pub header: Vec<String>,
    /// Rows of cells.
    pub rows: Vec<Vec<String>>,
}

/// The whole report: a title, key figures (name, value), the charts, then the tables.
pub fn html(
    title: &str,
    figures: &[(String, String)],
    charts: &[String],
    tables: &[HtmlTable],
) -> String {
    let mut rows = String::new();
    for (name, value) in figures {
        let _ = write!(
            rows,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(name),
            escape(value)
        );
    }
    let mut more = String::new();
    for table in tables {
        let cells = |cells: &[String], tag: &str| -> String {
            cells
                .iter()
                .map(|c| format!("<{tag}>{}</{tag}>", escape(c)))
                .collect()
        };
        let _ = write!(
            more,
            "<h2>{}</h2><table><tr>{}</tr>",
            escape(&table.title),
            cells(&table.header, "th")
        );
        for row in &table.rows {
            let _ = write!(more, "<tr>{}</tr>", cells(row, "td"));
        }
        more.push_str("</table>");
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;margin-bottom:1.5em}}\
         th,td{{text-align:left;padding:.25em 1em;border-bottom:1px solid #ddd}}svg{{margin:0 1em 1em 0}}</style>\
         </head><body><h1>{t}</h1><table>{rows}</table>{}{more}</body></html>\n",
        charts.join(""),
        t = escape(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roc_and_ks_of_known_orderings() {
        let labels = [true, true, false, false];
        let (_, perfect) = roc(&[0.9, 0.8, 0.2, 0.1], &labels);
        assert!((perfect - 1.0).abs() < 1e-12);
        let (_, inverted) = roc(&[0.1, 0.2, 0.8, 0.9], &labels);
        assert!(inverted.abs() < 1e-12);
        let (_, tied) = roc(&[0.5; 4], &labels);
        assert!((tied - 0.5).abs() < 1e-12);
        let (_, mixed) = roc(&[0.9, 0.3, 0.5, 0.1], &labels);
        assert!((mixed - 0.75).abs() < 1e-12);
        let k = ks(&[0.9, 0.8, 0.2, 0.1], &labels);
        assert!((k.statistic - 1.0).abs() < 1e-12 && (k.at - 0.5).abs() < 1e-12);
        assert!((k.threshold - 0.8).abs() < 1e-12);
        let page = html(
            "r",
            &[("AUC".into(), "1 < 2".into())],
            &[roc_svg(&[0.9, 0.1], &[true, false])],
            &[HtmlTable {
                title: "bins".into(),
                header: vec!["bin".into()],
                rows: vec![vec!["≤ 3 & up".into()]],
            }],
        );
        assert!(page.contains("1 &lt; 2") && page.contains("<svg"));
        assert!(page.contains("<h2>bins</h2>") && page.contains("<td>≤ 3 &amp; up</td>"));
    }
}
