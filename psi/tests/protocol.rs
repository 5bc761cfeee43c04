//! End-to-end behaviour of the guest and host state machines.

use std::collections::{BTreeSet, HashMap};

use proptest::prelude::*;
use psi::*;

fn column(ids: &[String]) -> IdColumn {
    IdColumn::from_ids(ids).unwrap()
}

fn host(name: &str, ids: &[String]) -> HostInput {
    HostInput {
        name: name.into(),
        ids: column(ids),
        duplicates: DuplicatePolicy::Reject,
    }
}

fn small_batches() -> GuestConfig {
    GuestConfig {
        batch_size: 7,
        ..GuestConfig::default()
    }
}

/// Checks the outcome against the plain intersection: the guest's rows are exactly the common
/// ids (in a random order), and every host's row `i` holds the same id as the guest's row `i`.
fn assert_aligned(guest: &[String], hosts: &[Vec<String>], outcome: &InMemoryOutcome) {
    let mut expected: Vec<u32> = Vec::new();
    for (row, id) in guest.iter().enumerate() {
        if hosts.iter().all(|h| h.contains(id))
            && !expected.iter().any(|&r| guest[r as usize] == *id)
        {
            expected.push(row as u32);
        }
    }
    let mut sorted = outcome.guest.aligned_rows.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, expected);
    let expected = &outcome.guest.aligned_rows;
    for (k, host_ids) in hosts.iter().enumerate() {
        let pairwise = guest
            .iter()
            .collect::<BTreeSet<_>>()
            .intersection(&host_ids.iter().collect())
            .count();
        assert_eq!(outcome.guest.pairwise_sizes[k], pairwise as u64);
        let host_rows = &outcome.hosts[k]
            .as_ref()
            .expect("both-sides output")
            .aligned_rows;
        assert_eq!(host_rows.len(), expected.len());
        for (g, h) in expected.iter().zip(host_rows) {
            assert_eq!(guest[*g as usize], host_ids[*h as usize]);
        }
    }
}

fn ids_from(numbers: &BTreeSet<u16>, salt: &str) -> Vec<String> {
    // Shuffle deterministically by a per-party salt so row orders differ between parties.
    let mut ids: Vec<String> = numbers.iter().map(|n| format!("ent-{n}")).collect();
    ids.sort_by_key(|id| {
        id.bytes().chain(salt.bytes()).fold(0u64, |h, b| {
            h.wrapping_mul(1_099_511_628_211).wrapping_add(u64::from(b))
        })
    });
    ids
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn two_parties_match_the_plain_intersection(
        g in prop::collection::btree_set(0u16..300, 1..120),
        h in prop::collection::btree_set(0u16..300, 1..120),
        batch in 1u32..40,
    ) {
        let (guest, tax) = (ids_from(&g, "g"), ids_from(&h, "h"));
        prop_assume!(g.intersection(&h).next().is_some());
        let config = GuestConfig { batch_size: batch, ..GuestConfig::default() };
        let outcome = run_in_memory(column(&guest), config, vec![host("tax", &tax)], &mut |_| {}).unwrap();
        assert_aligned(&guest, &[tax], &outcome);
    }

    #[test]
    fn three_parties_match_the_plain_intersection(
        g in prop::collection::btree_set(0u16..200, 1..100),
        h1 in prop::collection::btree_set(0u16..200, 1..100),
        h2 in prop::collection::btree_set(0u16..200, 1..100),
    ) {
        let common = g.iter().filter(|x| h1.contains(x) && h2.contains(x)).count();
        prop_assume!(common > 0);
        let (guest, tax, power) = (ids_from(&g, "g"), ids_from(&h1, "t"), ids_from(&h2, "p"));
        let hosts = vec![host("tax", &tax), host("power", &power)];
        let outcome = run_in_memory(column(&guest), small_batches(), hosts, &mut |_| {}).unwrap();
        assert_aligned(&guest, &[tax, power], &outcome);
    }
}

