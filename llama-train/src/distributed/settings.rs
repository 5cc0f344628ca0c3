//! Where a process stands in a data-parallel run: its rank, the world size, the coordinator's
//! and its own addresses, the run's token, the timeout; and the errors of such a run.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::distributed::run_key::{RunToken, TOKEN_VARIABLE};
use crate::distributed::wire::is_loopback;

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
    /// An address that is not `HOST:PORT`.
    #[error("bad address {0:?}: expected HOST:PORT")]
    Address(String),
    /// `LLAMA_RUN_TOKEN` is not a token.
    #[error("{TOKEN_VARIABLE} must be at least 32 hex digits (128 bits), e.g. from `openssl rand -hex 32`")]
    Token,
    /// A run that reaches past this machine without a token.
    #[error("{what} is not on this machine ({address}), and {TOKEN_VARIABLE} is not set: anyone who can reach it could join the run, read its gradients or inject their own. Give every rank and the coordinator the same {TOKEN_VARIABLE} (e.g. from `openssl rand -hex 32`), or pass --insecure on a network you trust")]
    NoToken {
        /// The coordinator, or this rank's address.
        what: &'static str,
        /// Its address.
        address: String,
    },
    /// The coordinator does not answer.
    #[error("cannot reach the coordinator at {address}: {detail} (start it with `llama-cli coordinator --world-size W --port PORT`, or use `llama-cli launch`)")]
    Unreachable {
        /// Its address.
        address: String,
        /// What the connection attempt said.
        detail: String,
    },
    /// A listener cannot bind its address (taken, or not an address of this machine).
    #[error("cannot listen on {address}: {detail} ({hint})")]
    Listen {
        /// The address.
        address: String,
        /// What binding it said.
        detail: String,
        /// What to change.
        hint: &'static str,
    },
    /// The coordinator refused this rank.
    #[error("the coordinator at {address} refused rank {rank}: {reason}")]
    Refused {
        /// The coordinator.
        address: String,
        /// This rank.
        rank: usize,
        /// Its reason.
        reason: String,
    },
    /// A message that does not carry this run's MAC.
    #[error("{what}: {party} answered without this run's signature (a different {TOKEN_VARIABLE}, set on one side only, or not a party of this run)")]
    Forged {
        /// The call.
        what: String,
        /// Who answered, e.g. `rank 1`.
        party: String,
    },
    /// A rank sent a buffer that cannot be summed.
    #[error("{what}: rank {rank} sent a bad buffer: {detail}")]
    Invalid {
        /// The call.
        what: String,
        /// The rank.
        rank: usize,
        /// What was wrong.
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
        /// What broke.
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
    /// The coordinator, `HOST:PORT`.
    pub coordinator: PeerAddress,
    /// Where the other ranks reach this one, `HOST:PORT`; this rank serves its buffers there,
    /// listening on that host only. Default: `127.0.0.1:<coordinator port + 1 + rank>` (one
    /// machine).
    pub node_address: Option<PeerAddress>,
    /// How long to wait for the other ranks in any collective call.
    pub timeout: Duration,
    /// The run's secret, which signs every message (`LLAMA_RUN_TOKEN`).
    pub token: Option<RunToken>,
    /// Allow a run that reaches past this machine without a token.
    pub insecure: bool,
}

impl CollectiveSettings {
    /// Rank `rank` of `world_size`, coordinated by `coordinator`, other settings default.
    pub fn new(
        world_size: usize,
        rank: usize,
        coordinator: PeerAddress,
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
            token: None,
            insecure: false,
        })
    }

    /// Refuses a run whose coordinator or rank address is not on this machine, unless it has
    /// a token or is `insecure`.
    pub fn check_security(&self) -> Result<(), CollectiveError> {
        if self.token.is_none() && !self.insecure {
            for (what, address) in [
                ("the coordinator", &self.coordinator),
                ("this rank", &self.node()),
            ] {
                require_token(what, address)?;
            }
        }
        Ok(())
    }

    /// Whether this rank evaluates and saves.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// This rank's address (see [`Self::node_address`]).
    pub fn node(&self) -> PeerAddress {
        self.node_address.clone().unwrap_or_else(|| PeerAddress {
            host: "127.0.0.1".into(),
            port: self
                .coordinator
                .port
                .saturating_add(1)
                .saturating_add(self.rank as u16),
        })
    }
}

