//! Partitioned PSI: [`PartitionedGuest`] and [`PartitionedHost`].
#![forbid(unsafe_code)]

use rayon::prelude::*;

use crate::crypto::PartitionKey;
use crate::error::PsiError;
use crate::ids::{DuplicatePolicy, IdColumn, MAX_ROWS};
use crate::message::{
    check_version, Alignment, GuestHello, HostHello, PartitionPlan, PartitionSchedule,
    PartitionSizes, ResultMode, MAX_PARTITIONS, PROTOCOL_VERSION,
};
use crate::session::{
    check_guest_settings, GuestConfig, GuestOutput, HostOutput, PsiGuest, PsiHost,
};

/// Default number of distinct guest ids per part.
pub const DEFAULT_PARTITION_ROWS: u64 = 1 << 20;

/// Fewest ids per part, on average, that a party lets a plan split its set into (the nodes'
/// setting): with a thousand ids per part, a part size says next to nothing about which ids a
/// party holds, and no part of a real set is empty.
pub const MIN_PART_ROWS: u64 = 1024;

/// Pairs of ids compared over a job, per host, that 96-bit tags allow (2^-40 false-match
/// bound).
const MAX_COMPARED_PAIRS: u128 = 1 << 56;

/// A party's distinct rows (under its duplicate policy), by part, ascending within each.
#[derive(Debug)]
struct Parts(Vec<Vec<u32>>);

impl Parts {
    /// `rows` (the distinct ones, ascending) by part.
    fn split(ids: &IdColumn, rows: Vec<u32>, key: &PartitionKey, count: u32) -> Parts {
        let assigned: Vec<u32> = rows
            .par_iter()
            .map(|&row| key.part_of(count, ids.get(row as usize)))
            .collect();
        let mut sizes = vec![0usize; count as usize];
        for &part in &assigned {
            sizes[part as usize] += 1;
        }
        let mut parts: Vec<Vec<u32>> = sizes.into_iter().map(Vec::with_capacity).collect();
        for (&row, &part) in rows.iter().zip(&assigned) {
            parts[part as usize].push(row);
        }
        Parts(parts)
    }

    fn sizes(&self) -> Vec<u64> {
        self.0.iter().map(|rows| rows.len() as u64).collect()
    }

    /// The ids of one part as a column of their own (row r of it is `self.0[part][r]`).
    fn column(&self, ids: &IdColumn, part: u32) -> Result<IdColumn, PsiError> {
        let rows = &self.0[part as usize];
        let bytes = rows.iter().map(|&r| ids.get(r as usize).len()).sum();
        let mut column = IdColumn::with_capacity(rows.len(), bytes);
        for &row in rows {
            column.push(ids.get(row as usize))?;
        }
        Ok(column)
    }

    /// Rows of the whole column for rows of a part's column.
    fn rows_of(&self, part: u32, local: &[u32]) -> Vec<u32> {
        let rows = &self.0[part as usize];
        local.iter().map(|&r| rows[r as usize]).collect()
    }
}

/// Part sizes announced by `peer`: one per part, each a possible set size.
fn check_sizes(
    peer: &str,
    field: &'static str,
    sizes: &[u64],
    count: usize,
) -> Result<(), PsiError> {
    let invalid = |reason: String| PsiError::InvalidField {
        peer: peer.to_owned(),
        field,
        reason,
    };
    if sizes.len() != count {
        return Err(invalid(format!("{} sizes for {count} parts", sizes.len())));
    }
    let total: u128 = sizes.iter().map(|&s| u128::from(s)).sum();
    if total > u128::from(MAX_ROWS) {
        return Err(invalid(format!(
            "{total} rows in all is more than {MAX_ROWS}"
        )));
    }
    Ok(())
}

/// Refuses parts for which a false tag match over the job would not be negligible: ids are
/// compared within a part only, so the bound is Σₚ guestₚ·hostₚ·2^-96 ≤ 2^-40.
fn check_compared_pairs(host: &str, guest: &[u64], sizes: &[u64]) -> Result<(), PsiError> {
    let compared: u128 = guest
        .iter()
        .zip(sizes)
        .map(|(&g, &h)| u128::from(g) * u128::from(h))
        .sum();
    if compared > MAX_COMPARED_PAIRS {
        return Err(PsiError::PartitionsTooCoarse {
            host: host.to_owned(),
            compared,
            max: MAX_COMPARED_PAIRS,
        });
    }
    Ok(())
}

