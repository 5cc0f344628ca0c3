//! The coordinator of a data-parallel run: the ranks join here (see
//! [`crate::distributed::rendezvous`]), and it tells each where the others are. Tensors do not
//! pass through it; the ranks exchange them directly.
//!
//! It cannot be wedged or poisoned by a stranger: the world size is its own; each connection
//! must send a signed join within [`HANDSHAKE_TIMEOUT`] and is then dropped; a refused join
//! changes nothing; at most W connections wait for their world and W + 16 more may be in
//! their handshake (a connection past that is closed at once); a joined rank whose connection closes frees its slot; and once the world is complete the
//! coordinator forgets the run and serves the next one.

use std::collections::HashSet;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::distributed::rendezvous::{
    send_reply, JoinReply, JoinRequest, MAGIC, MAX_JOIN_BYTES, NONCE_BYTES,
};
use crate::distributed::run_key::RunKey;
use crate::distributed::settings::{CollectiveError, PeerAddress};
use crate::distributed::wire::read_frame;

/// How long a connection may take to send its join.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a joined rank waits for the rest of its world before the coordinator drops it
/// (a rank gives up sooner, after its own `--collective-timeout`, and that frees its slot).
const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// How often a waiting connection checks whether its world is complete or its rank is gone.
const POLL: Duration = Duration::from_millis(20);

/// A coordinator bound to its address, ready to serve.
pub struct Coordinator {
    listener: TcpListener,
    shared: Arc<Shared>,
}

struct Shared {
    world_size: usize,
    key: RunKey,
    round: Mutex<Vec<Option<Member>>>,
    /// Connections in their handshake, and joined ones.
    handshaking: AtomicUsize,
    joined: AtomicUsize,
}

/// A rank that joined and waits for its world.
struct Member {
    nonce: [u8; NONCE_BYTES],
    digest: u64,
    address: String,
    /// The same connection, to see whether the rank is still there.
    probe: TcpStream,
    reply: Arc<Mutex<Option<JoinReply>>>,
}