#[test]
fn receiver_only_mode_gives_hosts_nothing() {
    let guest: Vec<String> = (0..50).map(|i| format!("ent-{i}")).collect();
    let tax: Vec<String> = (25..90).map(|i| format!("ent-{i}")).collect();
    let config = GuestConfig {
        result: ResultMode::ReceiverOnly,
        ..small_batches()
    };
    let mut kinds = Vec::new();
    let outcome = run_in_memory(column(&guest), config, vec![host("tax", &tax)], &mut |m| {
        kinds.push(m.kind)
    })
    .unwrap();
    let mut rows = outcome.guest.aligned_rows.clone();
    rows.sort_unstable();
    assert_eq!(rows, (25..50).collect::<Vec<u32>>());
    assert!(outcome.hosts[0].is_none());
    assert!(!kinds.contains(&"alignment"));
}

#[test]
fn keep_first_dedupes_on_both_sides() {
    let guest = ["a", "b", "a", "c"].map(String::from).to_vec();
    let tax = ["c", "c", "a", "z"].map(String::from).to_vec();
    let hosts = vec![HostInput {
        duplicates: DuplicatePolicy::KeepFirst,
        ..host("tax", &tax)
    }];
    let config = GuestConfig {
        duplicates: DuplicatePolicy::KeepFirst,
        ..GuestConfig::default()
    };
    let outcome = run_in_memory(column(&guest), config, hosts, &mut |_| {}).unwrap();
    assert_eq!(
        pairs(
            &outcome.guest.aligned_rows,
            &outcome.hosts[0].as_ref().unwrap().aligned_rows
        ),
        [(0, 2), (3, 0)]
    );
}

/// (guest row, host row) of each aligned row, by guest row.
fn pairs(guest: &[u32], host: &[u32]) -> Vec<(u32, u32)> {
    let mut pairs: Vec<(u32, u32)> = guest.iter().copied().zip(host.iter().copied()).collect();
    pairs.sort_unstable();
    pairs
}

#[test]
fn the_aligned_order_is_random_not_the_guests_file_order() {
    let guest: Vec<String> = (0..200).map(|i| format!("ent-{i}")).collect();
    let tax: Vec<String> = (100..300).map(|i| format!("ent-{i}")).collect();
    let orders: Vec<Vec<u32>> = (0..2)
        .map(|_| {
            run_in_memory(
                column(&guest),
                small_batches(),
                vec![host("tax", &tax)],
                &mut |_| {},
            )
            .unwrap()
            .guest
            .aligned_rows
        })
        .collect();
    let ascending: Vec<u32> = (100..200).collect();
    // 100! orders: equal to the file order or to each other with probability < 2^-500.
    assert_ne!(orders[0], ascending);
    assert_ne!(orders[0], orders[1]);
}

#[test]
fn duplicates_are_rejected_by_default_on_either_side() {
    let good = ["a", "b"].map(String::from).to_vec();
    let repeated = ["a", "b", "a"].map(String::from).to_vec();
    let err = run_in_memory(
        column(&repeated),
        GuestConfig::default(),
        vec![host("tax", &good)],
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(err, PsiError::DuplicateIds { count: 1, .. }),
        "{err}"
    );
    let err = run_in_memory(
        column(&good),
        GuestConfig::default(),
        vec![host("tax", &repeated)],
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(err, PsiError::DuplicateIds { count: 1, .. }),
        "{err}"
    );
}

#[test]
fn empty_inputs_and_empty_intersections_are_errors() {
    let some = ["a"].map(String::from).to_vec();
    let other = ["b"].map(String::from).to_vec();
    let err = run_in_memory(
        IdColumn::default(),
        GuestConfig::default(),
        vec![host("tax", &some)],
        &mut |_| {},
    )
    .unwrap_err();
    assert_eq!(err, PsiError::EmptyInput);
    let err = run_in_memory(
        column(&some),
        GuestConfig::default(),
        vec![host("tax", &other)],
        &mut |_| {},
    )
    .unwrap_err();
    assert_eq!(err, PsiError::EmptyIntersection);
}

