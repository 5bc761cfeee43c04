//! The two roles as state machines: [`PsiGuest`] (learns the intersection, drives alignment)
//! and [`PsiHost`]. They consume and produce messages; the caller moves them.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rayon::prelude::*;

use crate::crypto::{BlindingKey, JobSalt, Tag, TAG_LEN};
use crate::error::{PsiError, Stream};
use crate::ids::{DuplicatePolicy, IdColumn, MAX_ROWS};
use crate::message::{
    check_version, Alignment, GuestHello, HostHello, PointBatch, ResultMode, TagBatch,
    DEFAULT_BATCH_SIZE, MAX_BATCH_SIZE, PROTOCOL_VERSION,
};
use crate::work::{Work, WorkOutput};

/// Position marker for "no match" in per-host match tables.
const NO_MATCH: u32 = u32::MAX;

/// The guest's choices for one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestConfig {
    /// Elements per batch message, 1..=[`MAX_BATCH_SIZE`].
    pub batch_size: u32,
    /// Who learns the intersection.
    pub result: ResultMode,
    /// What to do with repeated ids in the guest's own column.
    pub duplicates: DuplicatePolicy,
}

impl Default for GuestConfig {
    fn default() -> Self {
        GuestConfig {
            batch_size: DEFAULT_BATCH_SIZE,
            result: ResultMode::BothSides,
            duplicates: DuplicatePolicy::Reject,
        }
    }
}

/// What the guest ends with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestOutput {
    /// Guest rows held by every party, in a uniformly random order: row `i` of the aligned
    /// data set.
    pub aligned_rows: Vec<u32>,
    /// |guest ∩ host_k| per host (the guest learns these pairwise sizes); in a partitioned run,
    /// over the parts that ran only.
    pub pairwise_sizes: Vec<u64>,
}

/// What a host ends with in both-sides mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostOutput {
    /// The host's row for each aligned row, in the guest's order.
    pub aligned_rows: Vec<u32>,
}

/// The guest's result: its output and, in both-sides mode, one alignment message per host.
#[derive(Debug)]
pub struct GuestResult {
    /// What the guest learned.
    pub output: GuestOutput,
    /// `(host name, message)` for every host, in both-sides mode; empty in receiver-only mode.
    pub alignments: Vec<(String, Alignment)>,
}

fn batch_count(rows: u64, batch_size: u32) -> u32 {
    rows.div_ceil(u64::from(batch_size)) as u32
}

fn batch_range(rows: u64, batch_size: u32, batch: u32) -> std::ops::Range<usize> {
    let start = u64::from(batch) * u64::from(batch_size);
    let end = (start + u64::from(batch_size)).min(rows);
    start as usize..end as usize
}

/// The guest's batch size and host list, as a session or a partitioned run needs them.
pub(crate) fn check_guest_settings(hosts: &[&str], config: &GuestConfig) -> Result<(), PsiError> {
    if config.batch_size == 0 || config.batch_size > MAX_BATCH_SIZE {
        return Err(PsiError::InvalidConfig {
            field: "batch_size",
            reason: format!("{} is not in 1..={MAX_BATCH_SIZE}", config.batch_size),
        });
    }
    if hosts.is_empty() {
        return Err(PsiError::InvalidConfig {
            field: "hosts",
            reason: "at least one host is needed".into(),
        });
    }
    for (i, name) in hosts.iter().enumerate() {
        if hosts[..i].contains(name) {
            return Err(PsiError::InvalidConfig {
                field: "hosts",
                reason: format!("host {name} is listed twice"),
            });
        }
    }
    Ok(())
}

/// Refuses sizes for which a false tag match would not be negligible (2^-40).
fn check_tag_bound(guest_rows: u64, host_rows: u64) -> Result<(), PsiError> {
    let tag_bits = (TAG_LEN * 8) as u32;
    if u128::from(guest_rows) * u128::from(host_rows) > 1u128 << (tag_bits - 40) {
        return Err(PsiError::SetsTooLarge {
            guest_rows,
            host_rows,
            tag_bits,
        });
    }
    Ok(())
}

/// The rows that take part, in a fresh uniformly random order.
fn shuffled_rows(ids: &IdColumn, policy: DuplicatePolicy) -> Result<Vec<u32>, PsiError> {
    let mut rows = ids.distinct_rows(policy)?;
    rows.shuffle(&mut rand::rng());
    Ok(rows)
}

