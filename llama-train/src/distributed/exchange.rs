//! The per-step sum of a buffer across the ranks of a data-parallel run, over plain TCP.
//!
//! Each exchange, every rank publishes its buffer under the exchange's number and fetches
//! every other rank's; each rank then adds the buffers in rank order, so every rank holds the
//! same bits. No rank can run more than one exchange ahead: it needs the others' buffers of
//! this exchange to finish it.
//!
//! Every message is signed with the run's key ([`RunKey`]) and the run's id, which the
//! coordinator drew for this run:
//! - a request: (`request`, run id, exchange, requesting rank), 12 bytes and its MAC;
//! - a served buffer: a 20-byte header (exchange, sender, length), the bytes, and the MAC of
//!   (`buffer`, run id, exchange, sender, bytes).
//!
//! A rank serves each buffer once to each rank that asks with a valid MAC; it listens on the
//! host of its own address only. A fetched buffer must have the expected length (read no
//! further), a valid MAC and finite values before it is summed; otherwise the error names
//! the sender.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crate::distributed::run_key::{RunKey, MAC_BYTES};
use crate::distributed::settings::PeerAddress;
use crate::distributed::wire::is_timeout;

#[cfg(target_endian = "big")]
compile_error!("the exchange sends f32 buffers in the host's byte order, little-endian here");

/// Why an exchange failed, and with which rank.
#[derive(Debug, Clone, PartialEq)]
pub enum ExchangeFailure {
    /// `rank`'s buffer did not come within the timeout.
    Timeout {
        /// The rank waited for.
        rank: usize,
    },
    /// The connection to `rank` failed or broke.
    Lost {
        /// The rank.
        rank: usize,
        /// What failed.
        detail: String,
    },
    /// `rank`'s answer does not carry the run's MAC.
    Forged {
        /// The rank.
        rank: usize,
    },
    /// `rank` sent a buffer that cannot be summed.
    Invalid {
        /// The rank.
        rank: usize,
        /// What was wrong.
        detail: String,
    },
}

/// Bytes of a request: exchange (`u64`), requesting rank (`u32`), then its MAC.
const REQUEST_BYTES: usize = 12;
/// Bytes of a served buffer's header: exchange (`u64`), sender (`u32`), length (`u64`).
const HEADER_BYTES: usize = 20;
/// How long a new connection may take to send its first request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a waiting server thread looks again (a stop, a buffer published).
const POLL: Duration = Duration::from_millis(200);

/// This rank's end of the exchange: a server for its buffers, and a connection to every other
/// rank.
pub struct RankExchange {
    rank: usize,
    shared: Arc<Shared>,
    /// A connection to each other rank (none to itself).
    peers: Vec<Option<Mutex<TcpStream>>>,
    next: AtomicU64,
}

/// What the server threads share with the rank.
struct Shared {
    rank: usize,
    world_size: usize,
    key: RunKey,
    /// Set when the ranks know each other; a request before that is refused.
    run_id: OnceLock<Vec<u8>>,
    store: Mutex<Store>,
    published: Condvar,
    stop: AtomicBool,
    connections: AtomicUsize,
    /// How long a server thread waits for a buffer or a request.
    idle: Duration,
}

#[derive(Default)]
struct Store {
    buffers: BTreeMap<u64, Published>,
    /// The last exchange served to each rank: each is served once.
    last_served: BTreeMap<usize, u64>,
    /// Ranks whose connection closed: nothing more is owed to them.
    gone: Vec<usize>,
}

struct Published {
    values: Arc<Vec<f32>>,
    mac: [u8; MAC_BYTES],
    served: usize,
}

