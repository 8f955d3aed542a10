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
    let b = gearfleet_broker::runtime::start_detached(config).await.expect("broker starts");

    let mut admin = Peer::connect(b.gearman_addr).await;
    assert!(admin.admin("status").await.ends_with(".\n"), "read-only commands stay open");
    assert!(admin.admin("fleet status").await.ends_with(".\n"));
    assert!(admin.admin("fleet drain pod-1").await.starts_with("ERR AUTH_REQUIRED"));
    assert!(admin.admin("cancel job H:x:1").await.starts_with("ERR AUTH_REQUIRED"));
    assert!(admin.admin("auth wrong").await.starts_with("ERR AUTH_FAILED"));
    assert!(admin.admin("maxqueue f 10").await.starts_with("ERR AUTH_REQUIRED"));
    assert!(admin.admin("fleet disconnect 10.9.9.9").await.starts_with("ERR AUTH_REQUIRED"));
    assert_eq!(admin.admin("auth s3cret").await, "OK\r\n");
    assert_eq!(admin.admin("fleet disconnect 10.9.9.9").await, "OK 0\n");
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

/// `--tls-listen`: a client speaks Gearman over TLS to the same queues plain workers serve.
#[tokio::test]
async fn tls_listener_serves_gearman_over_tls() {
    use gearfleet_proto::{Codec, Frame, Packet, PacketType as T};
    use rustls_pki_types::pem::PemObject;
    use tokio_rustls::rustls;

    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=gearfleet-broker", "-addext", "subjectAltName=DNS:gearfleet-broker,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(made.status.success(), "openssl: {}", String::from_utf8_lossy(&made.stderr));

    let mut config = gearfleet_broker::Config::for_tests();
    config.tls_listen = Some("127.0.0.1:0".parse().unwrap());
    config.tls_cert = Some(cert.clone());
    config.tls_key = Some(key);
    let b = gearfleet_broker::runtime::start_detached(config).await.expect("broker starts with TLS");
    let tls_addr = b.tls_addr.expect("TLS listener");

    // A plain worker.
    let mut worker = Peer::worker(b.gearman_addr, &["secure"]).await;

    // A TLS client that trusts the self-signed certificate.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from_pem_file(&cert).unwrap()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client_config));
    let tcp = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("gearfleet-broker").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    tls.write_all(&Packet::req(T::SubmitJob, &[b"secure", b"", b"over tls"]).to_bytes()).await.unwrap();
    tls.flush().await.unwrap();

    let codec = Codec::client();
    let mut buf = bytes::BytesMut::new();
    let mut seen = Vec::new();
    while seen.is_empty() {
        tokio::time::timeout(common::WAIT, tls.read_buf(&mut buf)).await.expect("JOB_CREATED in time").unwrap();
        while let Some(Frame::Packet(p)) = codec.decode_frame(&mut buf).unwrap() {
            seen.push(p.ptype);
        }
    }
    let job = worker.grab().await.expect("the job reaches the plain worker");
    assert_eq!(job.arg(job.len() - 1), b"over tls");
    worker.send(T::WorkComplete, &[job.arg(0), b"done"]).await;

    while !seen.contains(&T::WorkComplete) {
        tokio::time::timeout(common::WAIT, tls.read_buf(&mut buf)).await.expect("reply in time").unwrap();
        while let Some(Frame::Packet(p)) = codec.decode_frame(&mut buf).unwrap() {
            if p.ptype == T::WorkComplete {
                assert_eq!(p.arg(1), b"done");
            }
            seen.push(p.ptype);
        }
    }
    assert_eq!(seen.first(), Some(&T::JobCreated));

    // `fleet disconnect IP:PORT` closes a TLS connection too: its reader sees the end at once.
    let tls_peer = tls.get_ref().0.local_addr().unwrap();
    let mut admin = Peer::connect(b.gearman_addr).await;
    assert_eq!(admin.admin(&format!("fleet disconnect {tls_peer}")).await, "OK 1\n");
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(2), tls.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the TLS connection was not closed");

    // A plain-text client on the TLS port gets no Gearman service.
    let mut plain = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    plain.write_all(&Packet::req(T::EchoReq, &[b"x"]).to_bytes()).await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), plain.read_to_end(&mut reply)).await;
    assert!(!reply.starts_with(b"\0RES"), "the TLS port answered plain Gearman");
    b.stop().await;
}
