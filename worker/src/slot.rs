//! One connection slot: connect, register, then GRAB_JOB_UNIQ / PRE_SLEEP / NOOP, running one
//! job at a time, until the worker drains.
//!
//! Drain rules, which every wait below respects:
//! * no GRAB_JOB is sent once the drain has started, whatever arrives (a NOOP included);
//! * a GRAB_JOB already sent is answered before the slot stops: a job assigned in that window
//!   is a job in hand and is run;
//! * a sleeping or idle slot closes its connection at once;
//! * force-stop cancels the job in hand and fails it.
//!
//! Lost connections: with a server that takes jobs back (it granted `OPTION_REQ
//! gearfleet-resume`: gearfleet's broker), the job in hand keeps running while the slot
//! reconnects to that server, draining or not, and then takes it back (a WORK_STATUS) or delivers
//! its outcome. The broker holds the jobs of retaining clients (the operator's Jobs) for it
//! meanwhile, even across its own restart, so they do not run twice. With any other server, or
//! after [`RESUME_HOLD`] without the server, or when the server answers `job_not_found`, the job
//! is cancelled as before: the server has queued it again.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use gearfleet_proto::options;
use gearfleet_proto::{Frame, Packet, PacketType, ProtoError};

use crate::config::ServerAddr;
use crate::connect::{Conn, connect};
use crate::in_hand::{InHand, JobEnd, PanicGuard, RESUME_HOLD};
use crate::job::CancelReason;
use crate::metrics::Outcome;
use crate::shared::Shared;

