//! A job in hand: its handler running in a task of its own (which outlives a lost connection
//! when the server takes jobs back), the packet that ends it, and the guards that count it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gearfleet_proto::options::TIMEOUT_MESSAGE;
use gearfleet_proto::{Packet, PacketType};
use tokio::sync::mpsc;
use tokio::task::JoinError;
use tracing::Instrument;

use crate::backoff::{Backoff, BackoffPolicy};
use crate::client::{Client, ClientError};
use crate::function::Function;
use crate::job::{CancelReason, Job, JobError};
use crate::metrics::Outcome;
use crate::shared::Shared;

/// Reports (WORK_STATUS/DATA/WARNING) a handler may queue before it waits for the connection.
const UPDATE_QUEUE: usize = 64;
/// Panics closer together than this count as a storm and slow the slot down.
const PANIC_WINDOW: Duration = Duration::from_secs(10);
/// How long a job in hand is carried while its server cannot be reached (its outcome delivered
/// once the server is back); after that it is abandoned.
pub(crate) const RESUME_HOLD: Duration = Duration::from_secs(300);

/// How a job in hand ended.
pub(crate) enum JobEnd {
    Finished(Result<Executed, JoinError>),
    Cancelled(CancelReason),
}

/// A job in hand. Its handler runs in a task of its own, which outlives a lost connection when
/// the server takes jobs back.
pub(crate) struct InHand {
    pub(crate) handle: Bytes,
    pub(crate) function: Function,
    pub(crate) span: tracing::Span,
    pub(crate) started: Instant,
    pub(crate) task: tokio::task::JoinHandle<Executed>,
    pub(crate) updates: mpsc::Receiver<Packet>,
    pub(crate) control: Job,
    /// When the function's timeout fails the job.
    pub(crate) deadline: Option<tokio::time::Instant>,
    _busy: Busy,
    /// The latest WORK_STATUS sent (numerator, denominator): repeated to take the job back.
    pub(crate) status: Option<(Bytes, Bytes)>,
    /// The packet that ends the job, once the handler has ended (the task is not polled again).
    pub(crate) result: Option<(Packet, Outcome, bool)>,
    /// Since when the connection is lost, while the job is carried to the next one.
    pub(crate) lost_at: Option<Instant>,
    /// Taken back on the current connection: `job_not_found` means the server no longer has it.
    pub(crate) resumed: bool,
    /// Its server takes jobs back: carried across lost connections, even one lost again before
    /// the server answered the option on the next connection.
    pub(crate) resumable: bool,
}

impl InHand {
    /// Starts the handler of an assigned job in a task of its own.
    pub(crate) fn start(
        shared: &Arc<Shared>,
        function: Function,
        handle: Bytes,
        unique: Bytes,
        payload: Bytes,
        span: tracing::Span,
        started: Instant,
    ) -> InHand {
        let (updates_tx, updates) = mpsc::channel(UPDATE_QUEUE);
        let job = Job::new(function.name.clone(), handle.clone(), unique, payload, updates_tx);
        let control = job.clone();
        let busy = Busy::new(shared);
        let task = tokio::spawn(execute(function.clone(), job, shared.chain.clone()).instrument(span.clone()));
        let deadline = function.timeout.map(|t| tokio::time::Instant::now() + t);
        InHand {
            handle,
            function,
            span,
            started,
            task,
            updates,
            control,
            deadline,
            _busy: busy,
            status: None,
            result: None,
            lost_at: None,
            resumed: false,
            resumable: false,
        }
    }

    /// Gives the job up: cancels its handler, counts it as lost and gives its `max_jobs` permit
    /// back (the server runs it again).
    pub(crate) fn abandon(mut self, shared: &Shared, reason: CancelReason, why: &str) {
        self.control.cancel(reason);
        if self.result.is_none() {
            self.task.abort();
        }
        tracing::warn!(parent: &self.span, why, "giving up a job whose connection was lost; the server re-queues it");
        shared.metrics.job_done(&self.function.name, Outcome::ConnectionLost, self.started.elapsed().as_secs_f64());
        if let Some(permits) = &shared.job_permits {
            permits.add_permits(1);
        }
        self.updates.close();
    }

