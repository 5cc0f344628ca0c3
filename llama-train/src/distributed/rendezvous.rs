//! How the ranks of a run find each other: each rank joins at the coordinator, which waits for
//! the run's world of ranks and sends each the roster (every rank's address, and a fresh run
//! id that the ranks' exchange messages are then signed with).
//!
//! The protocol, on one TCP connection per rank:
//! 1. coordinator → rank: [`MAGIC`], then a fresh 16-byte nonce;
//! 2. rank → coordinator: a frame holding a [`JoinRequest`], MAC over (`join`, nonce, body);
//! 3. coordinator → rank, once the world is complete (or at once, when refusing): a frame
//!    holding a [`JoinReply`], MAC over (`reply`, nonce, body).
//!
//! The nonce makes an old reply useless to replay. The coordinator is
//! [`crate::distributed::coordinator`].

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::distributed::run_key::RunKey;
use crate::distributed::settings::{CollectiveError, CollectiveSettings, PeerAddress};
use crate::distributed::wire::{is_timeout, read_frame, write_frame};

/// What a coordinator says first, so that a rank that reached something else says so.
pub const MAGIC: &[u8; 12] = b"llama-rdv-1\n";

/// Bytes of the coordinator's nonce.
pub const NONCE_BYTES: usize = 16;

/// The most a join may hold (the coordinator reads no more).
pub const MAX_JOIN_BYTES: usize = 4096;

/// The most a reply may hold: the addresses of up to a few thousand ranks.
const MAX_REPLY_BYTES: usize = 1 << 20;

/// How long to wait for the coordinator's port to answer before calling it unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A rank asking to join.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// Its rank.
    pub rank: usize,
    /// The world size it was started with.
    pub world_size: usize,
    /// A digest of its settings and training data: the ranks must agree.
    pub digest: u64,
    /// Where its exchange listens.
    pub address: String,
}

/// The coordinator's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum JoinReply {
    /// The world is complete.
    Roster {
        /// The run's id (hex): the ranks sign their exchanges with it.
        run_id: String,
        /// Every rank's address, by rank.
        addresses: Vec<String>,
    },
    /// This rank cannot join.
    Refused {
        /// Why.
        reason: String,
    },
}

/// What a rank learns by joining.
#[derive(Debug, Clone)]
pub struct Roster {
    /// The run's id.
    pub run_id: Vec<u8>,
    /// Every rank's address, by rank.
    pub addresses: Vec<PeerAddress>,
}

/// Joins the run at `settings.coordinator` as `settings.rank`, announcing `address`; waits (at
/// most `settings.timeout`) until every rank has joined.
pub fn join(
    settings: &CollectiveSettings,
    key: &RunKey,
    digest: u64,
    address: &PeerAddress,
) -> Result<Roster, CollectiveError> {
    let coordinator = &settings.coordinator;
    let what = format!(
        "joining the run (rank {} of {}, coordinator {coordinator})",
        settings.rank, settings.world_size
    );
    let mut stream = connect(coordinator)?;
    let lost = |e: std::io::Error| {
        if is_timeout(&e) {
            CollectiveError::Timeout {
                what: what.clone(),
                others: others(settings),
                seconds: settings.timeout.as_secs(),
            }
        } else {
            CollectiveError::Failed {
                what: what.clone(),
                others: "the coordinator".into(),
                detail: e.to_string(),
            }
        }
    };
    stream
        .set_read_timeout(Some(settings.timeout))
        .and_then(|()| stream.set_write_timeout(Some(settings.timeout)))
        .map_err(lost)?;
    let mut hello = [0u8; MAGIC.len() + NONCE_BYTES];
    stream.read_exact(&mut hello).map_err(lost)?;
    if &hello[..MAGIC.len()] != MAGIC {
        return Err(CollectiveError::Failed {
            what,
            others: "the coordinator".into(),
            detail: format!("{coordinator} is not a llama-cli coordinator"),
        });
    }
    let nonce = &hello[MAGIC.len()..];
    let request = JoinRequest {
        rank: settings.rank,
        world_size: settings.world_size,
        digest,
        address: address.to_string(),
    };
    let body =
        serde_json::to_vec(&request).map_err(|e| CollectiveError::Mismatch(e.to_string()))?;
    write_frame(&mut stream, &body, &key.mac(&[b"join", nonce, &body])).map_err(lost)?;
    let (body, mac) = read_frame(&mut stream, MAX_REPLY_BYTES).map_err(lost)?;
    if !key.verify(&[b"reply", nonce, &body], &mac) {
        return Err(CollectiveError::Forged {
            what,
            party: format!("the coordinator at {coordinator}"),
        });
    }
    let reply: JoinReply = serde_json::from_slice(&body).map_err(|e| CollectiveError::Failed {
        what: what.clone(),
        others: "the coordinator".into(),
        detail: format!("a malformed reply: {e}"),
    })?;
    match reply {
        JoinReply::Refused { reason } => Err(CollectiveError::Refused {
            address: coordinator.to_string(),
            rank: settings.rank,
            reason,
        }),
        JoinReply::Roster { run_id, addresses } => {
            if addresses.len() != settings.world_size {
                return Err(CollectiveError::Mismatch(format!(
                    "the coordinator sent {} addresses for a world of {}",
                    addresses.len(),
                    settings.world_size
                )));
            }
            Ok(Roster {
                run_id: run_id.into_bytes(),
                addresses: addresses
                    .iter()
                    .map(|a| a.parse())
                    .collect::<Result<_, _>>()?,
            })
        }
    }
}

/// A connection to the coordinator, within [`CONNECT_TIMEOUT`].
fn connect(address: &PeerAddress) -> Result<TcpStream, CollectiveError> {
    let unreachable = |detail: String| CollectiveError::Unreachable {
        address: address.to_string(),
        detail,
    };
    let targets: Vec<_> = (address.host.as_str(), address.port)
        .to_socket_addrs()
        .map_err(|e| unreachable(e.to_string()))?
        .collect();
    let mut last = "no address".to_string();
    for target in targets {
        match TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e.to_string(),
        }
    }
    Err(unreachable(last))
}

/// The ranks other than this one, in words: `rank 1`, `ranks 0, 2, 3`.
pub fn others(settings: &CollectiveSettings) -> String {
    let ranks: Vec<String> = (0..settings.world_size)
        .filter(|&r| r != settings.rank)
        .map(|r| r.to_string())
        .collect();
    match ranks.len() {
        1 => format!("rank {}", ranks[0]),
        _ => format!("ranks {}", ranks.join(", ")),
    }
}

/// Sends `reply` to a rank whose nonce is `nonce`.
pub fn send_reply(
    stream: &mut impl Write,
    key: &RunKey,
    nonce: &[u8],
    reply: &JoinReply,
) -> std::io::Result<()> {
    let body = serde_json::to_vec(reply)?;
    write_frame(stream, &body, &key.mac(&[b"reply", nonce, &body]))
}
