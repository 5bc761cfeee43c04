//! Messages altered, replayed or dropped in flight (after rustls-test's `transfer_altered`):
//! for every message kind, the first one from a given sender to a given receiver is tampered
//! with, and the receiver stops with a named error (or, where a repeat is harmless, the job
//! ends as an honest one).
//!
//! The job: the breast data, the guest `bank` and one host (two where a kind only travels
//! between hosts), two epochs. An abort only happens on failure: for it, host0 brings one row
//! too few and stops at the proposal.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{jobs, parties};
use fedlearn::internal::{replacing, simulate_altered, Alter, AlteredRun};
use fedlearn::*;

/// Why a party stops when a lost message leaves every party waiting (the simulator's
/// transport).
const STALLED: &str = "nothing can arrive";
/// Why a party waiting for a peer that has stopped stops.
const STOPPED: &str = "the party has stopped";

/// What happens to the message.
#[derive(Clone, Copy)]
enum Tamper {
    Alter(fn(Message) -> Message),
    Replay,
    Drop,
}

/// One tampering and the error the receiver (`victim`) must stop with.
struct Case {
    kind: &'static str,
    from: &'static str,
    to: &'static str,
    tamper: Tamper,
    victim: &'static str,
    expect: Expect,
}

enum Expect {
    /// A protocol error naming the sender, whose reason contains this text.
    Refused(&'static str),
    Error(fn(&FedError) -> bool),
}

/// `case!(kind, from -> to, tamper, victim: pattern [if guard])`.
macro_rules! case {
    ($kind:literal, $from:literal -> $to:literal, $tamper:expr,
     $victim:literal: $expected:pat $(if $guard:expr)?) => {
        Case {
            victim: $victim,
            expect: Expect::Error(|e| matches!(e, $expected $(if $guard)?)),
            ..Case::new($kind, $from, $to, $tamper)
        }
    };
}

/// `refused!(kind, from -> to, tamper, reason)`: the receiver stops with a protocol error
/// naming the sender.
macro_rules! refused {
    ($kind:literal, $from:literal -> $to:literal, $tamper:expr, $reason:expr) => {
        Case {
            expect: Expect::Refused($reason),
            ..Case::new($kind, $from, $to, $tamper)
        }
    };
}

impl Case {
    /// The receiver as the victim; `expect` is to be set.
    fn new(kind: &'static str, from: &'static str, to: &'static str, tamper: Tamper) -> Case {
        Case {
            kind,
            from,
            to,
            tamper,
            victim: to,
            expect: Expect::Error(|_| false),
        }
    }
}

fn config() -> TrainConfig {
    TrainConfig {
        max_epochs: 2,
        seed: 3,
        early_stopping: None,
        ..TrainConfig::default()
    }
}

/// The first message of `kind` from `from` to `to` goes through `tamper`.
fn first(kind: &'static str, from: &'static str, to: &'static str, tamper: Tamper) -> Arc<Alter> {
    let done = AtomicBool::new(false);
    Arc::new(move |f: &str, t: &str, message: Message| {
        if message.kind() != kind || f != from || t != to || done.swap(true, Ordering::SeqCst) {
            return vec![message];
        }
        match tamper {
            Tamper::Alter(change) => vec![change(message)],
            Tamper::Replay => vec![message.clone(), message],
            Tamper::Drop => Vec::new(),
        }
    })
}

/// The job with `hosts` hosts; with `short`, host0 has one row too few (to make it abort).
fn run(hosts: usize, short: bool, alter: Option<Arc<Alter>>) -> AlteredRun {
    let (guest, mut tables) = parties("breast", hosts);
    if short {
        let rows: Vec<usize> = (1..tables[0].rows()).collect();
        tables[0] = tables[0].select_rows(&rows).unwrap();
    }
    let (guest_job, host_jobs) = jobs(guest, tables, &config());
    simulate_altered(guest_job, host_jobs, false, &mut |_| {}, alter)
}

fn error_of<'a>(run: &'a AlteredRun, party: &str) -> Option<&'a FedError> {
    match party.strip_prefix("host") {
        Some(k) => run.hosts[k.parse::<usize>().unwrap()].as_ref().err(),
        None => run.guest.as_ref().err(),
    }
}

