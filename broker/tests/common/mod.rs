//! A raw Gearman peer for tests: sends packets and admin lines, reads replies with deadlines.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use gearfleet_proto::{Codec, Frame, Packet, PacketType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const WAIT: Duration = Duration::from_secs(5);

/// A broker on the binary's runtime, with its defaults (one event-loop thread per spare core).
pub async fn broker() -> gearfleet_broker::Running {
    gearfleet_broker::runtime::start_detached(gearfleet_broker::Config::for_tests()).await.expect("broker starts")
}

/// The same with `threads` event-loop threads, so that one connection's replies can be produced
/// on one thread while another holds them.
pub async fn broker_with_threads(threads: usize) -> gearfleet_broker::Running {
    let mut config = gearfleet_broker::Config::for_tests();
    config.threads = threads;
    gearfleet_broker::runtime::start_detached(config).await.expect("broker starts")
}

pub struct Peer {
    pub stream: TcpStream,
    buf: BytesMut,
    codec: Codec,
}

impl Peer {
    pub async fn connect(addr: SocketAddr) -> Peer {
        let stream = TcpStream::connect(addr).await.expect("connect");
        // As real Gearman libraries do: without it, a worker's WORK_COMPLETE followed by GRAB_JOB
        // waits for a delayed ACK (Nagle), about 40 ms per job.
        stream.set_nodelay(true).expect("nodelay");
        Peer { stream, buf: BytesMut::new(), codec: Codec::client() }
    }

    /// Connects from another loopback address (`127.0.0.2`, say: all of 127/8 is this host), so
    /// that admin commands naming `127.0.0.1` leave this connection alone.
    pub async fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> Peer {
        let socket = if source.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() };
        let socket = socket.expect("socket");
        socket.bind(SocketAddr::new(source, 0)).expect("bind the source address");
        let stream = socket.connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Peer { stream, buf: BytesMut::new(), codec: Codec::client() }
    }

    /// Connects, or `None` if the broker is not there.
    pub async fn try_connect(addr: SocketAddr) -> Option<Peer> {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr)).await.ok()?.ok()?;
        stream.set_nodelay(true).ok()?;
        Some(Peer { stream, buf: BytesMut::new(), codec: Codec::client() })
    }

    /// Sends, returning false if the connection is gone.
    pub async fn try_send(&mut self, ptype: PacketType, args: &[&[u8]]) -> bool {
        let p = Packet::req(ptype, args);
        self.stream.write_all(&p.to_bytes()).await.is_ok()
    }

    pub async fn send(&mut self, ptype: PacketType, args: &[&[u8]]) {
        let p = Packet::req(ptype, args);
        self.stream.write_all(&p.to_bytes()).await.expect("write");
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next packet, failing the test if none comes within `WAIT`.
    pub async fn recv(&mut self) -> Packet {
        self.try_recv(WAIT).await.expect("a packet within the deadline")
    }

    /// The next packet, or `None` if the deadline passes or the connection closes.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.codec.decode_frame(&mut self.buf) {
                Ok(Some(Frame::Packet(p))) => return Some(p),
                Ok(Some(Frame::Admin(_))) => unreachable!("client codec yields no admin lines"),
                Ok(None) => {}
                Err(e) => panic!("bad packet from broker: {e}"),
            }
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await;
            match read {
                Ok(Ok(0)) | Err(_) => return None,
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return None,
            }
        }
    }

    pub async fn expect(&mut self, ptype: PacketType) -> Packet {
        let p = self.recv().await;
        assert_eq!(p.ptype, ptype, "expected {ptype}, got {p:?}");
        p
    }

    /// Asserts nothing arrives for `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(p) = self.try_recv(wait).await {
            panic!("expected no packet, got {p:?}");
        }
    }

    /// Sends an admin line and reads the reply: one line, or a list up to the closing `.`.
    pub async fn admin(&mut self, line: &str) -> String {
        self.send_raw(format!("{line}\n").as_bytes()).await;
        let list = !(line.starts_with("version")
            || line.starts_with("getpid")
            || line.starts_with("verbose")
            || line.starts_with("cancel")
            || line.starts_with("maxqueue")
            || line.starts_with("create")
            || line.starts_with("drop")
            || line.starts_with("shutdown")
            || line.starts_with("fleet drain")
            || line.starts_with("fleet undrain")
            || line.starts_with("fleet disconnect")
            || line.starts_with("fleet retries")
            || line.starts_with("retry dead")
            || line.starts_with("purge dead")
            || line.starts_with("auth"));
        self.read_text(list).await
    }

    pub async fn read_text(&mut self, list: bool) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = String::from_utf8_lossy(&self.buf).to_string();
            let done = if list {
                text == ".\n" || text.ends_with("\n.\n") || text.starts_with("ERR")
            } else {
                text.ends_with('\n')
            };
            if done && !text.is_empty() {
                self.buf.clear();
                return text;
            }
            let n = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf))
                .await
                .expect("admin reply within the deadline")
                .expect("read");
            assert!(n > 0, "connection closed while reading admin reply; got {text:?}");
        }
    }

    /// Registers as a worker for `functions`.
    pub async fn worker(addr: SocketAddr, functions: &[&str]) -> Peer {
        let mut w = Peer::connect(addr).await;
        for f in functions {
            w.send(PacketType::CanDo, &[f.as_bytes()]).await;
        }
        w
    }

    /// GRAB_JOB_UNIQ and returns the assignment, or `None` on NO_JOB.
    pub async fn grab(&mut self) -> Option<Packet> {
        self.send(PacketType::GrabJobUniq, &[]).await;
        let p = self.recv().await;
        match p.ptype {
            PacketType::JobAssignUniq => Some(p),
            PacketType::NoJob => None,
            other => panic!("unexpected {other} in reply to GRAB_JOB_UNIQ: {p:?}"),
        }
    }

    /// Submits and returns the handle from JOB_CREATED.
    pub async fn submit(&mut self, ptype: PacketType, function: &str, unique: &str, data: &[u8]) -> Vec<u8> {
        self.send(ptype, &[function.as_bytes(), unique.as_bytes(), data]).await;
        let p = self.expect(PacketType::JobCreated).await;
        p.arg(0).to_vec()
    }
}

