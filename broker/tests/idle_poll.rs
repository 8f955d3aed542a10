//! The binary's idle poll (`--idle-poll`): the listener and every accepted connection are watched
//! for input through an `epoll` of the broker's own, and a connection leaves it when it closes;
//! `--idle-poll 0` has none. Read from /proc: the kernel lists each epoll instance's watched
//! descriptors in its fdinfo.

mod common;

use std::time::Duration;

use common::{BrokerProcess, Peer};
use gearfleet_proto::PacketType as T;

/// Descriptors the process watches for input only (the runtime's own registrations also ask for
/// EPOLLRDHUP, and writable sockets for EPOLLOUT), as (epoll fd, watched fd).
fn idle_poll_watches(pid: u32) -> Vec<(String, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else { continue };
        if !target.to_string_lossy().contains("eventpoll") {
            continue;
        }
        let fd = entry.file_name().to_string_lossy().into_owned();
        let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) else { continue };
        for line in info.lines().filter(|l| l.starts_with("tfd:")) {
            // tfd: 13 events: 19 data: ...
            let words: Vec<&str> = line.split_whitespace().collect();
            let watched = words.get(1).and_then(|w| w.parse().ok());
            let events = words.get(3).and_then(|w| u32::from_str_radix(w, 16).ok());
            if let (Some(watched), Some(events)) = (watched, events)
                && events & (libc::EPOLLRDHUP | libc::EPOLLOUT) as u32 == 0
                && events & libc::EPOLLIN as u32 != 0
            {
                found.push((fd.clone(), watched));
            }
        }
    }
    found
}

/// The idle poll's watches once they number `n`, or after two seconds whatever they are.
async fn watches_settling_at(pid: u32, n: usize) -> Vec<(String, u32)> {
    let mut watched = idle_poll_watches(pid);
    for _ in 0..100 {
        if watched.len() == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        watched = idle_poll_watches(pid);
    }
    watched
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

#[tokio::test]
async fn every_connection_is_watched_until_it_closes() {
    let b = BrokerProcess::start(&[]);
    let pid = b.child.id();
    let peers = connected_peers(&b, 3).await;
    // The listener and the three; the start-up probe's connection may still be closing.
    let watched = watches_settling_at(pid, 4).await;
    assert_eq!(watched.len(), 4, "the listener and one watch per connection: {watched:?}");
    assert!(watched.iter().all(|(epoll, _)| *epoll == watched[0].0), "all in one epoll: {watched:?}");
    drop(peers);
    let left = watches_settling_at(pid, 1).await;
    assert_eq!(left.len(), 1, "closed connections leave the watch, the listener stays: {left:?}");
    b.kill();
}

#[tokio::test]
async fn idle_poll_zero_watches_nothing() {
    let b = BrokerProcess::start(&["--idle-poll", "0"]);
    let _peers = connected_peers(&b, 2).await;
    let watched = idle_poll_watches(b.child.id());
    assert!(watched.is_empty(), "{watched:?}");
    b.kill();
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
