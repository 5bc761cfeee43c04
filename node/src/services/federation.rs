//! The federation service (node ↔ node): job proposals, partial scores, chunked deliveries,
//! liveness probes and audit anchors. Every call names its sender; the caller's TLS certificate, already verified
//! against the CA, must be valid for the certificate name the configuration gives that peer,
//! or the call is refused (and logged, counted and audited).

use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};

use crate::error::{NodeError, Refusal};
use crate::mailbox::{Delivery, Liveness, NotAdmitted};
use crate::proto::federation_server::Federation;
use crate::proto::{
    AliveReply, AliveRequest, Chunk, DeliveryAck, JobProposal, PartialScoresReply,
    PartialScoresRequest,
};
use crate::proto::{AnchorReply, AnchorRequest, ProposalReply};
use crate::services::{auth, blocking};
use crate::state::NodeState;
use crate::wire::chunks::{ChunkError, Reassembler};

/// The federation gRPC service.
pub(crate) struct FederationService {
    pub(crate) node: Arc<NodeState>,
}

#[tonic::async_trait]
impl Federation for FederationService {
    async fn propose(
        &self,
        request: Request<JobProposal>,
    ) -> Result<Response<ProposalReply>, Status> {
        auth::peer(&self.node, &request, &request.get_ref().guest, "proposal")?;
        let proposal = request.into_inner();
        let detail = serde_json::json!({"dataset": proposal.dataset, "model": proposal.model_id, "kind": proposal.kind, "hosts": proposal.hosts});
        let node = self.node.clone();
        let asked = proposal.clone();
        let decision = {
            let _turn = (self.node.deciding.acquire().await)
                .map_err(|_| Status::unavailable("the node is shutting down"))?;
            blocking(move || node.accept_proposal(&asked)).await?
        };
        let reply = match decision {
            // The job's acceptance is on record before it started (see `spawn`).
            Ok(reply) => reply,
            Err(NodeError::Refused(refusal)) => {
                let reason = refusal.to_string();
                auth::deny_audited(
                    &self.node,
                    *refusal,
                    "job.refused",
                    &proposal.job_id,
                    &proposal.guest,
                    detail,
                );
                ProposalReply {
                    accepted: false,
                    reason,
                    ..ProposalReply::default()
                }
            }
            Err(error) => return Err(error.public_status("a proposal")),
        };
        Ok(Response::new(reply))
    }

    async fn partial_scores(
        &self,
        request: Request<PartialScoresRequest>,
    ) -> Result<Response<PartialScoresReply>, Status> {
        auth::peer(
            &self.node,
            &request,
            &request.get_ref().guest,
            "partial scores",
        )?;
        let request = request.into_inner();
        let node = self.node.clone();
        let asked = request.clone();
        let answer = blocking(move || {
            crate::scoring::host::partial_scores(&node.config(), &node.store, &node.scores, &asked)
        })
        .await?;
        let answer = match answer {
            Ok(answer) => answer,
            Err(NodeError::Refused(refusal)) => {
                let event = match *refusal {
                    Refusal::ScoreRate { .. } => "score.rate_limited",
                    _ => "score.refused",
                };
                let detail =
                    serde_json::json!({"model": request.model_id, "ids": request.ids.len()});
                let error =
                    auth::deny_audited(&self.node, *refusal, event, "", &request.guest, detail);
                return Err(error.into());
            }
            Err(error) => return Err(error.public_status("partial scores")),
        };
        // No partial score leaves without its audit record.
        crate::audit::append(
            &self.node.store,
            "score.partial",
            "",
            &request.guest,
            serde_json::json!({"model": request.model_id, "ids": request.ids.len(), "unknown": answer.unknown}),
        )
        .map_err(|e| e.public_status("a partial-score audit record"))?;
        Ok(Response::new(answer.reply))
    }

    async fn alive(&self, request: Request<AliveRequest>) -> Result<Response<AliveReply>, Status> {
        auth::peer(
            &self.node,
            &request,
            &request.get_ref().sender,
            "liveness probe",
        )?;
        let request = request.into_inner();
        let liveness = self.node.mailbox.liveness(&request.job_id, &request.sender);
        Ok(Response::new(AliveReply {
            running: liveness == Liveness::Running,
            resuming: liveness == Liveness::Resuming,
        }))
    }

