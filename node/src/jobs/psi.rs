//! PSI through the node: the guest's and a host's side of psi's sans-IO sessions over a
//! job's [`Link`], with the node's cap on the ids a peer may announce.

use fedlearn::Table;
use psi::{DuplicatePolicy, GuestConfig, IdColumn, PsiGuest, PsiHost};

use crate::error::{NodeError, PeerFault};
use crate::jobs::link::Link;
use crate::registry::JobHandle;
use crate::state::NodeState;
use crate::store::EventRecord;
use crate::wire::psi::*;

fn unexpected(peer: &str, expected: &'static str) -> NodeError {
    NodeError::Peer {
        peer: peer.to_owned(),
        fault: PeerFault::OutOfTurn {
            got: "another PSI message".into(),
            expected,
        },
    }
}

/// Batches of the guest's points in flight per host: the guest blinds the next batches while
/// the hosts answer the earlier ones, so neither waits for the other (4 × 2^16 points is 8 MiB
/// per host, far under the receiving node's `max_buffered_bytes`).
const WINDOW: u32 = 4;

fn too_many(peer: &str, announced: u64, cap: u64) -> Option<NodeError> {
    (announced > cap).then(|| NodeError::Peer {
        peer: peer.to_owned(),
        fault: PeerFault::TooManyRows { announced, cap },
    })
}

pub(crate) fn guest_psi(
    node: &NodeState,
    job: &JobHandle,
    link: &mut Link<'_>,
    table: &Table,
    hosts: &[String],
) -> Result<Vec<u32>, NodeError> {
    let ids = IdColumn::from_ids(table.ids())?;
    let names: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let mut guest = PsiGuest::new(ids, &names, GuestConfig::default())?;
    let hello = guest.hello();
    for host in hosts {
        link.send_psi(host, guest_hello_to_proto(&hello))?;
    }
    let mut host_batches = Vec::with_capacity(hosts.len());
    for host in hosts {
        match link.receive_psi(host)? {
            Body::HostHello(reply) => {
                let reply = host_hello_from_proto(&reply);
                let cap = node.config().federation.max_peer_rows;
                if let Some(error) = too_many(host, reply.host_rows, cap) {
                    return Err(error);
                }
                guest.receive_host_hello(host, &reply)?;
                host_batches.push(reply.host_rows.div_ceil(u64::from(hello.batch_size)));
            }
            _ => return Err(unexpected(host, "its hello")),
        }
    }
    let own_batches = u64::from(guest.batch_count());
    let total = (own_batches + host_batches.iter().sum::<u64>()).max(1);
    let progress = |done: u64| {
        job.emit(
            &node.store,
            EventRecord {
                state: "psi".into(),
                message: "matching ids".into(),
                psi_progress: done as f64 / total as f64,
                ..EventRecord::default()
            },
        )
    };
    let batches = guest.batch_count();
    let mut sent = 0;
    for batch in 0..batches {
        while sent < batches && sent < batch + WINDOW {
            let Some(points) = guest.blinded_batch(sent) else {
                break;
            };
            let body = points_to_proto(&points);
            for host in hosts {
                link.send_psi(host, body.clone())?;
            }
            sent += 1;
        }
        for host in hosts {
            match link.receive_psi(host)? {
                Body::Tags(tags) => guest.receive_tags(host, &tags_from_proto(host, &tags)?)?,
                _ => return Err(unexpected(host, "tags")),
            }
        }
        progress(u64::from(batch) + 1);
    }
    let mut done = own_batches;
    for (host, batches) in hosts.iter().zip(host_batches) {
        for _ in 0..batches {
            match link.receive_psi(host)? {
                Body::Points(points) => {
                    guest.receive_host_points(host, &points_from_proto(host, &points)?)?
                }
                _ => return Err(unexpected(host, "points")),
            }
            done += 1;
            progress(done);
        }
    }
    let result = guest.finish()?;
    for (host, alignment) in &result.alignments {
        link.send_psi(host, alignment_to_proto(alignment))?;
    }
    Ok(result.output.aligned_rows)
}

pub(crate) fn host_psi(
    link: &mut Link<'_>,
    guest: &str,
    table: &Table,
) -> Result<Vec<u32>, NodeError> {
    let hello = match link.receive_psi(guest)? {
        Body::GuestHello(hello) => guest_hello_from_proto(guest, &hello)?,
        _ => return Err(unexpected(guest, "its hello")),
    };
    let cap = link.node.config().federation.max_peer_rows;
    if let Some(error) = too_many(guest, hello.guest_rows, cap) {
        return Err(error);
    }
    if hello.result != psi::ResultMode::BothSides {
        return Err(NodeError::Peer {
            peer: guest.to_owned(),
            fault: PeerFault::OneSidedPsi,
        });
    }
    let ids = IdColumn::from_ids(table.ids())?;
    let (session, reply) = PsiHost::new(guest, ids, DuplicatePolicy::Reject, &hello)?;
    link.send_psi(guest, host_hello_to_proto(&reply))?;
    let guest_batches = hello
        .guest_rows
        .div_ceil(u64::from(hello.batch_size.max(1)));
    for _ in 0..guest_batches {
        match link.receive_psi(guest)? {
            Body::Points(points) => {
                let tags = session.answer(&points_from_proto(guest, &points)?)?;
                link.send_psi(guest, tags_to_proto(&tags))?;
            }
            _ => return Err(unexpected(guest, "points")),
        }
    }
    for batch in 0..session.batch_count() {
        let Some(points) = session.blinded_batch(batch) else {
            break;
        };
        link.send_psi(guest, points_to_proto(&points))?;
    }
    match link.receive_psi(guest)? {
        Body::Alignment(alignment) => {
            let output = session.receive_alignment(&alignment_from_proto(guest, &alignment)?)?;
            Ok(output.aligned_rows)
        }
        _ => Err(unexpected(guest, "the alignment")),
    }
}
