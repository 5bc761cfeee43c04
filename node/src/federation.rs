//! The federation service (node ↔ node) and the mapping of PSI messages to protobuf.
//!
//! Every call names its sender; the caller's TLS certificate, already verified against the
//! CA, must be valid for the certificate name the configuration gives that peer, or the call
//! is refused (and logged, and counted).

use std::sync::Arc;

use prost::Message as _;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tonic::{Request, Response, Status, Streaming};

use crate::jobs::NodeState;
use crate::mailbox::{Delivery, Refusal};
use crate::proto::federation_server::Federation;
use crate::proto::{psi_message, Chunk, DeliveryAck, JobProposal, ProposalReply, PsiMessage};
use crate::proto::{PsiAlignment, PsiGuestHello, PsiHostHello, PsiPoints, PsiTags};
use crate::FEDERATION_VERSION;

/// The federation gRPC service.
pub struct FederationService {
    pub(crate) node: Arc<NodeState>,
}

/// Checks that the caller's certificate is valid for the configured certificate name of peer
/// `claimed`.
pub(crate) fn authenticate(
    node: &NodeState,
    certs: Option<&[CertificateDer<'_>]>,
    claimed: &str,
    what: &str,
) -> Result<(), Status> {
    let claimed: String = claimed.chars().take(64).collect();
    let claimed = claimed.as_str();
    let expected = node.config.peer(claimed).map(|p| p.certificate_name());
    let ok = expected.is_some_and(|name| crate::tls::peer_name(certs, [name]).is_some());
    if ok {
        return Ok(());
    }
    let reason = match expected {
        None => format!("{claimed:?} is not a peer of {}", node.config.party),
        Some(name) => format!("the caller's certificate is not valid for {name:?}"),
    };
    tracing::warn!(claimed, what, %reason, "refused a federation call");
    crate::audit::record(
        &node.store,
        "peer.refused",
        "",
        claimed,
        serde_json::json!({"call": what, "reason": reason}),
    );
    node.metrics
        .add("unseen_refused_total", &[("reason", "peer identity")], 1.0);
    Err(Status::permission_denied(format!(
        "{what} from {claimed}: {reason}"
    )))
}

#[tonic::async_trait]
impl Federation for FederationService {
    async fn propose(
        &self,
        request: Request<JobProposal>,
    ) -> Result<Response<ProposalReply>, Status> {
        let certs = request.peer_certs();
        let proposal = request.into_inner();
        authenticate(
            &self.node,
            certs.as_deref().map(|c| &c[..]),
            &proposal.guest,
            "proposal",
        )?;
        let detail = serde_json::json!({"dataset": proposal.dataset, "model": proposal.model_id, "kind": proposal.kind, "hosts": proposal.hosts});
        let node = self.node.clone();
        let asked = proposal.clone();
        let decision = tokio::task::spawn_blocking(move || node.accept_proposal(&asked))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let reply = match decision {
            Ok(()) => {
                crate::audit::record(
                    &self.node.store,
                    "job.accepted",
                    &proposal.job_id,
                    &proposal.guest,
                    detail,
                );
                ProposalReply {
                    accepted: true,
                    reason: String::new(),
                }
            }
            Err(reason) => {
                let mut detail = detail;
                detail["reason"] = reason.clone().into();
                crate::audit::record(
                    &self.node.store,
                    "job.refused",
                    &proposal.job_id,
                    &proposal.guest,
                    detail,
                );
                tracing::warn!(job = %proposal.job_id, guest = %proposal.guest, %reason, "refused a job");
                self.node
                    .metrics
                    .add("unseen_refused_total", &[("reason", "policy")], 1.0);
                ProposalReply {
                    accepted: false,
                    reason,
                }
            }
        };
        Ok(Response::new(reply))
    }

    async fn partial_scores(
        &self,
        request: Request<crate::proto::PartialScoresRequest>,
    ) -> Result<Response<crate::proto::PartialScoresReply>, Status> {
        let certs = request.peer_certs();
        let request = request.into_inner();
        authenticate(
            &self.node,
            certs.as_deref().map(|c| &c[..]),
            &request.guest,
            "partial scores",
        )?;
        let node = self.node.clone();
        let reply =
            tokio::task::spawn_blocking(move || crate::scoring::partial_scores(&node, &request))
                .await
                .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(reply))
    }

    async fn deliver(
        &self,
        request: Request<Streaming<Chunk>>,
    ) -> Result<Response<DeliveryAck>, Status> {
        let certs = request.peer_certs();
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty delivery"))?;
        authenticate(
            &self.node,
            certs.as_deref().map(|c| &c[..]),
            &first.sender,
            "delivery",
        )?;
        if first.version != FEDERATION_VERSION {
            return Err(Status::failed_precondition(format!(
                "federation version {} is not supported (this node speaks {FEDERATION_VERSION})",
                first.version
            )));
        }
        if !KINDS.contains(&first.kind.as_str()) {
            return Err(Status::invalid_argument(format!(
                "unknown message kind {:?}",
                first.kind
            )));
        }
        let cap = self.node.config.federation.max_message_bytes as u64;
        if first.total_bytes > cap {
            return Err(Status::invalid_argument(format!(
                "message of {} bytes exceeds the cap of {cap}",
                first.total_bytes
            )));
        }
        if first.index != 0 || first.count == 0 {
            return Err(Status::invalid_argument(
                "a delivery must start with chunk 0",
            ));
        }
        // Refuse strangers before reading (or allocating for) the rest of the message.
        self.node
            .mailbox
            .admits(&first.job_id, &first.sender)
            .map_err(|refusal| self.refusal(&first, refusal))?;
        let mut bytes = Vec::with_capacity(first.data.len());
        bytes.extend_from_slice(&first.data);
        let mut received = 1;
        while let Some(chunk) = stream.message().await? {
            if chunk.job_id != first.job_id
                || chunk.sender != first.sender
                || chunk.seq != first.seq
                || chunk.index != received
                || chunk.count != first.count
            {
                return Err(Status::invalid_argument(format!(
                    "chunk {} of message {} does not continue the stream",
                    chunk.index, first.seq
                )));
            }
            bytes.extend_from_slice(&chunk.data);
            if bytes.len() as u64 > first.total_bytes {
                return Err(Status::invalid_argument(
                    "chunks exceed the announced length",
                ));
            }
            received += 1;
        }
        if received != first.count || bytes.len() as u64 != first.total_bytes {
            return Err(Status::invalid_argument(format!(
                "message {} ended after {received} of {} chunks ({} of {} bytes)",
                first.seq,
                first.count,
                bytes.len(),
                first.total_bytes
            )));
        }
        let length = bytes.len();
        let delivery = Delivery {
            kind: first.kind.clone(),
            bytes,
        };
        match self
            .node
            .mailbox
            .deliver(&first.job_id, &first.sender, first.seq, delivery)
        {
            Ok(duplicate) => {
                if duplicate {
                    self.node.metrics.add(
                        "unseen_duplicate_deliveries_total",
                        &[("peer", &first.sender)],
                        1.0,
                    );
                } else {
                    self.node.metrics.add(
                        "unseen_bytes_received_total",
                        &[("peer", &first.sender), ("kind", &first.kind)],
                        length as f64,
                    );
                }
                Ok(Response::new(DeliveryAck { duplicate }))
            }
            Err(refusal) => Err(self.refusal(&first, refusal)),
        }
    }
}

