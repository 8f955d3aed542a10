//! A connection's protocol session ([`Session`]: received bytes to state changes and replies, a
//! whole batch of buffered frames per lock), shared by the two ways connections are served: plain
//! TCP connections by the event-loop threads ([`crate::event_loop`]), TLS connections by a pair of
//! tokio tasks each (a reader, and a writer for the outbox).

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use bytes::BytesMut;
use gearfleet_proto::{Codec, Frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::admin::{self, AdminAction, AdminAuth};
use crate::broker::Broker;
use crate::clock;
use crate::outbox::Outbox;
use crate::state::Effects;

/// The least room a read offers (a connection's buffer grows by this much when full).
pub(crate) const READ_CHUNK: usize = 16 * 1024;

/// Why a connection that sent malformed input was closed.
const PROTOCOL_ERROR: &str = "protocol error";
/// Why a connection whose outbox was closed under it was let go.
const DISCONNECTED: &str = "disconnected";

/// Serves a TLS connection (after its handshake): every write goes through the writer task.
pub async fn serve_tls(broker: Arc<Broker>, stream: tokio_rustls::server::TlsStream<TcpStream>, peer: SocketAddr) {
    let fd = i64::from(stream.get_ref().0.as_raw_fd());
    let _ = stream.get_ref().0.set_nodelay(true);
    let (reader, writer) = tokio::io::split(stream);
    let outbox = Arc::new(Outbox::new());
    let writer_task = tokio::spawn(write_loop(writer, outbox.clone()));
    run(broker, reader, outbox, writer_task, peer, fd).await;
}

async fn run<R>(
    broker: Arc<Broker>,
    mut reader: R,
    outbox: Arc<Outbox>,
    writer_task: tokio::task::JoinHandle<()>,
    peer: SocketAddr,
    fd: i64,
) where
    R: AsyncRead + Unpin,
{
    let mut session = Session::open(&broker, &outbox, peer, fd);
    let reason = read_loop(&broker, &mut session, &mut reader, &outbox).await;
    session.close(&broker, &outbox, reason);
    let _ = writer_task.await;
}

/// One connection's protocol state, whichever loop reads its bytes: it turns received bytes into
/// state changes and replies.
pub(crate) struct Session {
    pub id: u64,
    peer: SocketAddr,
    codec: Codec,
    admin_authenticated: bool,
    /// The connection asked for the admin `watch` stream.
    watching: bool,
    /// Replies wait for the journal (durability `fsync`).
    pub hold_for_disk: bool,
    /// The highest journal sequence number a reply of this connection has waited for.
    pub last_seq: u64,
    /// Releases held replies as the journal catches up; ends with the connection.
    _releaser: Option<AbortOnDrop>,
}

impl Session {
    /// Registers a new connection with the broker.
    pub fn open(broker: &Arc<Broker>, outbox: &Arc<Outbox>, peer: SocketAddr, fd: i64) -> Session {
        let id = broker.next_conn_id();
        broker.with_state(|s| s.add_conn(id, outbox.clone(), peer.to_string(), fd));
        broker.metrics.connections.inc();
        broker.metrics.connections_total.inc();
        tracing::debug!(conn = id, %peer, "connection opened");
        let hold_for_disk = broker.acks_wait_for_disk();
        let releaser = broker
            .durable_watch()
            .filter(|_| hold_for_disk)
            .map(|watch| AbortOnDrop(tokio::spawn(release_when_durable(outbox.clone(), watch)).abort_handle()));
        Session {
            id,
            peer,
            codec: Codec::server().with_max_packet(broker.config.max_packet_bytes),
            admin_authenticated: false,
            watching: false,
            hold_for_disk,
            last_seq: 0,
            _releaser: releaser,
        }
    }

    /// Handles every complete frame in `buf` (one lock section for all of them) and sends or holds
    /// the replies. Returns why the connection must close, if it must.
    pub fn handle_input(
        &mut self,
        broker: &Arc<Broker>,
        buf: &mut BytesMut,
        outbox: &Arc<Outbox>,
    ) -> Option<&'static str> {
        let id = self.id;
        let mut fx = Effects::default();
        if self.hold_for_disk {
            outbox.hold();
        }
        let mut close: Option<&'static str> = None;
        let mut shutdown = false;
        let mut start_watch = false;
        let admin_authenticated = &mut self.admin_authenticated;
        let codec = &self.codec;
        broker.with_state(|state| {
            if outbox.is_closed() {
                // Disconnected by `fleet disconnect` (or its socket failed): it has left the state,
                // and what it sent meanwhile is not acted on.
                close = Some(DISCONNECTED);
                return;
            }
            let clocks = clock::Batch::start();
            let seq_before = state.journal().map_or(0, |j| j.last_seq());
            loop {
                match codec.decode_frame(buf) {
                    Ok(Some(Frame::Packet(p))) => state.handle(id, &p, clocks.now(), &mut fx),
                    Ok(Some(Frame::Admin(line))) => {
                        let mut auth = AdminAuth {
                            token: broker.config.admin_token.as_deref(),
                            authenticated: *admin_authenticated,
                        };
                        let (reply, action) =
                            admin::run(state, id, &line, broker.config.allow_admin_shutdown, &mut auth, &mut fx);
                        *admin_authenticated = auth.authenticated;
                        outbox.push(|b| b.extend_from_slice(reply.as_bytes()));
                        match action {
                            AdminAction::None => {}
                            AdminAction::StartWatch => start_watch = true,
                            AdminAction::Shutdown => shutdown = true,
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        broker.metrics.protocol_errors.inc();
                        tracing::info!(conn = id, error = %e, "closing connection on malformed input");
                        if buf.first().is_some_and(|&b| b != 0) {
                            let text = format!("ERR {} {}\r\n", e.error_code(), e.to_string().replace(' ', "+"));
                            outbox.push(|b| b.extend_from_slice(text.as_bytes()));
                        } else {
                            let p = e.to_error_packet();
                            outbox.push(|b| p.encode(b));
                        }
                        close = Some(PROTOCOL_ERROR);
                        break;
                    }
                }
            }
            // Anything this batch wrote to the journal (a completion, a retry) is on disk before
            // this peer hears from the broker again: a reply after WORK_COMPLETE means the job
            // will not run again after a crash.
            let seq_after = state.journal().map_or(0, |j| j.last_seq());
            if seq_after > seq_before {
                fx.durable_seq = fx.durable_seq.max(seq_after);
            }
        });
        let durable_seq = fx.durable_seq;
        broker.apply(fx);
        if start_watch && !self.watching {
            self.watching = true;
            broker.watch_started();
        }
        if self.hold_for_disk {
            // Group commit: the journal writer flushes everything appended meanwhile, from every
            // connection, with one fdatasync; this batch's replies go out when it has (see
            // `release_when_durable`), while the connection goes on being read.
            outbox.release_after(durable_seq);
            self.last_seq = self.last_seq.max(durable_seq);
        }
        if shutdown {
            tracing::warn!(conn = id, "shutdown requested through the admin protocol");
            broker.shutdown.cancel();
        }
        close
    }

    /// Takes the connection out of the broker (its jobs are handed back or dropped) and closes
    /// its outbox. Held replies must have been released before.
    pub fn close(self, broker: &Arc<Broker>, outbox: &Arc<Outbox>, reason: &'static str) {
        let mut fx = Effects::default();
        broker.with_state(|s| s.remove_conn(self.id, clock::now(), &mut fx));
        broker.apply(fx);
        if self.watching {
            broker.watch_ended();
        }
        outbox.close();
        broker.metrics.connections.dec();
        tracing::debug!(conn = self.id, peer = %self.peer, reason, "connection closed");
    }
}

/// The error packet sent to a peer whose half-received packet never completed.
pub(crate) fn partial_packet_timeout(outbox: &Arc<Outbox>) {
    let p = gearfleet_proto::Packet::res(
        gearfleet_proto::PacketType::Error,
        &[b"ERR_TIMEOUT", b"timed out waiting for the rest of a packet"],
    );
    outbox.push(|b| p.encode(b));
}

async fn read_loop(
    broker: &Arc<Broker>,
    session: &mut Session,
    reader: &mut (impl AsyncRead + Unpin),
    outbox: &Arc<Outbox>,
) -> &'static str {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    // Made once: a new one per read would register with the token and leave it again each time.
    let shutdown_signal = broker.shutdown.cancelled();
    tokio::pin!(shutdown_signal);
    loop {
        if let Some(reason) = session.handle_input(broker, &mut buf, outbox) {
            if session.hold_for_disk {
                // The last replies (an error, say) still go out, after what they follow.
                broker.wait_durable(session.last_seq).await;
                outbox.release_durable(session.last_seq);
            }
            return reason;
        }
        if outbox.is_closed() {
            return "write failed";
        }
        // Back-pressure: a peer that does not read its replies is not read from either.
        outbox.wait_below(broker.config.outbox_limit_bytes).await;

        buf.reserve(READ_CHUNK);
        let read = async {
            if buf.is_empty() {
                reader.read_buf(&mut buf).await.map(Some)
            } else {
                // Part of a frame is buffered: the rest must arrive in time.
                match tokio::time::timeout(broker.config.partial_packet_timeout, reader.read_buf(&mut buf)).await {
                    Ok(r) => r.map(Some),
                    Err(_) => Ok(None),
                }
            }
        };
        let n = tokio::select! {
            r = read => r,
            _ = &mut shutdown_signal => return "shutdown",
        };
        match n {
            Ok(Some(0)) => return "peer closed",
            Ok(Some(_)) => {}
            Ok(None) => {
                partial_packet_timeout(outbox);
                return "partial packet timeout";
            }
            Err(_) => return "read error",
        }
    }
}

/// Sends held replies as the journal makes what they acknowledge durable, oldest first.
async fn release_when_durable(outbox: Arc<Outbox>, mut durable: tokio::sync::watch::Receiver<u64>) {
    while let Some(seq) = outbox.oldest_held().await {
        let Ok(now) = durable.wait_for(|d| *d >= seq).await.map(|d| *d) else { return };
        outbox.release_durable(now);
    }
}

/// Aborts a task when dropped (the connection's helper tasks end with it).
pub(crate) struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn write_loop(mut writer: impl AsyncWrite + Unpin, outbox: Arc<Outbox>) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        outbox.wait_ready().await;
        outbox.take(&mut buf);
        if buf.is_empty() {
            if outbox.is_closed() {
                break;
            }
            continue;
        }
        if writer.write_all(&buf).await.is_err() {
            outbox.close();
            return;
        }
    }
    let _ = writer.shutdown().await;
}
