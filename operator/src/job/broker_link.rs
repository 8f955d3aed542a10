//! One connection of the Job runner to one broker: kept up with backoff, it submits the attempts
//! placed on its broker (again, after a reconnect: the broker attaches them to their run or
//! answers with the retained outcome) and turns the broker's packets into observations.

use std::sync::Arc;
use std::time::{Duration, Instant};

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

use super::attempts::{Shared, Tracked, handle_host};
use super::state::AttemptOutcome;

/// How long a connection attempt to one broker may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The wire protocol's priority for a Job's API priority.
pub(super) fn wire_priority(priority: Priority) -> gearfleet_proto::Priority {
    match priority {
        Priority::High => gearfleet_proto::Priority::High,
        Priority::Normal => gearfleet_proto::Priority::Normal,
        Priority::Low => gearfleet_proto::Priority::Low,
    }
}

/// The foreground submission of an attempt (the runner follows its WORK_* packets).
pub(super) fn submit_packet(unique: &str, t: &Tracked) -> Packet {
    let ptype = wire_priority(t.priority).submit_type(false);
    Packet::req(ptype, &[t.function.as_bytes(), unique.as_bytes(), &t.payload])
}

/// Keeps the connection to broker `i` up, and serves it.
pub(super) async fn link_task(
    i: usize,
    addr: String,
    shared: Arc<Shared>,
    mut submits: mpsc::UnboundedReceiver<String>,
    trigger: mpsc::UnboundedSender<ObjectRef<Job>>,
) {
    let mut backoff = Duration::from_millis(200);
    let mut failures = 0u32;
    loop {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr)).await {
            Ok(Ok(stream)) => {
                backoff = Duration::from_millis(200);
                failures = 0;
                let _ = stream.set_nodelay(true);
                tracing::info!(broker = %addr, "job runner connected");
                let reason = serve(i, stream, &shared, &mut submits, &trigger).await;
                let (placed, held) = {
                    let mut g = shared.lock();
                    let placed = g.lost(i, Instant::now());
                    let held = g.by_unique.values().filter(|t| t.broker == Some(i) && t.obs.outcome.is_none()).count();
                    (placed, held)
                };
                tracing::warn!(broker = %addr, reason = %reason, moved = placed.len(), waiting_for_it = held, "job runner connection lost");
                shared.dispatch(placed);
            }
            Ok(Err(e)) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(broker = %addr, error = %e, "job runner cannot reach the broker");
                }
            }
            Err(_) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(broker = %addr, "job runner: connecting to the broker timed out");
                }
            }
        }
        if trigger.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Serves broker `i`'s connection until it fails; returns why.
async fn serve(
    i: usize,
    stream: TcpStream,
    shared: &Shared,
    submits: &mut mpsc::UnboundedReceiver<String>,
    trigger: &mpsc::UnboundedSender<ObjectRef<Job>>,
) -> String {
    let (read, write) = stream.into_split();
    let mut frames = FramedRead::new(read, Codec::client());
    let mut out = FramedWrite::new(write, BytesCodec::new());
    let mut hello = Packet::req(PacketType::OptionReq, &[EXCEPTIONS]).to_bytes().to_vec();
    hello.extend_from_slice(&Packet::req(PacketType::OptionReq, &[RETAIN_OUTCOMES]).to_bytes());
    // Everything of this broker's that is unfinished goes (again) to it, and attempts waiting for
    // a broker may now come here.
    let (resubmit, placed) = {
        let mut g = shared.lock();
        let link = &mut g.links[i];
        link.connected = true;
        link.lost_at = None;
        let mut packets = Vec::new();
        if !g.closed {
            let mine: Vec<String> = g
                .by_unique
                .iter()
                .filter(|(_, t)| t.broker == Some(i) && t.obs.outcome.is_none())
                .map(|(u, _)| u.clone())
                .collect();
            for u in mine {
                packets.push(submit_packet(&u, &g.by_unique[&u]).to_bytes());
                let link = &mut g.links[i];
                link.submitted.insert(u.clone());
                link.awaiting_created.push_back(u);
            }
        }
        (packets, g.place())
    };
    shared.dispatch(placed);
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
                    let mut g = shared.lock();
                    let g = &mut *g;
                    let Some(t) = g.by_unique.get(&unique) else { continue };
                    let link = &mut g.links[i];
                    // Placed elsewhere meanwhile, finished, or already sent on this connection.
                    if g.closed || t.broker != Some(i) || t.obs.outcome.is_some() || link.submitted.contains(&unique) {
                        continue;
                    }
                    let packet = submit_packet(&unique, t).to_bytes();
                    link.submitted.insert(unique.clone());
                    link.awaiting_created.push_back(unique);
                    packet
                };
                if let Err(e) = out.send(packet).await {
                    return e.to_string();
                }
            }
            frame = frames.next() => {
                match frame {
                    Some(Ok(Frame::Packet(p))) => handle_packet(i, shared, trigger, &p),
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

fn handle_packet(i: usize, shared: &Shared, trigger: &mpsc::UnboundedSender<ObjectRef<Job>>, p: &Packet) {
    let mut g = shared.lock();
    let g = &mut *g;
    match p.ptype {
        PacketType::JobCreated => {
            let Some(unique) = g.links[i].awaiting_created.pop_front() else { return };
            let handle = text(p.arg(0));
            if let Some(host) = handle_host(&handle) {
                g.links[i].handle_host = Some(host.to_string());
            }
            if let Some(t) = g.by_unique.get_mut(&unique) {
                t.obs.handle = Some(handle.clone());
                g.by_handle.insert((i, handle), unique);
                let _ = trigger.send(t.job.clone());
            }
        }
        PacketType::Error => {
            let code = text(p.arg(0));
            if code == "UNKNOWN_OPTION" {
                tracing::error!(
                    broker = %g.links[i].addr,
                    "the broker does not retain outcomes (gearfleet-broker with --retained-outcomes > 0 is \
                                 needed); Jobs may run twice across operator restarts"
                );
                return;
            }
            // A refused submission (e.g. QUEUE_ERROR): stop following it; the Job is tried again.
            let Some(unique) = g.links[i].awaiting_created.pop_front() else { return };
            tracing::warn!(unique = %unique, code = %code, message = %text(p.arg(1)), "broker refused a job submission");
            g.links[i].submitted.remove(&unique);
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
            let key = (i, handle);
            let Some(unique) = g.by_handle.get(&key).cloned() else { return };
            let Some(t) = g.by_unique.get_mut(&unique) else { return };
            // A worker has it: it stays with this broker from now on.
            t.pinned = true;
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
                g.by_handle.remove(&key);
            }
            let _ = trigger.send(t.job.clone());
        }
        _ => {}
    }
}
