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
    let (host, _) = tax(&plan);
    (guest, host, plan)
}

/// The tax bureau's side of `plan` with ids 200..700, and its sizes.
fn tax(plan: &PartitionPlan) -> (PartitionedHost, PartitionSizes) {
    PartitionedHost::new(
        "bank",
        ids(200..700),
        DuplicatePolicy::Reject,
        plan,
        1,
        vec![],
    )
    .unwrap()
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
        let refused =
            PartitionedHost::new("bank", ids(0..10), DuplicatePolicy::Reject, &bad, 1, vec![]);
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
        PartitionedHost::new("bank", ids(0..10), DuplicatePolicy::Reject, &old, 1, vec![]),
        Err(PsiError::VersionMismatch { got: 1, .. })
    ));
    let (_, sizes) = tax(&plan);
    guest.receive_sizes("tax", &sizes).unwrap();
    let schedule = guest.schedule().unwrap();
    let with = |partitions: Vec<u32>| PartitionSchedule {
        version: PROTOCOL_VERSION,
        partitions,
        finished: vec![],
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
        finished: vec![],
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
        finished: vec![],
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
        finished: vec![],
    };
    assert!(guest.receive_sizes("tax", &changed).is_err());
    let schedule = guest.schedule().unwrap();
    assert!(
        matches!(
            guest.schedule(),
            Err(PsiError::InvalidConfig {
                field: "schedule",
                ..
            })
        ),
        "a second schedule could differ from the one the hosts hold"
    );
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
    let refused = PartitionedHost::new(
        "bank",
        ids(0..3000),
        DuplicatePolicy::Reject,
        &plan,
        1024,
        vec![],
    );
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
    assert!(PartitionedHost::new(
        "bank",
        ids(0..3000),
        DuplicatePolicy::Reject,
        &plan,
        300,
        vec![]
    )
    .is_ok());
}

/// What each party finished in a run that stopped after `sessions` parts (or ran to the
/// end): the guest's parts, each host's parts, and the outcome when it ran to the end.
struct Run {
    guest: Vec<FinishedPart>,
    hosts: Vec<Vec<FinishedPart>>,
    sessions: usize,
    outcome: Option<(GuestOutput, Vec<HostOutput>)>,
}

/// Runs `guest` with `hosts` (already holding the schedule) for at most `sessions` parts.
fn run_parts(
    mut guest: PartitionedGuest,
    mut hosts: Vec<(String, PartitionedHost)>,
    sessions: usize,
) -> Run {
    let mut run = Run {
        guest: Vec::new(),
        hosts: vec![Vec::new(); hosts.len()],
        sessions: 0,
        outcome: None,
    };
    while let Some((part, mut session)) = guest.next_session().unwrap() {
        if run.sessions == sessions {
            return run;
        }
        run.sessions += 1;
        let hello = session.hello();
        let mut host_sessions = Vec::new();
        for (name, host) in &mut hosts {
            let (host_session, reply) = host.next_session(&hello).unwrap();
            session.receive_host_hello(name, &reply).unwrap();
            host_sessions.push(host_session);
        }
        for batch in 0..session.batch_count() {
            let points = session.blinded_batch(batch).unwrap();
            for ((name, _), host_session) in hosts.iter().zip(&host_sessions) {
                let tags = host_session.answer(&points).unwrap();
                session.receive_tags(name, &tags).unwrap();
            }
        }
        for ((name, _), host_session) in hosts.iter().zip(&host_sessions) {
            for batch in 0..host_session.batch_count() {
                let points = host_session.blinded_batch(batch).unwrap();
                session.receive_host_points(name, &points).unwrap();
            }
        }
        let (finished, alignments) = guest.finish_session(part, session).unwrap();
        let hosts_names: Vec<String> = hosts.iter().map(|(name, _)| name.clone()).collect();
        run.guest.push(finished);
        for (k, ((_, host), host_session)) in hosts.iter_mut().zip(host_sessions).enumerate() {
            let (_, alignment) = (alignments.iter())
                .find(|(name, _)| *name == hosts_names[k])
                .expect("an alignment for every host");
            let finished = host.finish_session(host_session, alignment).unwrap();
            assert_eq!(finished.part, part);
            run.hosts[k].push(finished);
        }
    }
    assert!(hosts.iter().all(|(_, host)| host.is_finished()));
    let host_outputs = hosts
        .into_iter()
        .map(|(_, host)| host.finish().unwrap())
        .collect();
    run.outcome = Some((guest.finish().unwrap(), host_outputs));
    run
}

