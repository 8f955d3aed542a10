//! The admin and metrics tokens: off by default (gearmand's open admin port), and when set, state-
//! changing admin commands need `auth TOKEN` and `/metrics` needs `Authorization: Bearer TOKEN`,
//! while read-only commands and the health endpoints stay open.

mod common;

use std::net::SocketAddr;

use common::Peer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn http_get(addr: SocketAddr, path: &str, bearer: Option<&str>) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.expect("read");
    reply.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn without_tokens_everything_is_open_as_in_gearmand() {
    let b = common::broker().await;
    let mut admin = Peer::connect(b.gearman_addr).await;
    assert!(admin.admin("fleet drain pod-1").await.starts_with("OK"));
    assert_eq!(admin.admin("auth anything").await, "OK\r\n", "auth is harmless without a token");
    assert_eq!(http_get(b.http_addr.expect("http"), "/metrics", None).await, 200);
    b.stop().await;
}

#[tokio::test]
async fn admin_token_guards_state_changes_and_metrics_token_guards_metrics() {
    let dir = std::env::temp_dir().join(format!("gearfleet-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("admin-token");
    std::fs::write(&token_file, "s3cret\n").unwrap(); // as a mounted Secret key, with a newline
    let mut config = gearfleet_broker::Config::for_tests();
    config.admin_token_file = Some(token_file);
    config.metrics_token = Some("m3trics".into());
    let b = gearfleet_broker::start(config).await.expect("broker starts");

    let mut admin = Peer::connect(b.gearman_addr).await;
    assert!(admin.admin("status").await.ends_with(".\n"), "read-only commands stay open");
    assert!(admin.admin("fleet status").await.ends_with(".\n"));
    assert!(admin.admin("fleet drain pod-1").await.starts_with("ERR AUTH_REQUIRED"));
    assert!(admin.admin("cancel job H:x:1").await.starts_with("ERR AUTH_REQUIRED"));
    assert!(admin.admin("auth wrong").await.starts_with("ERR AUTH_FAILED"));
    assert!(admin.admin("maxqueue f 10").await.starts_with("ERR AUTH_REQUIRED"));
    assert_eq!(admin.admin("auth s3cret").await, "OK\r\n");
    assert!(admin.admin("fleet drain pod-1").await.starts_with("OK"));
    assert!(admin.admin("maxqueue f 10").await.starts_with("OK"));
    // Authentication is per connection.
    let mut other = Peer::connect(b.gearman_addr).await;
    assert!(other.admin("fleet undrain pod-1").await.starts_with("ERR AUTH_REQUIRED"));

    let http = b.http_addr.expect("http");
    assert_eq!(http_get(http, "/metrics", None).await, 401);
    assert_eq!(http_get(http, "/metrics", Some("wrong")).await, 401);
    assert_eq!(http_get(http, "/metrics", Some("m3trics")).await, 200);
    assert_eq!(http_get(http, "/healthz", None).await, 200, "probes need no token");
    assert_eq!(http_get(http, "/readyz", None).await, 200);
    b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
