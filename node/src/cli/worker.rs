//! `unseen worker`: a process of this party that runs PSI work for its node (see
//! `crate::workers`). It connects to the node with its own certificate (a name the node's
//! `workers` lists), takes work until stopped and comes back after the node restarts.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use zeroize::Zeroize;

use crate::proto::workers_client::WorkersClient;
use crate::proto::{WorkDone, WorkItem};
use crate::tls::Identity;

/// Runs until SIGINT or SIGTERM; then says how many units of work it ran.
pub(super) async fn worker(node: String, identity: PathBuf) -> Result<ExitCode, String> {
    // A missing or broken identity is the operator's to fix, not a reason to retry.
    Identity::load_dir(&identity).map_err(|e| e.to_string())?;
    let done = AtomicU64::new(0);
    tokio::select! {
        _ = super::wait_for_signal() => {}
        _ = keep_working(&node, &identity, &done) => {}
    }
    let done = done.load(Ordering::Relaxed);
    tracing::info!(done, "worker stopping");
    eprintln!("worker stopping: {done} units of work done");
    Ok(ExitCode::SUCCESS)
}

/// Works for the node, connecting again (after 1, 2, 4 … 30 s) whenever the stream ends.
async fn keep_working(node: &str, identity: &Path, done: &AtomicU64) {
    let mut wait = Duration::from_secs(1);
    loop {
        match work(node, identity, done, &mut wait).await {
            Ok(()) => tracing::info!(node, "the node closed the stream"),
            Err(e) => tracing::warn!(node, error = %e, "no work from the node"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(30));
    }
}

/// One stream: each unit of work as it comes, one at a time (the node sends the next while
/// this one runs).
async fn work(
    node: &str,
    identity: &Path,
    done: &AtomicU64,
    wait: &mut Duration,
) -> Result<(), String> {
    // Pings the node while idle too: a node that went away (a replaced pod) is noticed within
    // 40 s, and the worker connects again.
    let channel = super::endpoint(node, identity)?
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|e| super::connect_error(node, identity, &super::error_chain(&e)))?;
    let limit = crate::workers::MAX_MESSAGE_BYTES;
    let mut client = WorkersClient::new(channel).max_decoding_message_size(limit);
    let (answers, outgoing) = mpsc::channel(4);
    let mut items = client
        .work(ReceiverStream::new(outgoing))
        .await
        .map_err(super::status_error)?
        .into_inner();
    tracing::info!(node, "working for the node");
    *wait = Duration::from_secs(1);
    while let Some(item) = items.message().await.map_err(super::status_error)? {
        let answer = tokio::task::spawn_blocking(move || run(item))
            .await
            .map_err(|e| format!("a unit of work failed: {e}"))?;
        let ran = answer.error.is_empty();
        if !ran {
            tracing::warn!(error = %answer.error, "a unit of work this worker cannot run");
        }
        answers
            .send(answer)
            .await
            .map_err(|_| "the node closed the stream".to_owned())?;
        if ran {
            done.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Runs one unit of work; the bytes that carried the key are zeroised.
fn run(item: WorkItem) -> WorkDone {
    let WorkItem { id, mut work } = item;
    let parsed = psi::Work::from_bytes(&work);
    work.zeroize();
    match parsed {
        Ok(work) => WorkDone {
            id,
            output: work.run().to_bytes(),
            error: String::new(),
        },
        Err(e) => WorkDone {
            id,
            output: Vec::new(),
            error: e.to_string(),
        },
    }
}