const RESUMED_HOSTS: [&str; 2] = ["tax", "utilities"];

/// The bank's 600 ids in parts of 60 and two hosts (ids 200..900 and 100..700), planned and
/// scheduled; under `key` with the parts each party kept, or under a fresh key.
fn scheduled(
    key: Option<PartitionKey>,
    guest_kept: Vec<FinishedPart>,
    hosts_kept: Vec<Vec<FinishedPart>>,
) -> (
    PartitionedGuest,
    Vec<(String, PartitionedHost)>,
    PartitionSchedule,
) {
    let mut guest = match key {
        None => PartitionedGuest::new(ids(0..600), &RESUMED_HOSTS, config(), 60),
        Some(key) => {
            PartitionedGuest::resume(ids(0..600), &RESUMED_HOSTS, config(), 60, key, guest_kept)
        }
    }
    .unwrap();
    let plan = guest.plan();
    let mut hosts = Vec::new();
    for ((name, range), kept) in RESUMED_HOSTS
        .iter()
        .zip([200..900, 100..700])
        .zip(hosts_kept)
    {
        let (host, sizes) =
            PartitionedHost::new("bank", ids(range), DuplicatePolicy::Reject, &plan, 1, kept)
                .unwrap();
        guest.receive_sizes(name, &sizes).unwrap();
        hosts.push(((*name).to_owned(), host));
    }
    let schedule = guest.schedule().unwrap();
    for (_, host) in &mut hosts {
        host.receive_schedule(&schedule).unwrap();
    }
    (guest, hosts, schedule)
}

fn parts_of(kept: &[FinishedPart]) -> Vec<u32> {
    kept.iter().map(|k| k.part).collect()
}

/// A run stopped after five parts, one host having lost its fifth: the next run under the
/// same key runs only the parts not every party finished, and ends with the rows of an
/// uninterrupted run, in an order every party shares.
#[test]
fn an_interrupted_run_resumes_without_running_parts_every_party_finished() {
    let (guest, hosts, schedule) = scheduled(None, vec![], vec![vec![], vec![]]);
    let key = guest.plan().key;
    let parts = schedule.partitions.len();
    assert!(parts >= 8, "{parts} parts");
    assert!(schedule.finished.is_empty());
    let first = run_parts(guest, hosts, 5);
    assert_eq!((first.sessions, first.guest.len()), (5, 5));
    let mut hosts_kept = first.hosts.clone();
    hosts_kept[1].pop();

    let (guest, hosts, schedule) = scheduled(Some(key), first.guest.clone(), hosts_kept);
    assert_eq!(schedule.finished, parts_of(&first.guest[..4]));
    let second = run_parts(guest, hosts, usize::MAX);
    assert_eq!(second.sessions, parts - 4, "finished parts ran again");
    assert_eq!(parts_of(&second.guest), schedule.partitions[4..].to_vec());

    let (guest, hosts) = second.outcome.expect("the run ended");
    let resumed = InMemoryOutcome {
        guest,
        hosts: hosts.into_iter().map(Some).collect(),
    };
    let host_inputs = [200..900, 100..700]
        .into_iter()
        .zip(RESUMED_HOSTS)
        .map(|(range, name)| HostInput {
            name: name.into(),
            ids: ids(range),
            duplicates: DuplicatePolicy::Reject,
        })
        .collect();
    let plain = run_in_memory(ids(0..600), config(), host_inputs, &mut |_| {}).unwrap();
    assert_eq!(tuples(&resumed), tuples(&plain));
    assert_eq!(resumed.guest.pairwise_sizes, plain.guest.pairwise_sizes);
    assert_eq!(resumed.guest.aligned_rows.len(), 400);
}

