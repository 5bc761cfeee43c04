//! The modeller's binning day over real nodes: binning statistics, columns merged and chosen
//! from them, a model on exactly those bins, its scorecard report, and scoring it.

use unseen::local::HOSTS;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_trains_on_the_columns_chosen_from_a_binning_job() {
    let federation = Federation::start("scorecard", false).await;
    let binning = federation.spec("binning.toml", &TRAIN.replace("sme-credit", "credit-bins"));
    let (ok, stdout, stderr) = federation.cli(&["binning", "--json", &binning]).await;
    assert!(ok, "{stderr}");
    let status: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let binning_job = status["job_id"].as_str().unwrap().to_owned();

    // A select naming a job that is not a binning job of this node fails, and says so.
    let wrong = federation.spec(
        "wrong.toml",
        &TRAIN.replace(
            "[train]",
            "[select]\nbinning_job = \"0123456789abcdef0123456789abcdef\"\n\n[train]",
        ),
    );
    let (ok, _, stderr) = federation.cli(&["train", &wrong]).await;
    assert!(
        !ok && stderr.contains("select: binning job") && stderr.contains("no such binning job"),
        "{stderr}"
    );

    let chosen = TRAIN.replace(
        "[train]",
        &format!(
            "[select]\nbinning_job = \"{binning_job}\"\nmerge = \"chi\"\ntop_k = 3\n\n[train]"
        ),
    );
    let spec = federation.spec("chosen.toml", &chosen);
    let (ok, stdout, stderr) = federation.cli(&["train", &spec]).await;
    assert!(ok, "{stderr}\n{stdout}");

    // Version 2: the job that failed above took version 1 (versions are never made twice).
    let record = |party: &str| {
        federation
            .state(party)
            .store
            .model("sme-credit@2")
            .unwrap()
            .unwrap()
    };
    let part =
        |party: &str| fedlearn::ModelPart::from_json(party, &record(party).part_json).unwrap();
    let report: serde_json::Value = serde_json::from_str(&record("bank").report_json).unwrap();
    let columns = report["selection"]["columns"].as_array().unwrap();
    for party in std::iter::once("bank").chain(HOSTS) {
        let model = part(party);
        let listed: Vec<&serde_json::Value> = columns
            .iter()
            .filter(|c| c["stats"]["party"] == party)
            .collect();
        // At most three columns per party, all binned on the binning job's bins.
        assert!(
            (1..=3).contains(&model.binned.len()) && model.features.is_empty(),
            "{party}: {model:?}"
        );
        assert_eq!(listed.len(), model.binned.len(), "{party}");
        if party != "bank" {
            // The host resolved its aliases: its part names its own columns.
            assert!(
                model.binned.iter().all(|b| !b.name.contains(':')),
                "{model:?}"
            );
        }
    }
    // The report: the bank's scorecard (its bins' counts, WOE, IV and points), the hosts' IV
    // per alias, bands with observed rates and the ROC curve of the revealed rows.
    let scorecard = report["scorecard"].as_array().unwrap();
    assert_eq!(scorecard.len(), part("bank").binned.len());
    for column in scorecard {
        let bins = column["bins"].as_array().unwrap();
        // The merged bins of the selection, counted again on the same aligned rows.
        let chosen = columns
            .iter()
            .find(|c| c["stats"]["party"] == "bank" && c["stats"]["name"] == column["column"])
            .unwrap();
        let counts = |bins: &serde_json::Value| -> Vec<(u64, u64)> {
            bins.as_array()
                .unwrap()
                .iter()
                .map(|b| (b["rows"].as_u64().unwrap(), b["events"].as_u64().unwrap()))
                .collect()
        };
        assert_eq!(counts(&column["bins"]), counts(&chosen["stats"]["bins"]));
        let rows: u64 = bins.iter().map(|b| b["rows"].as_u64().unwrap()).sum();
        assert_eq!(rows as usize, unseen::local::aligned_rows_expected());
        assert!(bins.iter().all(|b| b["score_points"].as_f64().is_some()));
        assert!(column["iv"].as_f64().unwrap() >= 0.02);
    }
    let evaluation = &report["evaluation"];
    let bands = evaluation["bands"].as_array().unwrap();
    assert_eq!(bands.len(), 3);
    let banded: u64 = bands.iter().map(|b| b["rows"].as_u64().unwrap()).sum();
    assert_eq!(banded, evaluation["count"].as_u64().unwrap());
    let roc = evaluation["roc"].as_array().unwrap();
    assert_eq!(roc.last().unwrap(), &serde_json::json!([1.0, 1.0]));

    // Every party scores its part, reading only the columns it uses.
    let ids = federation.bank_ids(3);
    let (ok, stdout, stderr) = federation.score("sme-credit", &["--json"], &ids).await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout.matches("probability").count(), 3, "{stdout}");
    federation.stop().await;
}
