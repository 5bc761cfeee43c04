//! Messages altered, replayed or dropped in flight (after rustls-test's `transfer_altered`):
//! for every message kind of the in-memory driver, each ends in a named error, or in the
//! honest result where the protocol is idempotent.
//!
//! The run: the guest holds ent-0..ent-19, the host `tax` ent-10..ent-29, in batches of 7
//! (three batches each way). The tamper hook acts on the first message of one kind.

use psi::internal::{run_in_memory_altered, Altered, InFlight};
use psi::*;

const KINDS: [&str; 6] = [
    "guest-hello",
    "host-hello",
    "guest-points",
    "guest-tags",
    "host-points",
    "alignment",
];

type Tamper = fn(&mut InFlight<'_>) -> Altered;

/// One tampering and the error it must end in.
struct Case {
    kind: &'static str,
    what: &'static str,
    tamper: Tamper,
    expect: fn(&PsiError) -> bool,
}

/// `case!(kind, what, tamper, pattern [if guard])`: the run must fail with an error matching
/// the pattern (written as a macro so that the table stays one case per line or two).
macro_rules! case {
    ($kind:literal, $what:literal, $tamper:expr, $expected:pat $(if $guard:expr)?) => {
        Case {
            kind: $kind,
            what: $what,
            tamper: $tamper,
            expect: |e| matches!(e, $expected $(if $guard)?),
        }
    };
}

fn ids(range: std::ops::Range<u32>) -> IdColumn {
    IdColumn::from_ids(range.map(|i| format!("ent-{i}"))).unwrap()
}

/// The run above, `batch_size` elements per batch, with `tamper` applied to the first message
/// of `kind`.
fn run(kind: &str, batch_size: u32, tamper: Tamper) -> Result<InMemoryOutcome, PsiError> {
    let hosts = vec![HostInput {
        name: "tax".into(),
        ids: ids(10..30),
        duplicates: DuplicatePolicy::Reject,
    }];
    let config = GuestConfig {
        batch_size,
        ..GuestConfig::default()
    };
    let mut seen = false;
    run_in_memory_altered(ids(0..20), config, hosts, &mut |m| {
        if m.kind != kind || seen {
            return Altered::Deliver;
        }
        seen = true;
        tamper(m)
    })
}

/// Runs every case and checks its error.
fn check(cases: &[Case]) {
    for case in cases {
        match run(case.kind, 7, case.tamper) {
            Err(e) if (case.expect)(&e) => {}
            other => panic!("{}, {}: {:?}", case.kind, case.what, other.map(|o| o.guest)),
        }
    }
}

fn assert_every_kind(cases: &[Case]) {
    for kind in KINDS {
        assert!(cases.iter().any(|c| c.kind == kind), "no case for {kind}");
    }
}

/// Aligned rows whose host row holds another id than the guest row (guest row g holds
/// ent-g, host row h ent-(h + 10)).
fn misaligned(outcome: &InMemoryOutcome) -> usize {
    let host = &outcome.hosts[0].as_ref().expect("both-sides mode");
    let rows = outcome.guest.aligned_rows.iter().zip(&host.aligned_rows);
    rows.filter(|(g, h)| **g != **h + 10).count()
}

fn deliver(m: &mut InFlight<'_>, change: impl FnOnce(&mut InFlight<'_>)) -> Altered {
    change(m);
    Altered::Deliver
}

fn newer_version(m: &mut InFlight<'_>) -> Altered {
    deliver(m, |m| m.version += 1)
}

fn bytes_short(m: &mut InFlight<'_>, len: usize) -> Altered {
    deliver(m, |m| m.payload.truncate(m.payload.len() - len))
}

fn one_byte_short(m: &mut InFlight<'_>) -> Altered {
    bytes_short(m, 1)
}

fn set_u64(m: &mut InFlight<'_>, at: usize, value: u64) -> Altered {
    deliver(m, |m| {
        m.payload[at..at + 8].copy_from_slice(&value.to_le_bytes())
    })
}

/// Sets the top bit of the first point: its encoding is then no field element.
fn non_canonical_point(m: &mut InFlight<'_>) -> Altered {
    deliver(m, |m| m.payload[31] |= 0x80)
}

fn batch_past_end(m: &mut InFlight<'_>) -> Altered {
    deliver(m, |m| m.batch = Some(3))
}

