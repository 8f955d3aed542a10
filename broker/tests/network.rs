//! The broker binary's sockets: which ports it listens on.

mod common;

use common::{BrokerProcess, Peer};
use gearfleet_proto::PacketType as T;

/// The TCP ports process `pid` listens on (its sockets in /proc/net/tcp{,6} in state LISTEN).
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the broker's descriptors")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address, rem_address, st (0A = LISTEN), …, inode (the tenth field).
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                let port = f[1].rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
                ports.extend(port);
            }
        }
    }
    ports.sort_unstable();
    ports
}

#[tokio::test]
async fn an_empty_http_listen_serves_gearman_without_http() {
    let with_http = BrokerProcess::start(&[]);
    assert_eq!(listening_ports(with_http.child.id()).len(), 2, "by default: the Gearman port and HTTP");
    drop(with_http);

    let b = BrokerProcess::start(&["--http-listen", ""]);
    assert_eq!(listening_ports(b.child.id()), [b.addr.port()], "only the Gearman port listens");
    let mut client = Peer::connect(b.addr).await;
    client.submit(T::SubmitJobBg, "f", "", b"x").await;
    let mut worker = Peer::worker(b.addr, &["f"]).await;
    assert_eq!(worker.grab().await.expect("the job").arg(3), b"x");
}
