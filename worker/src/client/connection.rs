//! The task that owns one server connection. Replies that answer a request (JOB_CREATED,
//! STATUS_RES, ECHO_RES, OPTION_RES, ERROR) come back in request order, so the task keeps a FIFO
//! of requests awaiting a reply; WORK_* packets are routed by job handle to every submission
//! waiting on that handle (two submissions coalesced onto one job share a handle).

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use gearfleet_proto::options::EXCEPTIONS;
use gearfleet_proto::{Frame, Packet, PacketType};
use tokio::sync::{mpsc, oneshot};

use crate::client::reply::{ClientError, JobEvent, JobStatus};
use crate::config::ServerAddr;
use crate::connect::Conn;

/// Where a foreground job's packets go.
pub(super) struct JobSink {
    pub(super) events: mpsc::UnboundedSender<JobEvent>,
    pub(super) result: oneshot::Sender<Result<Bytes, ClientError>>,
}

/// What the client asks a connection task to send.
pub(super) enum Request {
    Submit {
        packet: Packet,
        reply: oneshot::Sender<Result<Bytes, ClientError>>,
        /// `None` for background jobs.
        sink: Option<JobSink>,
    },
    Status {
        handle: Bytes,
        reply: oneshot::Sender<Result<JobStatus, ClientError>>,
    },
    Echo {
        data: Bytes,
        reply: oneshot::Sender<Result<Bytes, ClientError>>,
    },
}

impl Request {
    pub(super) fn fail(self, e: ClientError) {
        match self {
            Request::Submit { reply, .. } => drop(reply.send(Err(e))),
            Request::Status { reply, .. } => drop(reply.send(Err(e))),
            Request::Echo { reply, .. } => drop(reply.send(Err(e))),
        }
    }
}

/// A request sent and waiting for its reply.
enum Pending {
    Option,
    Submit { reply: oneshot::Sender<Result<Bytes, ClientError>>, sink: Option<JobSink> },
    Status { reply: oneshot::Sender<Result<JobStatus, ClientError>> },
    Echo { reply: oneshot::Sender<Result<Bytes, ClientError>> },
}

impl Pending {
    fn fail(self, e: ClientError) {
        match self {
            Pending::Option => {}
            Pending::Submit { reply, .. } => drop(reply.send(Err(e))),
            Pending::Status { reply } => drop(reply.send(Err(e))),
            Pending::Echo { reply } => drop(reply.send(Err(e))),
        }
    }
}

struct ConnState {
    server: ServerAddr,
    pending: VecDeque<Pending>,
    jobs: HashMap<Bytes, Vec<JobSink>>,
}

pub(super) async fn serve_connection(
    server: ServerAddr,
    mut conn: Conn,
    mut requests: mpsc::UnboundedReceiver<Request>,
) {
    let mut st = ConnState { server, pending: VecDeque::new(), jobs: HashMap::new() };
    // Ask for WORK_EXCEPTION packets; without this option servers turn exceptions into WORK_FAIL.
    let mut alive = conn.send(Packet::req(PacketType::OptionReq, &[EXCEPTIONS])).await.is_ok();
    if alive {
        st.pending.push_back(Pending::Option);
    }
    let mut accepting = true;
    while alive && (accepting || !st.pending.is_empty() || !st.jobs.is_empty()) {
        tokio::select! {
            req = requests.recv(), if accepting => match req {
                Some(req) => {
                    let (packet, pending) = match req {
                        Request::Submit { packet, reply, sink } => (packet, Pending::Submit { reply, sink }),
                        Request::Status { handle, reply } => {
                            (Packet::req(PacketType::GetStatus, &[&handle]), Pending::Status { reply })
                        }
                        Request::Echo { data, reply } => (Packet::req(PacketType::EchoReq, &[&data]), Pending::Echo { reply }),
                    };
                    st.pending.push_back(pending);
                    if let Err(e) = conn.send(packet).await {
                        tracing::debug!(server = %st.server, error = %e, "send failed");
                        alive = false;
                    }
                }
                // Every client handle is gone; finish the jobs still awaited, then close.
                None => accepting = false,
            },
            frame = conn.next() => match frame {
                Some(Ok(Frame::Packet(p))) => st.on_packet(p),
                Some(Ok(Frame::Admin(_))) => {}
                Some(Err(e)) => {
                    tracing::warn!(server = %st.server, error = %e, "bad data from gearman server; closing");
                    alive = false;
                }
                None => alive = false,
            },
        }
    }
    // Requests queued but not sent, sent but unanswered, and jobs still running all fail.
    requests.close();
    while let Ok(req) = requests.try_recv() {
        req.fail(ClientError::ConnectionLost);
    }
    for p in st.pending.drain(..) {
        p.fail(ClientError::ConnectionLost);
    }
    for (_, sinks) in st.jobs.drain() {
        for s in sinks {
            let _ = s.result.send(Err(ClientError::ConnectionLost));
        }
    }
}

