//! Bad input and failing training stop every party: the party whose input it is reads the
//! cause, the others read which party stopped and the kind of error.

mod common;

use common::{jobs, parties};
use fedlearn::internal::{replacing, simulate_altered, AlteredRun};
use fedlearn::*;

fn run(guest: Table, hosts: Vec<Table>, config: &TrainConfig) -> Result<Simulation, FedError> {
    let (guest_job, host_jobs) = jobs(guest, hosts, config);
    simulate(guest_job, host_jobs, false, &mut |_| {})
}

/// A quick job of the guest and one host on the breast data, every message passed through
/// `alter`.
fn altered(alter: impl Fn(&str, &str, Message) -> Message + Send + Sync + 'static) -> AlteredRun {
    let (guest, hosts) = parties("breast", 1);
    let (guest_job, host_jobs) = jobs(guest, hosts, &quick());
    simulate_altered(
        guest_job,
        host_jobs,
        false,
        &mut |_| {},
        Some(replacing(alter)),
    )
}

/// The host stopped with a protocol error naming the guest, its reason containing `text`.
fn host_blames_guest(run: AlteredRun, text: &str) {
    match run.hosts.into_iter().next().and_then(Result::err) {
        Some(FedError::Protocol { peer, reason }) => {
            assert_eq!(peer, "bank");
            assert!(reason.contains(text), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

fn quick() -> TrainConfig {
    TrainConfig {
        max_epochs: 3,
        seed: 2,
        ..TrainConfig::default()
    }
}

/// A host's bad data stops the job; the guest reads which host and the kind of error, not
/// the host's text (which names its columns and rows: the host's operator reads it).
#[test]
fn a_host_with_another_row_count_stops_the_job_by_kind() {
    let (guest, hosts) = parties("breast", 1);
    let fewer: Vec<usize> = (0..hosts[0].rows() - 1).collect();
    let short = hosts[0].select_rows(&fewer).unwrap();
    match run(guest, vec![short], &quick()) {
        Err(FedError::Aborted { peer, reason, .. }) => {
            assert_eq!(
                (peer.as_str(), reason.as_str()),
                ("host0", "bad data or settings")
            );
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn a_constant_host_column_stops_the_job_without_naming_it_to_the_guest() {
    let (guest, hosts) = parties("breast", 1);
    let host = &hosts[0];
    let mut values = host.values().to_owned();
    values.column_mut(3).fill(1.5);
    let constant = Table::new(
        host.ids().to_vec(),
        host.feature_names().to_vec(),
        values,
        None,
        Missing::Reject,
    )
    .unwrap();
    match run(guest, vec![constant], &quick()) {
        Err(FedError::Aborted { reason, .. }) => {
            assert_eq!(reason, "bad data or settings");
            assert!(!reason.contains("x3"));
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn a_job_whose_parties_are_not_distinct_is_refused() {
    let (guest, hosts) = parties("breast", 1);
    for names in [vec!["host0", "host0"], vec!["host0", "bank"]] {
        let (mut job, _) = jobs(guest.clone(), hosts.clone(), &quick());
        job.hosts = names.iter().map(|n| n.to_string()).collect();
        assert!(
            matches!(
                GuestSession::new(job),
                Err(FedError::Config { field: "hosts", .. })
            ),
            "{names:?}"
        );
    }
    // A proposal that reaches a host naming a host twice: the host refuses it, naming the guest.
    let twice = |_: &str, _: &str, message: Message| match message {
        Message::Propose(mut proposal) => {
            proposal.hosts.push("host0".into());
            Message::Propose(proposal)
        }
        other => other,
    };
    host_blames_guest(altered(twice), "twice");
}

#[test]
fn bad_settings_stop_the_hosts_too() {
    let (guest, hosts) = parties("breast", 2);
    let config = TrainConfig {
        l2: -1.0,
        ..quick()
    };
    assert!(matches!(
        run(guest, hosts, &config),
        Err(FedError::Config { field: "l2", .. })
    ));
}

#[test]
fn missing_values_are_imputed_when_asked() {
    let (guest, hosts) = parties("breast", 1);
    let host = &hosts[0];
    let mut values = host.values().to_owned();
    for row in (0..host.rows()).step_by(7) {
        values[[row, 0]] = f64::NAN;
    }
    let table = |missing| {
        Table::new(
            host.ids().to_vec(),
            host.feature_names().to_vec(),
            values.clone(),
            None,
            missing,
        )
    };
    assert!(matches!(table(Missing::Reject), Err(FedError::Csv { .. })));
    let simulation = run(guest, vec![table(Missing::Mean).unwrap()], &quick()).unwrap();
    assert_eq!(simulation.hosts[0].model.missing, Missing::Mean);
    assert!(simulation.guest.evaluation.metrics.auc > 0.95);
}

#[test]
fn a_replayed_or_misplaced_message_is_a_protocol_error_naming_the_peer() {
    // host0 sends its step-2 weight shares as step 1's; the guest sends its step-1 release
    // to host0 as a loss release.
    type Alteration = fn(&str, &str, Message) -> Message;
    let replay: Alteration = |from, to, message| match message {
        Message::StepVector { step: 2, vector } if from == "host0" && to == "bank" => {
            Message::StepVector { step: 1, vector }
        }
        other => other,
    };
    let misplace: Alteration = |from, _, message| match message {
        Message::StepRelease { step: 1, release } if from == "bank" => {
            Message::StepLossRelease { step: 1, release }
        }
        other => other,
    };
    for (alter, victim, peer) in [(replay, "guest", "host0"), (misplace, "host", "bank")] {
        let run = altered(alter);
        let error = if victim == "guest" {
            run.guest.err()
        } else {
            run.hosts.into_iter().next().and_then(Result::err)
        };
        match error {
            Some(FedError::Protocol { peer: p, reason }) => {
                assert_eq!(p, peer);
                let expected = if victim == "guest" {
                    "a message of step 1 in step 2"
                } else {
                    "expected step_release, got step_loss_release"
                };
                assert_eq!(reason, expected);
            }
            other => panic!("{victim}: {other:?}"),
        }
    }
}

#[test]
fn a_guest_announcing_more_columns_than_its_proposal_is_refused() {
    // The hosts' policies bound the guest's features, so its keys must announce exactly what
    // its proposal said.
    let widen = |from: &str, _: &str, message: Message| match message {
        Message::Keys(mut keys) if from == "bank" => {
            keys.columns += 5;
            Message::Keys(keys)
        }
        other => other,
    };
    host_blames_guest(altered(widen), "its proposal implies");
}
