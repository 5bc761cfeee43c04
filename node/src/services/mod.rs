//! The gRPC services: federation (node ↔ node), jobs (operator ↔ own node), scoring
//! (platform ↔ the guest's node) and workers (a party's workers ↔ its node), each authorised in [`auth`]. Services return
//! `Result<_, NodeError>` internally and convert at the edge through `From<NodeError> for
//! Status`.

pub(crate) mod auth;
pub(crate) mod federation;
pub(crate) mod jobs;
mod records;
pub(crate) mod scoring;
pub(crate) mod workers;

/// Runs blocking work (store, protocol, HE) off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tonic::Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| tonic::Status::internal(e.to_string()))
}
