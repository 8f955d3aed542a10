//! One Gearman client connection to the broker, shared by every Job: submits attempts as
//! foreground jobs, follows their WORK_* packets by handle, and accumulates an [`Observation`] per
//! attempt's unique key for the reconciler. It asks the broker to retain outcomes
//! (`OPTION_REQ` [`RETAIN_OUTCOMES`]), so an attempt resubmitted after a lost connection or an
//! operator restart gets the outcome of its run instead of a second run.
//!
//! Every change to an observation sends the Job's reference on the trigger channel, which the Job
//! controller consumes with `reconcile_on`: no per-Job polling.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use gearfleet_crd::Job;
use gearfleet_crd::job::{DATA_MAX_BYTES, MAX_WARNINGS, Priority};
use gearfleet_proto::options::{EXCEPTIONS, RETAIN_OUTCOMES};
use gearfleet_proto::{Codec, Frame, Packet, PacketType};
use kube::runtime::reflector::ObjectRef;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::{BytesCodec, FramedRead, FramedWrite};

use super::state::{AttemptOutcome, Observation};

#[derive(Debug)]
struct Tracked {
    job: ObjectRef<Job>,
    function: String,
    payload: Bytes,
    priority: Priority,
    obs: Observation,
}

#[derive(Debug, Default)]
struct Inner {
    by_unique: HashMap<String, Tracked>,
    by_handle: HashMap<String, String>,
    /// Uniques whose JOB_CREATED has not arrived yet on the current connection, in order.
    awaiting_created: VecDeque<String>,
    connected: bool,
}

/// Handle to the runner task.
#[derive(Clone)]
pub struct Runner {
    inner: Arc<Mutex<Inner>>,
    submit: mpsc::UnboundedSender<String>,
}