/// Runs every case and checks the victim's error; every kind of a training job has a case or
/// is `harmless` (a binning job's two messages are altered in `tests/binning.rs`).
fn check(cases: &[Case], harmless: &[&str]) {
    for kind in Message::KINDS {
        let covered = cases.iter().any(|c| c.kind == kind)
            || harmless.contains(&kind)
            || kind.starts_with("binning_");
        assert!(covered, "no case for {kind}");
    }
    for case in cases {
        let hosts = 1 + usize::from([case.from, case.to].contains(&"host1"));
        let alter = first(case.kind, case.from, case.to, case.tamper);
        let run = run(hosts, case.kind == "abort", Some(alter));
        let error = error_of(&run, case.victim);
        let expected = |e: &FedError| match (&case.expect, e) {
            (Expect::Refused(text), FedError::Protocol { peer, reason }) => {
                peer == case.from && reason.contains(text)
            }
            (Expect::Refused(_), _) => false,
            (Expect::Error(expect), e) => expect(e),
        };
        assert!(
            error.is_some_and(expected),
            "{} {} → {}: {} got {error:?}",
            case.kind,
            case.from,
            case.to,
            case.victim
        );
    }
}

/// Moves a message's counter on by one: a step or an epoch.
fn later(mut message: Message) -> Message {
    match &mut message {
        Message::StepVector { step, .. }
        | Message::StepRelease { step, .. }
        | Message::HandOver { step, .. }
        | Message::StepLossVector { step, .. }
        | Message::StepLossRelease { step, .. }
        | Message::LossShares { step, .. }
        | Message::EpochEnd { epoch: step, .. } => *step += 1,
        other => panic!("no counter in {}", other.kind()),
    }
    message
}

/// One item fewer in a message's list.
fn shorter(mut message: Message) -> Message {
    match &mut message {
        Message::SharedColumns { blocks } => {
            blocks.pop();
        }
        Message::SharedGram { releases } | Message::CouplingReleases { releases } => {
            releases.pop();
        }
        Message::CouplingVectors { vectors } => {
            vectors.pop();
        }
        Message::StepVector { vector, .. } => {
            vector.pop();
        }
        Message::HandOver { shares: v, .. }
        | Message::LossShares { shares: v, .. }
        | Message::WeightShares { shares: v } => {
            v.pop();
        }
        Message::FinalScores { masked } => {
            masked.pop();
        }
        other => panic!("no list in {}", other.kind()),
    }
    message
}

fn more_rows(mut message: Message) -> Message {
    match &mut message {
        Message::Propose(p) => p.rows += 1,
        Message::Keys(k) => k.rows += 1,
        other => panic!("no row count in {}", other.kind()),
    }
    message
}

/// Replaces a packing key with one of another key pair.
fn foreign(message: Message) -> Message {
    assert_eq!(message.kind(), "packing");
    let (secret, _) = he::SecretKey::generate(&he::N8192_Q192);
    Message::Packing(Box::new(secret.packing_key(0).unwrap()))
}

/// Changes a value: a digest's hash, an abort's reason.
fn changed(mut message: Message) -> Message {
    match &mut message {
        Message::Digest { hash, .. } => hash[0] ^= 1,
        Message::Abort { reason } => *reason = "altered".into(),
        other => panic!("nothing to change in {}", other.kind()),
    }
    message
}

const STEP: &str = "a message of step 1 in step 0";

#[rustfmt::skip]
#[test]
fn every_altered_message_is_a_named_error() {
    use FedError::*;
    use Tamper::Alter;
    check(&[
        case!("propose", "bank" -> "host0", Alter(more_rows),
            "host0": RowCount { party, .. } if party == "host0"),
        case!("keys", "host0" -> "bank", Alter(more_rows),
            "bank": RowCount { party, .. } if party == "host0"),
        refused!("shared_columns", "host0" -> "bank", Alter(shorter), "announced shape"),
        refused!("shared_gram", "host0" -> "bank", Alter(shorter), "number of Gram releases"),
        refused!("coupling_vectors", "host0" -> "bank", Alter(shorter), "number of coupling vectors"),
        refused!("coupling_releases", "host0" -> "bank", Alter(shorter), "number of coupling releases"),
        refused!("step_vector", "host0" -> "bank", Alter(later), STEP),
        refused!("step_vector", "host0" -> "bank", Alter(shorter), "does not fit the product"),
        refused!("step_release", "host0" -> "bank", Alter(later), STEP),
        refused!("hand_over", "host0" -> "host1", Alter(later), STEP),
        refused!("hand_over", "host0" -> "host1", Alter(shorter), "should not hand"),
        refused!("step_loss_vector", "bank" -> "host0", Alter(later), STEP),
        refused!("step_loss_release", "host0" -> "bank", Alter(later), STEP),
        refused!("loss_shares", "host0" -> "bank", Alter(later), STEP),
        refused!("loss_shares", "host0" -> "bank", Alter(shorter), "does not collect"),
        refused!("epoch_end", "bank" -> "host0", Alter(later), STEP),
        refused!("weight_shares", "host0" -> "bank", Alter(shorter), "wrong length"),
        refused!("final_scores", "host0" -> "bank", Alter(shorter), "final scores, expected"),
        refused!("packing", "host0" -> "bank", Alter(foreign), "a packing key of another key pair"),
        // Another hash: host1 blames the guest, whose broadcast the digest vouches for.
        case!("digest", "host0" -> "host1", Alter(changed),
            "host1": Protocol { peer, reason } if peer == "bank" && reason.contains("else")),
        case!("abort", "host0" -> "bank", Alter(changed),
            "bank": Aborted { peer, reason } if peer == "host0" && reason == "altered"),
    ], &[]);
}

