//! Binning statistics across parties (`fedlearn::BinningGuest`, `fedlearn::answer_binning`):
//! the guest encrypts its labels, one host counts events per bin of every column under HE,
//! the guest decrypts and computes WOE and IV. Guest and host in one process on this
//! machine's cores, every message encoded and decoded.
//!
//! ```text
//! cargo bench --bench binning
//! cargo bench --bench binning -- credit      # one case
//! ```

use fedlearn::ndarray::Array2;
use std::time::Instant;

use fedlearn::{
    answer_binning, Binning, BinningGuest, BinningLimits, ColumnPrep, Message, Missing, Prep,
    Reading, Table,
};

fn load(name: &str, label: Option<&str>) -> Table {
    let path = format!("{}/data/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    Table::parse_csv(&path, &text, "id", label, Missing::Reject, &|_| {
        Reading::Number
    })
    .expect("table")
}

/// `rows` rows of `columns` host columns and one guest column with labels, pseudo-random.
fn synthetic(rows: usize, columns: usize) -> (Table, Table) {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let ids: Vec<String> = (0..rows).map(|i| format!("id{i}")).collect();
    let host = Array2::from_shape_simple_fn((rows, columns), &mut next);
    let labels: Vec<f64> = (0..rows).map(|_| f64::from(next() < 0.1)).collect();
    let guest = Array2::from_shape_simple_fn((rows, 1), &mut next);
    (
        Table::new(
            ids.clone(),
            vec!["g".into()],
            guest,
            Some(labels),
            Missing::Reject,
        )
        .expect("guest"),
        Table::new(
            ids,
            (0..columns).map(|c| format!("h{c}")).collect(),
            host,
            None,
            Missing::Reject,
        )
        .expect("host"),
    )
}

fn case(name: &str, guest: &Table, host: &Table) {
    let prep = Prep {
        default: ColumnPrep {
            bins: Some(Binning::Quantile { count: 10 }),
            ..ColumnPrep::default()
        },
        ..Prep::default()
    };
    let limits = BinningLimits {
        min_rows: 1,
        min_share: 0.0,
    };
    let start = Instant::now();
    let (mut binning, request) =
        BinningGuest::new("bank", guest, &prep, &["tax".to_string()]).expect("guest");
    let request_bytes = request.to_bytes();
    let guest_side = start.elapsed().as_secs_f64();
    let request = Message::from_bytes(&request_bytes).expect("request");
    let host_start = Instant::now();
    let (answer, disclosure, _) =
        answer_binning("tax", "bank", host, &prep, &limits, false, request).expect("host");
    let answer_bytes = answer.to_bytes();
    let host_side = host_start.elapsed().as_secs_f64();
    let finish_start = Instant::now();
    binning
        .receive("tax", Message::from_bytes(&answer_bytes).expect("answer"))
        .expect("counts");
    let report = binning.finish().expect("report");
    let finish = finish_start.elapsed().as_secs_f64();
    let best = report
        .columns
        .iter()
        .map(|c| c.iv)
        .fold(f64::NEG_INFINITY, f64::max);
    println!(
        "{name}: {:.2} s in all (guest: bins and encryption {guest_side:.2} s, decryption and \
         WOE {finish:.2} s; host: {host_side:.2} s for {} bins of {} columns); {:.1} MB to the \
         host, {:.2} MB back; largest IV {best:.3}",
        start.elapsed().as_secs_f64(),
        disclosure.bins,
        disclosure.columns,
        request_bytes.len() as f64 / 1e6,
        answer_bytes.len() as f64 / 1e6,
    );
}

fn main() {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |name: &str| filter.as_ref().is_none_or(|f| name.contains(f.as_str()));
    if wanted("credit") {
        let guest = load("default_credit_hetero_guest.csv", Some("y"));
        let host = load("default_credit_hetero_host.csv", None);
        case(
            "credit, 30 000 rows × (13 + 10) columns, 10 bins",
            &guest,
            &host,
        );
    }
    if wanted("1e5") {
        let (guest, host) = synthetic(100_000, 300);
        case("1e5 rows × 300 host columns, 10 bins", &guest, &host);
    }
}
