//! The workers service: this party's workers (`unseen worker`) take PSI work from the node
//! (`crate::workers`). Callers must present a certificate valid for one of `workers`, from this
//! node's CA (checked again before every unit of work). Each stream is audited when it opens
//! and when it closes, with why.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::proto::workers_server::Workers;
use crate::proto::{WorkDone, WorkItem};
use crate::services::auth;
use crate::state::NodeState;

/// The workers service.
pub(crate) struct WorkersService {
    pub(crate) node: Arc<NodeState>,
}

#[tonic::async_trait]
impl Workers for WorkersService {
    type WorkStream = ReceiverStream<Result<WorkItem, Status>>;

    async fn work(
        &self,
        request: Request<Streaming<WorkDone>>,
    ) -> Result<Response<Self::WorkStream>, Status> {
        let name = auth::worker(&self.node, &request)?;
        let address = request.remote_addr().map(|a| a.to_string());
        let detail = serde_json::json!({ "worker": name, "address": address });
        crate::audit::record(&self.node.store, "worker.joined", "", "", detail.clone());
        tracing::info!(worker = %name, ?address, "a worker joined");
        let (items, stream) = mpsc::channel(2 * crate::workers::PER_WORKER);
        // Checked again before every unit: a certificate revoked meanwhile gets no more keys.
        let certs = request.peer_certs();
        let answers = request.into_inner();
        let node = self.node.clone();
        tokio::spawn(async move {
            let trusted = || {
                let presented = certs.as_deref().map(|c| &c[..]);
                node.identity.vouches_for(presented, None).is_ok()
            };
            let ended = node.workers.serve(&name, &trusted, answers, items).await;
            let mut detail = detail;
            detail["ended"] = ended.into();
            crate::audit::record(&node.store, "worker.left", "", "", detail);
            tracing::info!(worker = %name, ?address, ended, "a worker left");
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}
