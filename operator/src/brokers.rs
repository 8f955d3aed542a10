//! Every broker the operator talks to. Workers connect to all of them and a job lives in exactly
//! one, so the operator reads each broker's stats and connections and sends a drain, undrain,
//! disconnect, retry policy or cancel to every one of them.

use std::fmt;

use futures::future::join_all;

use crate::broker_client::{BrokerClient, BrokerError};

/// The operator's brokers, in the order it was given them; cheap to clone.
#[derive(Clone, Debug)]
pub struct Brokers {
    clients: Vec<BrokerClient>,
}

/// The brokers a command failed on, with why (it succeeded on the others).
#[derive(Debug, thiserror::Error)]
pub struct FanOutError(pub Vec<BrokerError>);

impl fmt::Display for FanOutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errors: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&errors.join("; "))
    }
}

impl Brokers {
    /// Clients for `addresses`, each authenticating with `token` when one is given.
    pub fn new(addresses: &[String], token: Option<String>) -> Brokers {
        let clients = addresses.iter().map(|a| BrokerClient::new(a.clone()).with_token(token.clone())).collect();
        Brokers { clients }
    }

    /// The addresses in a list such as `GEARMAN_SERVERS`: separated by commas or white space.
    pub fn parse_list(list: &str) -> Vec<String> {
        list.split(|c: char| c == ',' || c.is_whitespace()).filter(|a| !a.is_empty()).map(str::to_string).collect()
    }

    /// One client per broker.
    pub fn clients(&self) -> &[BrokerClient] {
        &self.clients
    }

    /// The brokers' addresses.
    pub fn addresses(&self) -> Vec<String> {
        self.clients.iter().map(|c| c.addr().to_string()).collect()
    }

    /// Runs `request` against every broker at once; `Ok` when every one succeeded.
    async fn on_all<'a, F, Fut>(&'a self, request: F) -> Result<(), FanOutError>
    where
        F: Fn(&'a BrokerClient) -> Fut,
        Fut: std::future::Future<Output = Result<(), BrokerError>>,
    {
        let replies = join_all(self.clients.iter().map(request)).await;
        let errors: Vec<BrokerError> = replies.into_iter().filter_map(Result::err).collect();
        if errors.is_empty() { Ok(()) } else { Err(FanOutError(errors)) }
    }

    /// Sends the admin command `command` (whose reply is `OK`) to every broker at once.
    pub async fn ok(&self, command: &str) -> Result<(), FanOutError> {
        self.on_all(|c| c.ok(command)).await
    }

    /// `fleet drain TARGET` on every broker.
    pub async fn drain(&self, target: &str) -> Result<(), FanOutError> {
        self.on_all(|c| c.drain(target)).await
    }

    /// `fleet undrain TARGET` on every broker.
    pub async fn undrain(&self, target: &str) -> Result<(), FanOutError> {
        self.on_all(|c| c.undrain(target)).await
    }

    /// `fleet disconnect TARGET` on every broker.
    pub async fn disconnect(&self, target: &str) -> Result<(), FanOutError> {
        self.on_all(|c| c.disconnect(target)).await
    }

    /// `cancel job HANDLE` on every broker. A handle names its broker's host, so at most one
    /// knows it; `Ok` when one removed the job.
    pub async fn cancel_job(&self, handle: &str) -> Result<(), FanOutError> {
        let replies = join_all(self.clients.iter().map(|c| c.cancel_job(handle))).await;
        if replies.iter().any(Result::is_ok) {
            return Ok(());
        }
        Err(FanOutError(replies.into_iter().filter_map(Result::err).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_list_is_split_on_commas_and_spaces() {
        assert_eq!(
            Brokers::parse_list("a:4730, b:4730,,c:4730\n"),
            vec!["a:4730".to_string(), "b:4730".into(), "c:4730".into()]
        );
        assert_eq!(Brokers::parse_list("gearfleet-broker:4730"), vec!["gearfleet-broker:4730".to_string()]);
        assert!(Brokers::parse_list(" , ").is_empty());
    }

    /// Against three real brokers, one of them stopped: a drain reaches the two that run and names
    /// the one that does not.
    #[tokio::test]
    async fn a_command_goes_to_every_broker_and_failures_name_theirs() {
        let mut running = Vec::new();
        for _ in 0..3 {
            running.push(gearfleet_broker::start(gearfleet_broker::Config::for_tests()).await.expect("broker"));
        }
        let addrs: Vec<String> = running.iter().map(|b| b.gearman_addr.to_string()).collect();
        let brokers = Brokers::new(&addrs, None);
        brokers.drain("pod-1").await.expect("all three accept");
        let stopped = running.pop().expect("third");
        stopped.stop().await;
        let err = brokers.undrain("pod-1").await.expect_err("one is down");
        assert_eq!(err.0.len(), 1);
        assert!(err.to_string().contains(&addrs[2]), "{err}");
        assert!(brokers.cancel_job("H:nowhere:1").await.is_err(), "no broker knows the handle");
        for b in running {
            b.stop().await;
        }
    }
}
