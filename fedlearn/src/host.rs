//! A host: holds features only; holds shares of its weights with the guest (and, host 1, of
//! the guest's), learns its own weights at the end, and reveals the final model's partial
//! scores once, summed with the other hosts' under pairwise masks (see [`crate::job`]).

use crate::checkpoint::Checkpoint;
use crate::data::Table;
use crate::error::FedError;
use crate::job::Trainer;
use crate::message::{Message, Proposal, Transport};
use crate::prep::Prep;
use crate::protocol::{finish_with_error, receive, unexpected, Event, HostOutcome};
use crate::session::{drive, Session};
/// Everything a host brings to a job. `table` is already aligned (PSI order).
pub struct HostJob {
    /// The host's party name.
    pub party: String,
    /// The guest's party name.
    pub guest: String,
    /// Aligned rows (no labels).
    pub table: Table,
    /// How the host prepares its columns.
    pub prep: Prep,
    /// The host's checkpoints of an interrupted job (at most the last two): the proposal
    /// names the epoch to resume after, which must be among them.
    pub checkpoints: Vec<Checkpoint>,
}

/// Waits for the guest's proposal; the caller decides (by its policy) whether to run it.
pub fn receive_proposal(transport: &mut dyn Transport, guest: &str) -> Result<Proposal, FedError> {
    match receive(transport, guest)? {
        Message::Propose(proposal) => Ok(*proposal),
        other => Err(unexpected(guest, "a job proposal", &other)),
    }
}

/// Runs the host's side of a job the guest proposed, to the end, over a blocking transport
/// (see [`HostSession`] for the state machine underneath).
pub fn run_host(
    job: HostJob,
    proposal: Proposal,
    transport: &mut dyn Transport,
    events: &mut dyn FnMut(&Event),
) -> Result<HostOutcome, FedError> {
    let mut peers: Vec<String> = vec![job.guest.clone()];
    peers.extend(proposal.hosts.iter().filter(|h| **h != job.party).cloned());
    let result = HostSession::new(job, proposal).and_then(|mut session| {
        drive(&mut session, transport, events)?;
        session
            .outcome
            .take()
            .ok_or_else(|| FedError::protocol(&peers[0], "the session ended without an outcome"))
    });
    result.map_err(|error| finish_with_error(transport, &peers, error))
}

/// A host's side of a job as a sans-IO state machine (see [`Session`]).
pub struct HostSession {
    trainer: Trainer,
    outcome: Option<HostOutcome>,
}

impl HostSession {
    /// Checks the proposal against the host's table and queues the host's keys.
    pub fn new(job: HostJob, proposal: Proposal) -> Result<HostSession, FedError> {
        proposal.config.validate()?;
        // The final reveal is made once: after it, the job resumes only to make it again,
        // with the same weights (an earlier epoch would reveal other scores).
        if let Some(revealed) = job.checkpoints.iter().find(|c| c.last) {
            if proposal.resume != Some(revealed.epoch as u64) {
                return Err(FedError::Resume {
                    party: job.party.clone(),
                    reason: format!(
                        "it revealed the final scores after epoch {} already",
                        revealed.epoch
                    ),
                });
            }
        }
        let resume = match proposal.resume {
            Some(epoch) => Some(
                job.checkpoints
                    .into_iter()
                    .find(|c| c.epoch as u64 == epoch)
                    .ok_or_else(|| FedError::Resume {
                        party: job.party.clone(),
                        reason: format!("it holds no checkpoint of epoch {epoch}"),
                    })?,
            ),
            None => None,
        };
        let trainer = Trainer::host(
            &job.party, &job.guest, &job.table, &job.prep, &proposal, resume,
        )?;
        Ok(HostSession {
            trainer,
            outcome: None,
        })
    }

    /// The host's result, once the session is done.
    pub fn outcome(&self) -> Option<&HostOutcome> {
        self.outcome.as_ref()
    }
}

impl Session for HostSession {
    fn handle(&mut self, from: &str, message: Message) -> Result<(), FedError> {
        self.trainer.handle(from, message)?;
        if self.outcome.is_none() {
            self.outcome = self.trainer.host_outcome();
        }
        Ok(())
    }

    fn poll_transmit(&mut self) -> Result<Option<(String, Message)>, FedError> {
        Ok(self.trainer.mailbox.next_transmit())
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.trainer.mailbox.next_event()
    }

    fn awaiting(&self) -> Option<&str> {
        self.trainer.awaiting()
    }
}