/// A guest and one host set up by hand, for feeding them bad messages.
fn pair(guest_ids: &[&str], host_ids: &[&str], batch_size: u32) -> (PsiGuest, PsiHost) {
    let config = GuestConfig {
        batch_size,
        ..GuestConfig::default()
    };
    let mut guest =
        PsiGuest::new(IdColumn::from_ids(guest_ids).unwrap(), &["tax"], config).unwrap();
    let (host, reply) = PsiHost::new(
        "bank",
        IdColumn::from_ids(host_ids).unwrap(),
        DuplicatePolicy::Reject,
        &guest.hello(),
    )
    .unwrap();
    guest.receive_host_hello("tax", &reply).unwrap();
    (guest, host)
}

#[test]
fn a_point_that_does_not_decompress_is_a_typed_error() {
    let (mut guest, host) = pair(&["a", "b", "c"], &["a", "b", "c"], 2);
    let mut batch = guest.blinded_batch(0).unwrap();
    batch.points[1] = [0xff; 32];
    assert_eq!(
        host.answer(&batch).unwrap_err(),
        PsiError::InvalidPoint {
            peer: "bank".into(),
            what: "guest-points",
            batch: 0,
            index: 1
        }
    );
    let mut batch = host.blinded_batch(1).unwrap();
    // A canonical but odd ("negative") field element is not a Ristretto encoding either.
    batch.points[0] = [1; 32];
    let err = guest.receive_host_points("tax", &batch).unwrap_err();
    assert_eq!(
        err.to_string(),
        "peer tax: host-points batch 1, element 0 is not a valid Ristretto255 point"
    );
}

#[test]
fn wrong_counts_versions_and_batches_are_typed_errors() {
    let (mut guest, host) = pair(&["a", "b", "c"], &["a", "b", "c"], 2);
    let mut short = guest.blinded_batch(0).unwrap();
    short.points.pop();
    assert_eq!(
        host.answer(&short).unwrap_err().to_string(),
        "peer bank: guest-points batch 0 has 1 elements, expected 2"
    );
    let mut future = guest.blinded_batch(1).unwrap();
    future.version = PROTOCOL_VERSION + 1;
    assert!(matches!(
        host.answer(&future).unwrap_err(),
        PsiError::VersionMismatch { got, .. } if got == PROTOCOL_VERSION + 1
    ));
    let mut past_end = guest.blinded_batch(1).unwrap();
    past_end.batch = 2;
    assert!(matches!(
        host.answer(&past_end).unwrap_err(),
        PsiError::BatchOutOfRange {
            batch: 2,
            batches: 2,
            ..
        }
    ));
    let mut tags = host.answer(&guest.blinded_batch(0).unwrap()).unwrap();
    tags.tags.push([0; 12]);
    assert!(matches!(
        guest.receive_tags("tax", &tags).unwrap_err(),
        PsiError::WrongCount {
            expected: 2,
            got: 3,
            ..
        }
    ));
    let stranger = host.blinded_batch(0).unwrap();
    assert!(matches!(
        guest.receive_host_points("power", &stranger).unwrap_err(),
        PsiError::UnexpectedMessage { .. }
    ));

    let mut hello = guest.hello();
    hello.version = 0;
    let err = PsiHost::new(
        "bank",
        IdColumn::from_ids(["a"]).unwrap(),
        DuplicatePolicy::Reject,
        &hello,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "peer bank: PSI protocol version 0, this node speaks version 2"
    );
}

#[test]
fn finishing_early_says_what_is_missing() {
    let (guest, _host) = pair(&["a", "b", "c"], &["a", "b", "c"], 2);
    assert!(!guest.is_complete());
    let err = guest.finish().unwrap_err();
    assert_eq!(
        err.to_string(),
        "the PSI run is incomplete: host tax: 2 tag batches and 2 point batches missing"
    );
}

