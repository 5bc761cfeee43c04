//! unseen's cross-crate pieces: [`local`], a three-party federation on loopback used by the
//! end-to-end tests, the benchmarks and the demo; [`report`], the HTML model report; and
//! [`peak_rss_mib`], the memory figure the benchmarks print.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod local;
pub mod report;

/// This process's peak resident set so far (VmHWM, Linux), in MiB; NaN where unknown.
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}
