//! The binary's event loops: plain TCP connections are dealt to `--threads` event-loop threads,
//! each watching its connections through an `epoll` of its own until they close; a peer's close
//! is seen even when it arrives together with its last bytes. Read from /proc: the kernel lists
//! each epoll instance's watched descriptors in its fdinfo, and each thread's name.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{BrokerProcess, Peer};
use gearfleet_proto::PacketType as T;
use tokio::io::AsyncWriteExt;

/// The sockets each epoll instance of the process watches, by epoll descriptor.
fn socket_watches(pid: u32) -> BTreeMap<String, Vec<u32>> {
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else { continue };
        if !target.to_string_lossy().contains("eventpoll") {
            continue;
        }
        let epoll = entry.file_name().to_string_lossy().into_owned();
        let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{epoll}")) else { continue };
        let mut sockets = Vec::new();
        for line in info.lines().filter(|l| l.starts_with("tfd:")) {
            // tfd: 13 events: 8000201d data: ...
            let Some(watched) = line.split_whitespace().nth(1).and_then(|w| w.parse::<u32>().ok()) else { continue };
            let is_socket = std::fs::read_link(format!("/proc/{pid}/fd/{watched}"))
                .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
            if is_socket {
                sockets.push(watched);
            }
        }
        found.insert(epoll, sockets);
    }
    found
}

/// How many sockets each epoll watches, beyond what it watched in `baseline`, largest first.
fn added(pid: u32, baseline: &BTreeMap<String, Vec<u32>>) -> Vec<usize> {
    let mut counts: Vec<usize> = socket_watches(pid)
        .iter()
        .map(|(epoll, sockets)| {
            let before = baseline.get(epoll).map_or(&[][..], |v| &v[..]);
            sockets.iter().filter(|s| !before.contains(s)).count()
        })
        .filter(|&n| n > 0)
        .collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    counts
}

/// `added` once it equals `want`, or after two seconds whatever it is.
async fn added_settling_at(pid: u32, baseline: &BTreeMap<String, Vec<u32>>, want: &[usize]) -> Vec<usize> {
    let mut now = added(pid, baseline);
    for _ in 0..100 {
        if now == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        now = added(pid, baseline);
    }
    now
}

async fn connected_peers(b: &BrokerProcess, n: usize) -> Vec<Peer> {
    let mut peers = Vec::new();
    for _ in 0..n {
        let mut p = Peer::connect(b.addr).await;
        // Answered, so accepted.
        p.send(T::EchoReq, &[b"x"]).await;
        p.expect(T::EchoRes).await;
        peers.push(p);
    }
    peers
}

fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn connections_are_dealt_to_the_event_loops_and_leave_them_when_closed() {
    let b = BrokerProcess::start(&["--threads", "2"]);
    let pid = b.child.id();
    let loops: Vec<String> = thread_names(pid).into_iter().filter(|n| n.starts_with("event-loop-")).collect();
    assert_eq!(loops, ["event-loop-0", "event-loop-1"], "one event-loop thread per --threads");
    // Whatever the start-up probe left has closed by now (or is not counted below).
    let _settled = added_settling_at(pid, &BTreeMap::new(), &[]).await;
    let baseline = socket_watches(pid);
    let peers = connected_peers(&b, 4).await;
    let dealt = added_settling_at(pid, &baseline, &[2, 2]).await;
    assert_eq!(dealt, [2, 2], "four connections, two per event loop, each loop its own epoll");
    drop(peers);
    let left = added_settling_at(pid, &baseline, &[]).await;
    assert!(left.is_empty(), "closed connections leave their loop's epoll: {left:?}");
    b.kill();
}

