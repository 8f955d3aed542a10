//! Server addresses and the environment variables the SDK reads.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use gearfleet_proto::DEFAULT_PORT;

/// Comma-separated `host[:port]` list of Gearman servers (default `127.0.0.1:4730`).
pub const ENV_SERVERS: &str = "GEARMAN_SERVERS";
/// Client id sent with SET_CLIENT_ID (default: `POD_NAME`, else the host name).
pub const ENV_CLIENT_ID: &str = "GEARFLEET_CLIENT_ID";
/// Set by Kubernetes through the downward API; the default client id.
pub const ENV_POD_NAME: &str = "POD_NAME";
/// How long a draining worker waits for jobs in hand before force-stopping them (default 45s).
pub const ENV_DRAIN_TIMEOUT: &str = "GEARFLEET_DRAIN_TIMEOUT";
/// Listen address for `/healthz`, `/readyz`, `/state`, `/metrics` (default `0.0.0.0:9731`);
/// empty, `off`, `none` or `disabled` turns the endpoint off.
pub const ENV_HTTP: &str = "GEARFLEET_WORKER_HTTP";
/// Connection slots per server, i.e. jobs run at once per server (default 1).
pub const ENV_CONCURRENCY: &str = "GEARFLEET_CONCURRENCY";
/// Exit (status 0) after this many jobs, so the Deployment replaces the process (default: never).
pub const ENV_MAX_JOBS: &str = "GEARFLEET_MAX_JOBS";

/// Default for [`ENV_HTTP`].
pub const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:9731";
/// Default for [`ENV_DRAIN_TIMEOUT`].
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(45);

/// A configuration value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct ConfigError {
    pub what: &'static str,
    pub value: String,
    pub reason: String,
}

impl ConfigError {
    fn new(what: &'static str, value: &str, reason: impl fmt::Display) -> ConfigError {
        ConfigError { what, value: value.to_string(), reason: reason.to_string() }
    }
}

/// A Gearman server: host name or IP address, and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerAddr {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

impl ServerAddr {
    pub fn new(host: impl Into<String>, port: u16) -> ServerAddr {
        ServerAddr { host: host.into(), port }
    }
}

impl Default for ServerAddr {
    fn default() -> ServerAddr {
        ServerAddr::new("127.0.0.1", DEFAULT_PORT)
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl From<SocketAddr> for ServerAddr {
    fn from(a: SocketAddr) -> ServerAddr {
        ServerAddr::new(a.ip().to_string(), a.port())
    }
}

impl FromStr for ServerAddr {
    type Err = ConfigError;

    /// Parses `host`, `host:port`, `[v6]` or `[v6]:port`; the port defaults to 4730.
    fn from_str(s: &str) -> Result<ServerAddr, ConfigError> {
        let s = s.trim();
        let err = |reason: &str| ConfigError::new("server address", s, reason);
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(|| err("missing ']'"))?;
            match after {
                "" => (host, None),
                p => (host, Some(p.strip_prefix(':').ok_or_else(|| err("expected ':' after ']'"))?)),
            }
        } else if s.matches(':').count() > 1 {
            // A bare IPv6 address: no port possible without brackets.
            (s, None)
        } else {
            match s.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        if host.is_empty() {
            return Err(err("empty host"));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| err("bad port"))?,
        };
        Ok(ServerAddr::new(host, port))
    }
}

/// Parses a comma-separated server list. Blank entries are skipped; an empty list means the
/// default server, `127.0.0.1:4730`.
pub fn parse_servers(list: &str) -> Result<Vec<ServerAddr>, ConfigError> {
    let servers = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(ServerAddr::from_str)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(if servers.is_empty() { vec![ServerAddr::default()] } else { servers })
}

/// The servers named by `GEARMAN_SERVERS`, or the default server.
pub fn servers_from_env() -> Result<Vec<ServerAddr>, ConfigError> {
    parse_servers(&std::env::var(ENV_SERVERS).unwrap_or_default())
}

/// `GEARFLEET_CLIENT_ID`, else `POD_NAME`, else the host name.
pub fn default_client_id() -> String {
    [ENV_CLIENT_ID, ENV_POD_NAME]
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .map(|v| v.trim().to_string())
        .find(|v| !v.is_empty())
        .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned())
}

/// A duration given as plain seconds (`45`) or in humantime form (`45s`, `1m30s`, `500ms`).
pub fn parse_duration(what: &'static str, s: &str) -> Result<Duration, ConfigError> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| ConfigError::new(what, s, e))
}

/// An optional listen address: empty, `off`, `none`, `disabled` or `false` mean "no listener".
pub fn parse_optional_addr(what: &'static str, s: &str) -> Result<Option<SocketAddr>, ConfigError> {
    let s = s.trim();
    if s.is_empty() || ["off", "none", "disabled", "false"].iter().any(|w| s.eq_ignore_ascii_case(w)) {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|e| ConfigError::new(what, s, e))
}

/// Reads an environment variable that is set and not blank.
pub(crate) fn env_nonempty(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_lists() {
        let s = parse_servers("gearman-a:4731, gearman-b ,10.0.0.1:7003").unwrap();
        assert_eq!(
            s,
            vec![
                ServerAddr::new("gearman-a", 4731),
                ServerAddr::new("gearman-b", 4730),
                ServerAddr::new("10.0.0.1", 7003)
            ]
        );
        assert_eq!(parse_servers("").unwrap(), vec![ServerAddr::new("127.0.0.1", 4730)]);
        assert_eq!(parse_servers(" , ").unwrap(), vec![ServerAddr::default()]);
    }

    #[test]
    fn parses_ipv6() {
        assert_eq!("[::1]:4000".parse::<ServerAddr>().unwrap(), ServerAddr::new("::1", 4000));
        assert_eq!("[::1]".parse::<ServerAddr>().unwrap(), ServerAddr::new("::1", 4730));
        assert_eq!("fe80::1".parse::<ServerAddr>().unwrap(), ServerAddr::new("fe80::1", 4730));
        assert_eq!(ServerAddr::new("::1", 4000).to_string(), "[::1]:4000");
    }

    #[test]
    fn rejects_bad_addresses() {
        assert!("host:".parse::<ServerAddr>().is_err());
        assert!("host:0".parse::<ServerAddr>().is_err());
        assert!("host:99999".parse::<ServerAddr>().is_err());
        assert!(":4730".parse::<ServerAddr>().is_err());
        assert!("[::1".parse::<ServerAddr>().is_err());
        assert!(parse_servers("a,b:x").is_err());
    }

    #[test]
    fn parses_durations_and_addresses() {
        assert_eq!(parse_duration("t", "45").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_duration("t", "1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("t", "250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("t", "soon").is_err());
        assert_eq!(parse_optional_addr("a", "off").unwrap(), None);
        assert_eq!(parse_optional_addr("a", "").unwrap(), None);
        assert_eq!(parse_optional_addr("a", "127.0.0.1:9731").unwrap(), Some("127.0.0.1:9731".parse().unwrap()));
        assert!(parse_optional_addr("a", "localhost").is_err());
    }
}
