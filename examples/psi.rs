//! PSI between a guest and one or two hosts in one process, on generated ids.
//!
//! ```text
//! cargo run --release --example psi -- --n 1000000 --overlap 0.8 [--parties 2,3] [--bound]
//!     [--partition-rows 1048576]
//! ```
//!
//! Prints wall time, throughput, bytes on the wire and peak resident memory for each run.
//! `--bound` also times the unavoidable work: the two variable-base scalar multiplications per
//! element per party, on the same thread pool and with the same arithmetic, and prints the ratio
//! of the run to that floor. `--portable` makes PSI use curve25519-dalek even on a CPU with
//! AVX-512 IFMA, to compare the two arithmetics on one machine.

use std::time::Instant;

use clap::Parser;
use psi::{
    run_in_memory, run_in_memory_partitioned, DuplicatePolicy, GuestConfig, HostInput, IdColumn,
};

/// PSI between a guest and one or two hosts in one process, on generated ids.
#[derive(Parser)]
struct Args {
    /// Ids per party.
    #[arg(long, default_value_t = 100_000)]
    n: u64,
    /// Share of the guest's ids each host also holds, in [0, 1].
    #[arg(long, default_value_t = 0.8, value_parser = fraction)]
    overlap: f64,
    /// Parties per run (2 or 3), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "2,3", value_parser = clap::value_parser!(u8).range(2..=3))]
    parties: Vec<u8>,
    /// Also time the floor: two scalar multiplications per element per party.
    #[arg(long)]
    bound: bool,
    /// Use the portable arithmetic (curve25519-dalek) even where AVX-512 IFMA is available.
    #[arg(long)]
    portable: bool,
    /// Run PSI in parts of about this many guest ids, as the nodes do (default: one session).
    #[arg(long)]
    partition_rows: Option<u64>,
}

fn fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{text:?} is not a number in [0, 1]")),
    }
}

/// Ids of one party: the first `overlap·n` are common to every party, the rest are its own.
fn party_ids(party: u64, n: u64, overlap: f64) -> IdColumn {
    let shared = (overlap * n as f64).round() as u64;
    let mut ids = IdColumn::with_capacity(n as usize, n as usize * 14);
    for i in 0..n {
        let id = if i < shared {
            format!("ent-{i:010}")
        } else {
            format!("p{party}-{i:010}")
        };
        ids.push(id.as_bytes()).expect("generated ids are valid");
    }
    ids
}

/// Seconds for `count` variable-base scalar multiplications on the rayon pool.
fn scalar_mult_seconds(count: u64) -> f64 {
    let start = Instant::now();
    psi::internal::multiplication_floor(count as usize);
    start.elapsed().as_secs_f64()
}

fn main() {
    let args = Args::parse();
    psi::internal::force_portable(args.portable);
    println!(
        "PSI, {} ids per party, {:.0}% common, {} threads, {}",
        args.n,
        args.overlap * 100.0,
        rayon::current_num_threads(),
        psi::arithmetic()
    );
    println!("CPU: {}", unseen::cpu_summary());
    for parties in args.parties.iter().map(|&p| usize::from(p)) {
        let guest = party_ids(0, args.n, args.overlap);
        let hosts = (1..parties as u64)
            .map(|p| HostInput {
                name: format!("host{p}"),
                ids: party_ids(p, args.n, args.overlap),
                duplicates: DuplicatePolicy::Reject,
            })
            .collect();
        let mut wire_bytes = 0u64;
        let start = Instant::now();
        let mut count = |m: &psi::WireMessage<'_>| wire_bytes += m.payload.len() as u64;
        let outcome = match args.partition_rows {
            Some(rows) => {
                run_in_memory_partitioned(guest, GuestConfig::default(), rows, hosts, &mut count)
            }
            None => run_in_memory(guest, GuestConfig::default(), hosts, &mut count),
        };
        let seconds = start.elapsed().as_secs_f64();
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        };
        let elements = args.n * parties as u64;
        println!(
            "{parties} parties: {seconds:.2} s, intersection {}, {:.0} elements/s ({:.0} per party), \
             {:.1} MiB on the wire ({:.1} B per element), peak RSS so far {:.0} MiB",
            outcome.guest.aligned_rows.len(),
            elements as f64 / seconds,
            elements as f64 / seconds / parties as f64,
            wire_bytes as f64 / (1 << 20) as f64,
            wire_bytes as f64 / elements as f64,
            unseen::peak_rss_mib()
        );
        if args.bound {
            // Guest: one multiplication per own id and one per id of each host; each host: one
            // per own id and one per guest id.
            let mults = args.n * (1 + 3 * (parties as u64 - 1));
            let sample = mults.min(1 << 19);
            let bound = scalar_mult_seconds(sample) * mults as f64 / sample as f64;
            println!(
                "  floor: {mults} variable-base scalar multiplications take {bound:.2} s \
                 ({:.1} µs each, timed on {sample}); run / floor = {:.3}",
                bound / mults as f64 * 1e6 * rayon::current_num_threads() as f64,
                seconds / bound
            );
        }
    }
}