/// A peer's announced set size: at least one row, and at most [`MAX_ROWS`] (positions are
/// `u32` on the wire, and batch counts must fit one).
fn check_announced_rows(peer: &str, field: &'static str, rows: u64) -> Result<(), PsiError> {
    let reason = if rows == 0 {
        "the set is empty".to_owned()
    } else if rows > MAX_ROWS {
        format!("{rows} rows is more than {MAX_ROWS}")
    } else {
        return Ok(());
    };
    Err(PsiError::InvalidField {
        peer: peer.to_owned(),
        field,
        reason,
    })
}

fn check_batch(
    peer: &str,
    stream: Stream,
    batch: u32,
    len: usize,
    rows: u64,
    batch_size: u32,
) -> Result<std::ops::Range<usize>, PsiError> {
    let batches = batch_count(rows, batch_size);
    if batch >= batches {
        return Err(PsiError::BatchOutOfRange {
            peer: peer.to_owned(),
            what: stream.name(),
            batch,
            batches,
        });
    }
    let range = batch_range(rows, batch_size, batch);
    if len != range.len() {
        return Err(PsiError::WrongCount {
            peer: peer.to_owned(),
            what: stream.name(),
            batch,
            expected: range.len() as u64,
            got: len as u64,
        });
    }
    Ok(range)
}

/// What the guest knows about one host.
struct HostSlot {
    name: String,
    /// Set by the host's hello.
    rows: Option<u64>,
    /// Within a partitioned run: the size the host announced for this part in its sizes.
    planned_rows: Option<u64>,
    /// Tags of the guest's points after this host's blinding, by guest position.
    guest_tags: Vec<Tag>,
    guest_batches_done: Vec<bool>,
    /// Tags of this host's points after the guest's blinding, per batch received: memory
    /// follows what arrived, not the set size the host announced.
    host_batches: BTreeMap<u32, Vec<Tag>>,
}

impl HostSlot {
    fn missing(&self, batch_size: u32) -> Option<String> {
        let Some(rows) = self.rows else {
            return Some(format!("no hello from host {}", self.name));
        };
        let guest_left = self.guest_batches_done.iter().filter(|d| !**d).count();
        let host_left = batch_count(rows, batch_size) as usize - self.host_batches.len();
        (guest_left + host_left > 0).then(|| {
            format!(
                "host {}: {guest_left} tag batches and {host_left} point batches missing",
                self.name
            )
        })
    }
}

/// The guest's side of PSI with one or more hosts.
///
/// Flow: send [`hello`](Self::hello) to every host; feed each host's [`HostHello`]; send every
/// [`blinded_batch`](Self::blinded_batch) to every host and feed the [`TagBatch`] answers;
/// feed every host's [`PointBatch`]es; then [`finish`](Self::finish). Messages may arrive in
/// any order after the hellos, and a repeated batch is ignored, so a transport may retry.
pub struct PsiGuest {
    ids: IdColumn,
    key: BlindingKey,
    salt: JobSalt,
    config: GuestConfig,
    /// Row blinded at each position of the guest's stream.
    sent_rows: Vec<u32>,
    hosts: Vec<HostSlot>,
    /// One part of a partitioned run: an empty intersection is a result, not an error.
    within_partition: bool,
}

impl std::fmt::Debug for PsiGuest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PsiGuest")
            .field("rows", &self.sent_rows.len())
            .field("hosts", &self.hosts.len())
            .finish_non_exhaustive()
    }
}

impl PsiGuest {
    /// Validates the ids, draws a fresh key and salt, and shuffles the rows.
    pub fn new(ids: IdColumn, hosts: &[&str], config: GuestConfig) -> Result<Self, PsiError> {
        Self::with_key(
            ids,
            hosts,
            config,
            BlindingKey::random()?,
            JobSalt::random()?,
        )
    }