/// Every scheduled part ran, and some row is common to all parties.
fn check_finished(schedule: Option<&[u32]>, done: usize, aligned: &[u32]) -> Result<(), PsiError> {
    let scheduled = schedule
        .map(<[u32]>::len)
        .ok_or_else(|| PsiError::Incomplete {
            missing: "the schedule of parts".into(),
        })?;
    if done < scheduled {
        return Err(PsiError::Incomplete {
            missing: format!("{} of {scheduled} parts", scheduled - done),
        });
    }
    if aligned.is_empty() {
        return Err(PsiError::EmptyIntersection);
    }
    Ok(())
}

/// Partitioned PSI: every party splits its ids into the same parts with a keyed hash agreed per
/// job, and an ordinary session runs on each part in turn. An id can only match an id of the
/// same part, so the result is the unpartitioned one; what changes is the scale:
///
/// - a party holds one part's session state at a time, not the whole job's;
/// - the false-match bound is a sum over parts, Σₚ guestₚ·hostₚ·2^-96, so 96-bit tags serve
///   sets whose product exceeds 2^56 once they are split finely enough (10^9 × 10^9 ids need
///   at least 14 parts; the default of 2^20 guest ids per part gives about 950);
/// - parts are the unit a later resumption or a second machine can take.
///
/// # Flow
///
/// 1. the guest draws a fresh [`PartitionKey`] and sends each host a [`PartitionPlan`]: the key
///    and its number of distinct ids per part (the number of parts is their count);
/// 2. each host splits its ids with the key and answers with its [`PartitionSizes`];
/// 3. the guest sends every host the [`PartitionSchedule`]: the parts in which every party
///    holds ids, ascending (no other part can hold a common id);
/// 4. for each scheduled part, in order, an ordinary session (hello, points, tags, alignment)
///    with a fresh blinding key and salt; an empty intersection within a part is allowed;
/// 5. every party concatenates the parts' aligned rows in schedule order.
///
/// # What the parts disclose
///
/// Beyond the unpartitioned protocol: the guest learns every host's number of ids per part,
/// each host the guest's, and each host which parts the schedule skips (those where some other
/// host holds no id). The guest learns less than before: pairwise intersection sizes only over
/// the scheduled parts.
///
/// Part sizes are a histogram of a party's set under a key the guest chose, and the finer the
/// split the more it says (an empty part tells that the party holds none of the ids that hash
/// there). So the guest's parts hold `partition_rows` ids or about half that, a host refuses a
/// plan that would give its own parts fewer than `min_part_rows` ids on average (the nodes use
/// [`MIN_PART_ROWS`], 1024, at which a real set has no empty part), and the nodes refuse
/// `psi_partition_rows` below it. The key is fresh per run; a job that aligns again after an
/// interruption runs PSI again under a new key, so each such attempt shows each party one more
/// histogram of the others' sets. The key is known to all parties
/// of the job, so a part size is a function of the set that a party can evaluate on guesses: a
/// host that already knows the guest's set up to a few ids learns in which parts the unknown
/// ones lie (about log2(parts) bits each). The key is drawn after every party's set is fixed. The final order is part by part, random within each part; since every party
/// can compute the part of its own ids, that order tells it nothing new.
///
/// This type is the guest's side: the plan, the schedule, and one [`PsiGuest`] per scheduled
/// part, whose results it maps back to the guest's rows. Both-sides mode only (every party
/// ends with aligned rows).
#[derive(Debug)]
pub struct PartitionedGuest {
    ids: IdColumn,
    hosts: Vec<String>,
    config: GuestConfig,
    key: PartitionKey,
    parts: Parts,
    host_sizes: Vec<Option<Vec<u64>>>,
    schedule: Option<Vec<u32>>,
    /// Scheduled parts finished so far.
    done: usize,
    aligned_rows: Vec<u32>,
    pairwise_sizes: Vec<u64>,
}

