//! The guest: holds the labels and the intercept, proposes the job, judges every epoch from
//! two aggregate losses and the weights' change, and learns the final model's joint scores on
//! the validation rows once (see [`crate::job`] for the rounds).

use crate::checkpoint::Checkpoint;
use crate::config::TrainConfig;
use crate::data::Table;
use crate::error::FedError;
use crate::job::Trainer;
use crate::masks::Split;
use crate::message::{Message, Proposal, Transport};
use crate::party::job_nonce;
use crate::prep::Prep;
use crate::protocol::{finish_with_error, Event, GuestOutcome};
use crate::session::{drive, Session};
/// Everything the guest brings to a job. `table` is already aligned (PSI order).
pub struct GuestJob {
    /// The guest's party name.
    pub party: String,
    /// Id of the model to train.
    pub model_id: String,
    /// Aligned rows with labels.
    pub table: Table,
    /// Host party names, in job order.
    pub hosts: Vec<String>,
    /// Training settings.
    pub config: TrainConfig,
    /// How the guest prepares its columns.
    pub prep: Prep,
    /// The guest's checkpoint to resume an interrupted job from (every host resumes from
    /// its checkpoint of the same epoch); `None` starts from the beginning.
    pub resume: Option<Checkpoint>,
}

/// Runs the guest's side of a training job to the end over a blocking transport (see
/// [`GuestSession`] for the state machine underneath).
pub fn run_guest(
    job: GuestJob,
    transport: &mut dyn Transport,
    events: &mut dyn FnMut(&Event),
) -> Result<GuestOutcome, FedError> {
    let hosts = job.hosts.clone();
    let result = GuestSession::new(job).and_then(|mut session| {
        drive(&mut session, transport, events)?;
        session.outcome.take().ok_or_else(|| {
            FedError::protocol(&hosts.join(", "), "the session ended without an outcome")
        })
    });
    result.map_err(|error| finish_with_error(transport, &hosts, error))
}

/// The guest's side of a job as a sans-IO state machine (see [`Session`]).
pub struct GuestSession {
    trainer: Trainer,
    outcome: Option<GuestOutcome>,
}

impl GuestSession {
    /// Checks the job and queues the proposal and the guest's keys.
    pub fn new(job: GuestJob) -> Result<GuestSession, FedError> {
        job.config.validate()?;
        if job.hosts.is_empty() {
            return Err(FedError::config("hosts", "a job needs at least one host"));
        }
        let labels = job
            .table
            .labels()
            .ok_or_else(|| FedError::config("labels", "the guest's table has no label column"))?;
        let split = Split::new(
            job.table.rows(),
            job.config.seed,
            job.config.validation_fraction,
        );
        // Both classes on the training rows, and on the validation rows if there are any: the
        // final reveal's AUC and KS need them, and finding out after training would lose the job.
        let validation = (!split.validation.is_empty()).then_some(&split.validation);
        for rows in std::iter::once(&split.train).chain(validation) {
            if let Some(class) = [0.0, 1.0]
                .into_iter()
                .find(|c| !rows.iter().any(|&r| labels[r] == *c))
            {
                return Err(FedError::SingleClass {
                    class: u8::from(class == 0.0),
                });
            }
        }
        let proposal = Proposal {
            job: job_nonce()?,
            model_id: job.model_id.clone(),
            config: job.config.clone(),
            rows: job.table.rows() as u64,
            hosts: job.hosts.clone(),
            features: 0,
            resume: job.resume.as_ref().map(|c| c.epoch as u64),
        };
        let trainer = Trainer::guest(&job.party, &job.table, &job.prep, proposal, job.resume)?;
        Ok(GuestSession {
            trainer,
            outcome: None,
        })
    }

    /// The guest's result, once the session is done.
    pub fn outcome(&self) -> Option<&GuestOutcome> {
        self.outcome.as_ref()
    }
}

impl Session for GuestSession {
    fn handle(&mut self, from: &str, message: Message) -> Result<(), FedError> {
        self.trainer.handle(from, message)?;
        if self.outcome.is_none() {
            self.outcome = self.trainer.guest_outcome();
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
