//! Partitioned PSI gives the unpartitioned result, and every party's checks of the parts hold.

use std::collections::BTreeSet;

use proptest::prelude::*;
use psi::*;

fn column(ids: &[String]) -> IdColumn {
    IdColumn::from_ids(ids).unwrap()
}

fn config() -> GuestConfig {
    GuestConfig {
        batch_size: 5,
        duplicates: DuplicatePolicy::KeepFirst,
        ..GuestConfig::default()
    }
}

fn hosts(sets: &[Vec<String>]) -> Vec<HostInput> {
    sets.iter()
        .enumerate()
        .map(|(k, ids)| HostInput {
            name: format!("host{k}"),
            ids: column(ids),
            duplicates: DuplicatePolicy::KeepFirst,
        })
        .collect()
}

/// The aligned rows as a set of tuples (guest row, host rows…): what must not depend on
/// partitioning (the order is random either way).
fn tuples(outcome: &InMemoryOutcome) -> BTreeSet<Vec<u32>> {
    (0..outcome.guest.aligned_rows.len())
        .map(|i| {
            let mut tuple = vec![outcome.guest.aligned_rows[i]];
            for host in &outcome.hosts {
                tuple.push(host.as_ref().expect("aligned").aligned_rows[i]);
            }
            tuple
        })
        .collect()
}

/// Ids drawn from a small space so that sets overlap and repeat ids.
fn id_set() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(0u16..120, 1..90)
        .prop_map(|ids| ids.into_iter().map(|i| format!("ent-{i}")).collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn partitioned_and_unpartitioned_psi_align_the_same_rows(
        guest in id_set(),
        host_sets in proptest::collection::vec(id_set(), 1..4),
        partition_rows in 1u64..40,
    ) {
        let plain = run_in_memory(column(&guest), config(), hosts(&host_sets), &mut |_| {});
        let mut kinds = BTreeSet::new();
        let parted = run_in_memory_partitioned(
            column(&guest),
            config(),
            partition_rows,
            hosts(&host_sets),
            &mut |m| {
                kinds.insert(m.kind);
            },
        );
        match (plain, parted) {
            (Ok(plain), Ok(parted)) => {
                prop_assert_eq!(tuples(&plain), tuples(&parted));
                // Pairwise sizes count the scheduled parts only: a part some host lacks is
                // not run, so the guest learns less about the others there.
                for (p, q) in plain.guest.pairwise_sizes.iter().zip(&parted.guest.pairwise_sizes) {
                    prop_assert!(q <= p);
                }
                if host_sets.len() == 1 {
                    prop_assert_eq!(&plain.guest.pairwise_sizes, &parted.guest.pairwise_sizes);
                }
                prop_assert!(kinds.contains("partition-schedule"));
            }
            (Err(PsiError::EmptyIntersection), Err(PsiError::EmptyIntersection)) => {}
            (plain, parted) => prop_assert!(false, "{plain:?} but partitioned {parted:?}"),
        }
    }
}

#[test]
fn ids_spread_evenly_over_parts() {
    let key = PartitionKey([9; 32]);
    let mut counts = [0u32; 16];
    for i in 0..160_000 {
        counts[key.part_of(16, format!("customer-{i}").as_bytes()) as usize] += 1;
    }
    // 10 000 expected per part; a binomial's standard deviation is under 100.
    assert!(
        counts.iter().all(|&c| (9_500..10_500).contains(&c)),
        "{counts:?}"
    );
    // Another key puts ids elsewhere.
    let other = PartitionKey([10; 32]);
    let moved = (0..1000)
        .filter(|i| {
            let id = format!("customer-{i}");
            key.part_of(16, id.as_bytes()) != other.part_of(16, id.as_bytes())
        })
        .count();
    assert!(moved > 900, "{moved}");
}

fn ids(range: std::ops::Range<u32>) -> IdColumn {
    IdColumn::from_ids(range.map(|i| format!("ent-{i}"))).unwrap()
}

/// A guest with 400 ids in parts of 50 and one host holding ids 200..700.
fn started() -> (PartitionedGuest, PartitionedHost, PartitionPlan) {
    let guest = PartitionedGuest::new(ids(0..400), &["tax"], config(), 50).unwrap();
    let plan = guest.plan();
    assert_eq!(plan.guest_sizes.len(), 8);
    assert_eq!(plan.guest_sizes.iter().sum::<u64>(), 400);
    let (host, _) =
        PartitionedHost::new("bank", ids(200..700), DuplicatePolicy::Reject, &plan, 1).unwrap();
    (guest, host, plan)
}