/// A server that does not answer GRAB_JOB within this time is considered gone.
const GRAB_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Runs one slot until the worker drains.
pub(crate) async fn run(shared: Arc<Shared>, server: ServerAddr, index: usize) {
    let mut backoff = shared.reconnect.start();
    let mut panics = PanicGuard::new();
    // A job in hand whose connection was lost, to take back on the next one.
    let mut carried: Option<Box<InHand>> = None;
    loop {
        if let Some(hand) = carried.take_if(|h| h.lost_at.is_some_and(|t| t.elapsed() > RESUME_HOLD)) {
            hand.abandon(&shared, CancelReason::ConnectionLost, "the server did not come back in time");
        }
        if carried.is_none() && shared.drain.is_cancelled() {
            return;
        }
        let connected = tokio::select! {
            biased;
            _ = shared.force.cancelled(), if carried.is_some() => {
                if let Some(hand) = carried.take() {
                    hand.abandon(&shared, CancelReason::ForceStop, "force-stopped while reconnecting");
                }
                return;
            }
            _ = shared.drain.cancelled(), if carried.is_none() => return,
            c = connect(&server, shared.connect_timeout) => c,
        };
        let (end, progressed) = match connected {
            Ok(conn) => {
                tracing::debug!(%server, slot = index, "connected");
                let mut session = Session {
                    shared: shared.clone(),
                    server: &server,
                    conn,
                    progressed: false,
                    resumable: false,
                    panics: &mut panics,
                };
                let end = session.run(carried.take()).await;
                (end, session.progressed)
            }
            Err(e) => (End::Lost(format!("connect: {e}"), carried.take()), false),
        };
        match end {
            End::Drained => return,
            End::Lost(error, hand) => {
                carried = hand;
                // Only a connection that worked resets the backoff: a server that accepts and
                // closes at once must not be hammered.
                if progressed {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                let carrying = carried.is_some();
                tracing::warn!(%server, slot = index, %error, retry_in = ?delay, carrying, "gearman connection lost; reconnecting");
                tokio::select! {
                    biased;
                    _ = shared.drain.cancelled(), if carried.is_none() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

enum End {
    /// The worker is draining and this slot holds no job: done.
    Drained,
    /// The connection failed; reconnect, carrying the job in hand if there is one to take back.
    Lost(String, Option<Box<InHand>>),
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

/// Why following a job in hand stopped.
enum Stop {
    Ended(JobEnd),
    Lost(String),
    /// The server no longer has the job taken back after a reconnect.
    Gone,
}

struct Session<'a> {
    shared: Arc<Shared>,
    server: &'a ServerAddr,
    conn: Conn,
    /// The server answered something: the connection is good.
    progressed: bool,
    /// The server granted `OPTION_REQ gearfleet-resume`: a job in hand survives losing it.
    resumable: bool,
    panics: &'a mut PanicGuard,
}

impl Session<'_> {
    async fn run(&mut self, carried: Option<Box<InHand>>) -> End {
        if let Err(e) = self.register().await {
            return End::Lost(e, carried);
        }
        let _registered = Registered::new(&self.shared);
        let shared = self.shared.clone();
        if let Some(hand) = carried
            && let Err((e, hand)) = self.resume(*hand).await
        {
            return End::Lost(e, hand);
        }
        loop {
            if shared.drain.is_cancelled() {
                return End::Drained;
            }
            if let Some(delay) = self.panics.take_delay() {
                tracing::warn!(server = %self.server, pause = ?delay, "handlers keep panicking; pausing before the next job");
                match self.idle(tokio::time::sleep(delay)).await {
                    Wait::Ready(()) => continue,
                    Wait::Drained => return End::Drained,
                    Wait::Lost(e) => return End::Lost(e, None),
                }
            }
            let permit = match &shared.job_permits {
                None => None,
                Some(sem) => match self.idle(sem.acquire()).await {
                    Wait::Ready(Ok(p)) => Some(p),
                    Wait::Ready(Err(_)) | Wait::Drained => return End::Drained,
                    Wait::Lost(e) => return End::Lost(e, None),
                },
            };
            match self.grab().await {
                Grab::Assigned(p) => {
                    if let Some(permit) = permit {
                        permit.forget();
                    }
                    if let Err((e, hand)) = self.run_job(p).await {
                        return End::Lost(e, hand);
                    }
                }
                Grab::NoJob => {
                    drop(permit);
                    if shared.drain.is_cancelled() {
                        return End::Drained;
                    }
                    if let Err(e) = self.conn.send(Packet::req(PacketType::PreSleep, &[])).await {
                        return End::Lost(e.to_string(), None);
                    }
                    match self.sleep().await {
                        Wait::Ready(()) => {}
                        Wait::Drained => return End::Drained,
                        Wait::Lost(e) => return End::Lost(e, None),
                    }
                }
                Grab::ForceStopped => return End::Drained,
                Grab::Lost(e) => return End::Lost(e, None),
            }
        }
    }

    /// OPTION_REQ gearfleet-resume (answered on its own: OPTION_RES from gearfleet's broker, an
    /// ERROR from others), SET_CLIENT_ID and one CAN_DO / CAN_DO_TIMEOUT per function, in one
    /// write.
    async fn register(&mut self) -> Result<(), String> {
        let client_id = self.shared.client_id.clone();
        self.conn.feed(Packet::req(PacketType::OptionReq, &[options::RESUME])).await.map_err(err)?;
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

    /// Runs an assigned job and sends its result. An error means the connection is gone, with
    /// the job to carry to the next connection when the server takes jobs back.
    async fn run_job(&mut self, assign: Packet) -> Result<(), (String, Option<Box<InHand>>)> {
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
            self.conn.send(Packet::req(PacketType::WorkFail, &[&handle])).await.map_err(|e| (err(e), None))?;
            shared.metrics.job_done(&name, Outcome::Unknown, 0.0);
            shared.job_finished();
            return Ok(());
        };
        let span = tracing::error_span!("job", function = %function.name, handle = %String::from_utf8_lossy(&handle));
        tracing::debug!(parent: &span, bytes = payload.len(), "job assigned");

        let hand = InHand::start(&shared, function, handle, unique, payload, span, started);
        self.follow(hand).await
    }

    /// Takes a carried job back on this connection: its latest WORK_STATUS again (0/0 if none)
    /// while the handler runs, or straight to its outcome when it has ended meanwhile.
    async fn resume(&mut self, mut hand: InHand) -> Result<(), (String, Option<Box<InHand>>)> {
        let lost_for = hand.lost_at.take().map(|t| t.elapsed()).unwrap_or_default();
        tracing::info!(parent: &hand.span, ?lost_for, ended = hand.result.is_some(), "reconnected: taking the job back");
        hand.resumed = true;
        if hand.result.is_none() {
            let (n, d) = hand.status.clone().unwrap_or((Bytes::from_static(b"0"), Bytes::from_static(b"0")));
            if let Err(e) = self.conn.send(Packet::req(PacketType::WorkStatus, &[&hand.handle, &n, &d])).await {
                return Err(self.lose(hand, err(e)));
            }
        }
        self.follow(hand).await
    }

    /// The connection is gone with `hand` in hand: carried if the server takes jobs back, else
    /// given up (the server re-queues it).
    fn lose(&self, mut hand: InHand, error: String) -> (String, Option<Box<InHand>>) {
        if self.resumable || hand.resumable {
            hand.resumable = true;
            tracing::warn!(parent: &hand.span, %error, "connection lost while holding a job; it keeps running and is taken back after reconnecting");
            hand.lost_at = Some(Instant::now());
            hand.resumed = false;
            return (error, Some(Box::new(hand)));
        }
        hand.abandon(&self.shared, CancelReason::ConnectionLost, &error);
        (error, None)
    }

    /// Follows a job in hand to its end: passes its reports on, applies its timeout and a
    /// force-stop, then sends its outcome.
    async fn follow(&mut self, mut hand: InHand) -> Result<(), (String, Option<Box<InHand>>)> {
        let shared = self.shared.clone();
        if hand.result.is_none() {
            let deadline = hand.deadline;
            let timer = async move {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(timer);
            let force = shared.force.clone();
            let stop = loop {
                tokio::select! {
                    biased;
                    r = &mut hand.task => break Stop::Ended(JobEnd::Finished(r)),
                    _ = force.cancelled() => break Stop::Ended(JobEnd::Cancelled(CancelReason::ForceStop)),
                    _ = &mut timer => break Stop::Ended(JobEnd::Cancelled(CancelReason::Timeout)),
                    Some(update) = hand.updates.recv() => {
                        if update.ptype == PacketType::WorkStatus {
                            hand.status = Some((update.arg_bytes(1), update.arg_bytes(2)));
                        }
                        if let Err(e) = self.conn.send(update).await {
                            break Stop::Lost(e.to_string());
                        }
                    }
                    f = self.conn.next() => match read(f) {
                        Ok(p) if hand.resumed && refuses_take_back(&p) => break Stop::Gone,
                        Ok(p) => self.stray(&p),
                        Err(e) => break Stop::Lost(e),
                    },
                }
            };
            hand.result = Some(match stop {
                Stop::Lost(e) => return Err(self.lose(hand, e)),
                Stop::Gone => {
                    hand.abandon(&shared, CancelReason::ConnectionLost, "the server no longer has it");
                    return Ok(());
                }
                Stop::Ended(end) => hand.end(end, self.panics, shared.cancel_grace).await,
            });
        }

        // Reports the handler queued before returning go out before the result.
        let Some((result, outcome, flush_updates)) = hand.result.clone() else { return Ok(()) };
        let mut sent = Ok(());
        while flush_updates && let Ok(update) = hand.updates.try_recv() {
            if let Err(e) = self.conn.feed(update).await {
                sent = Err(err(e));
                break;
            }
        }
        if sent.is_ok() {
            sent = self.conn.send(result).await.map_err(err);
        }
        if let Err(e) = sent {
            return Err(self.lose(hand, e));
        }
        hand.updates.close();
        let elapsed = hand.started.elapsed();
        shared.metrics.job_done(&hand.function.name, outcome, elapsed.as_secs_f64());
        shared.job_finished();
        tracing::debug!(parent: &hand.span, outcome = outcome.as_str(), ?elapsed, "job done");
        Ok(())
    }

    /// A packet nobody waits for: the answer to OPTION_REQ gearfleet-resume, ERROR is logged,
    /// NOOP and NO_JOB are harmless leftovers.
    fn stray(&mut self, p: &Packet) {
        match p.ptype {
            PacketType::OptionRes if p.arg(0) == options::RESUME => self.resumable = true,
            PacketType::Error => {
                let code = String::from_utf8_lossy(p.arg(0));
                let text = String::from_utf8_lossy(p.arg(1));
                if code.eq_ignore_ascii_case("unknown_option") {
                    // A server other than gearfleet's broker: jobs in hand do not survive a lost
                    // connection there.
                    tracing::debug!(server = %self.server, "the server does not take jobs back after a reconnect");
                } else if code == "job_not_found" {
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

/// The server's answer when it cannot give a job back: it no longer has it (`job_not_found`), or
/// it does not take jobs back at all (an ERROR to `OPTION_REQ gearfleet-resume`).
fn refuses_take_back(p: &Packet) -> bool {
    p.ptype == PacketType::Error
        && (p.arg(0).eq_ignore_ascii_case(b"job_not_found") || p.arg(0).eq_ignore_ascii_case(b"unknown_option"))
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