    pub(crate) fn with_key(
        ids: IdColumn,
        hosts: &[&str],
        config: GuestConfig,
        key: BlindingKey,
        salt: JobSalt,
    ) -> Result<Self, PsiError> {
        check_guest_settings(hosts, &config)?;
        let sent_rows = shuffled_rows(&ids, config.duplicates)?;
        let own_batches = batch_count(sent_rows.len() as u64, config.batch_size) as usize;
        let hosts = hosts
            .iter()
            .map(|name| HostSlot {
                name: (*name).to_owned(),
                rows: None,
                planned_rows: None,
                guest_tags: vec![[0; TAG_LEN]; sent_rows.len()],
                guest_batches_done: vec![false; own_batches],
                host_batches: BTreeMap::new(),
            })
            .collect();
        Ok(PsiGuest {
            ids,
            key,
            salt,
            config,
            sent_rows,
            hosts,
            within_partition: false,
        })
    }

    /// Marks the session as one part of a partitioned run, where a part may have no common id
    /// and every host must announce the size it planned for the part (`planned[k]` for host k).
    pub(crate) fn within_partition(mut self, planned: &[u64]) -> Self {
        for (slot, &rows) in self.hosts.iter_mut().zip(planned) {
            slot.planned_rows = Some(rows);
        }
        PsiGuest {
            within_partition: true,
            ..self
        }
    }

    /// The hello every host receives.
    pub fn hello(&self) -> GuestHello {
        GuestHello {
            version: PROTOCOL_VERSION,
            salt: self.salt,
            guest_rows: self.sent_rows.len() as u64,
            batch_size: self.config.batch_size,
            result: self.config.result,
        }
    }

    /// Number of the guest's point batches.
    pub fn batch_count(&self) -> u32 {
        batch_count(self.sent_rows.len() as u64, self.config.batch_size)
    }

    /// The guest's blinded points of one batch, identical for every host; `None` past the end.
    /// Recomputed on each call (the state keeps no points), so a retry costs a recomputation.
    pub fn blinded_batch(&self, batch: u32) -> Option<PointBatch> {
        let work = self.blind_work(batch)?;
        work.run().into_points(batch).ok()
    }

    /// The work of [`blinded_batch`](Self::blinded_batch), to run elsewhere; its output
    /// becomes the batch with [`WorkOutput::into_points`].
    pub fn blind_work(&self, batch: u32) -> Option<Work> {
        if batch >= self.batch_count() {
            return None;
        }
        let range = batch_range(self.sent_rows.len() as u64, self.config.batch_size, batch);
        let rows = &self.sent_rows[range];
        let ids = rows.iter().map(|&row| self.ids.get(row as usize));
        Some(Work::blind(&self.key, self.salt, ids))
    }

    fn slot(&mut self, host: &str) -> Result<&mut HostSlot, PsiError> {
        self.hosts
            .iter_mut()
            .find(|slot| slot.name == host)
            .ok_or_else(|| PsiError::UnexpectedMessage {
                peer: host.to_owned(),
                what: "message from a party that is not a host of this run",
            })
    }

    /// A host's hello: its set size.
    pub fn receive_host_hello(&mut self, host: &str, hello: &HostHello) -> Result<(), PsiError> {
        check_version(host, hello.version)?;
        let guest_rows = self.sent_rows.len() as u64;
        let slot = self.slot(host)?;
        if let Some(rows) = slot.rows {
            if rows == hello.host_rows {
                return Ok(());
            }
            return Err(PsiError::UnexpectedMessage {
                peer: host.to_owned(),
                what: "second hello with a different set size",
            });
        }
        check_announced_rows(host, "host_rows", hello.host_rows)?;
        if let Some(planned) = slot.planned_rows.filter(|&p| p != hello.host_rows) {
            return Err(PsiError::InvalidField {
                peer: host.to_owned(),
                field: "host_rows",
                reason: format!(
                    "{} rows in this part, its sizes said {planned}",
                    hello.host_rows
                ),
            });
        }
        check_tag_bound(guest_rows, hello.host_rows)?;
        slot.rows = Some(hello.host_rows);
        Ok(())
    }

