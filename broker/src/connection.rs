//! One task pair per connection: the reader decodes frames and applies them to the state under
//! the lock (a whole batch of buffered frames per lock); replies go out through the connections'
//! outboxes (written directly after the lock is released, or by the writer task when a socket is
//! full, and always by it for TLS).

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use bytes::BytesMut;
use gearfleet_proto::{Codec, Frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::admin::{self, AdminAction, AdminAuth};
use crate::broker::Broker;
use crate::outbox::Outbox;
use crate::queue::Effects;

const READ_CHUNK: usize = 16 * 1024;

/// Serves a plain TCP connection. Replies are written straight to the socket by the task that
/// produced them; the writer task only steps in when the socket's buffer is full.
pub async fn serve(broker: Arc<Broker>, stream: TcpStream, peer: SocketAddr) {
    let fd = i64::from(stream.as_raw_fd());
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.into_split();
    let outbox = Arc::new(Outbox::with_sink(Arc::new(writer)));
    let writer_task = tokio::spawn({
        let outbox = outbox.clone();
        async move { outbox.write_blocked().await }
    });
    run(broker, reader, outbox, writer_task, peer, fd).await;
}

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
    let id = broker.next_conn_id();
    broker.with_state(|s| s.add_conn(id, outbox.clone(), peer.to_string(), fd));
    broker.metrics.connections.inc();
    broker.metrics.connections_total.inc();
    tracing::debug!(conn = id, %peer, "connection opened");

    let mut watching = false;
    let reason = read_loop(&broker, id, &mut reader, &outbox, &mut watching).await;

    let mut fx = Effects::default();
    broker.with_state(|s| s.remove_conn(id, &mut fx));
    broker.apply(fx);
    if watching {
        broker.watch_ended();
    }
    outbox.close();
    let _ = writer_task.await;
    broker.metrics.connections.dec();
    tracing::debug!(conn = id, %peer, reason, "connection closed");
}

async fn read_loop(
    broker: &Arc<Broker>,
    id: u64,
    reader: &mut (impl AsyncRead + Unpin),
    outbox: &Arc<Outbox>,
    watching: &mut bool,
) -> &'static str {
    let mut authenticated = false;
    let admin_authenticated = &mut authenticated;
    let codec = Codec::server().with_max_packet(broker.config.max_packet_bytes);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let hold_for_disk = broker.acks_wait_for_disk();
    // The highest journal sequence number a reply of this connection has waited for.
    let mut last_seq = 0u64;
    let _releaser = broker
        .durable_watch()
        .filter(|_| hold_for_disk)
        .map(|watch| AbortOnDrop(tokio::spawn(release_when_durable(outbox.clone(), watch)).abort_handle()));
    // Made once: a new one per read would register with the token and leave it again each time.
    let shutdown_signal = broker.shutdown.cancelled();
    tokio::pin!(shutdown_signal);
    loop {
        let mut fx = Effects::default();
        if hold_for_disk {
            outbox.hold();
        }
        let mut close: Option<&'static str> = None;
        let mut shutdown = false;
        broker.with_state(|state| {
            let seq_before = state.journal().map_or(0, |j| j.last_seq());
            loop {
                match codec.decode_frame(&mut buf) {
                    Ok(Some(Frame::Packet(p))) => state.handle(id, &p, &mut fx),
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
                            AdminAction::StartWatch => {
                                if !*watching {
                                    *watching = true;
                                    broker.watch_started();
                                }
                            }
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
                        close = Some("protocol error");
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
        if hold_for_disk {
            // Group commit: the journal writer flushes everything appended meanwhile, from every
            // connection, with one fdatasync; this batch's replies go out when it has (see
            // `release_when_durable`), while this loop goes on reading.
            outbox.release_after(durable_seq);
            last_seq = last_seq.max(durable_seq);
        }
        if shutdown {
            tracing::warn!(conn = id, "shutdown requested through the admin protocol");
            broker.shutdown.cancel();
        }
        if let Some(reason) = close {
            if hold_for_disk {
                // The last replies (an error, say) still go out, after what they follow.
                broker.wait_durable(last_seq).await;
                outbox.release_durable(last_seq);
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
                let p = gearfleet_proto::Packet::res(
                    gearfleet_proto::PacketType::Error,
                    &[b"ERR_TIMEOUT", b"timed out waiting for the rest of a packet"],
                );
                outbox.push(|b| p.encode(b));
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
struct AbortOnDrop(tokio::task::AbortHandle);

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
