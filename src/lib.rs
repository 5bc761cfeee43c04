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

/// The CPU's model name (Linux) and the features PSI's speed depends on, for benchmark reports.
pub fn cpu_summary() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or("unknown CPU", |v| v.trim_start_matches([' ', '\t', ':']));
    #[cfg(target_arch = "x86_64")]
    let features: Vec<&str> = [
        ("avx2", std::arch::is_x86_feature_detected!("avx2")),
        ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
        (
            "avx512ifma",
            std::arch::is_x86_feature_detected!("avx512ifma"),
        ),
        ("sha", std::arch::is_x86_feature_detected!("sha")),
    ]
    .into_iter()
    .filter_map(|(name, present)| present.then_some(name))
    .collect();
    #[cfg(not(target_arch = "x86_64"))]
    let features: Vec<&str> = Vec::new();
    format!("{model} [{}]", features.join(" "))
}