    /// A host's tags of one guest batch. A repeated batch is ignored.
    pub fn receive_tags(&mut self, host: &str, tags: &TagBatch) -> Result<(), PsiError> {
        check_version(host, tags.version)?;
        let (guest_rows, batch_size) = (self.sent_rows.len() as u64, self.config.batch_size);
        let slot = self.slot(host)?;
        let range = check_batch(
            host,
            Stream::GuestTags,
            tags.batch,
            tags.tags.len(),
            guest_rows,
            batch_size,
        )?;
        if !slot.guest_batches_done[tags.batch as usize] {
            slot.guest_tags[range].copy_from_slice(&tags.tags);
            slot.guest_batches_done[tags.batch as usize] = true;
        }
        Ok(())
    }

    /// A host's blinded points of one batch: the guest blinds them again and keeps the tags.
    /// A repeated batch is ignored.
    pub fn receive_host_points(&mut self, host: &str, points: &PointBatch) -> Result<(), PsiError> {
        match self.host_points_work(host, points.clone())? {
            Some(work) => self.receive_host_tags(host, points.batch, work.run()),
            None => Ok(()),
        }
    }

    /// Checks a host's points of one batch and returns the work of blinding them again
    /// (`None` for a repeated batch); its output goes to
    /// [`receive_host_tags`](Self::receive_host_tags).
    pub fn host_points_work(
        &self,
        host: &str,
        points: PointBatch,
    ) -> Result<Option<Work>, PsiError> {
        check_version(host, points.version)?;
        let batch_size = self.config.batch_size;
        let slot_index = self
            .hosts
            .iter()
            .position(|slot| slot.name == host)
            .ok_or_else(|| PsiError::UnexpectedMessage {
                peer: host.to_owned(),
                what: "message from a party that is not a host of this run",
            })?;
        let Some(host_rows) = self.hosts[slot_index].rows else {
            return Err(PsiError::UnexpectedMessage {
                peer: host.to_owned(),
                what: "points before the host's hello",
            });
        };
        check_batch(
            host,
            Stream::HostPoints,
            points.batch,
            points.points.len(),
            host_rows,
            batch_size,
        )?;
        if self.hosts[slot_index]
            .host_batches
            .contains_key(&points.batch)
        {
            return Ok(None);
        }
        Ok(Some(Work::reblind(&self.key, points.points)))
    }

    /// The output of a [`host_points_work`](Self::host_points_work): the tags of the host's
    /// batch `batch`, or the host's invalid point. A repeated batch is ignored. Pairing each
    /// output with the batch of its work is the caller's part (a batch of the same size is
    /// not told apart).
    pub fn receive_host_tags(
        &mut self,
        host: &str,
        batch: u32,
        output: WorkOutput,
    ) -> Result<(), PsiError> {
        let tags = output.into_tags(host, Stream::HostPoints, batch)?;
        let batch_size = self.config.batch_size;
        let slot = self.slot(host)?;
        let fits = slot.rows.is_some_and(|rows| {
            batch < batch_count(rows, batch_size)
                && batch_range(rows, batch_size, batch).len() == tags.len()
        });
        if !fits {
            return Err(PsiError::UnexpectedMessage {
                peer: host.to_owned(),
                what: "tags of a batch the host did not send",
            });
        }
        slot.host_batches.entry(batch).or_insert(tags);
        Ok(())
    }

    /// True when every batch from every host has arrived.
    pub fn is_complete(&self) -> bool {
        let batch_size = self.config.batch_size;
        self.hosts
            .iter()
            .all(|slot| slot.missing(batch_size).is_none())
    }

