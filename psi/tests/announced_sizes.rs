//! A peer's announced set size is checked, and costs memory only as its batches arrive.
//!
//! Found by `fuzz/fuzz_targets/psi_session.rs`: a host's hello announcing 2^40 rows (within
//! the tag bound for a small guest set) made the guest allocate 12 bytes per announced row at
//! once, 12 TiB, and abort.

use proptest::prelude::*;
use psi::*;

fn guest(ids: &[&str]) -> PsiGuest {
    let config = GuestConfig {
        batch_size: 1,
        ..GuestConfig::default()
    };
    PsiGuest::new(IdColumn::from_ids(ids).unwrap(), &["tax"], config).unwrap()
}

fn host_hello(host_rows: u64) -> HostHello {
    HostHello {
        version: PROTOCOL_VERSION,
        host_rows,
    }
}

#[test]
fn a_host_announcing_more_rows_than_a_party_may_bring_is_refused() {
    for rows in [MAX_ROWS + 1, 1 << 40, u64::MAX] {
        let error = guest(&["a"])
            .receive_host_hello("tax", &host_hello(rows))
            .unwrap_err();
        assert!(
            matches!(
                &error,
                PsiError::InvalidField {
                    field: "host_rows",
                    ..
                }
            ),
            "{rows}: {error}"
        );
    }
}

#[test]
fn the_guest_holds_nothing_for_announced_rows_that_never_came() {
    // u32::MAX rows in batches of one: 48 GiB of tags and 4 GiB of batch flags, had the
    // guest allocated them on the hello.
    let mut guest = guest(&["a"]);
    guest
        .receive_host_hello("tax", &host_hello(MAX_ROWS))
        .unwrap();
    let (host, _) = PsiHost::new(
        "bank",
        IdColumn::from_ids(["a"]).unwrap(),
        DuplicatePolicy::Reject,
        &guest.hello(),
    )
    .unwrap();
    let points = PointBatch {
        batch: 7,
        ..host.blinded_batch(0).unwrap()
    };
    guest.receive_host_points("tax", &points).unwrap();
    guest
        .receive_tags(
            "tax",
            &host.answer(&guest.blinded_batch(0).unwrap()).unwrap(),
        )
        .unwrap();
    assert!(!guest.is_complete());
    assert!(matches!(guest.finish(), Err(PsiError::Incomplete { .. })));
}

#[test]
fn a_guest_announcing_more_rows_than_a_party_may_bring_is_refused() {
    let hello = GuestHello {
        guest_rows: MAX_ROWS + 1,
        ..guest(&["a"]).hello()
    };
    let refused = PsiHost::new(
        "bank",
        IdColumn::from_ids(["a"]).unwrap(),
        DuplicatePolicy::Reject,
        &hello,
    );
    assert!(matches!(
        refused,
        Err(PsiError::InvalidField {
            field: "guest_rows",
            ..
        })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever size a host announces, the guest answers at once with a result, and accepts
    /// exactly the sizes a party may bring that keep false matches negligible.
    #[test]
    fn any_announced_host_size_is_a_result(shift in 0u32..64, low in any::<u64>()) {
        let rows = low >> shift;
        let accepted = guest(&["a", "b"])
            .receive_host_hello("tax", &host_hello(rows))
            .is_ok();
        prop_assert_eq!(accepted, (1..=MAX_ROWS).contains(&rows));
    }
}