/// Message kinds a delivery may carry.
const KINDS: &[&str] = &["psi", "fedlearn", "abort", "scoring-seed"];

impl FederationService {
    fn refusal(&self, chunk: &Chunk, refusal: Refusal) -> Status {
        match refusal {
            Refusal::UnknownJob => Status::not_found(format!(
                "job {} is not open on {}",
                chunk.job_id, self.node.config.party
            )),
            Refusal::NotParticipant => Status::permission_denied(format!(
                "{} is not part of job {}",
                chunk.sender, chunk.job_id
            )),
        }
    }
}

fn version(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

/// Encodes a PSI message as protobuf.
pub(crate) fn encode_psi(body: psi_message::Body) -> Vec<u8> {
    PsiMessage { body: Some(body) }.encode_to_vec()
}

/// Decodes a PSI message from `peer`.
pub(crate) fn decode_psi(peer: &str, bytes: &[u8]) -> Result<psi_message::Body, psi::PsiError> {
    let malformed = |field: &'static str, reason: String| psi::PsiError::InvalidField {
        peer: peer.to_owned(),
        field,
        reason,
    };
    PsiMessage::decode(bytes)
        .map_err(|e| malformed("message", e.to_string()))?
        .body
        .ok_or_else(|| malformed("message", "empty PSI message".into()))
}

