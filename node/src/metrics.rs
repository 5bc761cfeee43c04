//! Prometheus metrics: counters and latency summaries kept in memory, served as text on
//! `metrics_listen` (plain HTTP, `GET /metrics`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Help text of every metric the node exports.
const HELP: &[(&str, &str, &str)] = &[
    (
        "unseen_psi_work_total",
        "counter",
        "Units of PSI work (one batch's group operations) run, by whom: a worker or the node.",
    ),
    (
        "unseen_jobs_total",
        "counter",
        "Jobs that ended, by role and state.",
    ),
    (
        "unseen_jobs_started_total",
        "counter",
        "Jobs started, by role.",
    ),
    (
        "unseen_bytes_sent_total",
        "counter",
        "Protocol bytes sent, by peer and kind.",
    ),
    (
        "unseen_bytes_received_total",
        "counter",
        "Protocol bytes received, by peer and kind.",
    ),
    (
        "unseen_peer_call_errors_total",
        "counter",
        "Failed calls to peers, by peer and gRPC code.",
    ),
    (
        "unseen_duplicate_deliveries_total",
        "counter",
        "Retried deliveries that were dropped, by peer.",
    ),
    (
        "unseen_refused_total",
        "counter",
        "Refused connections, calls and proposals, by reason.",
    ),
    (
        "unseen_peer_call_seconds",
        "summary",
        "Latency of successful peer calls, by peer and method.",
    ),
];

/// The node's metrics.
#[derive(Default)]
pub struct Metrics {
    series: Mutex<BTreeMap<(&'static str, String), f64>>,
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    inner.join(",")
}

impl Metrics {
    /// Adds `by` to a counter.
    pub fn add(&self, name: &'static str, pairs: &[(&str, &str)], by: f64) {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        *series.entry((name, labels(pairs))).or_default() += by;
    }

    /// Records one latency observation of a summary.
    pub fn observe(&self, name: &'static str, pairs: &[(&str, &str)], value: Duration) {
        let key = labels(pairs);
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        *series.entry((name, format!("sum|{key}"))).or_default() += value.as_secs_f64();
        *series.entry((name, format!("count|{key}"))).or_default() += 1.0;
    }

    /// The current value of a counter (0 when never touched).
    pub fn get(&self, name: &'static str, pairs: &[(&str, &str)]) -> f64 {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        series.get(&(name, labels(pairs))).copied().unwrap_or(0.0)
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for (name, kind, help) in HELP {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for ((metric, key), value) in series.iter().filter(|((m, _), _)| m == name) {
                let (suffix, key) = match key.split_once('|') {
                    Some(("sum", rest)) => ("_sum", rest),
                    Some(("count", rest)) => ("_count", rest),
                    _ => ("", key.as_str()),
                };
                out.push_str(&format!("{metric}{suffix}{{{key}}} {value}\n"));
            }
        }
        out
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: std::sync::Arc<Metrics>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut request = Vec::with_capacity(1024);
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => request.extend_from_slice(&buf[..n]),
                    _ => return,
                }
            }
            let response = if request.starts_with(b"GET /metrics ") {
                let body = metrics.render();
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
            };
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_summaries_render_in_the_text_format() {
        let metrics = Metrics::default();
        metrics.add(
            "unseen_bytes_sent_total",
            &[("peer", "tax"), ("kind", "psi")],
            10.0,
        );
        metrics.add(
            "unseen_bytes_sent_total",
            &[("peer", "tax"), ("kind", "psi")],
            5.0,
        );
        metrics.observe(
            "unseen_peer_call_seconds",
            &[("peer", "tax"), ("method", "deliver")],
            Duration::from_millis(250),
        );
        let text = metrics.render();
        assert!(
            text.contains("unseen_bytes_sent_total{peer=\"tax\",kind=\"psi\"} 15\n"),
            "{text}"
        );
        assert!(
            text.contains("unseen_peer_call_seconds_sum{peer=\"tax\",method=\"deliver\"} 0.25\n")
        );
        assert!(
            text.contains("unseen_peer_call_seconds_count{peer=\"tax\",method=\"deliver\"} 1\n")
        );
        assert!(text.contains("# TYPE unseen_jobs_total counter\n"));
    }
}