impl PartitionedGuest {
    /// Validates the ids and the settings, draws the key and splits the ids into
    /// ⌈distinct ids / `partition_rows`⌉ parts (at most [`MAX_PARTITIONS`]).
    pub fn new(
        ids: IdColumn,
        hosts: &[&str],
        config: GuestConfig,
        partition_rows: u64,
    ) -> Result<Self, PsiError> {
        if config.result != ResultMode::BothSides {
            return Err(PsiError::InvalidConfig {
                field: "result",
                reason: "partitioned PSI aligns every party (both-sides mode)".into(),
            });
        }
        if partition_rows == 0 {
            return Err(PsiError::InvalidConfig {
                field: "partition_rows",
                reason: "a part needs at least one row".into(),
            });
        }
        check_guest_settings(hosts, &config)?;
        let rows = ids.distinct_rows(config.duplicates)?;
        let count = (rows.len() as u64)
            .div_ceil(partition_rows)
            .clamp(1, u64::from(MAX_PARTITIONS)) as u32;
        let key = PartitionKey::random()?;
        let parts = Parts::split(&ids, rows, &key, count);
        Ok(PartitionedGuest {
            ids,
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            config,
            key,
            parts,
            host_sizes: vec![None; hosts.len()],
            schedule: None,
            done: 0,
            aligned_rows: Vec::new(),
            pairwise_sizes: vec![0; hosts.len()],
        })
    }

    /// The plan every host receives.
    pub fn plan(&self) -> PartitionPlan {
        PartitionPlan {
            version: PROTOCOL_VERSION,
            key: self.key,
            guest_sizes: self.parts.sizes(),
        }
    }

    /// A host's part sizes. A repeat with the same sizes is ignored.
    pub fn receive_sizes(&mut self, host: &str, sizes: &PartitionSizes) -> Result<(), PsiError> {
        check_version(host, sizes.version)?;
        let index = self.host_index(host)?;
        check_sizes(host, "host_sizes", &sizes.host_sizes, self.parts.0.len())?;
        match &self.host_sizes[index] {
            Some(known) if *known == sizes.host_sizes => Ok(()),
            Some(_) => Err(PsiError::UnexpectedMessage {
                peer: host.to_owned(),
                what: "second part sizes that differ from the first",
            }),
            None => {
                self.host_sizes[index] = Some(sizes.host_sizes.clone());
                Ok(())
            }
        }
    }

    fn host_index(&self, host: &str) -> Result<usize, PsiError> {
        self.hosts
            .iter()
            .position(|h| h == host)
            .ok_or_else(|| PsiError::UnexpectedMessage {
                peer: host.to_owned(),
                what: "message from a party that is not a host of this run",
            })
    }

    /// Once every host's sizes arrived: the parts every party holds ids in, checked against
    /// the false-match bound over the whole job, for every host.
    pub fn schedule(&mut self) -> Result<PartitionSchedule, PsiError> {
        let mut all = Vec::with_capacity(self.hosts.len());
        for (host, sizes) in self.hosts.iter().zip(&self.host_sizes) {
            all.push(sizes.as_ref().ok_or_else(|| PsiError::Incomplete {
                missing: format!("part sizes of host {host}"),
            })?);
        }
        let guest = self.parts.sizes();
        let partitions: Vec<u32> = (0..guest.len())
            .filter(|&p| guest[p] > 0 && all.iter().all(|sizes| sizes[p] > 0))
            .map(|p| p as u32)
            .collect();
        // Only scheduled parts are compared.
        let scheduled =
            |sizes: &[u64]| -> Vec<u64> { partitions.iter().map(|&p| sizes[p as usize]).collect() };
        for (host, sizes) in self.hosts.iter().zip(&all) {
            check_compared_pairs(host, &scheduled(&guest), &scheduled(sizes))?;
        }
        if partitions.is_empty() {
            return Err(PsiError::EmptyIntersection);
        }
        self.schedule = Some(partitions.clone());
        Ok(PartitionSchedule {
            version: PROTOCOL_VERSION,
            partitions,
        })
    }

    /// The next scheduled part and a fresh session over its ids; `None` when all are done.
    pub fn next_session(&self) -> Result<Option<(u32, PsiGuest)>, PsiError> {
        let Some(&part) = self.schedule_ref()?.get(self.done) else {
            return Ok(None);
        };
        let names: Vec<&str> = self.hosts.iter().map(String::as_str).collect();
        let column = self.parts.column(&self.ids, part)?;
        // The part's rows are distinct already.
        let config = GuestConfig {
            duplicates: DuplicatePolicy::Reject,
            ..self.config
        };
        let planned: Vec<u64> = self
            .host_sizes
            .iter()
            .map(|sizes| sizes.as_ref().map_or(0, |s| s[part as usize]))
            .collect();
        let session = PsiGuest::new(column, &names, config)?.within_partition(&planned);
        Ok(Some((part, session)))
    }

