//! The parties are sans-IO state machines: one thread moves their messages, in an order of its
//! choosing, with no transport and no clock.

mod common;

use std::collections::VecDeque;

use common::{jobs, parties};
use fedlearn::*;

#[test]
fn guest_and_hosts_run_in_one_thread_with_messages_moved_by_hand() {
    let (guest_table, host_tables) = parties("breast", 2);
    let config = TrainConfig {
        max_epochs: 3,
        seed: 8,
        ..TrainConfig::default()
    };
    let (guest_job, host_jobs) = jobs(guest_table, host_tables, &config);
    let mut guest = GuestSession::new(guest_job).unwrap();
    let mut pending_hosts: Vec<Option<HostJob>> = host_jobs.into_iter().map(Some).collect();
    let mut hosts: Vec<Option<HostSession>> = (0..pending_hosts.len()).map(|_| None).collect();
    let names = ["host0", "host1"];
    // Messages in flight: (from, to, message). Each round delivers the oldest one, so the
    // parties' sends interleave differently from a threaded run.
    let mut wire: VecDeque<(String, String, Message)> = VecDeque::new();
    let mut epochs = 0;
    loop {
        while let Some((to, message)) = guest.poll_transmit().unwrap() {
            wire.push_back(("bank".into(), to, message));
        }
        while let Some(event) = guest.poll_event() {
            if let Event::Epoch(report) = event {
                epochs = report.epoch;
            }
        }
        for (k, host) in hosts.iter_mut().enumerate() {
            if let Some(host) = host {
                while let Some((to, message)) = host.poll_transmit().unwrap() {
                    wire.push_back((names[k].into(), to, message));
                }
            }
        }
        let Some((from, to, message)) = wire.pop_front() else {
            break;
        };
        if to == "bank" {
            guest.handle(&from, message).unwrap();
            continue;
        }
        let k = names.iter().position(|n| *n == to).unwrap();
        match (&mut hosts[k], message) {
            (None, Message::Propose(proposal)) => {
                let job = pending_hosts[k].take().unwrap();
                hosts[k] = Some(HostSession::new(job, *proposal).unwrap());
            }
            (Some(host), message) => host.handle(&from, message).unwrap(),
            (None, other) => panic!("{to} got {} before the proposal", other.kind()),
        }
    }
    // Everyone finished, nobody waits, and the outcomes agree with each other.
    assert_eq!(guest.awaiting(), None);
    assert_eq!(epochs, 3);
    let outcome = guest.outcome().unwrap();
    assert!(outcome.evaluation.metrics.auc > 0.95, "{outcome:?}");
    for host in &hosts {
        let host = host.as_ref().unwrap();
        assert_eq!(host.awaiting(), None);
        assert_eq!(host.outcome().unwrap().epochs, 3);
    }
}
