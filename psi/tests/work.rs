//! `psi::Work`: the group operations of a batch, run through their bytes as a party's worker
//! runs them, give the session's own results; answers that do not fit their work are refused.

use psi::*;

fn column(ids: &[String]) -> IdColumn {
    IdColumn::from_ids(ids.iter().cloned()).unwrap()
}

/// Every work through its bytes, as a worker gets it, gives what the session computes
/// itself; and a worker's answer is accepted only for the work it answers.
#[test]
fn work_through_bytes_gives_the_sessions_own_results() {
    let ids: Vec<String> = (0..700).map(|i| format!("firm-{i}")).collect();
    let config = GuestConfig {
        batch_size: 256,
        ..GuestConfig::default()
    };
    let mut guest = PsiGuest::new(column(&ids), &["tax"], config).unwrap();
    let hello: GuestHello = guest.hello();
    assert_eq!(hello.result, ResultMode::BothSides);
    let (host, reply) =
        PsiHost::new("bank", column(&ids[100..]), DuplicatePolicy::Reject, &hello).unwrap();
    guest.receive_host_hello("tax", &reply).unwrap();
    let remote = |work: &Work| {
        let shipped = Work::from_bytes(&work.to_bytes()).unwrap();
        work.accept(&shipped.run().to_bytes()).unwrap()
    };
    for batch in 0..guest.batch_count() {
        let work = guest.blind_work(batch).unwrap();
        let points = remote(&work).into_points(batch).unwrap();
        assert_eq!(Some(&points), guest.blinded_batch(batch).as_ref());
        let answer = host.answer_work(points.clone()).unwrap();
        let tags = host.answered(batch, remote(&answer)).unwrap();
        assert_eq!(tags, host.answer(&points).unwrap());
        guest.receive_tags("tax", &tags).unwrap();
    }
    for batch in 0..host.batch_count() {
        let points = remote(&host.blind_work(batch).unwrap())
            .into_points(batch)
            .unwrap();
        assert_eq!(Some(&points), host.blinded_batch(batch).as_ref());
        let work = guest
            .host_points_work("tax", points.clone())
            .unwrap()
            .unwrap();
        let output = remote(&work);
        // An output of another batch's size does not pass as this one's.
        if batch + 1 < host.batch_count() {
            let wrong = host.batch_count() - 1;
            assert!(guest
                .receive_host_tags("tax", wrong, output.clone())
                .is_err());
        }
        guest.receive_host_tags("tax", batch, output).unwrap();
        assert!(guest.host_points_work("tax", points).unwrap().is_none());
    }
    let result = guest.finish().unwrap();
    assert_eq!(result.output.aligned_rows.len(), 600);

    // Answers that do not fit their work are refused.
    let work = host.blind_work(0).unwrap();
    let tags = WorkOutput::Tags(vec![[0; TAG_LEN]; work.len()]);
    assert!(work.accept(&tags.to_bytes()).is_none());
    let short = WorkOutput::Points(vec![[0; POINT_LEN]; work.len() - 1]);
    assert!(work.accept(&short.to_bytes()).is_none());
    let mut long = WorkOutput::Points(vec![[0; POINT_LEN]; work.len()]).to_bytes();
    long.push(0);
    assert!(work.accept(&long).is_none());
    // Well formed but wrong: every element differs from the node's, so the spot check
    // catches it whichever it picks.
    let wrong = WorkOutput::Points(vec![[0; POINT_LEN]; work.len()]);
    assert!(work.accept(&wrong.to_bytes()).is_none());
    let right = work.run();
    assert_eq!(work.accept(&right.to_bytes()), Some(right.clone()));
    // A valid point claimed invalid: the node does not blame the peer on a worker's word.
    let valid = host.blind_work(0).unwrap().run().into_points(0).unwrap();
    let reblind = host.answer_work(valid).unwrap_or_else(|e| panic!("{e}"));
    assert!(reblind
        .accept(&WorkOutput::InvalidPoint(0).to_bytes())
        .is_none());
}
