//! The foreground floor: the least a server can do and still route foreground jobs, to show what
//! the exchange of a foreground job costs on this machine with no bookkeeping of a server's own.
//!
//! One thread, one `epoll` (through mio, edge-triggered), non-blocking sockets read once per
//! readiness event and written at once; replies to every connection a batch of requests touched
//! leave in one write each. It keeps only what routing needs: a FIFO of jobs (handle, submitting
//! connection, payload), the connection each running job answers to, and the workers asleep after
//! PRE_SLEEP (woken with NOOP). No functions to match (every job goes to any worker), no
//! priorities, unique keys, status, timeouts, metrics or limits: it trusts its peers. It sleeps in
//! `epoll_wait` when it has nothing to do, as an event loop does (polling first only when asked
//! to, as an experiment).

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use gearfleet_proto::{Codec, Frame, Magic, Packet, PacketType};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);
/// Read size per system call; a short read means the socket is drained (a new arrival is a new
/// edge), so a connection costs one `recvfrom` per readiness event.
const CHUNK: usize = 64 * 1024;

/// Serves on `listener` until the process is killed. With a nonzero `idle_poll`, it checks for
/// events without blocking (yielding the CPU in between) for up to that long before it sleeps in
/// `epoll_wait`, as the broker's idle poll does (an experiment: the standard floor sleeps at once).
pub fn serve(listener: std::net::TcpListener, idle_poll: Duration) -> io::Result<()> {
    let mut poll = Poll::new()?;
    listener.set_nonblocking(true)?;
    let mut listener = TcpListener::from_std(listener);
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut router = Router::default();
    let mut events = Events::with_capacity(256);
    let mut chunk = vec![0u8; CHUNK];
    loop {
        // Events of the last round are handled: none may be seen twice.
        events.clear();
        if !idle_poll.is_zero() {
            poll_briefly(&mut poll, &mut events, idle_poll)?;
        }
        if events.is_empty()
            && let Err(e) = poll.poll(&mut events, None)
        {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                accept_all(&listener, &poll, &mut router)?;
                continue;
            }
            let id = event.token().0;
            if event.is_readable() || event.is_read_closed() {
                router.read_from(id, &mut chunk, &poll, event.is_read_closed());
            }
            if event.is_writable() {
                router.flush(id, &poll);
            }
        }
        router.flush_touched(&poll);
    }
}