/// Kept parts that do not fit the ids (the ids changed, another key, damage) are refused.
#[test]
fn kept_parts_that_do_not_fit_the_ids_are_refused() {
    let (guest, hosts, _) = scheduled(None, vec![], vec![vec![], vec![]]);
    let key = guest.plan().key;
    let first = run_parts(guest, hosts, 3);
    let resume = |ids: IdColumn, key: PartitionKey, kept: Vec<FinishedPart>| {
        PartitionedGuest::resume(ids, &RESUMED_HOSTS, config(), 60, key, kept)
    };
    assert!(resume(ids(0..600), key, first.guest.clone()).is_ok());
    let refused = |result: Result<PartitionedGuest, PsiError>| {
        matches!(
            result,
            Err(PsiError::InvalidConfig {
                field: "kept parts",
                ..
            })
        )
    };
    assert!(refused(resume(
        ids(0..600),
        PartitionKey([7; 32]),
        first.guest.clone()
    )));
    assert!(refused(resume(ids(1000..1600), key, first.guest.clone())));
    let twice = vec![first.guest[0].clone(), first.guest[0].clone()];
    assert!(refused(resume(ids(0..600), key, twice)));
    let mut beyond = first.guest[0].clone();
    beyond.part = 10_000;
    assert!(refused(resume(ids(0..600), key, vec![beyond])));
    let mut repeated = first.guest[0].clone();
    repeated.rows.push(repeated.rows[0]);
    assert!(refused(resume(ids(0..600), key, vec![repeated])));
    // A host's kept parts carry no pairwise sizes; a guest's one per host.
    let mut short = first.guest[0].clone();
    short.pairwise_sizes.pop();
    assert!(refused(resume(ids(0..600), key, vec![short])));
    let mut inflated = first.guest[0].clone();
    inflated.pairwise_sizes[0] = u64::MAX;
    assert!(refused(resume(ids(0..600), key, vec![inflated])));
}

/// A host takes as finished only parts it kept and that are scheduled; a guest takes a host's
/// list of finished parts only in ascending order and within the plan.
#[test]
fn finished_parts_are_checked_on_both_sides() {
    let (guest, hosts, _) = scheduled(None, vec![], vec![vec![], vec![]]);
    let key = guest.plan().key;
    let first = run_parts(guest, hosts, 3);
    let mut guest = PartitionedGuest::resume(
        ids(0..600),
        &RESUMED_HOSTS,
        config(),
        60,
        key,
        first.guest.clone(),
    )
    .unwrap();
    let plan = guest.plan();
    let (mut host, sizes) = PartitionedHost::new(
        "bank",
        ids(200..900),
        DuplicatePolicy::Reject,
        &plan,
        1,
        first.hosts[0][..2].to_vec(),
    )
    .unwrap();
    assert_eq!(sizes.finished, parts_of(&first.hosts[0][..2]));
    for bad in [
        vec![sizes.finished[1], sizes.finished[0]],
        vec![plan.guest_sizes.len() as u32],
    ] {
        let lying = PartitionSizes {
            finished: bad.clone(),
            ..sizes.clone()
        };
        assert!(
            matches!(
                guest.receive_sizes("tax", &lying),
                Err(PsiError::InvalidField {
                    field: "finished",
                    ..
                })
            ),
            "{bad:?}"
        );
    }
    guest.receive_sizes("tax", &sizes).unwrap();
    let (_, other) = PartitionedHost::new(
        "bank",
        ids(100..700),
        DuplicatePolicy::Reject,
        &plan,
        1,
        first.hosts[1].clone(),
    )
    .unwrap();
    guest.receive_sizes("utilities", &other).unwrap();
    let schedule = guest.schedule().unwrap();
    // The parts both hosts and the guest finished: tax kept two of the three.
    assert_eq!(schedule.finished, parts_of(&first.guest[..2]));
    let unscheduled =
        (0..plan.guest_sizes.len() as u32).find(|p| schedule.partitions.binary_search(p).is_err());
    let mut claims = vec![parts_of(&first.guest[..3])];
    claims.extend(unscheduled.map(|p| vec![p]));
    for claim in claims {
        let lying = PartitionSchedule {
            finished: claim.clone(),
            ..schedule.clone()
        };
        assert!(
            matches!(
                host.receive_schedule(&lying),
                Err(PsiError::InvalidField {
                    field: "finished",
                    ..
                })
            ),
            "{claim:?}"
        );
    }
    host.receive_schedule(&schedule).unwrap();
}