#[test]
fn a_host_checks_the_plan_and_the_schedule() {
    let (mut guest, mut host, plan) = started();
    // A plan without parts, with too many, or with more rows than a party may have.
    for sizes in [
        vec![],
        vec![1; MAX_PARTITIONS as usize + 1],
        vec![u64::MAX, 1],
    ] {
        let bad = PartitionPlan {
            guest_sizes: sizes,
            ..plan.clone()
        };
        let refused = PartitionedHost::new("bank", ids(0..10), DuplicatePolicy::Reject, &bad, 1);
        assert!(matches!(
            refused,
            Err(PsiError::InvalidField {
                field: "guest_sizes",
                ..
            })
        ));
    }
    let old = PartitionPlan {
        version: 1,
        ..plan.clone()
    };
    assert!(matches!(
        PartitionedHost::new("bank", ids(0..10), DuplicatePolicy::Reject, &old, 1),
        Err(PsiError::VersionMismatch { got: 1, .. })
    ));
    let (_, sizes) =
        PartitionedHost::new("bank", ids(200..700), DuplicatePolicy::Reject, &plan, 1).unwrap();
    guest.receive_sizes("tax", &sizes).unwrap();
    let schedule = guest.schedule().unwrap();
    let with = |partitions: Vec<u32>| PartitionSchedule {
        version: PROTOCOL_VERSION,
        partitions,
    };
    let count = plan.guest_sizes.len() as u32;
    for bad in [vec![], vec![2, 1], vec![1, 1], vec![count]] {
        assert!(
            matches!(
                host.receive_schedule(&with(bad.clone())),
                Err(PsiError::InvalidField { .. })
            ),
            "{bad:?}"
        );
    }
    host.receive_schedule(&schedule).unwrap();
    assert!(
        host.receive_schedule(&schedule).is_err(),
        "a second schedule"
    );
    // The next hello must announce the planned size of the first scheduled part.
    let (part, session) = guest.next_session().unwrap().unwrap();
    assert_eq!(part, schedule.partitions[0]);
    let hello = session.hello();
    let lying = GuestHello {
        guest_rows: hello.guest_rows + 1,
        ..hello.clone()
    };
    assert!(matches!(
        host.next_session(&lying),
        Err(PsiError::InvalidField {
            field: "guest_rows",
            ..
        })
    ));
    let (_, reply) = host.next_session(&hello).unwrap();
    // The guest holds the host to the size it planned for the part.
    let mut session = session;
    let inflated = HostHello {
        host_rows: reply.host_rows + 1,
        ..reply.clone()
    };
    assert!(matches!(
        session.receive_host_hello("tax", &inflated),
        Err(PsiError::InvalidField {
            field: "host_rows",
            ..
        })
    ));
    session.receive_host_hello("tax", &reply).unwrap();
}

#[test]
fn a_guest_checks_the_sizes_and_schedules_only_parts_held_by_all() {
    let (mut guest, _, plan) = started();
    assert!(matches!(guest.schedule(), Err(PsiError::Incomplete { .. })));
    let wrong_count = PartitionSizes {
        version: PROTOCOL_VERSION,
        host_sizes: vec![1; 3],
    };
    assert!(matches!(
        guest.receive_sizes("tax", &wrong_count),
        Err(PsiError::InvalidField {
            field: "host_sizes",
            ..
        })
    ));
    let mut sizes = vec![10; plan.guest_sizes.len()];
    sizes[3] = 0;
    let held = PartitionSizes {
        version: PROTOCOL_VERSION,
        host_sizes: sizes.clone(),
    };
    assert!(matches!(
        guest.receive_sizes("utilities", &held),
        Err(PsiError::UnexpectedMessage { .. })
    ));
    guest.receive_sizes("tax", &held).unwrap();
    guest.receive_sizes("tax", &held).unwrap(); // a repeat is ignored
    sizes[4] = 11;
    let changed = PartitionSizes {
        version: PROTOCOL_VERSION,
        host_sizes: sizes,
    };
    assert!(guest.receive_sizes("tax", &changed).is_err());
    let schedule = guest.schedule().unwrap();
    let expected: Vec<u32> = (0..plan.guest_sizes.len() as u32)
        .filter(|&p| p != 3 && plan.guest_sizes[p as usize] > 0)
        .collect();
    assert_eq!(schedule.partitions, expected);
}

#[test]
fn disjoint_sets_end_with_an_empty_intersection() {
    let outcome = run_in_memory_partitioned(
        ids(0..100),
        config(),
        10,
        vec![HostInput {
            name: "tax".into(),
            ids: ids(100..200),
            duplicates: DuplicatePolicy::Reject,
        }],
        &mut |_| {},
    );
    assert_eq!(outcome.unwrap_err(), PsiError::EmptyIntersection);
}

#[test]
fn receiver_only_mode_is_refused() {
    let config = GuestConfig {
        result: ResultMode::ReceiverOnly,
        ..config()
    };
    assert!(matches!(
        PartitionedGuest::new(ids(0..10), &["tax"], config, 5),
        Err(PsiError::InvalidConfig {
            field: "result",
            ..
        })
    ));
}

#[test]
fn a_host_refuses_parts_smaller_than_its_minimum() {
    let guest = PartitionedGuest::new(ids(0..4000), &["tax"], config(), 500).unwrap();
    let plan = guest.plan();
    assert_eq!(plan.guest_sizes.len(), 8);
    // 3000 host ids in 8 parts is 375 per part: refused at a minimum of 1024, accepted at 300.
    let refused = PartitionedHost::new("bank", ids(0..3000), DuplicatePolicy::Reject, &plan, 1024);
    match refused {
        Err(PsiError::InvalidField {
            field: "guest_sizes",
            reason,
            ..
        }) => {
            assert!(reason.contains("at most 2"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(
        PartitionedHost::new("bank", ids(0..3000), DuplicatePolicy::Reject, &plan, 300).is_ok()
    );
}