    /// Intersects, keeps the result in the guest's random shuffle order and, in both-sides mode,
    /// writes each host's alignment. Errors if anything is missing or the intersection is empty.
    pub fn finish(self) -> Result<GuestResult, PsiError> {
        let batch_size = self.config.batch_size;
        let missing: Vec<String> = self
            .hosts
            .iter()
            .filter_map(|slot| slot.missing(batch_size))
            .collect();
        if !missing.is_empty() {
            return Err(PsiError::Incomplete {
                missing: missing.join("; "),
            });
        }
        let names: Vec<String> = self.hosts.iter().map(|slot| slot.name.clone()).collect();
        let mut pairwise_sizes = Vec::with_capacity(self.hosts.len());
        let mut matches: Vec<Vec<u32>> = Vec::with_capacity(self.hosts.len());
        for slot in self.hosts {
            // Batches in order: the host's stream positions.
            let host_tags = slot.host_batches.into_values().flatten().collect();
            let found = match_positions(&slot.guest_tags, host_tags);
            pairwise_sizes.push(found.iter().filter(|&&p| p != NO_MATCH).count() as u64);
            matches.push(found);
        }
        let common: Vec<u32> = (0..self.sent_rows.len() as u32)
            .into_par_iter()
            .filter(|&p| matches.iter().all(|m| m[p as usize] != NO_MATCH))
            .collect();
        if common.is_empty() && !self.within_partition {
            return Err(PsiError::EmptyIntersection);
        }
        // `common` lists positions of the guest's shuffled stream in ascending order: a fresh
        // uniformly random order of the rows, which hosts receive as their alignment. (The
        // guest's own row order — its file's — would tell them how its data is sorted.)
        let aligned_rows = common.iter().map(|&p| self.sent_rows[p as usize]).collect();
        let alignments = match self.config.result {
            ResultMode::ReceiverOnly => Vec::new(),
            ResultMode::BothSides => names
                .into_iter()
                .zip(&matches)
                .map(|(name, found)| {
                    let positions = common.iter().map(|&p| found[p as usize]).collect();
                    (
                        name,
                        Alignment {
                            version: PROTOCOL_VERSION,
                            positions,
                        },
                    )
                })
                .collect(),
        };
        Ok(GuestResult {
            output: GuestOutput {
                aligned_rows,
                pairwise_sizes,
            },
            alignments,
        })
    }
}

/// For each guest tag, the host position with the same tag, or [`NO_MATCH`]. Sorts the host's
/// (tag, position) pairs once and binary-searches: 16 bytes per host element, no hash table.
fn match_positions(guest_tags: &[Tag], host_tags: Vec<Tag>) -> Vec<u32> {
    let mut index: Vec<(Tag, u32)> = host_tags
        .into_iter()
        .enumerate()
        .map(|(position, tag)| (tag, position as u32))
        .collect();
    index.par_sort_unstable();
    guest_tags
        .par_iter()
        .map(
            |tag| match index.binary_search_by(|(probe, _)| probe.cmp(tag)) {
                Ok(found) => index[found].1,
                Err(_) => NO_MATCH,
            },
        )
        .collect()
}

/// A host's side of PSI with the guest.
///
/// Created from the guest's hello. Answer every guest [`PointBatch`] with
/// [`answer`](Self::answer), send every [`blinded_batch`](Self::blinded_batch), and in
/// both-sides mode finish with [`receive_alignment`](Self::receive_alignment).
pub struct PsiHost {
    guest: String,
    ids: IdColumn,
    key: BlindingKey,
    hello: GuestHello,
    /// Row blinded at each position of the host's stream.
    sent_rows: Vec<u32>,
    /// One part of a partitioned run: an empty alignment is a result, not an error.
    within_partition: bool,
}

impl std::fmt::Debug for PsiHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PsiHost")
            .field("guest", &self.guest)
            .field("rows", &self.sent_rows.len())
            .finish_non_exhaustive()
    }
}

impl PsiHost {
    /// Checks the guest's hello, validates the ids, draws a fresh key and shuffles the rows.
    /// Returns the session and the hello to send back.
    pub fn new(
        guest: &str,
        ids: IdColumn,
        duplicates: DuplicatePolicy,
        hello: &GuestHello,
    ) -> Result<(Self, HostHello), PsiError> {
        Self::with_key(guest, ids, duplicates, hello, BlindingKey::random()?)
    }

    pub(crate) fn with_key(
        guest: &str,
        ids: IdColumn,
        duplicates: DuplicatePolicy,
        hello: &GuestHello,
        key: BlindingKey,
    ) -> Result<(Self, HostHello), PsiError> {
        check_version(guest, hello.version)?;
        if hello.batch_size == 0 || hello.batch_size > MAX_BATCH_SIZE {
            return Err(PsiError::InvalidField {
                peer: guest.to_owned(),
                field: "batch_size",
                reason: format!("{} is not in 1..={MAX_BATCH_SIZE}", hello.batch_size),
            });
        }
        check_announced_rows(guest, "guest_rows", hello.guest_rows)?;
        let sent_rows = shuffled_rows(&ids, duplicates)?;
        check_tag_bound(hello.guest_rows, sent_rows.len() as u64)?;
        let reply = HostHello {
            version: PROTOCOL_VERSION,
            host_rows: sent_rows.len() as u64,
        };
        let host = PsiHost {
            guest: guest.to_owned(),
            ids,
            key,
            hello: hello.clone(),
            sent_rows,
            within_partition: false,
        };
        Ok((host, reply))
    }