#[rustfmt::skip]
#[test]
fn every_altered_message_is_a_named_error() {
    use PsiError::*;
    let cases = [
        case!("guest-hello", "version", newer_version,
            VersionMismatch { peer, got: 3, .. } if peer == "guest"),
        case!("guest-hello", "truncated", one_byte_short,
            InvalidField { peer, field: "guest_rows", .. } if peer == "guest"),
        case!("guest-hello", "no rows", |m| set_u64(m, 32, 0),
            InvalidField { field: "guest_rows", .. }),
        // The host expects three batches of 7; the guest's last has 6.
        case!("guest-hello", "one row more", |m| set_u64(m, 32, 21),
            WrongCount { what: "guest-points", batch: 2, expected: 7, got: 6, .. }),
        // Another salt hashes every id elsewhere: nothing matches.
        case!("guest-hello", "salt", |m| deliver(m, |m| m.payload[0] ^= 1), EmptyIntersection),
        case!("host-hello", "version", newer_version,
            VersionMismatch { peer, got: 3, .. } if peer == "tax"),
        case!("host-hello", "truncated", one_byte_short,
            InvalidField { peer, field: "host_rows", .. } if peer == "tax"),
        case!("host-hello", "no rows", |m| set_u64(m, 0, 0),
            InvalidField { field: "host_rows", .. }),
        case!("host-hello", "one row more", |m| set_u64(m, 0, 21),
            WrongCount { what: "host-points", batch: 2, expected: 7, got: 6, .. }),
        case!("guest-points", "version", newer_version,
            VersionMismatch { peer, got: 3, .. } if peer == "guest"),
        case!("guest-points", "not a point", non_canonical_point,
            InvalidPoint { peer, what: "guest-points", batch: 0, index: 0 } if peer == "guest"),
        case!("guest-points", "ragged", one_byte_short, InvalidField { field: "points", .. }),
        case!("guest-points", "a point short", |m| bytes_short(m, 32),
            WrongCount { what: "guest-points", batch: 0, expected: 7, got: 6, .. }),
        case!("guest-points", "batch past the end", batch_past_end,
            BatchOutOfRange { what: "guest-points", batch: 3, batches: 3, .. }),
        case!("guest-points", "no batch number", |m| deliver(m, |m| m.batch = None),
            InvalidField { peer, field: "batch", .. } if peer == "guest"),
        case!("guest-tags", "version", newer_version,
            VersionMismatch { peer, got: 3, .. } if peer == "tax"),
        case!("guest-tags", "ragged", one_byte_short,
            InvalidField { peer, field: "tags", .. } if peer == "tax"),
        case!("guest-tags", "a tag short", |m| bytes_short(m, 12),
            WrongCount { what: "guest-tags", batch: 0, expected: 7, got: 6, .. }),
        case!("guest-tags", "batch past the end", batch_past_end,
            BatchOutOfRange { what: "guest-tags", batch: 3, .. }),
        // Batch 0's tags filed as batch 1's: batch 1's own are then a repeat, ignored, and
        // batch 0 is never answered.
        case!("guest-tags", "another batch", |m| deliver(m, |m| m.batch = Some(1)),
            Incomplete { missing } if missing.contains(": 1 tag batches")),
        case!("host-points", "version", newer_version,
            VersionMismatch { peer, got: 3, .. } if peer == "tax"),
        case!("host-points", "not a point", non_canonical_point,
            InvalidPoint { peer, what: "host-points", batch: 0, index: 0 } if peer == "tax"),
        case!("host-points", "ragged", one_byte_short,
            InvalidField { peer, field: "points", .. } if peer == "tax"),
        case!("host-points", "a point short", |m| bytes_short(m, 32),
            WrongCount { what: "host-points", batch: 0, .. }),
        case!("host-points", "batch past the end", batch_past_end,
            BatchOutOfRange { what: "host-points", batch: 3, .. }),
        case!("alignment", "version", newer_version,
            VersionMismatch { peer, got: 3, .. } if peer == "guest"),
        // The driver used to drop a ragged tail silently (one position fewer).
        case!("alignment", "ragged", one_byte_short,
            InvalidField { peer, field: "positions", .. } if peer == "guest"),
        case!("alignment", "past the host's rows",
            |m| deliver(m, |m| m.payload[..4].copy_from_slice(&20u32.to_le_bytes())),
            InvalidField { field: "positions", reason, .. } if reason.contains("past")),
        case!("alignment", "a position twice", |m| deliver(m, |m| m.payload.copy_within(4..8, 0)),
            InvalidField { field: "positions", reason, .. } if reason.contains("twice")),
        case!("alignment", "empty", |m| deliver(m, |m| m.payload.clear()), EmptyIntersection),
    ];
    assert_every_kind(&cases);
    check(&cases);
}

