//! Messages altered, replayed or dropped in flight (after rustls-test's `transfer_altered`):
//! for every message kind, the first one from a given sender to a given receiver is tampered
//! with, and the receiver stops with a named error (or, where a repeat is harmless, the job
//! ends as an honest one).
//!
//! The job: the breast data, the guest `bank` and one host (two where a kind only travels
//! between hosts), two epochs of one full batch each. An abort only happens on failure: for
//! it, host0 brings one row too few and stops at the proposal.

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
    ($kind:literal, $from:literal -> $to:literal, $tamper:expr, $reason:literal) => {
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
        batch_size: None,
        learning_rate: 0.1,
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

/// Moves a message's counter on by one: a column's batch, a product's step, the epoch or
/// round of the others.
fn later(mut message: Message) -> Message {
    match &mut message {
        Message::Columns { batch, .. } => *batch += 1,
        Message::Product { step, .. } => *step += 1,
        Message::LossVector { epoch, .. }
        | Message::LossProduct { epoch, .. }
        | Message::LossReport { epoch, .. }
        | Message::EpochEnd { epoch, .. } => *epoch += 1,
        Message::Digest { round, .. } => *round += 1,
        other => panic!("no counter in {}", other.kind()),
    }
    message
}

/// One value fewer in a message's list.
fn shorter(mut message: Message) -> Message {
    match &mut message {
        Message::Product { correction: v, .. } | Message::LossReport { masked: v, .. } => {
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

/// Changes a value: a column's value in its first row (by 2^20: bit 94 of the first body
/// coefficient, with Δ = 2^74), a product's first correction, a digest's hash, an abort's
/// reason.
fn changed(mut message: Message) -> Message {
    match &mut message {
        Message::Columns { values, .. } => {
            // Header (23 bytes), length and bound (8 + 16), the first block's seed (16), then
            // the body's coefficients, 24 bytes each, little-endian.
            let mut bytes = values.to_bytes();
            bytes[23 + 24 + 16 + 11] ^= 0x40;
            *values = he::EncryptedVector::from_bytes(&bytes).unwrap();
        }
        Message::Product { correction, .. } => correction[0] = correction[0].wrapping_add(1),
        Message::Digest { hash, .. } => hash[0] ^= 1,
        Message::Abort { reason } => *reason = "altered".into(),
        other => panic!("nothing to change in {}", other.kind()),
    }
    message
}

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
        refused!("columns", "bank" -> "host0", Alter(later), "got column 0 of batch 1"),
        // The host computes with the altered column, and the guest's checks see it in its
        // product from step 1 (at step 0 the host's weights, so its share, are zero).
        case!("columns", "bank" -> "host0", Alter(changed), "bank": Integrity { step: 1, .. }),
        refused!("product", "host0" -> "bank", Alter(later), "expected a product, got product"),
        case!("product", "host0" -> "bank", Alter(changed), "bank": Integrity { step: 0, .. }),
        refused!("product", "host0" -> "bank", Alter(shorter), "corrections, expected"),
        refused!("loss_vector", "bank" -> "host0", Alter(later), "expected a loss vector"),
        refused!("loss_product", "host0" -> "bank", Alter(later), "expected a loss product"),
        refused!("loss_report", "host0" -> "bank", Alter(later), "expected a loss report"),
        refused!("loss_report", "host0" -> "bank", Alter(shorter), "6 loss terms, expected 7"),
        refused!("epoch_end", "bank" -> "host0", Alter(later), "expected end of epoch"),
        refused!("final_scores", "host0" -> "bank", Alter(shorter), "final scores, expected"),
        refused!("digest", "host0" -> "host1", Alter(later), "expected a digest, got digest"),
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
        refused!("propose", "bank" -> "host0", Replay, "expected the party's keys, got propose"),
        refused!("keys", "host0" -> "bank", Replay, "expected an encrypted column, got keys"),
        refused!("columns", "bank" -> "host0", Replay, "expected encrypted column 1 of batch 0"),
        refused!("product", "host0" -> "bank", Replay, "expected a loss product, got product"),
        refused!("loss_vector", "bank" -> "host0", Replay, "end of epoch, got loss_vector"),
        refused!("loss_product", "host0" -> "bank", Replay, "a loss report, got loss_product"),
        refused!("loss_report", "host0" -> "bank", Replay, "expected a product, got loss_report"),
        refused!("epoch_end", "bank" -> "host0", Replay, "expected a product, got epoch_end"),
        refused!("digest", "host0" -> "host1", Replay, "expected a product, got digest"),
        // The first copy already stops the guest.
        case!("abort", "host0" -> "bank", Replay,
            "bank": FedError::Aborted { peer, reason }
                if peer == "host0" && reason == "bad data or settings"),
    ], &["final_scores"]);
}

/// The final scores are the last message of a job: the guest is done before the copy comes.
#[test]
fn a_replayed_last_message_changes_nothing() {
    let honest = run(1, false, None);
    let replay = first("final_scores", "host0", "bank", Tamper::Replay);
    let replayed = run(1, false, Some(replay));
    assert_eq!(replayed.guest, honest.guest);
    assert_eq!(replayed.hosts, honest.hosts);
}

#[rustfmt::skip]
#[test]
fn every_dropped_message_is_a_named_error() {
    use FedError::*;
    use Tamper::Drop;
    check(&[
        // The receiver reads the sender's next message where the lost one belongs...
        refused!("propose", "bank" -> "host0", Drop, "expected a job proposal, got keys"),
        refused!("keys", "host0" -> "bank", Drop, "expected the party's keys, got columns"),
        refused!("columns", "bank" -> "host0", Drop, "got column 1 of batch 0"),
        refused!("loss_product", "host0" -> "bank", Drop, "a loss product, got loss_report"),
        refused!("epoch_end", "bank" -> "host0", Drop, "expected end of epoch, got product"),
        refused!("digest", "host0" -> "host1", Drop, "expected a digest, got product"),
        // ...or the sender waits for the receiver, which waits for it: both stop at once...
        case!("product", "host0" -> "bank", Drop,
            "bank": Transport { peer, reason } if peer == "host0" && reason.starts_with(STALLED)),
        case!("loss_vector", "bank" -> "host0", Drop,
            "host0": Transport { peer, reason } if peer == "bank" && reason.starts_with(STALLED)),
        case!("loss_report", "host0" -> "bank", Drop,
            "bank": Transport { peer, reason } if peer == "host0" && reason.starts_with(STALLED)),
        // ...or the sender has stopped.
        case!("final_scores", "host0" -> "bank", Drop,
            "bank": Transport { peer, reason } if peer == "host0" && reason == STOPPED),
        case!("abort", "host0" -> "bank", Drop,
            "bank": Transport { peer, reason } if peer == "host0" && reason == STOPPED),
    ], &[]);
}

/// Adds 2^32 to the first masked value of a loss report or of the final scores.
fn raised(mut message: Message) -> Message {
    match &mut message {
        Message::LossReport { masked, .. } => masked[0] = masked[0].wrapping_add(1 << 32),
        Message::FinalScores { masked } => masked[0] = masked[0].wrapping_add(1 << 32),
        other => panic!("no masked values in {}", other.kind()),
    }
    message
}

/// What no check sees: a host's own aggregates, and the guest's verdict on an epoch. For its
/// own inputs a party is trusted to be semi-honest (`fedlearn/src/lib.rs`, "A deviating
/// party"): a host may report any loss terms or final scores, and the guest alone chooses the
/// best epoch; in flight, the node's mutual TLS keeps a third party from altering messages.
/// What such an alteration does:
#[test]
fn a_partys_own_aggregates_and_verdicts_are_not_checked() {
    let mut honest = run(1, false, None);
    let host = honest.hosts.remove(0).unwrap();
    let guest = honest.guest.unwrap();
    // A host's loss terms: the guest's training curve moves, the model does not.
    let alter = first("loss_report", "host0", "bank", Tamper::Alter(raised));
    let report = run(1, false, Some(alter)).guest.unwrap();
    assert_ne!(report.history[0].train_loss, guest.history[0].train_loss);
    assert_eq!(report.model, guest.model);
    // A host's final scores: the guest's evaluation moves.
    let alter = first("final_scores", "host0", "bank", Tamper::Alter(raised));
    let scores = run(1, false, Some(alter)).guest.unwrap();
    assert_ne!(scores.evaluation, guest.evaluation);
    // The last epoch not the best: the host keeps its first epoch's weights, the guest its
    // second's, and their parts no longer make one model.
    let not_best = replacing(|_, _, message| match message {
        Message::EpochEnd { epoch: 2, stop, .. } => Message::EpochEnd {
            epoch: 2,
            best: false,
            stop,
        },
        other => other,
    });
    let verdict = run(1, false, Some(not_best));
    // The guest's weights are its own; its calibration, fitted on the joint final scores,
    // follows the host's weights.
    let weights = |model: ModelPart| ModelPart {
        calibration: None,
        ..model
    };
    assert_eq!(weights(verdict.guest.unwrap().model), weights(guest.model));
    assert_ne!(verdict.hosts[0].as_ref().unwrap().model, host.model);
}