    /// Marks the session as one part of a partitioned run, where a part may have no common id.
    pub(crate) fn within_partition(self) -> Self {
        PsiHost {
            within_partition: true,
            ..self
        }
    }

    /// Who learns the result, as the guest announced.
    pub fn result_mode(&self) -> ResultMode {
        self.hello.result
    }

    /// Number of the host's point batches.
    pub fn batch_count(&self) -> u32 {
        batch_count(self.sent_rows.len() as u64, self.hello.batch_size)
    }

    /// The host's blinded points of one batch; `None` past the end.
    pub fn blinded_batch(&self, batch: u32) -> Option<PointBatch> {
        let work = self.blind_work(batch)?;
        work.run().into_points(batch).ok()
    }

    /// The work of [`blinded_batch`](Self::blinded_batch), to run elsewhere; its output
    /// becomes the batch with [`WorkOutput::into_points`].
    pub fn blind_work(&self, batch: u32) -> Option<Work> {
        if batch >= self.batch_count() {
            return None;
        }
        let range = batch_range(self.sent_rows.len() as u64, self.hello.batch_size, batch);
        let rows = &self.sent_rows[range];
        let ids = rows.iter().map(|&row| self.ids.get(row as usize));
        Some(Work::blind(&self.key, self.hello.salt, ids))
    }

    /// Blinds one batch of the guest's points again and returns their tags, in order. Pure:
    /// answering a repeated batch gives the same answer.
    pub fn answer(&self, points: &PointBatch) -> Result<TagBatch, PsiError> {
        let work = self.answer_work(points.clone())?;
        self.answered(points.batch, work.run())
    }

    /// Checks one batch of the guest's points and returns the work of
    /// [`answer`](Self::answer); its output becomes the answer with
    /// [`answered`](Self::answered).
    pub fn answer_work(&self, points: PointBatch) -> Result<Work, PsiError> {
        check_version(&self.guest, points.version)?;
        check_batch(
            &self.guest,
            Stream::GuestPoints,
            points.batch,
            points.points.len(),
            self.hello.guest_rows,
            self.hello.batch_size,
        )?;
        Ok(Work::reblind(&self.key, points.points))
    }

    /// The answer to the guest's batch `batch` from the output of its
    /// [`answer_work`](Self::answer_work).
    pub fn answered(&self, batch: u32, output: WorkOutput) -> Result<TagBatch, PsiError> {
        let tags = output.into_tags(&self.guest, Stream::GuestPoints, batch)?;
        Ok(TagBatch {
            version: PROTOCOL_VERSION,
            batch,
            tags,
        })
    }

    /// The final intersection from the guest (both-sides mode): the host's rows in the guest's
    /// order.
    pub fn receive_alignment(self, alignment: &Alignment) -> Result<HostOutput, PsiError> {
        check_version(&self.guest, alignment.version)?;
        if self.hello.result != ResultMode::BothSides {
            return Err(PsiError::UnexpectedMessage {
                peer: self.guest,
                what: "alignment in receiver-only mode",
            });
        }
        if alignment.positions.is_empty() && !self.within_partition {
            return Err(PsiError::EmptyIntersection);
        }
        let mut seen = vec![false; self.sent_rows.len()];
        let mut aligned_rows = Vec::with_capacity(alignment.positions.len());
        for &position in &alignment.positions {
            let slot = seen
                .get_mut(position as usize)
                .ok_or_else(|| PsiError::InvalidField {
                    peer: self.guest.clone(),
                    field: "positions",
                    reason: format!(
                        "position {position} is past the host's {} rows",
                        self.sent_rows.len()
                    ),
                })?;
            if std::mem::replace(slot, true) {
                return Err(PsiError::InvalidField {
                    peer: self.guest.clone(),
                    field: "positions",
                    reason: format!("position {position} is listed twice"),
                });
            }
            aligned_rows.push(self.sent_rows[position as usize]);
        }
        Ok(HostOutput { aligned_rows })
    }
}