/// Checks for events without blocking until there are some or `window` has passed.
fn poll_briefly(poll: &mut Poll, events: &mut Events, window: Duration) -> io::Result<()> {
    let start = Instant::now();
    loop {
        match poll.poll(events, Some(Duration::ZERO)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if !events.is_empty() || start.elapsed() >= window {
            return Ok(());
        }
        std::thread::yield_now();
    }
}

fn accept_all(listener: &TcpListener, poll: &Poll, router: &mut Router) -> io::Result<()> {
    loop {
        match listener.accept() {
            Ok((mut stream, _)) => {
                stream.set_nodelay(true)?;
                let id = router.conns.iter().position(Option::is_none).unwrap_or(router.conns.len());
                poll.registry().register(&mut stream, Token(id), Interest::READABLE | Interest::WRITABLE)?;
                let conn = Conn { stream, input: BytesMut::new(), out: BytesMut::new(), asleep: false };
                if id == router.conns.len() {
                    router.conns.push(Some(conn));
                } else {
                    router.conns[id] = Some(conn);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Out of descriptors and the like: drop this attempt, keep serving the others.
            Err(_) => return Ok(()),
        }
    }
}

struct Conn {
    stream: TcpStream,
    input: BytesMut,
    out: BytesMut,
    /// A worker that sent PRE_SLEEP and has not been woken since.
    asleep: bool,
}

struct Job {
    handle: u64,
    /// The submitting connection of a foreground job.
    client: Option<usize>,
    function: Bytes,
    payload: Bytes,
}

#[derive(Default)]
struct Router {
    conns: Vec<Option<Conn>>,
    queue: VecDeque<Job>,
    /// Running foreground jobs: handle → submitting connection.
    running: HashMap<u64, usize>,
    sleepers: Vec<usize>,
    /// Connections with replies not yet written.
    touched: Vec<usize>,
    next_handle: u64,
}

impl Router {
    /// Reads what arrived; `closed`: the peer has shut down, so read on to the end (a short read
    /// would otherwise leave the end of the stream unseen, with no new edge to report it).
    fn read_from(&mut self, id: usize, chunk: &mut [u8], poll: &Poll, closed: bool) {
        let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) else { return };
        loop {
            match conn.stream.read(chunk) {
                Ok(0) => return self.close(id, poll),
                Ok(n) => {
                    conn.input.extend_from_slice(&chunk[..n]);
                    if n < chunk.len() && !closed {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(id, poll),
            }
        }
        let codec = Codec::server();
        loop {
            let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) else { return };
            match codec.decode_frame(&mut conn.input) {
                Ok(Some(Frame::Packet(p))) => self.handle(id, &p),
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(_) => return self.close(id, poll),
            }
        }
    }

    fn handle(&mut self, from: usize, p: &Packet) {
        use PacketType as T;
        match p.ptype {
            kind if crate::floor::is_submit(kind) && p.len() == 3 => {
                self.next_handle += 1;
                let handle = self.next_handle;
                self.reply(from, T::JobCreated, &[handle_bytes(handle).as_bytes()]);
                let client = matches!(p.ptype, T::SubmitJob | T::SubmitJobHigh | T::SubmitJobLow).then_some(from);
                self.queue.push_back(Job { handle, client, function: p.arg_bytes(0), payload: p.arg_bytes(2) });
                self.wake_a_sleeper();
            }
            T::GrabJob | T::GrabJobUniq | T::GrabJobAll => self.assign(from, p.ptype),
            T::PreSleep => {
                if self.queue.is_empty() {
                    if let Some(conn) = self.conns.get_mut(from).and_then(Option::as_mut) {
                        conn.asleep = true;
                        self.sleepers.push(from);
                    }
                } else {
                    self.reply(from, T::Noop, &[]);
                }
            }
            T::WorkComplete | T::WorkFail | T::WorkException if !p.is_empty() => {
                let client = parse_handle(p.arg(0)).and_then(|h| self.running.remove(&h));
                if let Some(out) = client.and_then(|c| self.out(c)) {
                    p.encode_as(out, Magic::Res);
                }
            }
            T::EchoReq => {
                let args: Vec<&[u8]> = (0..p.len()).map(|i| p.arg(i)).collect();
                self.reply(from, T::EchoRes, &args);
            }
            _ => {}
        }
    }

    fn assign(&mut self, worker: usize, grab: PacketType) {
        let Some(job) = self.queue.pop_front() else {
            return self.reply(worker, PacketType::NoJob, &[]);
        };
        if let Some(client) = job.client {
            self.running.insert(job.handle, client);
        }
        let handle = handle_bytes(job.handle);
        let (h, f, d) = (handle.as_bytes(), &job.function[..], &job.payload[..]);
        match grab {
            PacketType::GrabJobUniq => self.reply(worker, PacketType::JobAssignUniq, &[h, f, b"", d]),
            PacketType::GrabJobAll => self.reply(worker, PacketType::JobAssignAll, &[h, f, b"", b"", d]),
            _ => self.reply(worker, PacketType::JobAssign, &[h, f, d]),
        }
    }

    fn wake_a_sleeper(&mut self) {
        while let Some(id) = self.sleepers.pop() {
            if let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut)
                && conn.asleep
            {
                conn.asleep = false;
                return self.reply(id, PacketType::Noop, &[]);
            }
        }
    }

    /// The output buffer of `to`, if it is still connected, marked for this round's writes.
    fn out(&mut self, to: usize) -> Option<&mut BytesMut> {
        let conn = self.conns.get_mut(to)?.as_mut()?;
        if conn.out.is_empty() {
            self.touched.push(to);
        }
        Some(&mut conn.out)
    }

    fn reply(&mut self, to: usize, ptype: PacketType, args: &[&[u8]]) {
        if let Some(out) = self.out(to) {
            gearfleet_proto::packet::encode_packet(out, Magic::Res, ptype, args);
        }
    }

    /// Writes what the socket takes; the rest goes out on its next writable event.
    fn flush(&mut self, id: usize, poll: &Poll) {
        let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) else { return };
        while !conn.out.is_empty() {
            match conn.stream.write(&conn.out) {
                Ok(n) => {
                    let _ = conn.out.split_to(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(id, poll),
            }
        }
        conn.out.clear();
    }

    fn flush_touched(&mut self, poll: &Poll) {
        let touched = std::mem::take(&mut self.touched);
        for &id in &touched {
            self.flush(id, poll);
        }
        self.touched = touched;
        self.touched.clear();
    }

    fn close(&mut self, id: usize, poll: &Poll) {
        if let Some(mut conn) = self.conns.get_mut(id).and_then(Option::take) {
            let _ = poll.registry().deregister(&mut conn.stream);
            // Its slot is reused by the next connection: no result of its jobs may reach that one.
            self.running.retain(|_, client| *client != id);
            for job in self.queue.iter_mut().filter(|j| j.client == Some(id)) {
                job.client = None;
            }
        }
    }
}

fn handle_bytes(n: u64) -> String {
    format!("H:floor:{n}")
}

fn parse_handle(handle: &[u8]) -> Option<u64> {
    std::str::from_utf8(handle.strip_prefix(b"H:floor:")?).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::SocketAddr;

    fn start() -> SocketAddr {
        start_polling(Duration::ZERO)
    }

    fn start_polling(idle_poll: Duration) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || serve(listener, idle_poll));
        addr
    }

    struct Peer {
        stream: std::net::TcpStream,
        buf: BytesMut,
    }

    impl Peer {
        fn connect(addr: SocketAddr) -> Peer {
            Peer { stream: std::net::TcpStream::connect(addr).unwrap(), buf: BytesMut::new() }
        }

        fn send(&mut self, p: Packet) {
            let mut out = BytesMut::new();
            p.encode(&mut out);
            self.stream.write_all(&out).unwrap();
        }

        fn recv(&mut self) -> Packet {
            let codec = Codec::client();
            let mut chunk = [0u8; 1024];
            loop {
                if let Some(Frame::Packet(p)) = codec.decode_frame(&mut self.buf).unwrap() {
                    return p;
                }
                let n = self.stream.read(&mut chunk).unwrap();
                assert!(n > 0, "the floor closed the connection");
                self.buf.extend_from_slice(&chunk[..n]);
            }
        }
    }

    #[test]
    fn routes_a_foreground_job_from_client_to_a_sleeping_worker_and_back() {
        route_one_job(start());
    }

    #[test]
    fn routes_the_same_while_polling_before_it_sleeps() {
        route_one_job(start_polling(Duration::from_micros(50)));
    }

    fn route_one_job(addr: SocketAddr) {
        let mut worker = Peer::connect(addr);
        worker.send(Packet::req(PacketType::CanDo, &[b"reverse"]));
        worker.send(Packet::req(PacketType::GrabJobUniq, &[]));
        assert_eq!(worker.recv().ptype, PacketType::NoJob);
        worker.send(Packet::req(PacketType::PreSleep, &[]));

        let mut client = Peer::connect(addr);
        client.send(Packet::req(PacketType::SubmitJob, &[b"reverse", b"", b"abc"]));
        let created = client.recv();
        assert_eq!(created.ptype, PacketType::JobCreated);

        assert_eq!(worker.recv().ptype, PacketType::Noop, "the sleeping worker is woken");
        worker.send(Packet::req(PacketType::GrabJobUniq, &[]));
        let job = worker.recv();
        assert_eq!(job.ptype, PacketType::JobAssignUniq);
        assert_eq!(job.arg(0), created.arg(0));
        assert_eq!(job.arg(1), b"reverse");
        assert_eq!(job.arg(3), b"abc");
        worker.send(Packet::req(PacketType::WorkComplete, &[job.arg(0), b"cba"]));

        let done = client.recv();
        assert_eq!(done.ptype, PacketType::WorkComplete);
        assert_eq!(done.arg(0), created.arg(0));
        assert_eq!(done.arg(1), b"cba");
    }

    #[test]
    fn jobs_leave_in_submission_order_and_results_reach_their_own_clients() {
        let addr = start();
        let mut a = Peer::connect(addr);
        let mut b = Peer::connect(addr);
        a.send(Packet::req(PacketType::SubmitJob, &[b"f", b"", b"from a"]));
        let ha = a.recv();
        b.send(Packet::req(PacketType::SubmitJob, &[b"f", b"", b"from b"]));
        let hb = b.recv();

        let mut worker = Peer::connect(addr);
        worker.send(Packet::req(PacketType::GrabJob, &[]));
        let first = worker.recv();
        worker.send(Packet::req(PacketType::GrabJob, &[]));
        let second = worker.recv();
        assert_eq!((first.arg(0), first.arg(2)), (ha.arg(0), &b"from a"[..]));
        assert_eq!((second.arg(0), second.arg(2)), (hb.arg(0), &b"from b"[..]));

        // Completed in the other order: each result still goes to the job's own client.
        worker.send(Packet::req(PacketType::WorkComplete, &[second.arg(0), b"to b"]));
        worker.send(Packet::req(PacketType::WorkComplete, &[first.arg(0), b"to a"]));
        assert_eq!(b.recv().arg(1), b"to b");
        assert_eq!(a.recv().arg(1), b"to a");
    }
}