#[test]
fn finished_parts_round_trip_as_bytes() {
    let part = FinishedPart {
        part: 7,
        rows: vec![3, 1, 4_000_000_000],
        pairwise_sizes: vec![2, u64::MAX],
    };
    let bytes = part.to_bytes();
    assert_eq!(FinishedPart::from_bytes(&bytes), Some(part.clone()));
    for cut in [0, 3, 7, 9, bytes.len() - 1] {
        assert_eq!(FinishedPart::from_bytes(&bytes[..cut]), None, "{cut} bytes");
    }
    let mut huge = bytes.clone();
    huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(FinishedPart::from_bytes(&huge), None);
    let host = FinishedPart {
        pairwise_sizes: vec![],
        ..part
    };
    assert_eq!(FinishedPart::from_bytes(&host.to_bytes()), Some(host));
}

/// Ids read in place are checked as a column checks them: the first bad row named, and
/// repeats refused with their count and the first examples, as one session would.
#[test]
fn a_partitioned_party_refuses_bad_and_repeated_ids_like_a_session() {
    let strict = GuestConfig {
        duplicates: DuplicatePolicy::Reject,
        ..config()
    };
    let mut repeated: Vec<String> = (0..300).map(|i| format!("ent-{i}")).collect();
    for (row, copy_of) in [(40, 7), (120, 7), (200, 13), (250, 299)] {
        repeated[row] = format!("ent-{copy_of}");
    }
    let column = IdColumn::from_ids(&repeated).unwrap();
    let session = PsiGuest::new(column.clone(), &["tax"], strict).unwrap_err();
    let parted = PartitionedGuest::new(column.clone(), &["tax"], strict, 20).unwrap_err();
    assert_eq!(parted, session);
    match parted {
        PsiError::DuplicateIds { count, examples } => {
            assert_eq!(count, 4);
            let rows: Vec<(u64, u64)> = examples
                .iter()
                .map(|e| (e.first_row, e.repeated_row))
                .collect();
            assert_eq!(rows, [(7, 40), (7, 120), (13, 200), (250, 299)]);
        }
        other => panic!("{other:?}"),
    }
    // A host refuses them the same way.
    let plan = PartitionedGuest::new(ids(0..300), &["tax"], config(), 20)
        .unwrap()
        .plan();
    let host = PartitionedHost::new("bank", column, DuplicatePolicy::Reject, &plan, 1, vec![]);
    assert!(matches!(host, Err(PsiError::DuplicateIds { count: 4, .. })));

    /// Ids that a column would refuse on push, read through another source.
    #[derive(Debug)]
    struct Raw(Vec<Vec<u8>>);
    impl IdSource for Raw {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn id(&self, row: usize) -> &[u8] {
            &self.0[row]
        }
    }
    let mut raw: Vec<Vec<u8>> = (0..50).map(|i| format!("ent-{i}").into_bytes()).collect();
    raw[31] = vec![];
    raw[40] = vec![0xff, 0xfe];
    let refused = PartitionedGuest::new(Raw(raw.clone()), &["tax"], config(), 10).unwrap_err();
    assert_eq!(refused, PsiError::IdEmpty { row: 31 });
    raw[31] = b"ok".to_vec();
    let refused = PartitionedGuest::new(Raw(raw), &["tax"], config(), 10).unwrap_err();
    assert_eq!(refused, PsiError::IdNotUtf8 { row: 40 });
}
