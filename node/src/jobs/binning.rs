//! The runners of a binning job: PSI as for training, then the binning statistics of
//! `fedlearn::BinningGuest` and `fedlearn::answer_binning` over the job's link. The guest
//! keeps the report with the job; a host audits what it disclosed.

use std::sync::Arc;

use fedlearn::{BinningGuest, BinningLimits, KeptBins, Prep, Transport};
use serde_json::json;

use crate::error::NodeError;
use crate::jobs::admission;
use crate::jobs::link::Link;
use crate::jobs::staged::Staged;
use crate::proto::JobProposal;
use crate::registry::JobHandle;
use crate::spec::JobSpec;
use crate::state::NodeState;
use crate::store::JobRecord;

impl NodeState {
    pub(super) fn run_binning_guest(
        &self,
        job: &Arc<JobHandle>,
        spec: &JobSpec,
    ) -> Result<String, NodeError> {
        let reading = |c: &str| spec.prep.reading(c);
        let dataset = Staged::load(&self.config(), &spec.dataset, true, &reading, job.id())?;
        let hosts: Vec<String> = spec.hosts.iter().map(|h| h.party.clone()).collect();
        self.propose(job, spec, 0, 0)?;
        let mut link = Link::new(self, job);
        let positions = self.guest_align(job, &mut link, &dataset, &hosts, "binning")?;
        let table = dataset.select(&positions)?;
        drop(dataset);
        let (mut binning, request) =
            BinningGuest::new(&self.config().party, &table, &spec.prep, &hosts)?;
        for host in &hosts {
            link.send(host, request.clone())?;
        }
        for host in &hosts {
            let answer = link.receive(host)?;
            binning.receive(host, answer)?;
            job.state_event(&self.store, "binning", format!("bin counts from {host}"));
        }
        let kept = serde_json::to_string(binning.kept_bins())
            .map_err(|e| NodeError::Server(format!("the kept bins: {e}")))?;
        job.set_kept_bins(kept);
        let report = binning.finish()?;
        let best = report
            .columns
            .iter()
            .max_by(|a, b| a.iv.total_cmp(&b.iv))
            .map(|c| format!("; highest IV {:.3} ({} {})", c.iv, c.party, c.name))
            .unwrap_or_default();
        let summary = format!(
            "binning statistics of {} columns over {} rows{best}",
            report.columns.len(),
            report.rows
        );
        let report = serde_json::to_string(&report)
            .map_err(|e| NodeError::Server(format!("the binning report: {e}")))?;
        job.set_report(report);
        Ok(summary)
    }

    pub(super) fn run_binning_host(
        &self,
        job: &Arc<JobHandle>,
        proposal: &JobProposal,
    ) -> Result<String, NodeError> {
        let guest = proposal.guest.as_str();
        let config = self.config();
        let rule = config
            .allows(guest, "binning", &proposal.dataset)
            .map_err(NodeError::from)?;
        let limits = BinningLimits {
            min_rows: rule.min_bin_rows,
            min_share: rule.min_bin_share,
        };
        let publish = rule.publish_column_names;
        let prep = admission::host_prep(&self.config(), proposal)?;
        let reading = |c: &str| prep.reading(c);
        let dataset = Staged::load(&self.config(), &proposal.dataset, false, &reading, job.id())?;
        let mut link = Link::new(self, job);
        let positions = self.host_align(job, &mut link, &dataset, guest, "binning")?;
        let table = dataset.select(&positions)?;
        drop(dataset);
        let request = link.receive(guest)?;
        let (answer, disclosed, kept) = fedlearn::answer_binning(
            &self.config().party,
            guest,
            &table,
            &prep,
            &limits,
            publish,
            request,
        )?;
        let kept = serde_json::to_string(&kept)
            .map_err(|e| NodeError::Server(format!("the kept bins: {e}")))?;
        job.set_kept_bins(kept);
        // The job's disclosure, audited before it leaves: the sizes and event counts of these
        // bins.
        crate::audit::append(
            &self.store,
            "disclosure.bin_counts",
            job.id(),
            guest,
            json!({
                "dataset": proposal.dataset,
                "columns": disclosed.columns,
                "bins": disclosed.bins,
                "smallest_bin": disclosed.smallest_bin,
                "names": if publish { "published" } else { "aliased" },
            }),
        )?;
        link.send(guest, answer)?;
        Ok(format!(
            "binning: counts of {} bins of {} columns sent to {guest} (the smallest holds {} rows)",
            disclosed.bins, disclosed.columns, disclosed.smallest_bin
        ))
    }
    /// Gives `prep` the bins this node kept in its binning job `prep.binning_job`.
    pub(super) fn keep_bins(
        &self,
        prep: &mut Prep,
        role: &str,
        peers: &[String],
        dataset: &str,
    ) -> Result<(), String> {
        let Some(id) = prep.binning_job.clone() else {
            return Ok(());
        };
        let (_, kept) = self.binning_record(&id, role, peers, dataset)?;
        prep.keep(kept).map_err(|e| e.to_string())
    }

    /// This node's binning job `id` and the bins it kept, if it ran the job in `role` with
    /// `peers` on `dataset` (the same parties and data as the job at hand) and it succeeded.
    pub(super) fn binning_record(
        &self,
        id: &str,
        role: &str,
        peers: &[String],
        dataset: &str,
    ) -> Result<(JobRecord, Vec<KeptBins>), String> {
        let record = self
            .store
            .job(id)
            .map_err(|e| e.to_string())?
            .filter(|r| r.kind == "binning" && r.role == role)
            .ok_or_else(|| format!("binning job {id:?}: no such binning job as {role}"))?;
        if record.state != "succeeded" || record.kept_bins.is_empty() {
            return Err(format!("binning job {id:?} did not succeed"));
        }
        if record.dataset != dataset || record.peers != peers {
            return Err(format!(
                "binning job {id:?} ran on other parties or data ({} with {:?})",
                record.dataset, record.peers
            ));
        }
        let kept: Vec<KeptBins> = serde_json::from_str(&record.kept_bins)
            .map_err(|e| format!("binning job {id:?}: its kept bins: {e}"))?;
        Ok((record, kept))
    }
}