#[rustfmt::skip]
#[test]
fn every_replayed_message_is_refused_where_it_could_matter() {
    use Tamper::Replay;
    // The receiver reads the copy where the sender's next message belongs.
    check(&[
        refused!("propose", "bank" -> "host0", Replay, "expected keys, got propose"),
        refused!("keys", "host0" -> "bank", Replay, "expected packing, got keys"),
        refused!("packing", "host0" -> "bank", Replay, "expected shared_columns, got packing"),
        refused!("shared_columns", "host0" -> "bank", Replay,
            "expected shared_gram, got shared_columns"),
        refused!("shared_gram", "host0" -> "bank", Replay,
            "expected coupling_vectors, got shared_gram"),
        refused!("coupling_vectors", "host0" -> "bank", Replay,
            "expected coupling_releases, got coupling_vectors"),
        refused!("coupling_releases", "host0" -> "bank", Replay,
            "expected step_vector, got coupling_releases"),
        refused!("step_vector", "host0" -> "bank", Replay, "expected step_release, got step_vector"),
        refused!("step_release", "host0" -> "bank", Replay,
            "expected step_loss_release, got step_release"),
        refused!("hand_over", "host0" -> "host1", Replay, "expected step_vector, got hand_over"),
        refused!("step_loss_vector", "bank" -> "host1", Replay,
            "expected epoch_end, got step_loss_vector"),
        refused!("step_loss_release", "host0" -> "bank", Replay,
            "expected loss_shares, got step_loss_release"),
        refused!("loss_shares", "host0" -> "bank", Replay, "expected step_vector, got loss_shares"),
        refused!("epoch_end", "bank" -> "host0", Replay, "expected step_vector, got epoch_end"),
        refused!("weight_shares", "host0" -> "bank", Replay,
            "expected final_scores, got weight_shares"),
        refused!("digest", "host0" -> "host1", Replay, "expected packing, got digest"),
        // The first copy already stops the guest.
        case!("abort", "host0" -> "bank", Replay,
            "bank": FedError::Aborted { peer, reason }
                if peer == "host0" && reason == "bad data or settings"),
    ], &["final_scores"]);
}

/// The final scores are the last message of a job: the guest is done before the copy comes.
#[test]
fn a_replayed_last_message_changes_nothing() {
    let replay = first("final_scores", "host0", "bank", Tamper::Replay);
    let replayed = run(1, false, Some(replay));
    assert!(replayed.guest.is_ok() && replayed.hosts[0].is_ok());
}

#[rustfmt::skip]
#[test]
fn every_dropped_message_is_a_named_error() {
    use FedError::*;
    use Tamper::Drop;
    check(&[
        // The receiver reads the sender's next message where the lost one belongs...
        refused!("propose", "bank" -> "host0", Drop, "expected a job proposal, got keys"),
        refused!("keys", "host0" -> "bank", Drop, "expected keys, got packing"),
        refused!("packing", "host0" -> "bank", Drop, "expected packing, got shared_columns"),
        refused!("shared_columns", "host0" -> "bank", Drop,
            "expected shared_columns, got shared_gram"),
        refused!("shared_gram", "host0" -> "bank", Drop,
            "expected shared_gram, got coupling_vectors"),
        refused!("coupling_vectors", "host0" -> "bank", Drop,
            "expected coupling_vectors, got coupling_releases"),
        refused!("coupling_releases", "host0" -> "bank", Drop,
            "expected coupling_releases, got step_vector"),
        refused!("step_vector", "host0" -> "bank", Drop, "expected step_vector, got step_release"),
        case!("step_release", "host0" -> "bank", Drop,
            "bank": Transport { peer, reason } if peer == "host0" && reason.starts_with(STALLED)),
        case!("step_loss_vector", "bank" -> "host1", Drop,
            "host1": Transport { peer, reason } if peer == "bank" && reason.starts_with(STALLED)),
        refused!("step_loss_release", "host0" -> "bank", Drop,
            "expected step_loss_release, got loss_shares"),
        refused!("epoch_end", "bank" -> "host0", Drop, "expected epoch_end, got step_vector"),
        refused!("digest", "host0" -> "host1", Drop, "expected digest, got packing"),
        // ...or the sender waits for the receiver, which waits for it: both stop at once...
        case!("hand_over", "host0" -> "host1", Drop,
            "host1": Transport { peer, reason } if peer == "host0" && reason.starts_with(STALLED)),
        case!("loss_shares", "host0" -> "bank", Drop,
            "bank": Transport { peer, reason } if peer == "host0" && reason.starts_with(STALLED)),
        case!("weight_shares", "bank" -> "host0", Drop,
            "host0": Transport { peer, reason } if peer == "bank" && reason.starts_with(STALLED)),
        // ...or the sender has stopped.
        case!("final_scores", "host0" -> "bank", Drop,
            "bank": Transport { peer, reason } if peer == "host0" && reason == STOPPED),
        case!("abort", "host0" -> "bank", Drop,
            "bank": Transport { peer, reason } if peer == "host0" && reason == STOPPED),
    ], &[]);
}