/// psi's guest hello as protobuf.
pub(crate) fn guest_hello_to_proto(hello: &psi::GuestHello) -> psi_message::Body {
    psi_message::Body::GuestHello(PsiGuestHello {
        version: hello.version.into(),
        salt: hello.salt.0.to_vec(),
        guest_rows: hello.guest_rows,
        batch_size: hello.batch_size,
        both_sides: hello.result == psi::ResultMode::BothSides,
    })
}

/// Protobuf guest hello as psi's.
pub(crate) fn guest_hello_from_proto(
    peer: &str,
    hello: &PsiGuestHello,
) -> Result<psi::GuestHello, psi::PsiError> {
    let salt: [u8; 32] =
        hello
            .salt
            .as_slice()
            .try_into()
            .map_err(|_| psi::PsiError::InvalidField {
                peer: peer.to_owned(),
                field: "salt",
                reason: format!("{} bytes, expected 32", hello.salt.len()),
            })?;
    Ok(psi::GuestHello {
        version: version(hello.version),
        salt: psi::JobSalt(salt),
        guest_rows: hello.guest_rows,
        batch_size: hello.batch_size,
        result: if hello.both_sides {
            psi::ResultMode::BothSides
        } else {
            psi::ResultMode::ReceiverOnly
        },
    })
}

/// psi's host hello as protobuf.
pub(crate) fn host_hello_to_proto(hello: &psi::HostHello) -> psi_message::Body {
    psi_message::Body::HostHello(PsiHostHello {
        version: hello.version.into(),
        host_rows: hello.host_rows,
    })
}

/// Protobuf host hello as psi's.
pub(crate) fn host_hello_from_proto(hello: &PsiHostHello) -> psi::HostHello {
    psi::HostHello {
        version: version(hello.version),
        host_rows: hello.host_rows,
    }
}

/// A point batch as protobuf.
pub(crate) fn points_to_proto(batch: &psi::PointBatch) -> psi_message::Body {
    psi_message::Body::Points(PsiPoints {
        version: batch.version.into(),
        batch: batch.batch,
        points: psi::points_to_bytes(&batch.points),
    })
}

/// Protobuf points as psi's.
pub(crate) fn points_from_proto(
    peer: &str,
    batch: &PsiPoints,
) -> Result<psi::PointBatch, psi::PsiError> {
    Ok(psi::PointBatch {
        version: version(batch.version),
        batch: batch.batch,
        points: psi::points_from_bytes(peer, &batch.points)?,
    })
}

/// A tag batch as protobuf.
pub(crate) fn tags_to_proto(batch: &psi::TagBatch) -> psi_message::Body {
    psi_message::Body::Tags(PsiTags {
        version: batch.version.into(),
        batch: batch.batch,
        tags: psi::tags_to_bytes(&batch.tags),
    })
}

/// Protobuf tags as psi's.
pub(crate) fn tags_from_proto(peer: &str, batch: &PsiTags) -> Result<psi::TagBatch, psi::PsiError> {
    Ok(psi::TagBatch {
        version: version(batch.version),
        batch: batch.batch,
        tags: psi::tags_from_bytes(peer, &batch.tags)?,
    })
}

/// An alignment as protobuf.
pub(crate) fn alignment_to_proto(alignment: &psi::Alignment) -> psi_message::Body {
    psi_message::Body::Alignment(PsiAlignment {
        version: alignment.version.into(),
        positions: alignment
            .positions
            .iter()
            .flat_map(|p| p.to_le_bytes())
            .collect(),
    })
}

/// Protobuf alignment as psi's.
pub(crate) fn alignment_from_proto(
    peer: &str,
    alignment: &PsiAlignment,
) -> Result<psi::Alignment, psi::PsiError> {
    if !alignment.positions.len().is_multiple_of(4) {
        return Err(psi::PsiError::InvalidField {
            peer: peer.to_owned(),
            field: "positions",
            reason: format!(
                "{} bytes is not a whole number of u32",
                alignment.positions.len()
            ),
        });
    }
    Ok(psi::Alignment {
        version: version(alignment.version),
        positions: alignment
            .positions
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    })
}