    async fn anchor(
        &self,
        request: Request<AnchorRequest>,
    ) -> Result<Response<AnchorReply>, Status> {
        auth::peer(
            &self.node,
            &request,
            &request.get_ref().sender,
            "audit anchor",
        )?;
        let certificate = request
            .peer_certs()
            .and_then(|certs| certs.first().map(|c| c.as_ref().to_vec()))
            .unwrap_or_default();
        let request = request.into_inner();
        let party = &self.node.config().party;
        let head = match request.head {
            Some(head) => {
                let hex = head.hash.len() == 64 && head.hash.bytes().all(|b| b.is_ascii_hexdigit());
                if !hex {
                    return Err(NodeError::BadRequest(
                        "an audit head's hash is 64 hex digits".into(),
                    )
                    .into());
                }
                let head = crate::audit::head_from_wire(head);
                // Kept only as the sender's signed word: evidence a peer can show.
                if !crate::audit::head_signed_by(&head, &request.sender, party, &certificate) {
                    return Err(NodeError::BadRequest(
                        "the audit head's signature does not verify with the caller's certificate"
                            .into(),
                    )
                    .into());
                }
                Some(head)
            }
            None => None,
        };
        let node = self.node.clone();
        let kept = blocking(move || match head {
            Some(head) => {
                let offered = head.seq;
                let kept =
                    crate::audit::keep_anchor(&node.store, &request.sender, head, &certificate)?;
                Ok(Some(kept.unwrap_or_else(|held| {
                    anchor_conflict(&node, &request.sender, &held, offered);
                    held
                })))
            }
            None => node.store.anchor(&request.sender),
        })
        .await?
        .map_err(|e: NodeError| e.public_status("an audit anchor"))?;
        Ok(Response::new(AnchorReply {
            kept: kept.map(crate::audit::head_to_wire),
        }))
    }

    async fn deliver(
        &self,
        request: Request<Streaming<Chunk>>,
    ) -> Result<Response<DeliveryAck>, Status> {
        let mut stream = request;
        let first = stream
            .get_mut()
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty delivery"))?;
        auth::peer(&self.node, &stream, &first.sender, "delivery")?;
        let mut stream = stream.into_inner();
        let cap = self.node.config().federation.max_message_bytes as u64;
        let mut message = Reassembler::start(first, cap).map_err(bad_request)?;
        // Refuse strangers before reading (or allocating for) the rest of the message.
        let header = message.header().clone();
        self.node
            .mailbox
            .admits(
                &header.job_id,
                header.attempt,
                &header.sender,
                header.seq,
                message.announced_bytes(),
            )
            .map_err(|refusal| self.not_admitted(&header.job_id, &header.sender, refusal))?;
        while let Some(chunk) = stream.message().await? {
            message.push(&chunk).map_err(bad_request)?;
        }
        let (header, bytes) = message.finish().map_err(bad_request)?;
        let length = bytes.len();
        let delivery = Delivery {
            kind: header.kind,
            bytes,
        };
        let (job, sender) = (&header.job_id, &header.sender);
        let duplicate = self
            .node
            .mailbox
            .deliver(job, header.attempt, sender, header.seq, delivery)
            .map_err(|refusal| self.not_admitted(job, sender, refusal))?;
        if duplicate {
            self.node.metrics.add(
                "unseen_duplicate_deliveries_total",
                &[("peer", sender)],
                1.0,
            );
        } else {
            self.node.metrics.add(
                "unseen_bytes_received_total",
                &[("peer", sender), ("kind", header.kind.as_str())],
                length as f64,
            );
        }
        Ok(Response::new(DeliveryAck { duplicate }))
    }
}

/// Records that `peer` offered a head going back on the one kept, at most once a minute per
/// peer (a peer looping on it must not grow this node's log).
fn anchor_conflict(node: &NodeState, peer: &str, kept: &crate::store::AuditHead, offered: u64) {
    tracing::error!(
        peer,
        kept = kept.seq,
        offered,
        "a peer's audit log goes back on the head kept of it"
    );
    if auth::once_a_minute(node, format!("audit.anchor_conflict {peer}")) {
        crate::audit::record(
            &node.store,
            "audit.anchor_conflict",
            "",
            peer,
            serde_json::json!({"kept_seq": kept.seq, "offered_seq": offered}),
        );
    }
}

fn bad_request(error: ChunkError) -> Status {
    match error {
        ChunkError::Version(got) => NodeError::from(Refusal::Version { got }).into(),
        other => NodeError::BadRequest(other.to_string()).into(),
    }
}

impl FederationService {
    fn not_admitted(&self, job: &str, sender: &str, refusal: NotAdmitted) -> Status {
        match refusal {
            NotAdmitted::UnknownJob => Status::from(NodeError::NotFound(format!(
                "job {job} is not open on {}",
                self.node.config().party
            ))),
            NotAdmitted::Full { max, .. } => Status::resource_exhausted(format!(
                "job {job}: {} holds as much of its messages unread as it takes \
                 (federation.max_buffered_bytes is {max}); retry later",
                self.node.config().party
            )),
            NotAdmitted::NotParticipant => Status::from(NodeError::from(Refusal::NotInJob {
                sender: sender.to_owned(),
                job: job.to_owned(),
            })),
        }
    }
}