impl Coordinator {
    /// Binds `address` for a run of `world_size` ranks whose messages `key` signs.
    pub fn bind(
        address: &PeerAddress,
        world_size: usize,
        key: RunKey,
    ) -> Result<Self, CollectiveError> {
        if world_size == 0 {
            return Err(CollectiveError::WorldSize);
        }
        let listener = TcpListener::bind((address.host.as_str(), address.port)).map_err(|e| {
            CollectiveError::Listen {
                address: address.to_string(),
                detail: e.to_string(),
                hint: "choose another --port, or a --host of this machine",
            }
        })?;
        Ok(Self {
            listener,
            shared: Arc::new(Shared {
                world_size,
                key,
                round: Mutex::new((0..world_size).map(|_| None).collect()),
                handshaking: AtomicUsize::new(0),
                joined: AtomicUsize::new(0),
            }),
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves runs until the process ends: each connection on a thread of its own.
    pub fn serve(self) {
        for stream in self.listener.incoming().flatten() {
            let shared = self.shared.clone();
            // Past W + 16 connections in their handshake (each lasts at most
            // HANDSHAKE_TIMEOUT), a new one is closed at once.
            if shared.handshaking.load(Ordering::SeqCst) >= shared.world_size + 16 {
                continue;
            }
            shared.handshaking.fetch_add(1, Ordering::SeqCst);
            let spawned = std::thread::Builder::new()
                .name("coordinator-peer".into())
                .spawn(move || {
                    let _ = handle(stream, &shared);
                });
            if spawned.is_err() {
                self.shared.handshaking.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// One connection: challenge, join, wait, reply.
fn handle(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let joined = handshake(&mut stream, shared);
    shared.handshaking.fetch_sub(1, Ordering::SeqCst);
    let (nonce, request) = match joined? {
        Ok(joined) => joined,
        Err((nonce, reason)) => return refuse(&mut stream, shared, &nonce, reason),
    };
    if shared.joined.load(Ordering::SeqCst) >= shared.world_size {
        return refuse(
            &mut stream,
            shared,
            &nonce,
            "the coordinator is full".into(),
        );
    }
    let reply = Arc::new(Mutex::new(None));
    {
        let mut round = lock(&shared.round);
        if let Some(held) = &round[request.rank] {
            if alive(&held.probe) {
                let reason = format!(
                    "rank {} has already joined from {}",
                    request.rank, held.address
                );
                drop(round);
                return refuse(&mut stream, shared, &nonce, reason);
            }
            shared.joined.fetch_sub(1, Ordering::SeqCst);
        }
        round[request.rank] = Some(Member {
            nonce,
            digest: request.digest,
            address: request.address,
            probe: stream.try_clone()?,
            reply: reply.clone(),
        });
        shared.joined.fetch_add(1, Ordering::SeqCst);
        if round.iter().all(Option::is_some) {
            complete(&mut round);
            shared.joined.store(0, Ordering::SeqCst);
        }
    }
    let started = Instant::now();
    loop {
        if let Some(reply) = lock(&reply).take() {
            stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
            return send_reply(&mut stream, &shared.key, &nonce, &reply);
        }
        if !alive(&stream) || started.elapsed() > IDLE_TIMEOUT {
            let mut round = lock(&shared.round);
            if round[request.rank]
                .as_ref()
                .is_some_and(|m| m.nonce == nonce)
            {
                round[request.rank] = None;
                shared.joined.fetch_sub(1, Ordering::SeqCst);
            }
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
}

/// Sends the challenge and reads a signed join: `Ok(Err((nonce, reason)))` when the join is to
/// be refused, an error when the connection is not worth an answer.
#[allow(clippy::type_complexity)]
fn handshake(
    stream: &mut TcpStream,
    shared: &Shared,
) -> std::io::Result<Result<([u8; NONCE_BYTES], JoinRequest), ([u8; NONCE_BYTES], String)>> {
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let nonce: [u8; NONCE_BYTES] = rand::random();
    stream.write_all(MAGIC)?;
    stream.write_all(&nonce)?;
    let (body, mac) = read_frame(stream, MAX_JOIN_BYTES)?;
    if !shared.key.verify(&[b"join", &nonce, &body], &mac) {
        return Ok(Err((
            nonce,
            "the join is not signed with this coordinator's run token (LLAMA_RUN_TOKEN differs, or is set on one side only)".into(),
        )));
    }
    let request: JoinRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return Ok(Err((nonce, format!("a malformed join: {e}")))),
    };
    let w = shared.world_size;
    if request.world_size != w {
        return Ok(Err((
            nonce,
            format!(
                "this coordinator serves runs of {w} ranks, and rank {} came with world size {}",
                request.rank, request.world_size
            ),
        )));
    }
    if request.rank >= w {
        return Ok(Err((
            nonce,
            format!("rank {} is not below the world size {w}", request.rank),
        )));
    }
    Ok(Ok((nonce, request)))
}

fn refuse(
    stream: &mut TcpStream,
    shared: &Shared,
    nonce: &[u8],
    reason: String,
) -> std::io::Result<()> {
    send_reply(stream, &shared.key, nonce, &JoinReply::Refused { reason })
}

/// The world is complete: every member gets the roster (or, when the ranks' settings differ,
/// a refusal naming the odd ones), and the coordinator forgets the run.
fn complete(round: &mut [Option<Member>]) {
    let members: Vec<Member> = round.iter_mut().filter_map(Option::take).collect();
    let digests: HashSet<u64> = members.iter().map(|m| m.digest).collect();
    let reply = if digests.len() == 1 {
        let id: [u8; 16] = rand::random();
        JoinReply::Roster {
            run_id: id.iter().map(|b| format!("{b:02x}")).collect(),
            addresses: members.iter().map(|m| m.address.clone()).collect(),
        }
    } else {
        let odd: Vec<String> = members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.digest != members[0].digest)
            .map(|(rank, _)| rank.to_string())
            .collect();
        JoinReply::Refused {
            reason: format!(
                "the settings or training data of rank(s) {} differ from rank 0's (every rank must get the same command and files)",
                odd.join(", ")
            ),
        }
    };
    for member in members {
        *lock(&member.reply) = Some(reply.clone());
    }
}

/// Whether the other end of `stream` is still connected (a closed one reads end-of-file).
fn alive(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    let open = match stream.peek(&mut byte) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
    };
    open && stream.set_nonblocking(false).is_ok()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributed::rendezvous::join;
    use crate::distributed::run_key::RunToken;
    use crate::distributed::settings::CollectiveSettings;
    use crate::distributed::wire::{listening_on, write_frame};
    use std::io::Read;
    use std::net::Ipv4Addr;

    fn token() -> RunToken {
        "00112233445566778899aabbccddeeff".parse().unwrap()
    }

    /// A coordinator for `world` ranks on 127.0.0.2, serving on a thread; its address.
    fn start(world: usize) -> PeerAddress {
        start_watched(world).0
    }

    /// The same, and its state, to watch.
    fn start_watched(world: usize) -> (PeerAddress, Arc<Shared>) {
        let coordinator = Coordinator::bind(
            &PeerAddress {
                host: "127.0.0.2".into(),
                port: 0,
            },
            world,
            RunKey::new(Some(&token())),
        )
        .unwrap();
        let port = coordinator.local_addr().unwrap().port();
        let shared = coordinator.shared.clone();
        std::thread::spawn(move || coordinator.serve());
        let address = PeerAddress {
            host: "127.0.0.2".into(),
            port,
        };
        (address, shared)
    }

    fn settings(world: usize, rank: usize, coordinator: &PeerAddress) -> CollectiveSettings {
        let mut s = CollectiveSettings::new(world, rank, coordinator.clone()).unwrap();
        s.timeout = Duration::from_secs(20);
        s.token = Some(token());
        s
    }

    /// Ranks `0..world` joining side by side with `digest(rank)`: each one's result.
    fn join_all(
        coordinator: &PeerAddress,
        world: usize,
        digest: impl Fn(usize) -> u64 + Sync,
    ) -> Vec<Result<crate::distributed::rendezvous::Roster, CollectiveError>> {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..world)
                .map(|rank| {
                    let digest = &digest;
                    scope.spawn(move || {
                        let s = settings(world, rank, coordinator);
                        let me: PeerAddress = format!("127.0.0.1:{}", 5000 + rank).parse().unwrap();
                        join(&s, &RunKey::new(s.token.as_ref()), digest(rank), &me)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn strangers_neither_wedge_nor_poison_it_and_it_serves_run_after_run() {
        let coordinator = start(2);
        let target = (coordinator.host.as_str(), coordinator.port);
        assert_eq!(
            listening_on(coordinator.port).unwrap(),
            [Ipv4Addr::new(127, 0, 0, 2)]
        );
        // One connection that says nothing, one that sends noise.
        let _silent = TcpStream::connect(target).unwrap();
        let mut noisy = TcpStream::connect(target).unwrap();
        noisy.write_all(&[0xff; 64]).unwrap();
        // A join without the token, and a signed one with a wrong world size: refused, and
        // nothing of them stays.
        let stranger = {
            let mut s = settings(3, 0, &coordinator);
            s.token = None;
            join(&s, &RunKey::new(None), 1, &"127.0.0.1:9".parse().unwrap()).unwrap_err()
        };
        assert!(
            matches!(stranger, CollectiveError::Forged { .. }),
            "{stranger}"
        );
        let wrong = settings(3, 0, &coordinator);
        let err = join(
            &wrong,
            &RunKey::new(Some(&token())),
            1,
            &"127.0.0.1:9".parse().unwrap(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("serves runs of 2 ranks"), "{err}");
        // Two real runs, one after the other, each with its own run id.
        let first = join_all(&coordinator, 2, |_| 7);
        let second = join_all(&coordinator, 2, |_| 8);
        let ids: Vec<Vec<u8>> = [&first, &second]
            .iter()
            .map(|run| {
                let rosters: Vec<_> = run.iter().map(|r| r.as_ref().unwrap()).collect();
                assert_eq!(rosters[0].run_id, rosters[1].run_id);
                assert_eq!(rosters[0].addresses[1].to_string(), "127.0.0.1:5001");
                rosters[0].run_id.clone()
            })
            .collect();
        assert_ne!(ids[0], ids[1]);
    }

    #[test]
    fn ranks_with_other_settings_are_named_and_a_taken_rank_is_refused() {
        let coordinator = start(3);
        let results = join_all(&coordinator, 3, |rank| if rank == 2 { 9 } else { 1 });
        for result in results {
            let err = result.unwrap_err().to_string();
            assert!(err.contains("rank(s) 2 differ from rank 0's"), "{err}");
        }
        // Rank 0 waits in a run of 2; a second rank 0 is refused while the first is there.
        let (coordinator, shared) = start_watched(2);
        let waiting = {
            let coordinator = coordinator.clone();
            std::thread::spawn(move || {
                let mut s = settings(2, 0, &coordinator);
                s.timeout = Duration::from_secs(5);
                join(
                    &s,
                    &RunKey::new(Some(&token())),
                    1,
                    &"127.0.0.1:5000".parse().unwrap(),
                )
            })
        };
        let started = Instant::now();
        while shared.joined.load(Ordering::SeqCst) == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "rank 0 never joined"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let s = settings(2, 0, &coordinator);
        let again = join(
            &s,
            &RunKey::new(Some(&token())),
            1,
            &"127.0.0.1:6000".parse().unwrap(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            again.contains("rank 0 has already joined from 127.0.0.1:5000"),
            "{again}"
        );
        // The first gives up after its timeout, naming rank 1, and its slot is free again.
        let err = waiting.join().unwrap().unwrap_err().to_string();
        assert!(err.contains("no answer from rank 1 within 5 s"), "{err}");
        while shared.joined.load(Ordering::SeqCst) > 0 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the slot stays taken"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_join_longer_than_expected_is_not_read() {
        let coordinator = start(2);
        let mut stream = TcpStream::connect((coordinator.host.as_str(), coordinator.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut hello = [0u8; MAGIC.len() + NONCE_BYTES];
        stream.read_exact(&mut hello).unwrap();
        let mut frame = Vec::new();
        write_frame(&mut frame, &vec![b' '; MAX_JOIN_BYTES + 1], &[0; 32]).unwrap();
        let _ = stream.write_all(&frame[..64]);
        let mut rest = Vec::new();
        // Closed without an answer.
        assert_eq!(
            stream
                .read_to_end(&mut rest)
                .map(|_| rest.len())
                .unwrap_or(0),
            0
        );
    }
}