#[tokio::test]
async fn a_close_that_arrives_with_the_last_bytes_is_seen() {
    let b = BrokerProcess::start(&[]);
    let mut client = Peer::connect(b.addr).await;
    for round in 0..10 {
        let function = format!("f{round}");
        client.submit(T::SubmitJobBg, &function, "", b"x").await;
        // A worker grabs the job and closes at once: corked, so that its packets and its FIN
        // travel in one segment and raise one readiness edge.
        let mut first = Peer::connect(b.addr).await;
        first.send(T::EchoReq, &[b"registered"]).await;
        first.expect(T::EchoRes).await;
        cork(&first.stream);
        let mut bytes = gearfleet_proto::Packet::req(T::CanDo, &[function.as_bytes()]).to_bytes().to_vec();
        bytes.extend_from_slice(&gearfleet_proto::Packet::req(T::GrabJob, &[]).to_bytes());
        first.stream.write_all(&bytes).await.unwrap();
        first.stream.shutdown().await.unwrap();
        first.expect(T::JobAssign).await;
        // Once the broker has seen that worker go, the job is handed to the next one.
        let mut next = Peer::worker(b.addr, &[&function]).await;
        let mut regrabbed = None;
        for _ in 0..100 {
            regrabbed = next.grab().await;
            if regrabbed.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(regrabbed.is_some(), "round {round}: the broker never saw the first worker close");
    }
    b.kill();
}

#[tokio::test]
async fn a_peer_that_closes_its_side_still_gets_every_reply() {
    // More replies than the socket buffers hold, then the peer's FIN: the broker has closed the
    // connection by the time most replies are still waiting for the socket, and sends them all.
    let b = BrokerProcess::start(&[]);
    let peer = Peer::connect(b.addr).await;
    const N: usize = 200;
    const SIZE: usize = 64 * 1024;
    let (mut r, mut w) = peer.stream.into_split();
    // Everything written, and the FIN, before a byte is read: the replies pile up in the broker.
    pile_of_echoes(&mut w, N, SIZE).await;
    let got = read_to_the_end(&mut r).await;
    assert_echoes_in_order(&got, N, SIZE);
    drop(w);
    let mut peer = Peer::connect(b.addr).await;
    peer.send(T::EchoReq, &[b"still serving"]).await;
    peer.expect(T::EchoRes).await;
    b.kill();
}

/// Writes `n` echo requests of `size` bytes (numbered in their first 4 bytes) and the FIN,
/// reading nothing meanwhile.
async fn pile_of_echoes(w: &mut tokio::net::tcp::OwnedWriteHalf, n: usize, size: usize) {
    for i in 0..n {
        let mut body = vec![(i % 251) as u8; size];
        body[..4].copy_from_slice(&(i as u32).to_be_bytes());
        w.write_all(&gearfleet_proto::Packet::req(T::EchoReq, &[&body]).to_bytes()).await.unwrap();
    }
    w.shutdown().await.unwrap();
}

/// Replies to [`pile_of_echoes`]: `n` of them, each `size` bytes, in order, then nothing.
fn assert_echoes_in_order(got: &[gearfleet_proto::Packet], n: usize, size: usize) {
    assert_eq!(got.len(), n, "every reply, then the end of the stream");
    for (i, p) in got.iter().enumerate() {
        assert_eq!(p.ptype, T::EchoRes);
        assert_eq!(p.arg(0).len(), size);
        assert_eq!(p.arg(0)[..4], (i as u32).to_be_bytes(), "in order");
    }
}

/// Reads packets until the end of the stream (30 s at most), in order.
async fn read_to_the_end(r: &mut tokio::net::tcp::OwnedReadHalf) -> Vec<gearfleet_proto::Packet> {
    use tokio::io::AsyncReadExt;
    let codec = gearfleet_proto::Codec::client();
    let mut buf = bytes::BytesMut::new();
    let mut got = Vec::new();
    let read_all = async {
        loop {
            while let Some(frame) = codec.decode_frame(&mut buf).unwrap() {
                let gearfleet_proto::Frame::Packet(p) = frame else { panic!("unexpected admin text") };
                got.push(p);
            }
            if r.read_buf(&mut buf).await.expect("reading") == 0 {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read_all).await.expect("the end of the stream within 30 s");
    got
}

#[tokio::test]
async fn replies_waiting_for_the_disk_still_reach_a_peer_that_closed_its_side() {
    let dir = tempfile::tempdir().unwrap();
    let b = BrokerProcess::start(&["--data-dir", dir.path().to_str().unwrap(), "--durability", "fsync"]);
    let peer = Peer::connect(b.addr).await;
    let (mut r, mut w) = peer.stream.into_split();
    // Submissions and the FIN at once: the FIN arrives while their JOB_CREATEDs wait for fsync.
    let mut bytes = Vec::new();
    for i in 0..50 {
        let data = format!("job-{i}");
        bytes.extend_from_slice(
            &gearfleet_proto::Packet::req(T::SubmitJobBg, &[b"durable", b"", data.as_bytes()]).to_bytes(),
        );
    }
    w.write_all(&bytes).await.unwrap();
    w.shutdown().await.unwrap();
    let got = read_to_the_end(&mut r).await;
    assert_eq!(got.len(), 50, "every JOB_CREATED, then the end of the stream: {got:?}");
    assert!(got.iter().all(|p| p.ptype == T::JobCreated));
    b.kill();
}

#[tokio::test]
async fn a_broker_that_stops_sends_the_replies_it_owes_first() {
    let b = common::broker().await;
    let peer = Peer::connect(b.gearman_addr).await;
    let (mut r, mut w) = peer.stream.into_split();
    const N: usize = 200;
    const SIZE: usize = 64 * 1024;
    // More replies than the sockets hold wait in the broker when it is told to stop.
    pile_of_echoes(&mut w, N, SIZE).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = tokio::spawn(b.stop());
    let got = read_to_the_end(&mut r).await;
    assert_echoes_in_order(&got, N, SIZE);
    stopping.await.unwrap();
}

#[tokio::test]
async fn a_flooding_peer_does_not_starve_the_others() {
    // Room for all the flood's replies: back-pressure does not pause it.
    let b = BrokerProcess::start(&["--outbox-limit-bytes", "268435456"]);
    let mut other = Peer::connect(b.addr).await;
    other.send(T::EchoReq, &[b"ping"]).await;
    other.expect(T::EchoRes).await;
    // One peer sends 32 MiB of small echo requests at once (millions of packets, seconds of
    // work) and reads nothing: its socket has input for the broker all along.
    let mut flood = Peer::connect(b.addr).await;
    flood.send(T::EchoReq, &[b"ping"]).await;
    flood.expect(T::EchoRes).await;
    let one = gearfleet_proto::Packet::req(T::EchoReq, &[b"x"]).to_bytes();
    let pile: Vec<u8> = one.iter().copied().cycle().take(32 << 20).collect();
    let writer = tokio::spawn(async move {
        let _ = flood.stream.write_all(&pile).await;
        flood
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Meanwhile another peer's round trips are served at once.
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let start = std::time::Instant::now();
        other.send(T::EchoReq, &[b"ping"]).await;
        other.expect(T::EchoRes).await;
        slowest = slowest.max(start.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(slowest < Duration::from_millis(250), "a round trip took {slowest:?} beside the flood");
    writer.abort();
    b.kill();
}

/// Sets TCP_CORK: written bytes wait in the kernel, and a shutdown sends them with the FIN.
fn cork(stream: &tokio::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a pointer to a c_int that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "TCP_CORK: {}", std::io::Error::last_os_error());
}

#[test]
fn an_idle_poll_beyond_a_millisecond_is_refused() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gearfleet-broker"))
        .args(["--idle-poll", "5ms", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    for _ in 0..250 {
        status = child.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let Some(status) = status else {
        let _ = child.kill();
        panic!("the broker started with --idle-poll 5ms");
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("longer than the 1ms"), "{err}");
}
