//! Helpers for the state's unit tests: connections with outboxes to read, packets applied at a
//! chosen moment, and what each peer was sent.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use gearfleet_proto::{Codec, Frame, Packet, PacketType};

use super::State;
use super::model::{ConnId, Effects, Limits, Now};
use crate::metrics::Metrics;
use crate::outbox::Outbox;

/// The moment the tests start at: a whole second of wall-clock time (2023-11-14T22:13:20Z), and
/// one monotonic instant shared by every test.
pub(super) fn start() -> Now {
    static INSTANT: OnceLock<Instant> = OnceLock::new();
    Now { unix_ms: 1_700_000_000_000, instant: *INSTANT.get_or_init(Instant::now) }
}

/// `start()` plus `ms` milliseconds.
pub(super) fn at(ms: u64) -> Now {
    start().after(Duration::from_millis(ms))
}

pub(super) fn state(limits: Limits) -> State {
    State::new("test", limits, Arc::new(Metrics::default()))
}

/// Adds connection `id` and returns its outbox.
pub(super) fn connect(s: &mut State, id: ConnId) -> Arc<Outbox> {
    let outbox = Arc::new(Outbox::new());
    s.add_conn(id, outbox.clone(), format!("10.0.0.{id}:4000"), -1);
    outbox
}

/// A state with a worker (connection 1, whose outbox is returned) and a client (connection 2).
pub(super) fn worker_and_client() -> (State, Arc<Outbox>) {
    let mut s = state(Limits::default());
    let worker = connect(&mut s, 1);
    connect(&mut s, 2);
    (s, worker)
}

/// Applies a request from `id` at `start()`.
pub(super) fn req(s: &mut State, id: ConnId, ptype: PacketType, args: &[&[u8]]) {
    req_at(s, id, ptype, args, start());
}

/// Applies a request from `id` at `now`; returns what it asked of the runtime.
pub(super) fn req_at(s: &mut State, id: ConnId, ptype: PacketType, args: &[&[u8]], now: Now) -> Effects {
    let mut fx = Effects::default();
    s.handle(id, &Packet::req(ptype, args), now, &mut fx);
    fx
}

/// Worker 1 grabs a job; returns its handle.
pub(super) fn grab_handle(s: &mut State) -> Vec<u8> {
    req(s, 1, PacketType::GrabJob, &[]);
    let mut handle = Vec::new();
    s.handle_of(s.conns[&1].holding[0], &mut handle);
    handle
}

/// The packets `outbox` holds, in order (emptying it).
pub(super) fn received(outbox: &Outbox) -> Vec<Packet> {
    let mut buf = bytes::BytesMut::new();
    outbox.take(&mut buf);
    let codec = Codec::client();
    let mut out = Vec::new();
    while let Ok(Some(Frame::Packet(p))) = codec.decode_frame(&mut buf) {
        out.push(p);
    }
    out
}

/// The packet types `outbox` holds, in order (emptying it).
pub(super) fn sent(outbox: &Outbox) -> Vec<PacketType> {
    received(outbox).into_iter().map(|p| p.ptype).collect()
}