#[test]
fn repeated_deliveries_are_ignored() {
    let ids = ["a", "b", "c", "d", "e"];
    let (mut guest, host) = pair(&ids, &["e", "c", "x"], 2);
    for round in 0..2 {
        for batch in 0..guest.batch_count() {
            let tags = host.answer(&guest.blinded_batch(batch).unwrap()).unwrap();
            guest.receive_tags("tax", &tags).unwrap();
        }
        for batch in 0..host.batch_count() {
            guest
                .receive_host_points("tax", &host.blinded_batch(batch).unwrap())
                .unwrap();
        }
        assert!(guest.is_complete(), "round {round}");
    }
    let result = guest.finish().unwrap();
    let output = host.receive_alignment(&result.alignments[0].1).unwrap();
    assert_eq!(
        pairs(&result.output.aligned_rows, &output.aligned_rows),
        [(2, 1), (4, 0)]
    );
}

#[test]
fn a_malformed_alignment_is_refused() {
    let (guest, host) = pair(&["a"], &["a", "b"], 4);
    let hello = guest.hello();
    let bad = |positions: Vec<u32>| Alignment {
        version: PROTOCOL_VERSION,
        positions,
    };
    let fresh = || {
        PsiHost::new(
            "bank",
            IdColumn::from_ids(["a", "b"]).unwrap(),
            DuplicatePolicy::Reject,
            &hello,
        )
        .unwrap()
        .0
    };
    assert!(matches!(
        host.receive_alignment(&bad(vec![2])),
        Err(PsiError::InvalidField { .. })
    ));
    assert!(matches!(
        fresh().receive_alignment(&bad(vec![1, 1])),
        Err(PsiError::InvalidField { .. })
    ));
    assert_eq!(
        fresh().receive_alignment(&bad(vec![])),
        Err(PsiError::EmptyIntersection)
    );
}

/// What crosses the wire: no id bytes, only the agreed message kinds with the agreed sizes, and
/// fresh randomness in every run (blinded points of the same ids differ between two jobs).
#[test]
fn wire_audit() {
    let guest: Vec<String> = (0..300).map(|i| format!("91350100MA2X{i:06}")).collect();
    let tax: Vec<String> = (150..400).map(|i| format!("91350100MA2X{i:06}")).collect();
    let run = || {
        let mut seen: Vec<(String, String, &'static str, Vec<u8>)> = Vec::new();
        run_in_memory(
            column(&guest),
            small_batches(),
            vec![host("tax", &tax)],
            &mut |m| seen.push((m.from.into(), m.to.into(), m.kind, m.payload.to_vec())),
        )
        .unwrap();
        seen
    };
    let first = run();
    let mut bytes_by_kind: HashMap<&str, usize> = HashMap::new();
    for (from, to, kind, payload) in &first {
        *bytes_by_kind.entry(kind).or_default() += payload.len();
        for id in guest.iter().chain(&tax) {
            assert!(
                !payload.windows(id.len()).any(|w| w == id.as_bytes()),
                "{kind} from {from} to {to} carries id {id}"
            );
        }
    }
    assert_eq!(bytes_by_kind["guest-points"], 300 * 32);
    assert_eq!(bytes_by_kind["guest-tags"], 300 * 12);
    assert_eq!(bytes_by_kind["host-points"], 250 * 32);
    assert_eq!(bytes_by_kind["alignment"], 150 * 4);

    let points_of = |seen: &[(String, String, &'static str, Vec<u8>)]| -> BTreeSet<Vec<u8>> {
        seen.iter()
            .filter(|m| m.2.ends_with("points"))
            .flat_map(|m| m.3.chunks(32).map(<[u8]>::to_vec).collect::<Vec<_>>())
            .collect()
    };
    let second = run();
    assert!(
        points_of(&first).is_disjoint(&points_of(&second)),
        "keys or salt were reused"
    );
}
