//! PSI between a guest and one or two hosts in one process, on generated ids.
//!
//! ```text
//! cargo run --release --example psi -- --n 1000000 --overlap 0.8 [--parties 2,3] [--bound]
//! ```
//!
//! Prints wall time, throughput, bytes on the wire and peak resident memory for each run.
//! `--bound` also times the unavoidable work: the two variable-base scalar multiplications per
//! element per party, on the same thread pool, and prints the ratio of the run to that floor.

use std::time::Instant;

use curve25519_dalek::ristretto::RistrettoPoint;
use curve25519_dalek::scalar::Scalar;
use psi::{run_in_memory, DuplicatePolicy, GuestConfig, HostInput, IdColumn};
use rayon::prelude::*;

struct Args {
    n: u64,
    overlap: f64,
    parties: Vec<usize>,
    bound: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        n: 100_000,
        overlap: 0.8,
        parties: vec![2, 3],
        bound: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--n" => args.n = value()?.parse().map_err(|e| format!("--n: {e}"))?,
            "--overlap" => {
                args.overlap = value()?.parse().map_err(|e| format!("--overlap: {e}"))?;
                if !(0.0..=1.0).contains(&args.overlap) {
                    return Err("--overlap must be in [0, 1]".into());
                }
            }
            "--parties" => {
                args.parties = value()?
                    .split(',')
                    .map(|p| match p.trim() {
                        "2" => Ok(2),
                        "3" => Ok(3),
                        other => Err(format!("--parties: {other} is not 2 or 3")),
                    })
                    .collect::<Result<_, _>>()?
            }
            "--bound" => args.bound = true,
            other => {
                return Err(format!(
                    "unknown argument {other}; see the file's doc comment"
                ))
            }
        }
    }
    Ok(args)
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

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Seconds for `count` variable-base scalar multiplications on the rayon pool.
fn scalar_mult_seconds(count: u64) -> f64 {
    let scalar = Scalar::from(0x1234_5678_9abc_def1_u64) * Scalar::from(0x0fed_cba9_8765_4321_u64);
    let base = RistrettoPoint::from_uniform_bytes(&[7; 64]);
    let start = Instant::now();
    let sum = (0..count)
        .into_par_iter()
        .map(|i| base * (scalar + Scalar::from(i)))
        .reduce(RistrettoPoint::default, |a, b| a + b);
    std::hint::black_box(sum);
    start.elapsed().as_secs_f64()
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("error: {message}");
            std::process::exit(2);
        }
    };
    println!(
        "PSI, {} ids per party, {:.0}% common, {} threads",
        args.n,
        args.overlap * 100.0,
        rayon::current_num_threads()
    );
    for &parties in &args.parties {
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
        let outcome = run_in_memory(guest, GuestConfig::default(), hosts, &mut |m| {
            wire_bytes += m.payload.len() as u64
        });
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
            peak_rss_mib()
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
