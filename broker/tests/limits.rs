//! Bad input and resource limits: malformed packets get an ERROR and a close, never a panic;
//! garbage on many connections does not grow memory; slow senders are cut off, idle peers are not.

mod common;

use std::time::Duration;

use common::{BrokerProcess, Peer};
use gearfleet_proto::PacketType as T;
use tokio::io::AsyncReadExt;

fn header(magic: &[u8; 4], ptype: u32, len: u32) -> Vec<u8> {
    let mut v = magic.to_vec();
    v.extend_from_slice(&ptype.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v
}

/// Sends `bytes`, expects one ERROR packet with `code`, then the connection to close.
async fn expect_error_and_close(addr: std::net::SocketAddr, bytes: &[u8], code: &[u8]) {
    let mut peer = Peer::connect(addr).await;
    peer.send_raw(bytes).await;
    let p = peer.recv().await;
    assert_eq!(p.ptype, T::Error, "{p:?}");
    assert_eq!(p.arg(0), code, "{p:?}");
    assert!(peer.try_recv(Duration::from_secs(2)).await.is_none(), "connection closed after the error");
}

#[tokio::test]
async fn malformed_packets_get_an_error_and_the_connection_closes() {
    let b = BrokerProcess::start(&[]);
    expect_error_and_close(b.addr, b"\0XYZ\0\0\0\x01\0\0\0\0", b"ERR_BAD_MAGIC").await;
    expect_error_and_close(b.addr, &header(b"\0RES", 6, 0), b"ERR_BAD_MAGIC").await;
    expect_error_and_close(b.addr, &header(b"\0REQ", 0x8000_0000, 0), b"ERR_UNKNOWN_COMMAND").await;
    expect_error_and_close(b.addr, &header(b"\0REQ", 5, 0), b"ERR_UNKNOWN_COMMAND").await;
    expect_error_and_close(b.addr, &header(b"\0REQ", 7, 0x7fff_ffff), b"ERR_PACKET_TOO_LARGE").await;
    let mut wrong_args = header(b"\0REQ", 7, 3);
    wrong_args.extend_from_slice(b"abc");
    expect_error_and_close(b.addr, &wrong_args, b"ERR_INVALID_ARGUMENTS").await;
    let mut body_on_noarg = header(b"\0REQ", 9, 1);
    body_on_noarg.push(b'x');
    expect_error_and_close(b.addr, &body_on_noarg, b"ERR_INVALID_ARGUMENTS").await;

    // An endless admin line is refused in text.
    let mut peer = Peer::connect(b.addr).await;
    peer.send_raw(&vec![b'a'; 20_000]).await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), peer.stream.read_to_end(&mut reply)).await;
    assert!(String::from_utf8_lossy(&reply).starts_with("ERR ERR_LINE_TOO_LONG"), "{reply:?}");

    // The broker is still serving.
    let mut ok = Peer::connect(b.addr).await;
    ok.send(T::EchoReq, &[b"alive"]).await;
    assert_eq!(ok.expect(T::EchoRes).await.arg(0), b"alive");
}

#[tokio::test]
async fn a_half_received_packet_times_out_but_an_idle_connection_does_not() {
    let b = BrokerProcess::start(&["--partial-packet-timeout", "300ms"]);
    let mut slow = Peer::connect(b.addr).await;
    let mut partial = header(b"\0REQ", 16, 100);
    partial.extend_from_slice(b"only part");
    slow.send_raw(&partial).await;
    let p = slow.recv().await;
    assert_eq!(p.arg(0), b"ERR_TIMEOUT");

    let mut idle = Peer::connect(b.addr).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    idle.send(T::EchoReq, &[b"after idling"]).await;
    assert_eq!(idle.expect(T::EchoRes).await.arg(0), b"after idling");
}