    /// The packet that ends the job, from how its handler ended (cancelling it first if it
    /// must, waiting `cancel_grace` for it): (packet, outcome, whether the reports it queued go
    /// out first).
    pub(crate) async fn end(
        &mut self,
        end: JobEnd,
        panics: &mut PanicGuard,
        cancel_grace: Duration,
    ) -> (Packet, Outcome, bool) {
        let hand = self;
        let handle = hand.handle.clone();
        let span = hand.span.clone();
        let flush_updates = matches!(end, JobEnd::Finished(Ok(_)));
        let (packet, outcome) = match end {
            JobEnd::Finished(Ok(Executed::Done(Ok(data)))) => {
                panics.success();
                (Packet::req(PacketType::WorkComplete, &[&handle, &data]), Outcome::Complete)
            }
            JobEnd::Finished(Ok(Executed::Done(Err(JobError::Fail)))) => {
                (Packet::req(PacketType::WorkFail, &[&handle]), Outcome::Fail)
            }
            JobEnd::Finished(Ok(Executed::Done(Err(JobError::Exception(msg))))) => {
                (Packet::req(PacketType::WorkException, &[&handle, msg.as_bytes()]), Outcome::Exception)
            }
            JobEnd::Finished(Ok(Executed::ChainFailed { next, error })) => {
                tracing::warn!(parent: &span, %next, %error, "submitting the chained job failed; failing this job");
                (Packet::req(PacketType::WorkFail, &[&handle]), Outcome::ChainFailed)
            }
            JobEnd::Finished(Err(e)) => {
                let message = panic_message(e);
                tracing::error!(parent: &span, panic = %message, "handler panicked; failing the job");
                panics.record();
                (Packet::req(PacketType::WorkFail, &[&handle]), Outcome::Panic)
            }
            JobEnd::Cancelled(reason) => {
                hand.control.cancel(reason);
                let grace = cancel_grace;
                tracing::warn!(parent: &span, reason = reason.as_str(), ?grace, "cancelling the job");
                if tokio::time::timeout(grace, &mut hand.task).await.is_err() {
                    hand.task.abort();
                }
                match reason {
                    // gearfleet-broker sends the same text when its own timer fires first.
                    CancelReason::Timeout => {
                        (Packet::req(PacketType::WorkException, &[&handle, TIMEOUT_MESSAGE]), Outcome::Timeout)
                    }
                    _ => (Packet::req(PacketType::WorkFail, &[&handle]), Outcome::ForceStop),
                }
            }
        };
        (packet, outcome, flush_updates)
    }
}

/// What the spawned handler task returns.
pub(crate) enum Executed {
    Done(Result<Bytes, JobError>),
    ChainFailed { next: String, error: ClientError },
}

/// Runs the handler, then submits the chained job if there is one.
async fn execute(function: Function, job: Job, chain: Client) -> Executed {
    match function.handler.call(job).await {
        Err(e) => Executed::Done(Err(e)),
        Ok(out) => {
            let next = out.next.filter(|n| !n.is_empty()).or(function.next);
            if let Some(next) = next {
                let mut submit = chain.submit(next.clone(), out.data.clone()).background();
                if let Some(u) = out.next_unique {
                    submit = submit.unique(u);
                }
                match submit.await {
                    Ok(handle) => tracing::debug!(%next, %handle, "chained job submitted"),
                    Err(error) => return Executed::ChainFailed { next, error },
                }
            }
            Executed::Done(Ok(out.data))
        }
    }
}

fn panic_message(e: JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let payload = e.into_panic();
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".into()
    }
}

/// Slows a slot down when its handlers panic again and again (restart-on-fail with backoff):
/// the first panic costs nothing, each further one within [`PANIC_WINDOW`] of the previous
/// adds a growing pause before the next grab. A completed job resets it.
pub(crate) struct PanicGuard {
    streak: u32,
    last: Option<Instant>,
    backoff: Backoff,
    pending: Option<Duration>,
}

impl PanicGuard {
    pub(crate) fn new() -> PanicGuard {
        PanicGuard {
            streak: 0,
            last: None,
            backoff: BackoffPolicy::new(Duration::from_millis(200), Duration::from_secs(30)).start(),
            pending: None,
        }
    }

    pub(crate) fn record(&mut self) {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < PANIC_WINDOW) {
            self.streak += 1;
        } else {
            self.streak = 1;
            self.backoff.reset();
        }
        self.last = Some(now);
        if self.streak >= 2 {
            self.pending = Some(self.backoff.next_delay());
        }
    }

    pub(crate) fn success(&mut self) {
        self.streak = 0;
        self.pending = None;
        self.backoff.reset();
    }

    pub(crate) fn take_delay(&mut self) -> Option<Duration> {
        self.pending.take()
    }
}

/// Counts a running job for as long as it runs.
pub(crate) struct Busy(Arc<Shared>);

impl Busy {
    pub(crate) fn new(shared: &Arc<Shared>) -> Busy {
        shared.metrics.busy.inc();
        Busy(shared.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.metrics.busy.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_panic_is_free_then_storms_back_off() {
        let mut g = PanicGuard::new();
        g.record();
        assert_eq!(g.take_delay(), None);
        g.record();
        let d1 = g.take_delay().expect("second rapid panic pauses");
        g.record();
        let d2 = g.take_delay().unwrap();
        assert!(d1 >= Duration::from_millis(200) && d2 <= Duration::from_secs(30));
        g.success();
        g.record();
        assert_eq!(g.take_delay(), None, "a completed job resets the storm");
    }
}
