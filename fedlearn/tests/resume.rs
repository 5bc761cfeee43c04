//! An interrupted job resumes from the last epoch every party holds and ends with the model
//! of an uninterrupted run: the same weights up to the shares' fixed point (each attempt draws
//! fresh shares, whose truncations differ by units of 2^-20).

mod common;

use std::collections::{BTreeMap, VecDeque};

use fedlearn::{
    Checkpoint, Event, FedError, GuestJob, GuestOutcome, GuestSession, HostJob, HostOutcome,
    HostSession, Message, ModelPart, Session, TrainConfig,
};

/// Two model parts with the same columns whose weights differ by less than 10^-3. (The breast
/// data's columns are nearly collinear: with λ = 0 the preconditioner has entries up to
/// 1/δ = 10^3, and two runs' truncation errors of 2^-20 differ by about 10^-4 in the weights.)
fn assert_close(a: &ModelPart, b: &ModelPart) {
    assert_eq!(a.features.len(), b.features.len());
    let weights = |m: &ModelPart| -> Vec<f64> {
        m.features
            .iter()
            .map(|f| f.weight)
            .chain(m.intercept)
            .collect()
    };
    for (x, y) in weights(a).iter().zip(weights(b)) {
        assert!((x - y).abs() < 1e-3, "{x} vs {y}");
    }
}

/// Every party's checkpoints, in the order they were written.
type Saved = BTreeMap<String, Vec<Checkpoint>>;

/// Runs the sessions in one thread, passing every message, until they finish or, with
/// `stop_after`, until the guest has written its checkpoint of that epoch (the messages in
/// flight are then lost, as in a crash).
fn run(
    guest: &mut GuestSession,
    hosts: &mut [(String, HostSession)],
    saved: &mut Saved,
    stop_after: Option<usize>,
) -> Result<bool, FedError> {
    let mut queues: BTreeMap<String, VecDeque<(String, Message)>> = BTreeMap::new();
    loop {
        let mut moved = false;
        let mut parties: Vec<(&str, &mut dyn Session)> = vec![("bank", guest as &mut dyn Session)];
        for (name, session) in hosts.iter_mut() {
            parties.push((name.as_str(), session as &mut dyn Session));
        }
        for (name, session) in parties.iter_mut() {
            while let Some((to, message)) = session.poll_transmit()? {
                queues
                    .entry(to)
                    .or_default()
                    .push_back((name.to_string(), message));
                moved = true;
            }
            while let Some(event) = session.poll_event() {
                if let Event::Checkpoint(checkpoint) = event {
                    let epoch = checkpoint.epoch;
                    saved.entry(name.to_string()).or_default().push(*checkpoint);
                    if *name == "bank" && Some(epoch) == stop_after {
                        return Ok(false);
                    }
                }
            }
        }
        for (name, session) in parties.iter_mut() {
            let Some(queue) = queues.get_mut(*name) else {
                continue;
            };
            while let Some((from, message)) = queue.pop_front() {
                session.handle(&from, message)?;
                moved = true;
            }
        }
        if parties.iter().all(|(_, s)| s.awaiting().is_none()) {
            return Ok(true);
        }
        assert!(moved, "the sessions wait on each other");
    }
}

fn config() -> TrainConfig {
    TrainConfig {
        max_epochs: 6,
        validation_fraction: 0.3,
        early_stopping: None,
        ..TrainConfig::default()
    }
}

/// A fresh start, or a resume from `epoch` with each party's checkpoints.
fn start(
    saved: Option<(&Saved, usize)>,
) -> Result<(GuestSession, Vec<(String, HostSession)>), FedError> {
    let (guest, hosts) = common::parties("breast", 2);
    let (mut guest_job, host_jobs): (GuestJob, Vec<HostJob>) =
        common::jobs(guest, hosts, &config());
    if let Some((saved, epoch)) = saved {
        guest_job.resume = saved["bank"].iter().find(|c| c.epoch == epoch).cloned();
    }
    let mut guest = GuestSession::new(guest_job)?;
    let mut proposals = BTreeMap::new();
    while let Some((to, message)) = guest.poll_transmit()? {
        match message {
            Message::Propose(p) => {
                proposals.insert(to, *p);
            }
            other => panic!("{} before the proposals", other.kind()),
        }
        if proposals.len() == host_jobs.len() {
            break;
        }
    }
    let hosts = host_jobs
        .into_iter()
        .map(|mut job| {
            if let Some((saved, _)) = saved {
                job.checkpoints = saved.get(&job.party).cloned().unwrap_or_default();
            }
            let proposal = proposals.remove(&job.party).expect("a proposal");
            Ok((job.party.clone(), HostSession::new(job, proposal)?))
        })
        .collect::<Result<_, FedError>>()?;
    Ok((guest, hosts))
}

