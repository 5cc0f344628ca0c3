//! Where a process stands in a data-parallel run: its rank, the world size, the coordinator's
//! and its own addresses, the timeout; and the errors of such a run.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// How long the ranks wait for each other by default (joining, and each step's exchange,
/// which also waits while rank 0 evaluates and saves).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Errors of data-parallel training.
#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    /// Bad world size or rank.
    #[error("rank {rank} is not below the world size {world_size} (ranks are 0..world size)")]
    Rank {
        /// This process's rank.
        rank: usize,
        /// The number of ranks.
        world_size: usize,
    },
    /// A world size of 0.
    #[error("the world size must be at least 1")]
    WorldSize,
    /// An address that is not `ws://HOST:PORT`.
    #[error("bad address {0:?}: expected ws://HOST:PORT")]
    Address(String),
    /// The coordinator does not answer.
    #[error("cannot reach the coordinator at {address}: {detail} (start it with `llama-cli coordinator --port PORT`, or use `llama-cli launch`)")]
    Unreachable {
        /// Its address.
        address: String,
        /// What the connection attempt said.
        detail: String,
    },
    /// This rank's own port is taken.
    #[error("this rank's port {port} is not free: {detail} (choose another with --node-address)")]
    PortTaken {
        /// The port.
        port: u16,
        /// What binding it said.
        detail: String,
    },
    /// A collective call did not finish in time.
    #[error("{what}: no answer from {others} within {seconds} s (a rank died, hangs, or was never started)")]
    Timeout {
        /// The call, e.g. `step 12's gradient all-reduce`.
        what: String,
        /// The ranks waited for, e.g. `rank 1`.
        others: String,
        /// The timeout.
        seconds: u64,
    },
    /// A collective call failed.
    #[error("{what} failed ({others} may have died): {detail}")]
    Failed {
        /// The call.
        what: String,
        /// The other ranks.
        others: String,
        /// burn-collective's error.
        detail: String,
    },
    /// A network runtime or server of this process could not start.
    #[error("cannot start {what}: {detail}")]
    Start {
        /// The coordinator, or this rank's exchange.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// The ranks do not run the same job.
    #[error("the ranks disagree: {0}")]
    Mismatch(String),
}

/// Where this process stands in a data-parallel run.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectiveSettings {
    /// Number of ranks, at least 1.
    pub world_size: usize,
    /// This process's rank, below `world_size`. Rank 0 evaluates and saves.
    pub rank: usize,
    /// The coordinator (burn-collective's orchestrator), `ws://HOST:PORT`.
    pub coordinator: WsAddress,
    /// Where the other ranks reach this one, `ws://HOST:PORT`; this rank serves its tensors
    /// on PORT. Default: `ws://127.0.0.1:<coordinator port + 1 + rank>` (one machine).
    pub node_address: Option<WsAddress>,
    /// How long to wait for the other ranks in any collective call.
    pub timeout: Duration,
}

impl CollectiveSettings {
    /// Rank `rank` of `world_size`, coordinated by `coordinator`, other settings default.
    pub fn new(
        world_size: usize,
        rank: usize,
        coordinator: WsAddress,
    ) -> Result<Self, CollectiveError> {
        if world_size == 0 {
            return Err(CollectiveError::WorldSize);
        }
        if rank >= world_size {
            return Err(CollectiveError::Rank { rank, world_size });
        }
        Ok(Self {
            world_size,
            rank,
            coordinator,
            node_address: None,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Whether this rank evaluates and saves.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// This rank's address (see [`Self::node_address`]).
    pub fn node(&self) -> WsAddress {
        self.node_address.clone().unwrap_or_else(|| WsAddress {
            host: "127.0.0.1".into(),
            port: self
                .coordinator
                .port
                .saturating_add(1)
                .saturating_add(self.rank as u16),
        })
    }
}

/// A `ws://HOST:PORT` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsAddress {
    /// Host name or IP address.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl FromStr for WsAddress {
    type Err = CollectiveError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || CollectiveError::Address(text.to_string());
        let rest = text.strip_prefix("ws://").ok_or_else(bad)?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || port == 0 || host.contains('/') {
            return Err(bad());
        }
        Ok(Self {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for WsAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ws://{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_print() {
        let a: WsAddress = "ws://127.0.0.1:29500".parse().unwrap();
        assert_eq!(a.port, 29500);
        assert_eq!(a.to_string(), "ws://127.0.0.1:29500");
        for bad in [
            "127.0.0.1:1",
            "ws://host",
            "ws://:5",
            "ws://h:0",
            "ws://h:99999",
            "http://h:1",
        ] {
            assert!(bad.parse::<WsAddress>().is_err(), "{bad}");
        }
    }

    #[test]
    fn settings_check_the_rank_and_default_the_node_port() {
        let coordinator: WsAddress = "ws://127.0.0.1:4000".parse().unwrap();
        assert!(matches!(
            CollectiveSettings::new(2, 2, coordinator.clone()),
            Err(CollectiveError::Rank {
                rank: 2,
                world_size: 2
            })
        ));
        assert!(CollectiveSettings::new(0, 0, coordinator.clone()).is_err());
        let s = CollectiveSettings::new(3, 2, coordinator).unwrap();
        assert_eq!(s.node().to_string(), "ws://127.0.0.1:4003");
        assert!(!s.is_main());
    }
}
