//! TCP keepalive and `TCP_USER_TIMEOUT` on accepted connections, so that a peer that vanished
//! without closing (a node lost, a pod's network torn down) is noticed and its connection ended
//! like any other: the jobs it held go back to the queue.
//!
//! Keepalive probes an idle connection; it does not fire while the broker has unacknowledged
//! bytes queued for the peer (the retransmission timer governs then, for up to ~15 minutes by
//! default), so `TCP_USER_TIMEOUT` bounds that case by the same time.

use std::io;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

use crate::config::Config;

/// Linux's largest `TCP_KEEPIDLE` and `TCP_KEEPINTVL` (seconds) and `TCP_KEEPCNT`.
const MAX_SECS: u64 = 32_767;
const MAX_COUNT: u32 = 127;

/// Keepalive settings for accepted sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Quiet time before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Unanswered probes after which the connection is dropped.
    pub count: u32,
}

impl Keepalive {
    /// From `--tcp-keepalive-idle`, `-interval` and `-count`; `None` (no keepalive, no user
    /// timeout) when any of them is 0. The kernel counts whole seconds: durations are rounded up
    /// to them, and all three are capped at what Linux accepts.
    pub fn from_config(config: &Config) -> Option<Keepalive> {
        let secs = |d: Duration| Duration::from_secs(d.as_millis().div_ceil(1000).min(u128::from(MAX_SECS)) as u64);
        let (idle, interval, count) =
            (config.tcp_keepalive_idle, config.tcp_keepalive_interval, config.tcp_keepalive_count);
        if idle.is_zero() || interval.is_zero() || count == 0 {
            return None;
        }
        Some(Keepalive { idle: secs(idle), interval: secs(interval), count: count.min(MAX_COUNT) })
    }

    /// The longest a vanished peer goes unnoticed: idle + interval × count (90 s by default).
    /// Also the `TCP_USER_TIMEOUT`: how long bytes sent to the peer may stay unacknowledged.
    pub fn bound(&self) -> Duration {
        self.idle + self.interval * self.count
    }

    /// Sets the options on an accepted socket (once, before it is served).
    pub fn apply(&self, socket: SockRef<'_>) -> io::Result<()> {
        let params = TcpKeepalive::new().with_time(self.idle).with_interval(self.interval).with_retries(self.count);
        socket.set_tcp_keepalive(&params)?;
        socket.set_tcp_user_timeout(Some(self.bound()))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use clap::Parser;

    use super::*;

    fn config(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("gearfleet-broker").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn the_defaults_drop_a_vanished_peer_within_90_seconds() {
        let k = Keepalive::from_config(&config(&[])).expect("on by default");
        assert_eq!(k, Keepalive { idle: Duration::from_secs(30), interval: Duration::from_secs(10), count: 6 });
        assert_eq!(k.bound(), Duration::from_secs(90));
    }

    #[test]
    fn flags_tune_it_and_zero_turns_it_off() {
        let k = Keepalive::from_config(&config(&[
            "--tcp-keepalive-idle",
            "1m",
            "--tcp-keepalive-interval",
            "1500ms",
            "--tcp-keepalive-count",
            "3",
        ]))
        .unwrap();
        assert_eq!(
            (k.idle, k.interval, k.count),
            (Duration::from_secs(60), Duration::from_secs(2), 3),
            "whole seconds"
        );
        assert_eq!(k.bound(), Duration::from_secs(66));
        for off in [["--tcp-keepalive-idle", "0"], ["--tcp-keepalive-interval", "0s"], ["--tcp-keepalive-count", "0"]] {
            assert_eq!(Keepalive::from_config(&config(&off)), None, "{off:?}");
        }
        let capped = Keepalive::from_config(&config(&["--tcp-keepalive-idle", "30d", "--tcp-keepalive-count", "1000"]));
        assert_eq!(capped.map(|k| (k.idle.as_secs(), k.count)), Some((MAX_SECS, MAX_COUNT)));
        assert!(Config::try_parse_from(["gearfleet-broker", "--tcp-keepalive-count", "-1"]).is_err());
    }

    #[test]
    fn an_accepted_socket_reads_the_options_back() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let socket = SockRef::from(&accepted);
        assert!(!socket.keepalive().unwrap(), "off until set");
        let k = Keepalive::from_config(&config(&[])).unwrap();
        k.apply(SockRef::from(&accepted)).unwrap();
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), Duration::from_secs(30));
        assert_eq!(socket.tcp_keepalive_interval().unwrap(), Duration::from_secs(10));
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 6);
        assert_eq!(socket.tcp_user_timeout().unwrap(), Some(Duration::from_secs(90)));
    }
}
