//! PSI through the node: the guest's and a host's side of psi's sans-IO sessions over a
//! job's [`Link`], with the node's cap on the ids a peer may announce.

use fedlearn::Table;
use psi::{
    DuplicatePolicy, GuestConfig, IdColumn, PartitionedGuest, PartitionedHost, PsiGuest, PsiHost,
};

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

/// An error if `peer` announced more ids in all its parts than `cap`.
fn too_many(peer: &str, sizes: &[u64], cap: u64) -> Option<NodeError> {
    let announced = sizes.iter().fold(0u64, |a, s| a.saturating_add(*s));
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
    let config = GuestConfig::default();
    let federation = &node.config().federation;
    let mut guest = PartitionedGuest::new(ids, &names, config, federation.psi_partition_rows)?;
    let plan = guest.plan();
    for host in hosts {
        link.send_psi(host, plan_to_proto(&plan))?;
    }
    let mut all_sizes = vec![plan.guest_sizes.clone()];
    for host in hosts {
        match link.receive_psi(host)? {
            Body::PartitionSizes(sizes) => {
                let sizes = sizes_from_proto(host, &sizes)?;
                if let Some(error) = too_many(host, &sizes.host_sizes, federation.max_peer_rows) {
                    return Err(error);
                }
                guest.receive_sizes(host, &sizes)?;
                all_sizes.push(sizes.host_sizes);
            }
            _ => return Err(unexpected(host, "its part sizes")),
        }
    }
    let schedule = guest.schedule()?;
    for host in hosts {
        link.send_psi(host, schedule_to_proto(&schedule))?;
    }
    // Batches of every party in the parts that run.
    let total: u64 = all_sizes
        .iter()
        .flat_map(|sizes| {
            schedule
                .partitions
                .iter()
                .map(|&p| sizes[p as usize].div_ceil(u64::from(config.batch_size)))
        })
        .sum();
    let mut done = 0u64;
    let mut progress = |batches: u64| {
        done += batches;
        job.emit(
            &node.store,
            EventRecord {
                state: "psi".into(),
                message: "matching ids".into(),
                psi_progress: done as f64 / total.max(1) as f64,
                ..EventRecord::default()
            },
        )
    };
    while let Some((part, mut session)) = guest.next_session()? {
        guest_session(link, &mut session, hosts, &mut progress)?;
        for (host, alignment) in guest.finish_session(part, session)? {
            link.send_psi(&host, alignment_to_proto(&alignment))?;
        }
    }
    Ok(guest.finish()?.aligned_rows)
}

/// One part's session, the guest's side: hellos, the guest's points (a window of batches in
/// flight per host) and the hosts' tags, then the hosts' points. `progress` counts batches.
fn guest_session(
    link: &mut Link<'_>,
    guest: &mut PsiGuest,
    hosts: &[String],
    progress: &mut dyn FnMut(u64),
) -> Result<(), NodeError> {
    let hello = guest.hello();
    for host in hosts {
        link.send_psi(host, guest_hello_to_proto(&hello))?;
    }
    let mut host_batches = Vec::with_capacity(hosts.len());
    for host in hosts {
        match link.receive_psi(host)? {
            Body::HostHello(reply) => {
                let reply = host_hello_from_proto(&reply);
                guest.receive_host_hello(host, &reply)?;
                host_batches.push(reply.host_rows.div_ceil(u64::from(hello.batch_size)));
            }
            _ => return Err(unexpected(host, "its hello")),
        }
    }
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
        progress(1);
    }
    for (host, batches) in hosts.iter().zip(host_batches) {
        for _ in 0..batches {
            match link.receive_psi(host)? {
                Body::Points(points) => {
                    guest.receive_host_points(host, &points_from_proto(host, &points)?)?
                }
                _ => return Err(unexpected(host, "points")),
            }
            progress(1);
        }
    }
    Ok(())
}

pub(crate) fn host_psi(
    link: &mut Link<'_>,
    guest: &str,
    table: &Table,
) -> Result<Vec<u32>, NodeError> {
    let plan = match link.receive_psi(guest)? {
        Body::PartitionPlan(plan) => plan_from_proto(guest, &plan)?,
        _ => return Err(unexpected(guest, "its partition plan")),
    };
    let cap = link.node.config().federation.max_peer_rows;
    if let Some(error) = too_many(guest, &plan.guest_sizes, cap) {
        return Err(error);
    }
    let ids = IdColumn::from_ids(table.ids())?;
    let (mut host, sizes) = PartitionedHost::new(
        guest,
        ids,
        DuplicatePolicy::Reject,
        &plan,
        psi::MIN_PART_ROWS,
    )?;
    link.send_psi(guest, sizes_to_proto(&sizes))?;
    match link.receive_psi(guest)? {
        Body::PartitionSchedule(schedule) => {
            host.receive_schedule(&schedule_from_proto(guest, &schedule)?)?
        }
        _ => return Err(unexpected(guest, "the schedule of parts")),
    }
    loop {
        let hello = match link.receive_psi(guest)? {
            Body::GuestHello(hello) => guest_hello_from_proto(guest, &hello)?,
            _ => return Err(unexpected(guest, "its hello for the next part")),
        };
        if hello.result != psi::ResultMode::BothSides {
            return Err(NodeError::Peer {
                peer: guest.to_owned(),
                fault: PeerFault::OneSidedPsi,
            });
        }
        let (session, reply) = host.next_session(&hello)?;
        link.send_psi(guest, host_hello_to_proto(&reply))?;
        let alignment = host_session(link, guest, &hello, &session)?;
        if host.finish_session(session, &alignment)? {
            return Ok(host.finish()?.aligned_rows);
        }
    }
}

/// One part's session, a host's side: answers the guest's batches, sends its own, and returns
/// the guest's alignment.
fn host_session(
    link: &mut Link<'_>,
    guest: &str,
    hello: &psi::GuestHello,
    session: &PsiHost,
) -> Result<psi::Alignment, NodeError> {
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
        Body::Alignment(alignment) => Ok(alignment_from_proto(guest, &alignment)?),
        _ => Err(unexpected(guest, "the alignment")),
    }
}