    fn schedule_ref(&self) -> Result<&[u32], PsiError> {
        self.schedule
            .as_deref()
            .ok_or_else(|| PsiError::Incomplete {
                missing: "the schedule of parts".into(),
            })
    }

    /// Finishes the current part's session: the alignments to send its hosts.
    pub fn finish_session(
        &mut self,
        part: u32,
        session: PsiGuest,
    ) -> Result<Vec<(String, Alignment)>, PsiError> {
        if self.schedule_ref()?.get(self.done) != Some(&part) {
            return Err(PsiError::InvalidConfig {
                field: "part",
                reason: format!("part {part} is not the next scheduled part"),
            });
        }
        let result = session.finish()?;
        self.aligned_rows
            .extend(self.parts.rows_of(part, &result.output.aligned_rows));
        for (total, size) in self
            .pairwise_sizes
            .iter_mut()
            .zip(&result.output.pairwise_sizes)
        {
            *total += size;
        }
        self.done += 1;
        Ok(result.alignments)
    }

    /// The guest's rows of the final intersection, part by part in schedule order, and the
    /// pairwise intersection sizes over the scheduled parts (a part that some host lacks is not
    /// run, so matches with the other hosts there are not counted: the guest learns less).
    pub fn finish(self) -> Result<GuestOutput, PsiError> {
        check_finished(self.schedule.as_deref(), self.done, &self.aligned_rows)?;
        Ok(GuestOutput {
            aligned_rows: self.aligned_rows,
            pairwise_sizes: self.pairwise_sizes,
        })
    }
}

/// A host's side of partitioned PSI with the guest.
#[derive(Debug)]
pub struct PartitionedHost {
    guest: String,
    ids: IdColumn,
    parts: Parts,
    guest_sizes: Vec<u64>,
    schedule: Option<Vec<u32>>,
    done: usize,
    aligned_rows: Vec<u32>,
}

impl PartitionedHost {
    /// Checks the guest's plan and splits the ids with its key; returns the host and the sizes
    /// to send back. The host refuses a plan that would split its distinct ids into parts of
    /// fewer than `min_part_rows` on average (more parts would make its part sizes a finer
    /// picture of its set; the nodes use [`MIN_PART_ROWS`]; 0 sets no limit), and one whose
    /// parts compare more pairs of ids than 96-bit tags allow.
    pub fn new(
        guest: &str,
        ids: IdColumn,
        duplicates: DuplicatePolicy,
        plan: &PartitionPlan,
        min_part_rows: u64,
    ) -> Result<(Self, PartitionSizes), PsiError> {
        check_version(guest, plan.version)?;
        let count = plan.guest_sizes.len();
        if count == 0 || count > MAX_PARTITIONS as usize {
            return Err(PsiError::InvalidField {
                peer: guest.to_owned(),
                field: "guest_sizes",
                reason: format!("{count} parts is not in 1..={MAX_PARTITIONS}"),
            });
        }
        check_sizes(guest, "guest_sizes", &plan.guest_sizes, count)?;
        let rows = ids.distinct_rows(duplicates)?;
        let allowed = match min_part_rows {
            0 => u64::from(MAX_PARTITIONS),
            min => (rows.len() as u64 / min).max(1),
        };
        if count as u64 > allowed {
            return Err(PsiError::InvalidField {
                peer: guest.to_owned(),
                field: "guest_sizes",
                reason: format!(
                    "{count} parts for this host's {} ids: at most {allowed} (parts of at \
                     least {min_part_rows} ids on average)",
                    rows.len()
                ),
            });
        }
        let parts = Parts::split(&ids, rows, &plan.key, count as u32);
        check_compared_pairs(guest, &plan.guest_sizes, &parts.sizes())?;
        let reply = PartitionSizes {
            version: PROTOCOL_VERSION,
            host_sizes: parts.sizes(),
        };
        let host = PartitionedHost {
            guest: guest.to_owned(),
            ids,
            parts,
            guest_sizes: plan.guest_sizes.clone(),
            schedule: None,
            done: 0,
            aligned_rows: Vec::new(),
        };
        Ok((host, reply))
    }

