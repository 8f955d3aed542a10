//! Async client for the broker's text admin protocol (`fleet …` commands).
//!
//! One-shot requests ([`BrokerClient::fleet_status`], [`BrokerClient::fleet_workers`],
//! [`BrokerClient::drain`], [`BrokerClient::undrain`], [`BrokerClient::disconnect`]) open a fresh connection each, so a broker
//! restart never leaves a stale connection behind. [`BrokerClient::watch`] keeps one connection with
//! `fleet watch` open and reconnects with backoff when it drops.

use std::time::Duration;

use futures::Stream;
use gearfleet_proto::admin::{FunctionStats, WorkerStats};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// What can go wrong talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Connecting, writing or reading failed.
    #[error("broker {addr}: {source}")]
    Io {
        /// The broker address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No (complete) answer within the timeout.
    #[error("broker {0}: timed out")]
    Timeout(String),
    /// The connection closed before the answer was complete.
    #[error("broker {0}: connection closed")]
    Closed(String),
    /// The broker answered with an error or something unparsable.
    #[error("broker {addr}: unexpected reply {reply:?}")]
    Reply {
        /// The broker address.
        addr: String,
        /// The offending line.
        reply: String,
    },
}

/// A handle on one broker's admin port; cheap to clone.
#[derive(Clone, Debug)]
pub struct BrokerClient {
    addr: String,
    timeout: Duration,
    /// Sent as `auth TOKEN` on every connection (brokers started with an admin token).
    token: Option<String>,
}

impl BrokerClient {
    /// A client for `addr` (`host:port`), with a 5 s request timeout.
    pub fn new(addr: impl Into<String>) -> Self {
        Self { addr: addr.into(), timeout: Duration::from_secs(5), token: None }
    }

    /// Authenticate every connection with the broker's admin token.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    /// The broker address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn io(&self, source: std::io::Error) -> BrokerError {
        BrokerError::Io { addr: self.addr.clone(), source }
    }

    async fn connect(&self, command: &str) -> Result<Conn, BrokerError> {
        let stream = TcpStream::connect(&self.addr).await.map_err(|e| self.io(e))?;
        let _ = stream.set_nodelay(true);
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        if let Some(token) = &self.token {
            write.write_all(format!("auth {token}\n").as_bytes()).await.map_err(|e| self.io(e))?;
            match lines.next_line().await.map_err(|e| self.io(e))? {
                Some(line) if line.starts_with("OK") => {}
                Some(line) => return Err(self.bad_reply(&line)),
                None => return Err(BrokerError::Closed(self.addr.clone())),
            }
        }
        write.write_all(format!("{command}\n").as_bytes()).await.map_err(|e| self.io(e))?;
        Ok(Conn { lines, _write: write })
    }

    async fn request(&self, command: &str, list: bool) -> Result<Vec<String>, BrokerError> {
        let fut = async {
            let mut conn = self.connect(command).await?;
            if list {
                read_block(&mut conn.lines, &self.addr).await
            } else {
                let line = conn.lines.next_line().await.map_err(|e| self.io(e))?;
                line.map(|l| vec![l]).ok_or_else(|| BrokerError::Closed(self.addr.clone()))
            }
        };
        tokio::time::timeout(self.timeout, fut).await.map_err(|_| BrokerError::Timeout(self.addr.clone()))?
    }

    /// `fleet status`: the queue depths and worker counts of every function the broker knows.
    pub async fn fleet_status(&self) -> Result<Vec<FunctionStats>, BrokerError> {
        let rows = self.request("fleet status", true).await?;
        rows.iter().map(|l| FunctionStats::parse(l).ok_or_else(|| self.bad_reply(l))).collect()
    }

    /// `fleet workers`: one row per worker connection.
    pub async fn fleet_workers(&self) -> Result<Vec<WorkerStats>, BrokerError> {
        let rows = self.request("fleet workers", true).await?;
        rows.iter().map(|l| WorkerStats::parse(l).ok_or_else(|| self.bad_reply(l))).collect()
    }

    /// `fleet drain TARGET`: stop assigning jobs to the worker connections `target` names: a
    /// client id, an `IP:PORT`, or a bare IP (every connection from it). The broker answers
    /// `OK <connections>`.
    pub async fn drain(&self, target: &str) -> Result<(), BrokerError> {
        self.ok_command(&format!("fleet drain {target}")).await
    }

    /// `fleet undrain TARGET`: assign jobs to them again.
    pub async fn undrain(&self, target: &str) -> Result<(), BrokerError> {
        self.ok_command(&format!("fleet undrain {target}")).await
    }

    /// `fleet disconnect TARGET`: close those connections at once; the jobs they held go back to
    /// the queue (for a worker whose pod is gone for good).
    pub async fn disconnect(&self, target: &str) -> Result<(), BrokerError> {
        self.ok_command(&format!("fleet disconnect {target}")).await
    }

    /// `cancel job HANDLE`: removes a job that no worker has taken yet.
    pub async fn cancel_job(&self, handle: &str) -> Result<(), BrokerError> {
        self.ok_command(&format!("cancel job {handle}")).await
    }

    /// Sends an admin command whose reply is `OK` (e.g. `fleet retries f 3 1s 5m`).
    pub async fn ok(&self, command: &str) -> Result<(), BrokerError> {
        self.ok_command(command).await
    }

    async fn ok_command(&self, command: &str) -> Result<(), BrokerError> {
        let reply = self.request(command, false).await?;
        match reply.first() {
            Some(line) if line.starts_with("OK") => Ok(()),
            Some(line) => Err(self.bad_reply(line)),
            None => Err(BrokerError::Closed(self.addr.clone())),
        }
    }

    fn bad_reply(&self, line: &str) -> BrokerError {
        BrokerError::Reply { addr: self.addr.clone(), reply: line.to_string() }
    }

    /// `fleet watch` as an endless stream: `Some(snapshot)` for every status block the broker sends
    /// (one at once, then one after each change), `None` whenever the connection is lost or cannot
    /// be made; it then reconnects with backoff (0.5 s doubling to 5 s).
    pub fn watch(&self) -> impl Stream<Item = Option<Vec<FunctionStats>>> + Send + 'static {
        struct State {
            client: BrokerClient,
            conn: Option<Conn>,
            backoff: Duration,
        }
        let state = State { client: self.clone(), conn: None, backoff: Duration::ZERO };
        futures::stream::unfold(state, |mut st| async move {
            if st.conn.is_none() {
                tokio::time::sleep(st.backoff).await;
                let connect = tokio::time::timeout(st.client.timeout, st.client.connect("fleet watch"));
                match connect.await {
                    Ok(Ok(conn)) => st.conn = Some(conn),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "fleet watch: connect failed");
                        st.backoff = next_backoff(st.backoff);
                        return Some((None, st));
                    }
                    Err(_) => {
                        st.backoff = next_backoff(st.backoff);
                        return Some((None, st));
                    }
                }
            }
            let conn = st.conn.as_mut().expect("connected");
            match read_block(&mut conn.lines, &st.client.addr).await {
                Ok(rows) => {
                    st.backoff = Duration::ZERO;
                    let stats = rows.iter().filter_map(|l| FunctionStats::parse(l)).collect();
                    Some((Some(stats), st))
                }
                Err(e) => {
                    tracing::debug!(error = %e, "fleet watch: connection lost");
                    st.conn = None;
                    st.backoff = next_backoff(st.backoff);
                    Some((None, st))
                }
            }
        })
    }
}