/// Refuses `address` (of `what`) when it is not on this machine: a run that reaches past it
/// needs a token.
pub fn require_token(what: &'static str, address: &PeerAddress) -> Result<(), CollectiveError> {
    if is_loopback(&address.host) {
        Ok(())
    } else {
        Err(CollectiveError::NoToken {
            what,
            address: address.to_string(),
        })
    }
}

/// A `HOST:PORT` address (`tcp://HOST:PORT` and the older `ws://HOST:PORT` are read too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddress {
    /// Host name or IP address.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl FromStr for PeerAddress {
    type Err = CollectiveError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || CollectiveError::Address(text.to_string());
        let rest = ["tcp://", "ws://"]
            .iter()
            .find_map(|scheme| text.strip_prefix(scheme))
            .unwrap_or(text);
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() || port == 0 || host.contains('/') || host.contains("://") {
            return Err(bad());
        }
        Ok(Self {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for PeerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_print() {
        for text in [
            "127.0.0.1:29500",
            "tcp://127.0.0.1:29500",
            "ws://127.0.0.1:29500",
        ] {
            let a: PeerAddress = text.parse().unwrap();
            assert_eq!(a.port, 29500);
            assert_eq!(a.to_string(), "127.0.0.1:29500");
        }
        let v6: PeerAddress = "[::1]:7".parse().unwrap();
        assert_eq!(
            (v6.host.as_str(), v6.to_string()),
            ("::1", "[::1]:7".into())
        );
        for bad in [
            "host",
            "ws://host",
            "ws://:5",
            "ws://h:0",
            "ws://h:99999",
            "http://h:1",
        ] {
            assert!(bad.parse::<PeerAddress>().is_err(), "{bad}");
        }
    }

    #[test]
    fn settings_check_the_rank_and_default_the_node_port() {
        let coordinator: PeerAddress = "127.0.0.1:4000".parse().unwrap();
        assert!(matches!(
            CollectiveSettings::new(2, 2, coordinator.clone()),
            Err(CollectiveError::Rank {
                rank: 2,
                world_size: 2
            })
        ));
        assert!(CollectiveSettings::new(0, 0, coordinator.clone()).is_err());
        let s = CollectiveSettings::new(3, 2, coordinator).unwrap();
        assert_eq!(s.node().to_string(), "127.0.0.1:4003");
        assert!(!s.is_main());
    }

    #[test]
    fn a_run_past_this_machine_needs_a_token_or_insecure() {
        let local = CollectiveSettings::new(2, 0, "127.0.0.1:4000".parse().unwrap()).unwrap();
        assert!(local.check_security().is_ok());
        let mut remote = local.clone();
        remote.node_address = Some("10.0.0.2:4001".parse().unwrap());
        let err = remote.check_security().unwrap_err();
        assert!(
            err.to_string()
                .contains("this rank is not on this machine (10.0.0.2:4001)"),
            "{err}"
        );
        let mut far = CollectiveSettings::new(2, 1, "10.0.0.1:4000".parse().unwrap()).unwrap();
        far.node_address = Some("127.0.0.1:4002".parse().unwrap());
        assert!(far
            .check_security()
            .unwrap_err()
            .to_string()
            .contains("the coordinator"));
        far.insecure = true;
        assert!(far.check_security().is_ok());
        far.insecure = false;
        far.token = Some(RunToken::generate());
        assert!(far.check_security().is_ok());
    }
}