    /// The guest's schedule: ascending parts in which both the guest and this host hold ids.
    pub fn receive_schedule(&mut self, schedule: &PartitionSchedule) -> Result<(), PsiError> {
        check_version(&self.guest, schedule.version)?;
        let invalid = |reason: String| PsiError::InvalidField {
            peer: self.guest.clone(),
            field: "partitions",
            reason,
        };
        if self.schedule.is_some() {
            return Err(PsiError::UnexpectedMessage {
                peer: self.guest.clone(),
                what: "second schedule of parts",
            });
        }
        if schedule.partitions.is_empty() {
            return Err(invalid("no part is scheduled".into()));
        }
        if schedule.partitions.windows(2).any(|w| w[0] >= w[1]) {
            return Err(invalid("parts are not in ascending order".into()));
        }
        for &part in &schedule.partitions {
            let p = part as usize;
            if p >= self.guest_sizes.len() {
                return Err(invalid(format!("part {part} does not exist")));
            }
            if self.guest_sizes[p] == 0 || self.parts.0[p].is_empty() {
                return Err(invalid(format!("part {part} is empty on one side")));
            }
        }
        self.schedule = Some(schedule.partitions.clone());
        Ok(())
    }

    /// The session of the next scheduled part, from its guest hello (whose set size must be
    /// the planned one), and the hello to send back.
    pub fn next_session(&self, hello: &GuestHello) -> Result<(PsiHost, HostHello), PsiError> {
        let schedule = self
            .schedule
            .as_deref()
            .ok_or_else(|| PsiError::UnexpectedMessage {
                peer: self.guest.clone(),
                what: "a guest hello before the schedule of parts",
            })?;
        let Some(&part) = schedule.get(self.done) else {
            return Err(PsiError::UnexpectedMessage {
                peer: self.guest.clone(),
                what: "a guest hello after the last scheduled part",
            });
        };
        if hello.result != ResultMode::BothSides {
            return Err(PsiError::InvalidField {
                peer: self.guest.clone(),
                field: "result",
                reason: "partitioned PSI aligns every party (both-sides mode)".into(),
            });
        }
        let planned = self.guest_sizes[part as usize];
        if hello.guest_rows != planned {
            return Err(PsiError::InvalidField {
                peer: self.guest.clone(),
                field: "guest_rows",
                reason: format!(
                    "{} rows in part {part}, the plan said {planned}",
                    hello.guest_rows
                ),
            });
        }
        let column = self.parts.column(&self.ids, part)?;
        let (session, reply) = PsiHost::new(&self.guest, column, DuplicatePolicy::Reject, hello)?;
        Ok((session.within_partition(), reply))
    }

    /// Finishes the current part with its alignment from the guest; whether that was the last
    /// scheduled part.
    pub fn finish_session(
        &mut self,
        session: PsiHost,
        alignment: &Alignment,
    ) -> Result<bool, PsiError> {
        let schedule = self.schedule.as_deref().unwrap_or_default();
        let Some(&part) = schedule.get(self.done) else {
            return Err(PsiError::UnexpectedMessage {
                peer: self.guest.clone(),
                what: "an alignment after the last scheduled part",
            });
        };
        let output = session.receive_alignment(alignment)?;
        self.aligned_rows
            .extend(self.parts.rows_of(part, &output.aligned_rows));
        self.done += 1;
        Ok(self.done == schedule.len())
    }

    /// The host's rows of the final intersection, in the guest's order.
    pub fn finish(self) -> Result<HostOutput, PsiError> {
        check_finished(self.schedule.as_deref(), self.done, &self.aligned_rows)?;
        Ok(HostOutput {
            aligned_rows: self.aligned_rows,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10^9 × 10^9 ids: refused as one part (2^59.8 pairs), accepted in 16 even parts.
    #[test]
    fn the_false_match_bound_is_summed_over_parts() {
        let billion = 1_000_000_000u64;
        let refused = check_compared_pairs("tax", &[billion], &[billion]);
        assert!(
            matches!(refused, Err(PsiError::PartitionsTooCoarse { compared, .. })
            if compared == u128::from(billion) * u128::from(billion))
        );
        let parts = vec![billion / 16; 16];
        assert!(check_compared_pairs("tax", &parts, &parts).is_ok());
        // The bound is per host and counts every part.
        let mut uneven = parts.clone();
        uneven[0] = billion;
        assert!(check_compared_pairs("tax", &uneven, &uneven).is_err());
    }
}