/// An open admin connection; the write half is kept so our side stays open.
struct Conn {
    lines: Lines<BufReader<OwnedReadHalf>>,
    _write: OwnedWriteHalf,
}

fn next_backoff(d: Duration) -> Duration {
    (d * 2).clamp(Duration::from_millis(500), Duration::from_secs(5))
}

async fn read_block(lines: &mut Lines<BufReader<OwnedReadHalf>>, addr: &str) -> Result<Vec<String>, BrokerError> {
    let mut rows = Vec::new();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => {
                let line = line.strip_suffix('\r').unwrap_or(&line).to_string();
                if line == "." {
                    return Ok(rows);
                }
                if line.starts_with("ERR") && rows.is_empty() {
                    return Err(BrokerError::Reply { addr: addr.to_string(), reply: line });
                }
                rows.push(line);
            }
            Ok(None) => return Err(BrokerError::Closed(addr.to_string())),
            Err(source) => return Err(BrokerError::Io { addr: addr.to_string(), source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tokio::net::TcpListener;

    /// A fake broker answering each connection's first line with `reply(line)`.
    async fn fake(reply: fn(&str) -> String) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    if let Ok(Some(line)) = lines.next_line().await {
                        let _ = write.write_all(reply(&line).as_bytes()).await;
                    }
                });
            }
        });
        addr
    }

    fn stats(name: &str, queued: u64) -> FunctionStats {
        FunctionStats { function: name.to_string(), queued: [0, queued, 0], ..Default::default() }
    }

    #[tokio::test]
    async fn status_workers_and_drain() {
        let addr = fake(|line| match line {
            "fleet status" => format!("{}\n{}\n.\n", stats("a", 3).to_line(), stats("b", 0).to_line()),
            "fleet workers" => "pod-1\t10.0.0.1:5000\tbusy\t0\t4\tH:1\ta\n.\n".to_string(),
            "fleet drain pod-1" => "OK 1\n".to_string(),
            "fleet drain 10.0.0.1" => "OK 3\n".to_string(),
            "fleet disconnect 10.0.0.1:5000" => "OK 1\n".to_string(),
            _ => "ERR UNKNOWN_COMMAND x\n".to_string(),
        })
        .await;
        let client = BrokerClient::new(addr);
        assert_eq!(client.fleet_status().await.unwrap(), vec![stats("a", 3), stats("b", 0)]);
        let workers = client.fleet_workers().await.unwrap();
        assert_eq!(workers.len(), 1);
        assert_eq!(workers[0].client_id, "pod-1");
        client.drain("pod-1").await.unwrap();
        client.drain("10.0.0.1").await.unwrap();
        client.disconnect("10.0.0.1:5000").await.unwrap();
        assert!(matches!(client.undrain("pod-1").await, Err(BrokerError::Reply { .. })));
        assert!(matches!(client.disconnect("pod-1").await, Err(BrokerError::Reply { .. })));
    }

    #[tokio::test]
    async fn unreachable_broker_is_an_error_and_watch_reports_none() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let client = BrokerClient::new(addr);
        assert!(client.fleet_status().await.is_err());
        let first = Box::pin(client.watch()).next().await;
        assert_eq!(first, Some(None));
    }

    #[tokio::test]
    async fn watch_yields_snapshots() {
        let addr = fake(|_| format!("{}\n.\n{}\n.\n", stats("a", 1).to_line(), stats("a", 0).to_line())).await;
        let mut watch = Box::pin(BrokerClient::new(addr).watch());
        assert_eq!(watch.next().await, Some(Some(vec![stats("a", 1)])));
        assert_eq!(watch.next().await, Some(Some(vec![stats("a", 0)])));
        // The fake closes the connection after its reply.
        assert_eq!(watch.next().await, Some(None));
    }

    /// Against a real broker: a stock worker (no SET_CLIENT_ID) is found by its pod's IP, drained,
    /// undrained and disconnected by the argument `connections::broker_target` chooses for it.
    #[tokio::test]
    async fn a_stock_worker_is_drained_and_disconnected_by_its_ip() {
        use crate::workerpool::connections::{PodIdentity, broker_target, connections_of};
        use gearfleet_proto::{Packet, PacketType};

        let broker = gearfleet_broker::start(gearfleet_broker::Config::for_tests()).await.unwrap();
        let addr = broker.gearman_addr.to_string();
        let mut stock = TcpStream::connect(&addr).await.unwrap();
        stock.write_all(&Packet::req(PacketType::CanDo, &[b"echo"]).to_bytes()).await.unwrap();
        let client = BrokerClient::new(addr);
        let pod = PodIdentity { name: "php-0".into(), ips: vec!["127.0.0.1".parse().unwrap()] };
        let mine = || async {
            let workers = client.fleet_workers().await.unwrap();
            connections_of(&workers, &pod).cloned().collect::<Vec<WorkerStats>>()
        };
        let mut seen = mine().await;
        for _ in 0..50 {
            if !seen.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            seen = mine().await;
        }
        assert_eq!(seen.len(), 1, "the stock worker's connection is the pod's");
        assert_eq!(seen[0].client_id, "-");
        let target = broker_target(&pod, &seen.iter().collect::<Vec<_>>());
        assert_eq!(target, "127.0.0.1");

        client.drain(&target).await.unwrap();
        assert!(mine().await.iter().all(|w| w.draining), "drained by IP");
        client.undrain(&target).await.unwrap();
        assert!(mine().await.iter().all(|w| !w.draining), "undrained by IP");
        client.disconnect(&target).await.unwrap();
        let mut buf = [0u8; 16];
        let read =
            tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read(&mut stock, &mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the broker closed the connection: {read:?}");
        assert!(mine().await.is_empty());
        broker.stop().await;
    }

    /// Against a real broker started with an admin token: drain needs the token, status does not.
    #[tokio::test]
    async fn admin_token_is_sent_before_state_changing_commands() {
        let mut config = gearfleet_broker::Config::for_tests();
        config.admin_token = Some("s3cret".into());
        let broker = gearfleet_broker::start(config).await.unwrap();
        let addr = broker.gearman_addr.to_string();
        let anonymous = BrokerClient::new(addr.clone());
        assert!(anonymous.fleet_status().await.is_ok(), "read-only stays open");
        let refused = anonymous.drain("pod-1").await;
        assert!(matches!(&refused, Err(BrokerError::Reply { reply, .. }) if reply.starts_with("ERR AUTH_REQUIRED")));
        let wrong = BrokerClient::new(addr.clone()).with_token(Some("nope".into()));
        assert!(matches!(wrong.fleet_status().await, Err(BrokerError::Reply { .. })), "a wrong token is an error");
        let client = BrokerClient::new(addr).with_token(Some("s3cret".into()));
        client.drain("pod-1").await.unwrap();
        client.undrain("pod-1").await.unwrap();
        assert!(client.fleet_status().await.is_ok());
        broker.stop().await;
    }
}