impl Runner {
    /// Starts the connection task for the broker at `addr`; changed Jobs are sent on `trigger`.
    pub fn start(addr: String, trigger: mpsc::UnboundedSender<ObjectRef<Job>>) -> Runner {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let (submit, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(addr, inner.clone(), rx, trigger));
        Runner { inner, submit }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Submits an attempt and follows it. Idempotent: an attempt already followed is left alone.
    pub fn submit(&self, job: ObjectRef<Job>, unique: &str, function: &str, payload: Bytes, priority: Priority) {
        let mut inner = self.lock();
        if inner.by_unique.contains_key(unique) {
            return;
        }
        let tracked = Tracked { job, function: function.to_string(), payload, priority, obs: Observation::default() };
        inner.by_unique.insert(unique.to_string(), tracked);
        drop(inner);
        // The connection task submits it now, or after it (re)connects.
        let _ = self.submit.send(unique.to_string());
    }

    /// What was observed for an attempt, if it is followed.
    pub fn observation(&self, unique: &str) -> Option<Observation> {
        self.lock().by_unique.get(unique).map(|t| t.obs.clone())
    }

    /// Stops following an attempt.
    pub fn forget(&self, unique: &str) {
        let mut inner = self.lock();
        if let Some(t) = inner.by_unique.remove(unique)
            && let Some(h) = &t.obs.handle
        {
            inner.by_handle.remove(h);
        }
    }

    /// The handle of a followed attempt (for cancelling it through the admin protocol).
    pub fn handle(&self, unique: &str) -> Option<String> {
        self.lock().by_unique.get(unique).and_then(|t| t.obs.handle.clone())
    }

    /// Attempts followed right now.
    pub fn followed(&self) -> usize {
        self.lock().by_unique.len()
    }

    /// Whether the broker connection is up.
    pub fn connected(&self) -> bool {
        self.lock().connected
    }
}

/// The wire protocol's priority for a Job's API priority.
fn wire_priority(priority: Priority) -> gearfleet_proto::Priority {
    match priority {
        Priority::High => gearfleet_proto::Priority::High,
        Priority::Normal => gearfleet_proto::Priority::Normal,
        Priority::Low => gearfleet_proto::Priority::Low,
    }
}

/// The foreground submission of an attempt (the runner follows its WORK_* packets).
fn submit_packet(unique: &str, t: &Tracked) -> Packet {
    let ptype = wire_priority(t.priority).submit_type(false);
    Packet::req(ptype, &[t.function.as_bytes(), unique.as_bytes(), &t.payload])
}

async fn run(
    addr: String,
    inner: Arc<Mutex<Inner>>,
    mut submits: mpsc::UnboundedReceiver<String>,
    trigger: mpsc::UnboundedSender<ObjectRef<Job>>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match TcpStream::connect(&addr).await {
            Ok(stream) => {
                backoff = Duration::from_millis(200);
                let _ = stream.set_nodelay(true);
                tracing::info!(broker = %addr, "job runner connected");
                let reason = serve(stream, &inner, &mut submits, &trigger).await;
                tracing::warn!(broker = %addr, reason = %reason, "job runner connection lost; resubmitting on reconnect");
            }
            Err(e) => tracing::warn!(broker = %addr, error = %e, "job runner cannot reach the broker"),
        }
        {
            let mut g = inner.lock().unwrap_or_else(|e| e.into_inner());
            g.connected = false;
            g.awaiting_created.clear();
            g.by_handle.clear();
            // Handles belong to the lost connection's broker; the attempts are resubmitted.
            for t in g.by_unique.values_mut() {
                t.obs.handle = None;
            }
        }
        if submits.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Serves one connection until it fails; returns why.
async fn serve(
    stream: TcpStream,
    inner: &Arc<Mutex<Inner>>,
    submits: &mut mpsc::UnboundedReceiver<String>,
    trigger: &mpsc::UnboundedSender<ObjectRef<Job>>,
) -> String {
    let (read, write) = stream.into_split();
    let mut frames = FramedRead::new(read, Codec::client());
    let mut out = FramedWrite::new(write, BytesCodec::new());
    let mut hello = Packet::req(PacketType::OptionReq, &[EXCEPTIONS]).to_bytes().to_vec();
    hello.extend_from_slice(&Packet::req(PacketType::OptionReq, &[RETAIN_OUTCOMES]).to_bytes());
    // Everything followed but unfinished goes (again) to this connection.
    let resubmit: Vec<Bytes> = {
        let mut g = inner.lock().unwrap_or_else(|e| e.into_inner());
        g.connected = true;
        let uniques: Vec<String> =
            g.by_unique.iter().filter(|(_, t)| t.obs.outcome.is_none()).map(|(u, _)| u.clone()).collect();
        let packets = uniques.iter().map(|u| submit_packet(u, &g.by_unique[u]).to_bytes()).collect();
        g.awaiting_created.extend(uniques);
        packets
    };
    // Submissions queued while disconnected are covered by the resubmission above.
    while submits.try_recv().is_ok() {}
    if let Err(e) = out.send(Bytes::from(hello)).await {
        return e.to_string();
    }
    for p in resubmit {
        if let Err(e) = out.send(p).await {
            return e.to_string();
        }
    }
    loop {
        tokio::select! {
            unique = submits.recv() => {
                let Some(unique) = unique else { return "runner stopped".into() };
                let packet = {
                    let mut g = inner.lock().unwrap_or_else(|e| e.into_inner());
                    let Some(t) = g.by_unique.get(&unique) else { continue };
                    let packet = submit_packet(&unique, t).to_bytes();
                    g.awaiting_created.push_back(unique);
                    packet
                };
                if let Err(e) = out.send(packet).await {
                    return e.to_string();
                }
            }
            frame = frames.next() => {
                match frame {
                    Some(Ok(Frame::Packet(p))) => handle_packet(inner, trigger, &p),
                    Some(Ok(Frame::Admin(_))) => {}
                    Some(Err(e)) => return e.to_string(),
                    None => return "closed by the broker".into(),
                }
            }
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn handle_packet(inner: &Arc<Mutex<Inner>>, trigger: &mpsc::UnboundedSender<ObjectRef<Job>>, p: &Packet) {
    let mut g = inner.lock().unwrap_or_else(|e| e.into_inner());
    let g = &mut *g;
    match p.ptype {
        PacketType::JobCreated => {
            let Some(unique) = g.awaiting_created.pop_front() else { return };
            let handle = text(p.arg(0));
            if let Some(t) = g.by_unique.get_mut(&unique) {
                t.obs.handle = Some(handle.clone());
                g.by_handle.insert(handle, unique);
                let _ = trigger.send(t.job.clone());
            }
        }
        PacketType::Error => {
            let code = text(p.arg(0));
            if code == "UNKNOWN_OPTION" {
                tracing::error!(
                    "the broker does not retain outcomes (gearfleet-broker with --retained-outcomes > 0 is \
                                 needed); Jobs may run twice across operator restarts"
                );
                return;
            }
            // A refused submission (e.g. QUEUE_ERROR): stop following it; the Job is tried again.
            let Some(unique) = g.awaiting_created.pop_front() else { return };
            tracing::warn!(unique = %unique, code = %code, message = %text(p.arg(1)), "broker refused a job submission");
            if let Some(t) = g.by_unique.remove(&unique) {
                let trigger = trigger.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    let _ = trigger.send(t.job);
                });
            }
        }
        PacketType::OptionRes => {}
        PacketType::WorkStatus
        | PacketType::WorkData
        | PacketType::WorkWarning
        | PacketType::WorkComplete
        | PacketType::WorkFail
        | PacketType::WorkException => {
            let handle = text(p.arg(0));
            let Some(unique) = g.by_handle.get(&handle).cloned() else { return };
            let Some(t) = g.by_unique.get_mut(&unique) else { return };
            let obs = &mut t.obs;
            match p.ptype {
                PacketType::WorkStatus => {
                    obs.started = true;
                    let n = text(p.arg(1)).trim().parse().unwrap_or(0);
                    let d = text(p.arg(2)).trim().parse().unwrap_or(0);
                    if (n, d) != (0, 0) || obs.progress.is_some() {
                        obs.progress = Some((n, d));
                    }
                }
                PacketType::WorkData => {
                    obs.started = true;
                    let room = (DATA_MAX_BYTES + 1).saturating_sub(obs.data.len());
                    let chunk = p.arg(1);
                    obs.data.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    obs.data_truncated |= chunk.len() > room;
                }
                PacketType::WorkWarning => {
                    obs.started = true;
                    obs.warnings.push(text(p.arg(1)));
                    if obs.warnings.len() > MAX_WARNINGS {
                        obs.warnings.remove(0);
                    }
                }
                PacketType::WorkComplete => obs.outcome = Some(AttemptOutcome::Complete(p.arg(1).to_vec())),
                PacketType::WorkFail => obs.outcome = Some(AttemptOutcome::Fail),
                _ => obs.outcome = Some(AttemptOutcome::Exception(text(p.arg(1)))),
            }
            if obs.outcome.is_some() {
                obs.started = true;
                g.by_handle.remove(&handle);
            }
            let _ = trigger.send(t.job.clone());
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every API priority submits in the foreground with the packet of the same priority.
    #[test]
    fn api_priorities_map_onto_the_wire_priorities() {
        let cases = [
            (Priority::High, PacketType::SubmitJobHigh),
            (Priority::Normal, PacketType::SubmitJob),
            (Priority::Low, PacketType::SubmitJobLow),
        ];
        for (priority, packet) in cases {
            assert_eq!(wire_priority(priority).submit_type(false), packet, "{priority}");
        }
    }
}
