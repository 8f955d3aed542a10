//! One connection slot: connect, register, then GRAB_JOB_UNIQ / PRE_SLEEP / NOOP, running one
//! job at a time, until the worker drains.
//!
//! Drain rules, which every wait below respects:
//! * no GRAB_JOB is sent once the drain has started, whatever arrives (a NOOP included);
//! * a GRAB_JOB already sent is answered before the slot stops: a job assigned in that window
//!   is a job in hand and is run;
//! * a sleeping or idle slot closes its connection at once;
//! * force-stop cancels the job in hand and fails it.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use gearfleet_proto::options::TIMEOUT_MESSAGE;
use gearfleet_proto::{Frame, Packet, PacketType, ProtoError};
use tokio::sync::mpsc;
use tokio::task::JoinError;
use tracing::Instrument;

use crate::backoff::{Backoff, BackoffPolicy};
use crate::client::{Client, ClientError};
use crate::config::ServerAddr;
use crate::connect::{Conn, connect};
use crate::function::Function;
use crate::job::{CancelReason, Job, JobError};
use crate::metrics::Outcome;
use crate::shared::Shared;

/// Reports (WORK_STATUS/DATA/WARNING) a handler may queue before it waits for the connection.
const UPDATE_QUEUE: usize = 64;
/// Panics closer together than this count as a storm and slow the slot down.
const PANIC_WINDOW: Duration = Duration::from_secs(10);
/// A server that does not answer GRAB_JOB within this time is considered gone.
const GRAB_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs one slot until the worker drains.
pub(crate) async fn run(shared: Arc<Shared>, server: ServerAddr, index: usize) {
    let mut backoff = shared.reconnect.start();
    let mut panics = PanicGuard::new();
    loop {
        if shared.drain.is_cancelled() {
            return;
        }
        let connected = tokio::select! {
            biased;
            _ = shared.drain.cancelled() => return,
            c = connect(&server, shared.connect_timeout) => c,
        };
        let (end, progressed) = match connected {
            Ok(conn) => {
                tracing::debug!(%server, slot = index, "connected");
                let mut session =
                    Session { shared: shared.clone(), server: &server, conn, progressed: false, panics: &mut panics };
                let end = session.run().await;
                (end, session.progressed)
            }
            Err(e) => (End::Lost(format!("connect: {e}")), false),
        };
        match end {
            End::Drained => return,
            End::Lost(error) => {
                // Only a connection that worked resets the backoff: a server that accepts and
                // closes at once must not be hammered.
                if progressed {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                tracing::warn!(%server, slot = index, %error, retry_in = ?delay, "gearman connection lost; reconnecting");
                tokio::select! {
                    biased;
                    _ = shared.drain.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

enum End {
    /// The worker is draining and this slot holds no job: done.
    Drained,
    /// The connection failed; reconnect.
    Lost(String),
}

/// The result of waiting for something while idle.
enum Wait<T> {
    Ready(T),
    Drained,
    Lost(String),
}

enum Grab {
    Assigned(Packet),
    NoJob,
    ForceStopped,
    Lost(String),
}

enum JobEnd {
    Finished(Result<Executed, JoinError>),
    Cancelled(CancelReason),
    Lost(String),
}

/// What the spawned handler task returns.
enum Executed {
    Done(Result<Bytes, JobError>),
    ChainFailed { next: String, error: ClientError },
}

struct Session<'a> {
    shared: Arc<Shared>,
    server: &'a ServerAddr,
    conn: Conn,
    /// The server answered something: the connection is good.
    progressed: bool,
    panics: &'a mut PanicGuard,
}

impl Session<'_> {
    async fn run(&mut self) -> End {
        if let Err(e) = self.register().await {
            return End::Lost(e);
        }
        let _registered = Registered::new(&self.shared);
        let shared = self.shared.clone();
        loop {
            if shared.drain.is_cancelled() {
                return End::Drained;
            }
            if let Some(delay) = self.panics.take_delay() {
                tracing::warn!(server = %self.server, pause = ?delay, "handlers keep panicking; pausing before the next job");
                match self.idle(tokio::time::sleep(delay)).await {
                    Wait::Ready(()) => continue,
                    Wait::Drained => return End::Drained,
                    Wait::Lost(e) => return End::Lost(e),
                }
            }
            let permit = match &shared.job_permits {
                None => None,
                Some(sem) => match self.idle(sem.acquire()).await {
                    Wait::Ready(Ok(p)) => Some(p),
                    Wait::Ready(Err(_)) | Wait::Drained => return End::Drained,
                    Wait::Lost(e) => return End::Lost(e),
                },
            };
            match self.grab().await {
                Grab::Assigned(p) => {
                    if let Some(permit) = permit {
                        permit.forget();
                    }
                    if let Err(e) = self.run_job(p).await {
                        return End::Lost(e);
                    }
                }
                Grab::NoJob => {
                    drop(permit);
                    if shared.drain.is_cancelled() {
                        return End::Drained;
                    }
                    if let Err(e) = self.conn.send(Packet::req(PacketType::PreSleep, &[])).await {
                        return End::Lost(e.to_string());
                    }
                    match self.sleep().await {
                        Wait::Ready(()) => {}
                        Wait::Drained => return End::Drained,
                        Wait::Lost(e) => return End::Lost(e),
                    }
                }
                Grab::ForceStopped => return End::Drained,
                Grab::Lost(e) => return End::Lost(e),
            }
        }
    }

    /// SET_CLIENT_ID and one CAN_DO / CAN_DO_TIMEOUT per function, in one write.
    async fn register(&mut self) -> Result<(), String> {
        let client_id = self.shared.client_id.clone();
        self.conn.feed(Packet::req(PacketType::SetClientId, &[client_id.as_bytes()])).await.map_err(err)?;
        for f in &self.shared.functions {
            let p = match f.timeout_ms() {
                Some(ms) => Packet::req(PacketType::CanDoTimeout, &[f.name.as_bytes(), ms.to_string().as_bytes()]),
                None => Packet::req(PacketType::CanDo, &[f.name.as_bytes()]),
            };
            self.conn.feed(p).await.map_err(err)?;
        }
        SinkExt::<Packet>::flush(&mut self.conn).await.map_err(err)
    }

    /// Waits for `fut` while holding no job: a drain ends the wait, stray packets are logged.
    async fn idle<F: Future>(&mut self, fut: F) -> Wait<F::Output> {
        tokio::pin!(fut);
        let drain = self.shared.drain.clone();
        loop {
            tokio::select! {
                biased;
                _ = drain.cancelled() => return Wait::Drained,
                v = &mut fut => return Wait::Ready(v),
                f = self.conn.next() => match read(f) {
                    Ok(p) => self.stray(&p),
                    Err(e) => return Wait::Lost(e),
                },
            }
        }
    }

    /// GRAB_JOB_UNIQ, then its answer. A drain does not interrupt the wait (the answer may be a
    /// job, which must then be run), a force-stop does (closing the connection makes the server
    /// re-queue anything it assigned meanwhile).
    async fn grab(&mut self) -> Grab {
        if let Err(e) = self.conn.send(Packet::req(PacketType::GrabJobUniq, &[])).await {
            return Grab::Lost(e.to_string());
        }
        let force = self.shared.force.clone();
        let deadline = tokio::time::sleep(GRAB_ANSWER_TIMEOUT);
        tokio::pin!(deadline);
        loop {
            let frame = tokio::select! {
                biased;
                _ = force.cancelled() => return Grab::ForceStopped,
                f = self.conn.next() => f,
                // A half-open connection (server host gone without a FIN) shows up here.
                _ = &mut deadline => return Grab::Lost(format!("no answer to GRAB_JOB within {GRAB_ANSWER_TIMEOUT:?}")),
            };
            match read(frame) {
                Err(e) => return Grab::Lost(e),
                Ok(p) => match p.ptype {
                    PacketType::NoJob => {
                        self.progressed = true;
                        return Grab::NoJob;
                    }
                    PacketType::JobAssignUniq | PacketType::JobAssign => {
                        self.progressed = true;
                        return Grab::Assigned(p);
                    }
                    _ => self.stray(&p),
                },
            }
        }
    }

    /// Asleep after PRE_SLEEP: a NOOP (or the safety poll) means grab again; a drain ends it.
    async fn sleep(&mut self) -> Wait<()> {
        let drain = self.shared.drain.clone();
        let poll = self.shared.sleep_poll;
        let poll = async move {
            match poll {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(poll);
        loop {
            tokio::select! {
                biased;
                _ = drain.cancelled() => return Wait::Drained,
                f = self.conn.next() => match read(f) {
                    Ok(p) if p.ptype == PacketType::Noop => return Wait::Ready(()),
                    Ok(p) => self.stray(&p),
                    Err(e) => return Wait::Lost(e),
                },
                _ = &mut poll => return Wait::Ready(()),
            }
        }
    }

    /// Runs an assigned job and sends its result. Errors mean the connection is gone.
    async fn run_job(&mut self, assign: Packet) -> Result<(), String> {
        let started = Instant::now();
        let (handle, name, unique, payload) = match assign.ptype {
            PacketType::JobAssignUniq => {
                (assign.arg_bytes(0), assign.arg_bytes(1), assign.arg_bytes(2), assign.arg_bytes(3))
            }
            _ => (assign.arg_bytes(0), assign.arg_bytes(1), Bytes::new(), assign.arg_bytes(2)),
        };
        let shared = self.shared.clone();
        let Some(function) = shared.function(&name).cloned() else {
            let name = String::from_utf8_lossy(&name);
            tracing::warn!(function = %name, "server assigned a function this worker does not serve; failing it");
            self.conn.send(Packet::req(PacketType::WorkFail, &[&handle])).await.map_err(err)?;
            shared.metrics.job_done(&name, Outcome::Unknown, 0.0);
            shared.job_finished();
            return Ok(());
        };
        let fname = function.name.clone();
        let span = tracing::error_span!("job", function = %fname, handle = %String::from_utf8_lossy(&handle));
        tracing::debug!(parent: &span, bytes = payload.len(), "job assigned");

        let (updates_tx, mut updates) = mpsc::channel(UPDATE_QUEUE);
        let job = Job::new(fname.clone(), handle.clone(), unique, payload, updates_tx);
        let control = job.clone();
        let _busy = Busy::new(&shared);
        let mut task = tokio::spawn(execute(function.clone(), job, shared.chain.clone()).instrument(span.clone()));
        let timer = async move {
            match function.timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(timer);
        let force = shared.force.clone();

        let end = loop {
            tokio::select! {
                biased;
                r = &mut task => break JobEnd::Finished(r),
                _ = force.cancelled() => break JobEnd::Cancelled(CancelReason::ForceStop),
                _ = &mut timer => break JobEnd::Cancelled(CancelReason::Timeout),
                Some(update) = updates.recv() => {
                    if let Err(e) = self.conn.send(update).await {
                        break JobEnd::Lost(e.to_string());
                    }
                }
                f = self.conn.next() => match read(f) {
                    Ok(p) => self.stray(&p),
                    Err(e) => break JobEnd::Lost(e),
                },
            }
        };

        let flush_updates = matches!(end, JobEnd::Finished(Ok(_)));
        let (result, outcome) = match end {
            JobEnd::Finished(Ok(Executed::Done(Ok(data)))) => {
                self.panics.success();
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
                self.panics.record();
                (Packet::req(PacketType::WorkFail, &[&handle]), Outcome::Panic)
            }
            JobEnd::Cancelled(reason) => {
                control.cancel(reason);
                tracing::warn!(parent: &span, reason = reason.as_str(), grace = ?shared.cancel_grace, "cancelling the job");
                if tokio::time::timeout(shared.cancel_grace, &mut task).await.is_err() {
                    task.abort();
                }
                match reason {
                    // gearfleet-broker sends the same text when its own timer fires first.
                    CancelReason::Timeout => {
                        (Packet::req(PacketType::WorkException, &[&handle, TIMEOUT_MESSAGE]), Outcome::Timeout)
                    }
                    _ => (Packet::req(PacketType::WorkFail, &[&handle]), Outcome::ForceStop),
                }
            }
            JobEnd::Lost(e) => {
                control.cancel(CancelReason::ConnectionLost);
                task.abort();
                tracing::warn!(parent: &span, error = %e, "connection lost while running a job; the server re-queues it");
                self.job_lost(&fname, started);
                return Err(e);
            }
        };

        // Reports the handler queued before returning go out before the result.
        let mut sent = Ok(());
        while flush_updates && let Ok(update) = updates.try_recv() {
            if let Err(e) = self.conn.feed(update).await {
                sent = Err(err(e));
                break;
            }
        }
        drop(updates);
        if sent.is_ok() {
            sent = self.conn.send(result).await.map_err(err);
        }
        if let Err(e) = sent {
            // The result did not reach the server: it re-queues the job, so it does not count.
            tracing::warn!(parent: &span, error = %e, "connection lost before the result was sent");
            control.cancel(CancelReason::ConnectionLost);
            self.job_lost(&fname, started);
            return Err(e);
        }
        shared.metrics.job_done(&fname, outcome, started.elapsed().as_secs_f64());
        shared.job_finished();
        tracing::debug!(parent: &span, outcome = outcome.as_str(), elapsed = ?started.elapsed(), "job done");
        Ok(())
    }

    /// A job the server will re-queue: counted as lost, and its `max_jobs` permit given back.
    fn job_lost(&self, function: &str, started: Instant) {
        self.shared.metrics.job_done(function, Outcome::ConnectionLost, started.elapsed().as_secs_f64());
        if let Some(permits) = &self.shared.job_permits {
            permits.add_permits(1);
        }
    }

    /// A packet nobody waits for: ERROR is logged, NOOP and NO_JOB are harmless leftovers.
    fn stray(&self, p: &Packet) {
        match p.ptype {
            PacketType::Error => {
                let code = String::from_utf8_lossy(p.arg(0));
                let text = String::from_utf8_lossy(p.arg(1));
                if code == "job_not_found" {
                    // Expected after a function timeout fired on the server first.
                    tracing::info!(server = %self.server, %code, %text, "server no longer knows the job");
                } else {
                    tracing::warn!(server = %self.server, %code, %text, "error from gearman server");
                }
            }
            PacketType::Noop | PacketType::NoJob => {}
            other => tracing::warn!(server = %self.server, packet = %other, "unexpected packet; ignored"),
        }
    }
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

fn read(frame: Option<Result<Frame, ProtoError>>) -> Result<Packet, String> {
    match frame {
        Some(Ok(Frame::Packet(p))) => Ok(p),
        Some(Ok(Frame::Admin(_))) => Err("text reply on a binary connection".into()),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("closed by the server".into()),
    }
}

fn err(e: ProtoError) -> String {
    e.to_string()
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
struct PanicGuard {
    streak: u32,
    last: Option<Instant>,
    backoff: Backoff,
    pending: Option<Duration>,
}

impl PanicGuard {
    fn new() -> PanicGuard {
        PanicGuard {
            streak: 0,
            last: None,
            backoff: BackoffPolicy::new(Duration::from_millis(200), Duration::from_secs(30)).start(),
            pending: None,
        }
    }

    fn record(&mut self) {
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

    fn success(&mut self) {
        self.streak = 0;
        self.pending = None;
        self.backoff.reset();
    }

    fn take_delay(&mut self) -> Option<Duration> {
        self.pending.take()
    }
}

/// Counts a registered connection for as long as it lives.
struct Registered(Arc<Shared>);

impl Registered {
    fn new(shared: &Arc<Shared>) -> Registered {
        shared.metrics.connections.inc();
        shared.mark_registered();
        Registered(shared.clone())
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.0.metrics.connections.dec();
    }
}

/// Counts a running job for as long as it runs.
struct Busy(Arc<Shared>);

impl Busy {
    fn new(shared: &Arc<Shared>) -> Busy {
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