#[tokio::test]
async fn garbage_on_many_connections_keeps_memory_bounded() {
    let mut b = BrokerProcess::start(&[]);
    let before = b.rss_kib();
    let mut tasks = Vec::new();
    for conn in 0..64u64 {
        let addr = b.addr;
        tasks.push(tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            // Deterministic pseudo-random bytes (xorshift), different per connection.
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ conn;
            for _round in 0..16 {
                let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { continue };
                let mut data = vec![0u8; 64 * 1024];
                for byte in data.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *byte = x as u8;
                }
                // Half the rounds start like a real packet header with a plausible length.
                if x.is_multiple_of(2) {
                    data[..4].copy_from_slice(b"\0REQ");
                    data[4..8].copy_from_slice(&((x % 45) as u32).to_be_bytes());
                }
                let _ = s.write_all(&data).await;
                let mut sink = Vec::new();
                let _ = tokio::time::timeout(Duration::from_millis(500), s.read_to_end(&mut sink)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(b.alive(), "the broker survived");
    let after = b.rss_kib();
    assert!(after < before + 64 * 1024, "RSS grew from {before} KiB to {after} KiB after 64 MiB of garbage");
    let mut ok = Peer::connect(b.addr).await;
    ok.send(T::EchoReq, &[b"alive"]).await;
    ok.expect(T::EchoRes).await;
}

#[tokio::test]
async fn connections_beyond_the_limit_are_refused_with_an_error() {
    let b = BrokerProcess::start(&["--max-connections", "2"]);
    // The start-up probe's connection may still hold a slot for a moment: wait until two
    // connections are both served (their ECHO is answered) before opening the third.
    let mut held = Vec::new();
    while held.len() < 2 {
        let mut p = Peer::connect(b.addr).await;
        p.send(T::EchoReq, &[b"x"]).await;
        if p.recv().await.ptype == T::EchoRes {
            held.push(p);
        }
    }
    let mut third = Peer::connect(b.addr).await;
    assert_eq!(third.recv().await.arg(0), b"ERR_TOO_MANY_CONNECTIONS");
}

#[tokio::test]
async fn a_client_that_never_reads_does_not_grow_the_broker() {
    let b = BrokerProcess::start(&["--outbox-limit-bytes", "1048576"]);
    let before = b.rss_kib();
    let stream = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    let (_r, mut w) = stream.into_split();
    use tokio::io::AsyncWriteExt;
    let echo = gearfleet_proto::Packet::req(T::EchoReq, &[&[7u8; 60_000]]).to_bytes();
    // Write ECHO_REQs for a while without ever reading the replies.
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        for _ in 0..5000 {
            if w.write_all(&echo).await.is_err() {
                break;
            }
        }
    })
    .await;
    let after = b.rss_kib();
    assert!(after < before + 48 * 1024, "RSS grew from {before} KiB to {after} KiB");
}

#[tokio::test]
async fn a_reader_that_pauses_gets_every_reply_in_order() {
    // More replies than the socket buffers hold: the broker's direct writes are refused, its
    // writer task must wait for the socket and send the rest, in order, once the peer reads.
    let b = BrokerProcess::start(&[]);
    let stream = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    const N: u32 = 300;
    const SIZE: usize = 40_000;
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        for i in 0..N {
            let mut body = vec![(i % 251) as u8; SIZE];
            body[..4].copy_from_slice(&i.to_be_bytes());
            let p = gearfleet_proto::Packet::req(T::EchoReq, &[&body]).to_bytes();
            w.write_all(&p).await.unwrap();
        }
        w
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let codec = gearfleet_proto::Codec::client();
    let mut buf = bytes::BytesMut::new();
    let mut next = 0u32;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while next < N {
        let n = tokio::time::timeout_at(deadline, r.read_buf(&mut buf)).await.expect("replies in time").unwrap();
        assert!(n > 0, "broker closed the connection after {next} replies");
        while let Some(gearfleet_proto::Frame::Packet(p)) = codec.decode_frame(&mut buf).unwrap() {
            assert_eq!(p.ptype, T::EchoRes);
            let body = p.arg(0);
            assert_eq!(body.len(), SIZE);
            assert_eq!(u32::from_be_bytes([body[0], body[1], body[2], body[3]]), next, "reply out of order");
            assert!(body[4..].iter().all(|&x| x == (next % 251) as u8), "reply {next} corrupted");
            next += 1;
        }
    }
    let _w = writer.await.unwrap();
}