fn outcomes(
    guest: &GuestSession,
    hosts: &[(String, HostSession)],
) -> (GuestOutcome, Vec<HostOutcome>) {
    (
        guest.outcome().expect("the guest's outcome").clone(),
        hosts
            .iter()
            .map(|(_, h)| h.outcome().expect("a host's outcome").clone())
            .collect(),
    )
}

#[test]
fn a_job_interrupted_after_an_epoch_resumes_to_the_same_model() {
    let mut saved = Saved::new();
    let (mut guest, mut hosts) = start(None).unwrap();
    assert!(run(&mut guest, &mut hosts, &mut saved, None).unwrap());
    let (whole, whole_hosts) = outcomes(&guest, &hosts);
    assert_eq!(saved["bank"].len(), 6, "one checkpoint per epoch");
    assert_eq!(saved["host0"].len(), 6);

    // Interrupted when the guest has written epoch 3: the hosts have not heard its verdict
    // on epoch 3, so the epoch every party holds is 2.
    let mut saved = Saved::new();
    let (mut guest, mut hosts) = start(None).unwrap();
    assert!(!run(&mut guest, &mut hosts, &mut saved, Some(3)).unwrap());
    let latest = |party: &str| saved[party].last().map(|c| c.epoch).unwrap();
    assert_eq!(latest("bank"), 3);
    assert_eq!(latest("host0"), 2);
    let common = ["bank", "host0", "host1"].map(latest).into_iter().min();
    let (mut guest, mut hosts) = start(Some((&saved, common.unwrap()))).unwrap();
    assert!(run(&mut guest, &mut hosts, &mut Saved::new(), None).unwrap());
    let (resumed, resumed_hosts) = outcomes(&guest, &hosts);
    assert_close(&resumed.model, &whole.model);
    assert_eq!(resumed.history.len(), whole.history.len());
    for (r, w) in resumed.history.iter().zip(&whole.history) {
        assert_eq!(r.epoch, w.epoch);
        assert!((r.train_loss - w.train_loss).abs() < 1e-5, "{r:?} vs {w:?}");
    }
    assert!((resumed.evaluation.metrics.auc - whole.evaluation.metrics.auc).abs() < 1e-3);
    for (r, w) in resumed_hosts.iter().zip(&whole_hosts) {
        assert_close(&r.model, &w.model);
        assert_eq!(r.epochs, w.epochs);
    }

    // After the last epoch: the final reveal is made again, of the same model exactly (the
    // kept shares are in the checkpoints; no step runs).
    let mut last = Saved::new();
    let (mut guest, mut hosts) = start(None).unwrap();
    assert!(run(&mut guest, &mut hosts, &mut last, None).unwrap());
    let (first, first_hosts) = outcomes(&guest, &hosts);
    let (mut guest, mut hosts) = start(Some((&last, 6))).unwrap();
    assert!(run(&mut guest, &mut hosts, &mut Saved::new(), None).unwrap());
    let (again, again_hosts) = outcomes(&guest, &hosts);
    assert_eq!(again.model, first.model);
    assert_eq!(again.evaluation.metrics, first.evaluation.metrics);
    assert_eq!(again_hosts[1].model, first_hosts[1].model);
}

#[test]
fn a_resume_that_does_not_fit_is_refused_naming_the_party() {
    let mut saved = Saved::new();
    let (mut guest, mut hosts) = start(None).unwrap();
    assert!(!run(&mut guest, &mut hosts, &mut saved, Some(2)).unwrap());
    // host1 lost its checkpoints (a new data directory, say).
    saved.remove("host1");
    match start(Some((&saved, 1))) {
        Err(FedError::Resume { party, reason }) => {
            assert_eq!(party, "host1");
            assert!(reason.contains("no checkpoint of epoch 1"), "{reason}");
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("resumed without a checkpoint"),
    }
    // After the final reveal, only the last epoch: an earlier one would reveal other scores.
    let mut whole = Saved::new();
    let (mut guest, mut hosts) = start(None).unwrap();
    assert!(run(&mut guest, &mut hosts, &mut whole, None).unwrap());
    whole.get_mut("bank").unwrap().retain(|c| c.epoch == 5);
    match start(Some((&whole, 5))) {
        Err(FedError::Resume { party, reason }) => {
            assert_eq!(party, "host0");
            assert!(reason.contains("revealed the final scores"), "{reason}");
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("resumed before the final reveal"),
    }
    // Other settings than the job started with.
    let (guest, hosts) = common::parties("breast", 2);
    let changed = TrainConfig {
        l2: 0.2,
        ..config()
    };
    let (mut job, _) = common::jobs(guest, hosts, &changed);
    job.resume = saved["bank"].first().cloned();
    match GuestSession::new(job) {
        Err(FedError::Resume { party, reason }) => {
            assert_eq!(party, "bank");
            assert!(reason.contains("settings"), "{reason}");
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("resumed with other settings"),
    }
}
