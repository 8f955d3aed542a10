//! Opening a framed Gearman connection, shared by the worker slots and the client.

use std::time::Duration;

use gearfleet_proto::Codec;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use crate::config::ServerAddr;

pub(crate) type Conn = Framed<TcpStream, Codec>;

pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `addr` (resolving its host name) within `timeout`.
pub(crate) async fn connect(addr: &ServerAddr, timeout: Duration) -> std::io::Result<Conn> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect((addr.host.as_str(), addr.port)))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    // Gearman is request/response with small packets: do not let Nagle hold them back.
    stream.set_nodelay(true)?;
    Ok(Framed::new(stream, Codec::client()))
}