const TAGS_MISSING: &str = "host tax: 1 tag batches and 0 point batches missing";
const POINTS_MISSING: &str = "host tax: 0 tag batches and 1 point batches missing";

#[rustfmt::skip]
#[test]
fn every_dropped_message_is_a_named_error() {
    use PsiError::*;
    let cases = [
        // The host has no session, and refuses the points that come instead.
        case!("guest-hello", "dropped", |_| Altered::Drop,
            UnexpectedMessage { peer, what: "points before the guest's hello" } if peer == "guest"),
        case!("host-hello", "dropped", |_| Altered::Drop,
            UnexpectedMessage { peer, what: "points before the host's hello" } if peer == "tax"),
        // A batch not answered: its tags are missing.
        case!("guest-points", "dropped", |_| Altered::Drop,
            Incomplete { missing } if missing == TAGS_MISSING),
        case!("guest-tags", "dropped", |_| Altered::Drop,
            Incomplete { missing } if missing == TAGS_MISSING),
        case!("host-points", "dropped", |_| Altered::Drop,
            Incomplete { missing } if missing == POINTS_MISSING),
        case!("alignment", "dropped", |_| Altered::Drop,
            Incomplete { missing } if missing == "host tax received no alignment"),
    ];
    assert_every_kind(&cases);
    check(&cases);
}

#[rustfmt::skip]
#[test]
fn a_replayed_hello_or_alignment_is_refused() {
    use PsiError::*;
    check(&[
        // A host answers one hello per job (as node's host does).
        case!("guest-hello", "replayed", |_| Altered::Replay,
            UnexpectedMessage { peer, what: "second guest hello" } if peer == "guest"),
        // The alignment ends the host's session.
        case!("alignment", "replayed", |_| Altered::Replay,
            UnexpectedMessage { peer, what: "second alignment" } if peer == "guest"),
    ]);
}

#[test]
fn a_replayed_host_hello_or_batch_is_harmless() {
    // Idempotent by design, so that a transport may retry: the guest accepts a repeated hello
    // with the same set size and ignores a repeated batch of tags or points, and a host's
    // answer is pure (a repeated guest batch gets the same tags, which the guest ignores).
    for kind in ["host-hello", "guest-points", "guest-tags", "host-points"] {
        let outcome = run(kind, 7, |_| Altered::Replay).unwrap_or_else(|e| panic!("{kind}: {e}"));
        let mut rows = outcome.guest.aligned_rows.clone();
        rows.sort_unstable();
        assert_eq!(rows, (10..20).collect::<Vec<u32>>(), "{kind}");
        assert_eq!(misaligned(&outcome), 0, "{kind}");
    }
}

/// What the checks cannot see: an element replaced by another valid one. PSI is semi-honest
/// (`psi/src/lib.rs`): a deviating party can always bring other ids or other points, so
/// integrity against one is out of its threat model, and in flight the node's mutual TLS
/// keeps a third party from altering messages. What such an alteration does:
#[test]
fn an_element_replaced_by_a_valid_one_goes_unnoticed() {
    // Altered tags match nothing: with one batch, every row is lost.
    let flipped = run("guest-tags", 20, |m| {
        deliver(m, |m| m.payload.iter_mut().for_each(|b| *b ^= 1))
    });
    assert_eq!(flipped.unwrap_err(), PsiError::EmptyIntersection);
    // A host's points in another order: the guest finds every match at another position, and
    // every aligned host row holds another id than the guest's row.
    let reversed = |m: &mut InFlight<'_>| {
        deliver(m, |m| {
            let mut points: Vec<&[u8]> = m.payload.chunks(POINT_LEN).collect();
            points.reverse();
            m.payload = points.concat();
        })
    };
    assert_eq!(misaligned(&run("host-points", 20, reversed).unwrap()), 10);
    // Two positions of the alignment swapped: two rows misaligned, the rest right.
    let swapped = |m: &mut InFlight<'_>| {
        deliver(m, |m| {
            let (first, rest) = m.payload.split_at_mut(4);
            first.swap_with_slice(&mut rest[..4]);
        })
    };
    assert_eq!(misaligned(&run("alignment", 7, swapped).unwrap()), 2);
    // One position fewer: the host holds one row less than the guest (training then refuses
    // the row counts).
    let outcome = run("alignment", 7, |m| bytes_short(m, 4)).unwrap();
    assert_eq!(outcome.hosts[0].as_ref().unwrap().aligned_rows.len(), 9);
}