impl RankExchange {
    /// Starts serving this rank's buffers on `address` (on its host only), for a world of
    /// `world_size` ranks signing with `key`; `idle` bounds every wait.
    pub fn serve(
        rank: usize,
        world_size: usize,
        address: &PeerAddress,
        key: RunKey,
        idle: Duration,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind((address.host.as_str(), address.port))?;
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            rank,
            world_size,
            key,
            run_id: OnceLock::new(),
            store: Mutex::new(Store::default()),
            published: Condvar::new(),
            stop: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            idle,
        });
        let accepting = shared.clone();
        std::thread::Builder::new()
            .name("exchange-accept".into())
            .spawn(move || accept(&listener, &accepting))?;
        Ok(Self {
            rank,
            shared,
            peers: Vec::new(),
            next: AtomicU64::new(0),
        })
    }

    /// Connects to every other rank of the run `run_id` (by rank; this rank's address
    /// included), within `timeout`.
    pub fn connect(
        &mut self,
        run_id: &[u8],
        addresses: &[PeerAddress],
        timeout: Duration,
    ) -> Result<(), ExchangeFailure> {
        let _ = self.shared.run_id.set(run_id.to_vec());
        let deadline = Instant::now() + timeout;
        let mut peers = Vec::with_capacity(addresses.len());
        for (rank, address) in addresses.iter().enumerate() {
            if rank == self.rank {
                peers.push(None);
                continue;
            }
            let stream = connect_until(address, deadline)
                .map_err(|detail| ExchangeFailure::Lost { rank, detail })?;
            peers.push(Some(Mutex::new(stream)));
        }
        self.peers = peers;
        Ok(())
    }

    /// The sum of every rank's `values` (the same length everywhere), added in rank order.
    pub fn sum(&self, values: Vec<f32>, timeout: Duration) -> Result<Vec<f32>, ExchangeFailure> {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        if self.peers.len() <= 1 {
            return Ok(values);
        }
        let mine = Arc::new(values);
        self.publish(id, mine.clone());
        let expected = mine.len();
        let fetched: Vec<Result<Vec<f32>, ExchangeFailure>> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .peers
                .iter()
                .enumerate()
                .filter_map(|(rank, peer)| Some((rank, peer.as_ref()?)))
                .map(|(rank, peer)| {
                    scope.spawn(move || self.fetch(peer, rank, id, expected, timeout))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(ExchangeFailure::Lost {
                            rank: self.rank,
                            detail: "a fetching thread panicked".into(),
                        })
                    })
                })
                .collect()
        });
        let mut fetched = fetched.into_iter();
        let mut parts: Vec<Arc<Vec<f32>>> = Vec::with_capacity(self.peers.len());
        for rank in 0..self.peers.len() {
            if rank == self.rank {
                parts.push(mine.clone());
            } else {
                let part = fetched.next().unwrap_or(Err(ExchangeFailure::Lost {
                    rank,
                    detail: "no buffer".into(),
                }))?;
                parts.push(Arc::new(part));
            }
        }
        // ((p0 + p1) + p2) + …: the same order, hence the same bits, on every rank.
        let mut total: Vec<f32> = parts[0]
            .iter()
            .zip(parts[1].iter())
            .map(|(a, b)| a + b)
            .collect();
        for part in &parts[2..] {
            total.iter_mut().zip(part.iter()).for_each(|(t, p)| *t += p);
        }
        Ok(total)
    }

    /// Makes `values` available to the other ranks as exchange `id`.
    fn publish(&self, id: u64, values: Arc<Vec<f32>>) {
        let run_id = self.shared.run_id.get().map_or(&[][..], Vec::as_slice);
        let sender = u32::try_from(self.rank).unwrap_or(u32::MAX).to_le_bytes();
        let bytes: &[u8] = bytemuck::cast_slice(values.as_slice());
        let mac = self
            .shared
            .key
            .mac(&[b"buffer", run_id, &id.to_le_bytes(), &sender, bytes]);
        let mut store = lock(&self.shared.store);
        store.buffers.insert(
            id,
            Published {
                values,
                mac,
                served: 0,
            },
        );
        self.shared.published.notify_all();
    }

    /// Fetches exchange `id`'s buffer of `expected` floats from `rank`.
    fn fetch(
        &self,
        peer: &Mutex<TcpStream>,
        rank: usize,
        id: u64,
        expected: usize,
        timeout: Duration,
    ) -> Result<Vec<f32>, ExchangeFailure> {
        let mut stream = lock(peer);
        let io = |e: std::io::Error| {
            if is_timeout(&e) {
                ExchangeFailure::Timeout { rank }
            } else {
                ExchangeFailure::Lost {
                    rank,
                    detail: e.to_string(),
                }
            }
        };
        let invalid = |detail: String| ExchangeFailure::Invalid { rank, detail };
        let run_id = self.shared.run_id.get().map_or(&[][..], Vec::as_slice);
        let me = u32::try_from(self.rank).unwrap_or(u32::MAX).to_le_bytes();
        let mut request = [0u8; REQUEST_BYTES + MAC_BYTES];
        request[..8].copy_from_slice(&id.to_le_bytes());
        request[8..12].copy_from_slice(&me);
        let mac = self
            .shared
            .key
            .mac(&[b"request", run_id, &id.to_le_bytes(), &me]);
        request[REQUEST_BYTES..].copy_from_slice(&mac);
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        stream.write_all(&request).map_err(io)?;
        let mut header = [0u8; HEADER_BYTES];
        stream.read_exact(&mut header).map_err(io)?;
        let field = |range: std::ops::Range<usize>| {
            let mut word = [0u8; 8];
            word[..range.len()].copy_from_slice(&header[range]);
            u64::from_le_bytes(word)
        };
        let (exchange, sender, len) = (field(0..8), field(8..12), field(12..20));
        if exchange != id || sender != rank as u64 {
            return Err(invalid(format!(
                "exchange {exchange} from rank {sender}, expected exchange {id} from rank {rank}"
            )));
        }
        let want = expected as u64 * 4;
        if len != want {
            return Err(invalid(format!("{len} bytes, expected {want}")));
        }
        // Read straight into the floats (the wire is little-endian, as this host).
        let mut values = vec![0f32; expected];
        stream
            .read_exact(bytemuck::cast_slice_mut(values.as_mut_slice()))
            .map_err(io)?;
        let mut mac = [0u8; MAC_BYTES];
        stream.read_exact(&mut mac).map_err(io)?;
        let sender = u32::try_from(rank).unwrap_or(u32::MAX).to_le_bytes();
        let bytes: &[u8] = bytemuck::cast_slice(values.as_slice());
        if !self.shared.key.verify(
            &[b"buffer", run_id, &id.to_le_bytes(), &sender, bytes],
            &mac,
        ) {
            return Err(ExchangeFailure::Forged { rank });
        }
        if let Some(at) = values.iter().position(|v| !v.is_finite()) {
            return Err(invalid(format!(
                "a non-finite value ({}) at {at}",
                values[at]
            )));
        }
        Ok(values)
    }

    /// Waits (at most `timeout`) until the other ranks have fetched every buffer this rank
    /// published, or left, so that leaving cannot cut one off.
    pub fn drain(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let others = self.shared.world_size.saturating_sub(1);
        let mut store = lock(&self.shared.store);
        loop {
            let owed = others.saturating_sub(store.gone.len());
            if store.buffers.values().all(|p| p.served >= owed) || Instant::now() >= deadline {
                return;
            }
            store = self
                .shared
                .published
                .wait_timeout(store, POLL)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Drop for RankExchange {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.published.notify_all();
    }
}

/// Accepts connections until the exchange stops; at most two per other rank at a time.
fn accept(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let limit = 2 * shared.world_size.saturating_sub(1);
                if shared.connections.load(Ordering::SeqCst) >= limit {
                    continue;
                }
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let serving = shared.clone();
                let spawned = std::thread::Builder::new()
                    .name("exchange-serve".into())
                    .spawn(move || {
                        let rank = serve_peer(stream, &serving);
                        serving.connections.fetch_sub(1, Ordering::SeqCst);
                        if let Some(rank) = rank {
                            lock(&serving.store).gone.push(rank);
                            serving.published.notify_all();
                        }
                    });
                if spawned.is_err() {
                    shared.connections.fetch_sub(1, Ordering::SeqCst);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(POLL / 4),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// Serves one connection: each valid request gets its buffer once. Returns the rank it
/// served, if any, when the connection ends.
fn serve_peer(mut stream: TcpStream, shared: &Shared) -> Option<usize> {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(shared.idle));
    let mut peer: Option<usize> = None;
    loop {
        let mut request = [0u8; REQUEST_BYTES + MAC_BYTES];
        if stream.read_exact(&mut request).is_err() {
            return peer;
        }
        let Some(rank) = check_request(&request, shared, peer) else {
            return peer;
        };
        peer = Some(rank);
        let _ = stream.set_read_timeout(Some(shared.idle));
        let mut id = [0u8; 8];
        id.copy_from_slice(&request[..8]);
        let id = u64::from_le_bytes(id);
        let Some((values, mac)) = take_buffer(shared, id, rank) else {
            return peer;
        };
        let bytes: &[u8] = bytemuck::cast_slice(values.as_slice());
        let sender = u32::try_from(shared.rank).unwrap_or(u32::MAX);
        let mut header = [0u8; HEADER_BYTES];
        header[..8].copy_from_slice(&id.to_le_bytes());
        header[8..12].copy_from_slice(&sender.to_le_bytes());
        header[12..].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
        let sent = stream
            .write_all(&header)
            .and_then(|()| stream.write_all(bytes))
            .and_then(|()| stream.write_all(&mac))
            .and_then(|()| stream.flush());
        if sent.is_err() {
            return peer;
        }
    }
}

/// The requesting rank of a valid request: signed with this run's key and id, from a rank of
/// the run other than this one, the same rank as before on this connection.
fn check_request(
    request: &[u8; REQUEST_BYTES + MAC_BYTES],
    shared: &Shared,
    peer: Option<usize>,
) -> Option<usize> {
    // A rank that learned the roster first may ask before this one has: wait for it.
    let started = Instant::now();
    let run_id = loop {
        match shared.run_id.get() {
            Some(run_id) => break run_id,
            None if started.elapsed() < HANDSHAKE_TIMEOUT => std::thread::sleep(POLL / 10),
            None => return None,
        }
    };
    let mut mac = [0u8; MAC_BYTES];
    mac.copy_from_slice(&request[REQUEST_BYTES..]);
    if !shared
        .key
        .verify(&[b"request", run_id, &request[..8], &request[8..12]], &mac)
    {
        return None;
    }
    let rank = u32::from_le_bytes([request[8], request[9], request[10], request[11]]) as usize;
    let valid = rank < shared.world_size && rank != shared.rank && peer.is_none_or(|p| p == rank);
    valid.then_some(rank)
}

/// Exchange `id`'s buffer for `rank`, once it is published (at most `idle`); `None` when it
/// was served to `rank` already, or the exchange stops.
fn take_buffer(shared: &Shared, id: u64, rank: usize) -> Option<(Arc<Vec<f32>>, [u8; MAC_BYTES])> {
    let started = Instant::now();
    let mut store = lock(&shared.store);
    if store.last_served.get(&rank).is_some_and(|&last| last >= id) {
        return None;
    }
    loop {
        if let Some(published) = store.buffers.get_mut(&id) {
            published.served += 1;
            let taken = (published.values.clone(), published.mac);
            let everyone = published.served >= shared.world_size - 1;
            if everyone {
                store.buffers.remove(&id);
            }
            store.last_served.insert(rank, id);
            shared.published.notify_all();
            return Some(taken);
        }
        if shared.stop.load(Ordering::SeqCst) || started.elapsed() > shared.idle {
            return None;
        }
        store = shared
            .published
            .wait_timeout(store, POLL)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

/// A connection to `address`, retried until `deadline` (its listener may still be starting).
fn connect_until(address: &PeerAddress, deadline: Instant) -> Result<TcpStream, String> {
    let mut last = String::from("no address");
    loop {
        let targets: Vec<_> = (address.host.as_str(), address.port)
            .to_socket_addrs()
            .map_err(|e| format!("{address}: {e}"))?
            .collect();
        for target in &targets {
            let left = deadline.saturating_duration_since(Instant::now());
            match TcpStream::connect_timeout(target, left.max(Duration::from_millis(10))) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) => last = format!("{address}: {e}"),
            }
        }
        if Instant::now() >= deadline {
            return Err(last);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributed::run_key::RunToken;
    use crate::distributed::wire::listening_on;
    use std::net::Ipv4Addr;

    const TIMEOUT: Duration = Duration::from_secs(20);

    fn address(host: &str) -> PeerAddress {
        let port = TcpListener::bind((host, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        PeerAddress {
            host: host.into(),
            port,
        }
    }

    fn key() -> RunKey {
        RunKey::new(Some(
            &"00112233445566778899aabbccddeeff"
                .parse::<RunToken>()
                .unwrap(),
        ))
    }

    /// `world` ranks serving on 127.0.0.2, connected to each other for run `b"run-1"`.
    fn ranks(world: usize) -> Vec<RankExchange> {
        let addresses: Vec<PeerAddress> = (0..world).map(|_| address("127.0.0.2")).collect();
        let mut ranks: Vec<RankExchange> = (0..world)
            .map(|rank| RankExchange::serve(rank, world, &addresses[rank], key(), TIMEOUT).unwrap())
            .collect();
        for rank in &mut ranks {
            rank.connect(b"run-1", &addresses, TIMEOUT).unwrap();
        }
        ranks
    }

    /// Every rank's sum of `values(rank)`, run side by side.
    fn sum_all(ranks: &[RankExchange], values: impl Fn(usize) -> Vec<f32> + Sync) -> Vec<Vec<f32>> {
        std::thread::scope(|scope| {
            let handles: Vec<_> = ranks
                .iter()
                .enumerate()
                .map(|(rank, exchange)| {
                    let values = &values;
                    scope.spawn(move || exchange.sum(values(rank), TIMEOUT).unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn three_ranks_sum_many_times_in_rank_order_and_name_a_silent_rank() {
        let ranks = ranks(3);
        for round in 0..5 {
            let sums = sum_all(&ranks, |rank| vec![rank as f32 + 1.0, round as f32, 0.1]);
            assert_eq!(sums[0], sums[1], "the same bits everywhere");
            assert_eq!(sums[0], sums[2]);
            assert_eq!(sums[0], vec![6.0, 3.0 * round as f32, (0.1f32 + 0.1) + 0.1]);
        }
        // Ranks 1 and 2 stay silent: rank 0 gives up naming the first it waited for.
        let failure = ranks[0]
            .sum(vec![1.0], Duration::from_millis(300))
            .unwrap_err();
        assert_eq!(failure, ExchangeFailure::Timeout { rank: 1 });
    }

    #[test]
    fn the_exchange_listens_on_its_own_host_only() {
        let here = address("127.0.0.2");
        let _rank = RankExchange::serve(0, 2, &here, key(), TIMEOUT).unwrap();
        assert_eq!(
            listening_on(here.port).unwrap(),
            [Ipv4Addr::new(127, 0, 0, 2)]
        );
    }

    /// A request for exchange `id` as `rank`, signed with `key` for run `run_id`.
    fn request(key: &RunKey, run_id: &[u8], id: u64, rank: u32) -> Vec<u8> {
        let mut bytes = id.to_le_bytes().to_vec();
        bytes.extend(rank.to_le_bytes());
        bytes.extend(key.mac(&[b"request", run_id, &id.to_le_bytes(), &rank.to_le_bytes()]));
        bytes
    }

    /// Whether `stream` gets anything back for `message` before the server closes it.
    fn answered(mut stream: TcpStream, message: &[u8]) -> bool {
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.write_all(message).unwrap();
        let mut byte = [0u8; 1];
        matches!(stream.read(&mut byte), Ok(n) if n > 0)
    }

    #[test]
    fn a_stranger_gets_no_buffer_and_the_ranks_still_get_theirs() {
        let addresses = [address("127.0.0.1"), address("127.0.0.1")];
        let mut ranks: Vec<RankExchange> = (0..2)
            .map(|rank| RankExchange::serve(rank, 2, &addresses[rank], key(), TIMEOUT).unwrap())
            .collect();
        for rank in &mut ranks {
            rank.connect(b"run-1", &addresses, TIMEOUT).unwrap();
        }
        let target = (addresses[0].host.as_str(), addresses[0].port);
        // Rank 0's buffer of exchange 0 is up before the strangers ask for it.
        ranks[0].publish(0, Arc::new(vec![1.0, 2.0]));
        let strangers = [
            request(&RunKey::new(None), b"run-1", 0, 1), // no token
            request(&key(), b"run-0", 0, 1),             // another run
            request(&key(), b"run-1", 0, 0),             // rank 0 asking itself
            request(&key(), b"run-1", 0, 7),             // not a rank
            vec![0u8; REQUEST_BYTES + MAC_BYTES],        // noise
        ];
        for message in &strangers {
            assert!(!answered(TcpStream::connect(target).unwrap(), message));
        }
        // The strangers' connections are closed (bounded wait, not a timing assertion).
        let started = Instant::now();
        while ranks[0].shared.connections.load(Ordering::SeqCst) > 1 {
            assert!(started.elapsed() < TIMEOUT, "connections left open");
            std::thread::sleep(Duration::from_millis(10));
        }
        // Rank 1 still gets exchange 0, once: a replay of its request gets nothing.
        let mut rank1 = TcpStream::connect(target).unwrap();
        rank1.set_read_timeout(Some(TIMEOUT)).unwrap();
        rank1.write_all(&request(&key(), b"run-1", 0, 1)).unwrap();
        let mut answer = vec![0u8; HEADER_BYTES + 8 + MAC_BYTES];
        rank1.read_exact(&mut answer).unwrap();
        assert_eq!(answer[HEADER_BYTES..HEADER_BYTES + 4], 1.0f32.to_le_bytes());
        assert!(!answered(
            TcpStream::connect(target).unwrap(),
            &request(&key(), b"run-1", 0, 1)
        ));
    }

    #[test]
    fn a_request_that_comes_before_the_roster_is_answered() {
        let addresses = [address("127.0.0.1"), address("127.0.0.1")];
        let mut rank0 = RankExchange::serve(0, 2, &addresses[0], key(), TIMEOUT).unwrap();
        let _rank1 = RankExchange::serve(1, 2, &addresses[1], key(), TIMEOUT).unwrap();
        // Rank 1 learned the roster first and asks at once.
        let mut early =
            TcpStream::connect((addresses[0].host.as_str(), addresses[0].port)).unwrap();
        early.write_all(&request(&key(), b"run-1", 0, 1)).unwrap();
        rank0.connect(b"run-1", &addresses, TIMEOUT).unwrap();
        rank0.publish(0, Arc::new(vec![3.0]));
        early.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut answer = vec![0u8; HEADER_BYTES + 4 + MAC_BYTES];
        early.read_exact(&mut answer).unwrap();
        assert_eq!(answer[HEADER_BYTES..HEADER_BYTES + 4], 3.0f32.to_le_bytes());
    }

    /// A fake rank 1 that answers rank 0's first request with `answer(request)`.
    fn fake_peer(answer: impl FnOnce(u64) -> Vec<u8> + Send + 'static) -> PeerAddress {
        let here = address("127.0.0.1");
        let listener = TcpListener::bind((here.host.as_str(), here.port)).unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; REQUEST_BYTES + MAC_BYTES];
            if stream.read_exact(&mut request).is_ok() {
                let id = u64::from_le_bytes(request[..8].try_into().unwrap());
                let _ = stream.write_all(&answer(id));
            }
            std::thread::sleep(Duration::from_millis(500));
        });
        here
    }

    /// A served buffer of `values` from rank 1 for exchange `id`, signed with `key`.
    fn served(key: &RunKey, id: u64, values: &[f32], claimed_len: Option<u64>) -> Vec<u8> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = id.to_le_bytes().to_vec();
        out.extend(1u32.to_le_bytes());
        out.extend(claimed_len.unwrap_or(bytes.len() as u64).to_le_bytes());
        out.extend(&bytes);
        out.extend(key.mac(&[
            b"buffer",
            b"run-1",
            &id.to_le_bytes(),
            &1u32.to_le_bytes(),
            &bytes,
        ]));
        out
    }

    /// Rank 0's failure when rank 1 is `fake`.
    fn failure_against(fake: PeerAddress) -> ExchangeFailure {
        let mine = address("127.0.0.1");
        let mut rank0 = RankExchange::serve(0, 2, &mine, key(), TIMEOUT).unwrap();
        rank0.connect(b"run-1", &[mine, fake], TIMEOUT).unwrap();
        rank0.sum(vec![1.0, 2.0], TIMEOUT).unwrap_err()
    }

    #[test]
    fn a_bad_buffer_is_an_error_naming_its_sender_never_a_panic() {
        let long = failure_against(fake_peer(|id| served(&key(), id, &[1.0, 2.0, 3.0], None)));
        assert_eq!(
            long,
            ExchangeFailure::Invalid {
                rank: 1,
                detail: "12 bytes, expected 8".into()
            }
        );
        // A length field of 2^60: refused before anything is read or allocated.
        let huge = failure_against(fake_peer(|id| {
            served(&key(), id, &[1.0, 2.0], Some(1 << 60))
        }));
        assert!(
            matches!(huge, ExchangeFailure::Invalid { rank: 1, .. }),
            "{huge:?}"
        );
        let forged = failure_against(fake_peer(|id| {
            served(&RunKey::new(None), id, &[1.0, 2.0], None)
        }));
        assert_eq!(forged, ExchangeFailure::Forged { rank: 1 });
        let nan = failure_against(fake_peer(|id| served(&key(), id, &[1.0, f32::NAN], None)));
        assert!(
            matches!(&nan, ExchangeFailure::Invalid { rank: 1, detail } if detail.contains("non-finite")),
            "{nan:?}"
        );
        let silent = failure_against(fake_peer(|_| Vec::new()));
        assert!(
            matches!(silent, ExchangeFailure::Lost { rank: 1, .. }),
            "{silent:?}"
        );
    }
}
