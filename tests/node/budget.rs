//! Hosts enforce their disclosure budget (models and scoring rate).

use unseen::local::HOSTS;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_enforce_their_disclosure_budget() {
    let federation = Federation::start_with(
        "budget",
        false,
        "max_models = 2\nscores_per_minute = 10\nmax_binning_jobs = 1\nmin_bin_share = 0.1\n\
         min_batch_rows = 26000\n",
    )
    .await;
    let quick = TRAIN.replace("max_epochs = 8", "max_epochs = 1");
    // Every step uses every training row: a validation split that leaves fewer than the
    // hosts' minimum is refused once PSI has counted the rows, naming the policy key. The job
    // got past PSI, so it counts against `max_models` (the hosts cannot tell whether a bank
    // that stops after PSI learned something).
    let aligned = unseen::local::aligned_rows_expected();
    let train_rows = aligned - (aligned as f64 * 0.2).round() as usize;
    let small = federation.spec(
        "small.toml",
        &quick
            .replace("sme-credit", "small")
            .replace("seed = 11", "seed = 11\nvalidation_fraction = 0.2"),
    );
    let (ok, _, stderr) = federation.cli(&["train", &small]).await;
    assert!(
        !ok && stderr.contains("policy key min_batch_rows")
            && stderr.contains(&format!("{train_rows} training rows")),
        "{stderr}"
    );
    // The first job prepares its columns: the bank winsorises its own, tax bins its own (the
    // spec sends tax its preparation), utilities takes the bank's default.
    let prepared = quick
        .replace(
            "party = \"tax\"\ndataset = \"tax\"\n",
            "party = \"tax\"\ndataset = \"tax\"\n\
             prep = { default = { bins = { kind = \"quantile\", count = 4 } } }\n",
        )
        .replace(
            "[train]",
            "[prep.default]\nwinsorise = [0.01, 0.99]\nlog1p = true\n\n[train]",
        );
    let first = federation.spec("first.toml", &prepared);
    let (ok, stdout, stderr) = federation.cli(&["train", &first]).await;
    assert!(ok, "{stderr}");
    // Piped, `unseen train` prints its progress line by line on stdout as it comes.
    for line in ["psi: ", "training: ", "epoch 1/1 Taylor loss "] {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }
    // One epoch cannot converge, and the modeller is told.
    assert!(
        format!("{stdout}{stderr}").contains("not converged"),
        "{stdout}\n{stderr}"
    );
    let part = |party: &str| {
        let record = federation
            .state(party)
            .store
            .model("sme-credit@1")
            .unwrap()
            .unwrap();
        fedlearn::ModelPart::from_json(party, &record.part_json).unwrap()
    };
    let (bank, tax, utilities) = (part("bank"), part("tax"), part("utilities"));
    assert!(bank.binned.is_empty() && !bank.features.is_empty());
    assert!(bank
        .features
        .iter()
        .all(|f| f.transform.log1p && f.transform.clip.is_some()));
    assert!(tax.features.is_empty() && !tax.binned.is_empty());
    assert!(tax.binned.iter().all(|b| b.points.len() <= 4 + 1));
    assert!(utilities.binned.is_empty() && utilities.features[0].transform.log1p);

    // The binning statistics of the same spec: every party's columns with their IV, the
    // hosts' under aliases (their policies do not publish names), no host bin under 10% of
    // the aligned rows.
    let (ok, stdout, stderr) = federation.cli(&["binning", "--json", &first]).await;
    assert!(ok, "{stderr}");
    let status: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let report = &status["binning"];
    let aligned = report["rows"].as_u64().unwrap();
    assert_eq!(aligned as usize, unseen::local::aligned_rows_expected());
    let columns = report["columns"].as_array().unwrap();
    let of = |party: &str| -> Vec<&serde_json::Value> {
        columns.iter().filter(|c| c["party"] == party).collect()
    };
    assert_eq!(of("bank").len(), 13);
    assert!(of("bank")
        .iter()
        .all(|c| c["name"].as_str().unwrap().starts_with('x')));
    for host in HOSTS {
        assert_eq!(of(host).len(), 5, "{host}");
        for (k, column) in of(host).into_iter().enumerate() {
            assert_eq!(column["name"], format!("{host}:{}", k + 1));
            for bin in column["bins"].as_array().unwrap() {
                assert!(bin["rows"].as_u64().unwrap() * 10 >= aligned, "{column}");
            }
        }
    }
    assert!(columns.iter().any(|c| c["iv"].as_f64().unwrap() > 0.1));
    // A second binning job exceeds the hosts' budget.
    let (ok, _, stderr) = federation.cli(&["binning", &first]).await;
    assert!(
        !ok && stderr.contains("policy key max_binning_jobs"),
        "{stderr}"
    );

    // A third job (the refused one counts) would be a view of the hosts' data beyond the
    // budget: refused, naming the policy key.
    let second = federation.spec("second.toml", &quick.replace("sme-credit", "second"));
    let (ok, _, stderr) = federation.cli(&["train", &second]).await;
    assert!(
        !ok && stderr.contains("policy key max_models") && stderr.contains("allows 2"),
        "{stderr}"
    );
    // Too many guest features (a proposal as the bank would send it).
    let mut as_bank = federation.peer_client("tax", "bank").await;
    let reply = as_bank
        .propose(node::proto::JobProposal {
            guest_features: 500,
            prep: String::new(),
            ..proposal("12".repeat(16), "wide")
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !reply.accepted && reply.reason.contains("policy key max_guest_features"),
        "{}",
        reply.reason
    );

    // Scoring beyond the hosts' rate is refused, naming the key.
    let ids = federation.bank_ids(11);
    let (ok, _, stderr) = federation.score("sme-credit", &[], &ids).await;
    assert!(!ok && stderr.contains("scores_per_minute"), "{stderr}");
    let (ok, stdout, stderr) = federation.score("sme-credit", &["--json"], &ids[..3]).await;
    assert!(ok, "{stderr}");
    // Tax scores its binned part and the bank its winsorised one: every id has a probability.
    assert_eq!(stdout.matches("probability").count(), 3, "{stdout}");

    // Every disclosure is an audit record on each host: one final reveal and one scoring
    // call; the refusal by rate is recorded too (once per attempt: the bank retries once).
    for host in HOSTS {
        let records = audit_lines(&federation, host, "").await;
        let count = |event: &str| records.iter().filter(|r| r["event"] == event).count();
        assert_eq!(count("disclosure.final_scores"), 1, "{host}");
        assert_eq!(count("disclosure.bin_counts"), 1, "{host}");
        assert_eq!(count("score.partial"), 1, "{host}");
        assert!(count("score.rate_limited") >= 1, "{host}");
    }
    federation.stop().await;
}