impl ConnState {
    fn on_packet(&mut self, p: Packet) {
        use PacketType as T;
        match p.ptype {
            T::JobCreated => match self.pending.pop_front() {
                Some(Pending::Submit { reply, sink }) => {
                    let handle = p.arg_bytes(0);
                    if let Some(sink) = sink {
                        self.jobs.entry(handle.clone()).or_default().push(sink);
                    }
                    let _ = reply.send(Ok(handle));
                }
                other => self.mismatch(&p, other),
            },
            T::StatusRes => match self.pending.pop_front() {
                Some(Pending::Status { reply }) => {
                    let _ = reply.send(Ok(JobStatus {
                        handle: String::from_utf8_lossy(p.arg(0)).into_owned(),
                        known: p.arg(1) == b"1",
                        running: p.arg(2) == b"1",
                        numerator: parse_u64(p.arg(3)),
                        denominator: parse_u64(p.arg(4)),
                    }));
                }
                other => self.mismatch(&p, other),
            },
            T::EchoRes => match self.pending.pop_front() {
                Some(Pending::Echo { reply }) => drop(reply.send(Ok(p.arg_bytes(0)))),
                other => self.mismatch(&p, other),
            },
            T::OptionRes => match self.pending.pop_front() {
                Some(Pending::Option) => {}
                other => self.mismatch(&p, other),
            },
            T::Error => {
                let code = String::from_utf8_lossy(p.arg(0)).into_owned();
                let message = String::from_utf8_lossy(p.arg(1)).into_owned();
                match self.pending.pop_front() {
                    Some(Pending::Option) => {
                        tracing::info!(server = %self.server, %code, %message, "server refused the exceptions option");
                    }
                    Some(pending) => pending.fail(ClientError::Server { code, message }),
                    None => tracing::warn!(server = %self.server, %code, %message, "error from gearman server"),
                }
            }
            T::WorkStatus => {
                let event = JobEvent::Status { numerator: parse_u64(p.arg(1)), denominator: parse_u64(p.arg(2)) };
                self.event(p.arg(0), event);
            }
            T::WorkData => self.event(p.arg(0), JobEvent::Data(p.arg_bytes(1))),
            T::WorkWarning => self.event(p.arg(0), JobEvent::Warning(p.arg_bytes(1))),
            T::WorkComplete => self.finish(p.arg(0), || Ok(p.arg_bytes(1))),
            T::WorkFail => self.finish(p.arg(0), || Err(ClientError::Failed)),
            T::WorkException => {
                self.finish(p.arg(0), || Err(ClientError::Exception(String::from_utf8_lossy(p.arg(1)).into_owned())))
            }
            T::Noop => {}
            other => tracing::debug!(server = %self.server, packet = %other, "unexpected packet for a client; ignored"),
        }
    }

    fn event(&mut self, handle: &[u8], event: JobEvent) {
        if let Some(sinks) = self.jobs.get(handle) {
            for s in sinks {
                let _ = s.events.send(event.clone());
            }
        }
    }

    fn finish(&mut self, handle: &[u8], result: impl Fn() -> Result<Bytes, ClientError>) {
        // Servers that send WORK_EXCEPTION may follow it with WORK_FAIL; the first one wins.
        if let Some(sinks) = self.jobs.remove(handle) {
            for s in sinks {
                let _ = s.result.send(result());
            }
        }
    }

    fn mismatch(&mut self, p: &Packet, pending: Option<Pending>) {
        tracing::warn!(server = %self.server, packet = %p.ptype, "reply does not match the oldest request");
        if let Some(pending) = pending {
            pending.fail(ClientError::Protocol(format!("unexpected {} reply", p.ptype)));
        }
    }
}

fn parse_u64(b: &[u8]) -> u64 {
    std::str::from_utf8(b).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}