/// Whether a Gearman server answers ECHO_REQ at `addr`. A bare connect is not proof: while
/// nothing listens on a port of the ephemeral range, a connect to it can pick that same port as
/// its source and connect to itself (TCP simultaneous open), and would then read back its own
/// request.
fn answers_echo(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(&Packet::req(PacketType::EchoReq, &[b"up"]).to_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 4];
    s.read_exact(&mut head).is_ok() && &head == b"\0RES"
}

/// The broker binary on a free port, so its memory can be read from /proc.
pub struct BrokerProcess {
    pub child: Child,
    pub addr: std::net::SocketAddr,
}

impl BrokerProcess {
    pub fn start(extra: &[&str]) -> BrokerProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Self::start_on(port, extra)
    }

    /// Starts the binary on `port` (to restart on the same address after a kill).
    pub fn start_on(port: u16, extra: &[&str]) -> BrokerProcess {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gearfleet-broker"));
        cmd.args(["--listen", &addr.to_string(), "--max-packet-bytes", "65536"]);
        if !extra.contains(&"--http-listen") {
            cmd.args(["--http-listen", "127.0.0.1:0"]);
        }
        let mut child = cmd
            .args(extra)
            .env("GEARFLEET_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start broker binary");
        for _ in 0..200 {
            if answers_echo(addr) {
                return BrokerProcess { child, addr };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("broker exited at start ({status}) on {addr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("broker did not start on {addr}");
    }

    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl BrokerProcess {
    /// SIGKILL: no chance to flush anything.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