/// Adds 2^32 to the first masked value of the final scores, or 2^40 to the first loss share
/// (about one unit of the training loss).
fn raised(mut message: Message) -> Message {
    match &mut message {
        Message::LossShares { shares, .. } => shares[0] = (shares[0] + (1 << 40)) % (1 << 108),
        Message::FinalScores { masked } => masked[0] = masked[0].wrapping_add(1 << 32),
        other => panic!("no masked values in {}", other.kind()),
    }
    message
}

/// What no check sees. Shares carry no MACs: a party that alters what it releases, or the
/// shares it hands over, moves the result without being caught, and for its own inputs a
/// party is trusted to be semi-honest (`fedlearn/src/lib.rs`, "A deviating party"); in
/// flight, the node's mutual TLS keeps a third party from altering messages. What such an
/// alteration does:
#[test]
fn a_partys_own_shares_aggregates_and_verdicts_are_not_checked() {
    let mut honest = run(1, false, None);
    let host = honest.hosts.remove(0).unwrap();
    let guest = honest.guest.unwrap();
    // A host's loss shares: the guest's training curve moves, the model does not (no early
    // stopping in this job).
    // (Step 0's losses are the starting weights', not an epoch's: alter step 1's.)
    let alter = replacing(|_, _, message| match message {
        Message::LossShares { step: 1, .. } => raised(message),
        other => other,
    });
    let report = run(1, false, Some(alter)).guest.unwrap();
    assert!((report.history[0].train_loss - guest.history[0].train_loss).abs() > 1e-3);
    let close = |a: &ModelPart, b: &ModelPart| {
        let w = |m: &ModelPart| m.features.iter().map(|f| f.weight).collect::<Vec<_>>();
        w(a).iter().zip(w(b)).all(|(x, y)| (x - y).abs() < 1e-3)
    };
    assert!(close(&report.model, &guest.model));
    // Unless the loss leaves the range a Taylor loss can take: 2^60 more is caught.
    let far = replacing(|_, _, message| match message {
        Message::LossShares {
            step: 1,
            mut shares,
        } => {
            shares[0] = (shares[0] + (1 << 60)) % (1 << 108);
            Message::LossShares { step: 1, shares }
        }
        other => other,
    });
    let caught = run(1, false, Some(far)).guest;
    assert!(
        matches!(caught, Err(FedError::Diverged { epoch: 1, ref reason }) if reason.contains("Taylor loss")),
        "{:?}",
        caught.map(|g| g.history)
    );
    // A host's final scores: the guest's evaluation moves.
    let alter = first("final_scores", "host0", "bank", Tamper::Alter(raised));
    let scores = run(1, false, Some(alter)).guest.unwrap();
    assert_ne!(scores.evaluation, guest.evaluation);
    // A share the guest hands the host at the end: the host's model moves, unnoticed.
    let shifted = first(
        "weight_shares",
        "bank",
        "host0",
        Tamper::Alter(|message| match message {
            Message::WeightShares { mut shares } => {
                shares[0] = (shares[0] + (1 << 20)) % (1 << 108);
                Message::WeightShares { shares }
            }
            other => other,
        }),
    );
    let moved = run(1, false, Some(shifted));
    let moved_host = moved.hosts[0].as_ref().unwrap();
    let shift = moved_host.model.features[0].weight - host.model.features[0].weight;
    assert!((shift - 1.0).abs() < 1e-3, "{shift}");
    // The last epoch not the best for the host alone: it keeps its shares of epoch 1, the
    // guest its shares of epoch 2, and the two no longer add up to weights. The host's
    // reveal leaves the fixed-point range, and the job stops.
    let not_best = replacing(|_, _, message| match message {
        Message::EpochEnd { epoch: 2, stop, .. } => Message::EpochEnd {
            epoch: 2,
            best: false,
            stop,
        },
        other => other,
    });
    let verdict = run(1, false, Some(not_best));
    assert!(matches!(verdict.hosts[0], Err(FedError::Diverged { .. })));
    assert!(matches!(
        verdict.guest,
        Err(FedError::Aborted { ref reason, .. }) if reason == "training diverged"
    ));
}
