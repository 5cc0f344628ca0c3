//! The per-step sum of a buffer across the ranks of a data-parallel run, over Burn's
//! network layer (`burn-communication`: its websocket transport and tensor data service).
//!
//! Why not burn-collective's all-reduce for every step: in burn-collective 0.21 a process's
//! second global all-reduce never returns. Each global all-reduce ends with a sync
//! (`global/node/sync.rs`) that waits until its list of synced nodes equals the node list,
//! then clears a *copy* of that list; the next sync appends to the uncleared list, which
//! never equals the node list again. (Measured here: the first all-reduce of each process
//! completes, the second times out on every rank, whichever tensor comes first.) The run
//! still uses burn-collective for what works: its coordinator, registration, and one
//! all-reduce in which the ranks tell each other where this exchange listens
//! ([`crate::distributed::collective`]).
//!
//! Each exchange, every rank exposes its buffer under the exchange's number and downloads
//! every other rank's; each rank then adds the buffers in rank order, so every rank holds the
//! same bits. No rank can run more than one exchange ahead: it needs the others' buffers of
//! this exchange to finish it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use burn_communication::data_service::{TensorDataServer, TensorDataService};
use burn_communication::websocket::{WebSocket, WsServer};
use burn_communication::{Address, ProtocolServer};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

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
}

/// This rank's end of the exchange: a server for its buffers, and the other ranks'
/// addresses.
pub struct RankExchange<B: Backend> {
    rank: usize,
    /// Every rank's exchange address, by rank.
    addresses: Vec<Address>,
    service: Arc<TensorDataService<B, WebSocket>>,
    runtime: Runtime,
    cancel: CancellationToken,
    next: AtomicU64,
}

impl<B: Backend> RankExchange<B> {
    /// Starts serving this rank's buffers on `port` (all interfaces).
    pub fn serve(rank: usize, port: u16) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let cancel = CancellationToken::new();
        let service = Arc::new(TensorDataService::<B, WebSocket>::new(cancel.clone()));
        let server = WsServer::new(port).route_tensor_data_service(service.clone());
        let shutdown = cancel.clone();
        // A port taken after the caller checked it shows as the other ranks' connection
        // failures, which name this rank.
        runtime.spawn(async move {
            let _ = server
                .serve(async move { shutdown.cancelled().await })
                .await;
        });
        Ok(Self {
            rank,
            addresses: Vec::new(),
            service,
            runtime,
            cancel,
            next: AtomicU64::new(0),
        })
    }

    /// Sets every rank's address (by rank; this rank's included).
    pub fn connect(&mut self, addresses: Vec<Address>) {
        self.addresses = addresses;
    }

    /// The sum of every rank's `tensor` (same shape everywhere), added in rank order.
    pub fn sum(
        &self,
        tensor: Tensor<B, 1>,
        timeout: Duration,
    ) -> Result<Tensor<B, 1>, ExchangeFailure> {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let ranks = self.addresses.len();
        let device = tensor.device();
        let mine = tensor.clone();
        let service = self.service.clone();
        let deadline = Instant::now() + timeout;
        let parts = self.runtime.block_on(async move {
            let others = u32::try_from(ranks.saturating_sub(1)).unwrap_or(u32::MAX);
            if others > 0 {
                service
                    .expose(tensor.into_primitive().tensor(), others, id.into())
                    .await;
            }
            let mut downloads = Vec::new();
            for (rank, address) in self.addresses.iter().enumerate() {
                if rank == self.rank {
                    continue;
                }
                let service = service.clone();
                let address = address.clone();
                downloads.push((
                    rank,
                    tokio::spawn(async move { service.download_tensor(address, id.into()).await }),
                ));
            }
            // burn-communication's server waits for an exposure with `Notify::notify_waiters`,
            // which is lost when the exposure lands between its check and its wait: wake it
            // again now and then, so that a buffer that is there is served.
            let nudge = {
                let service = service.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        service.new_tensor_notify.notify_waiters();
                    }
                })
            };
            let mut parts = Vec::new();
            for (rank, download) in downloads {
                let left = deadline.saturating_duration_since(Instant::now());
                let got = match tokio::time::timeout(left, download).await {
                    Err(_) => Err(ExchangeFailure::Timeout { rank }),
                    Ok(Err(e)) => Err(ExchangeFailure::Lost {
                        rank,
                        detail: e.to_string(),
                    }),
                    Ok(Ok(None)) => Err(ExchangeFailure::Lost {
                        rank,
                        detail: "the connection closed".into(),
                    }),
                    Ok(Ok(Some(data))) => Ok(data),
                };
                match got {
                    Ok(data) => parts.push((rank, data)),
                    Err(e) => {
                        nudge.abort();
                        return Err(e);
                    }
                }
            }
            nudge.abort();
            Ok(parts)
        })?;
        let mut parts: Vec<(usize, Tensor<B, 1>)> = parts
            .into_iter()
            .map(|(rank, data)| (rank, Tensor::from_data(data, &device)))
            .collect();
        parts.push((self.rank, mine));
        parts.sort_by_key(|(rank, _)| *rank);
        let mut parts = parts.into_iter().map(|(_, t)| t);
        let first = parts.next().ok_or_else(|| ExchangeFailure::Lost {
            rank: self.rank,
            detail: "no buffer".into(),
        })?;
        Ok(parts.fold(first, |sum, part| sum + part))
    }

    /// Waits (at most `timeout`) until the other ranks have downloaded every buffer this
    /// rank exposed, so that leaving cannot cut one off.
    pub fn drain(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let service = self.service.clone();
        self.runtime.block_on(async move {
            while Instant::now() < deadline {
                if service.exposed_tensors.lock().await.is_empty() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
}

impl<B: Backend> Drop for RankExchange<B> {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use std::str::FromStr;

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn two_ranks_sum_many_times_in_rank_order_and_name_a_silent_rank() {
        let ports = [free_port(), free_port()];
        let addresses: Vec<Address> = ports
            .iter()
            .map(|p| Address::from_str(&format!("ws://127.0.0.1:{p}")).unwrap())
            .collect();
        let ranks: Vec<RankExchange<NdArray>> = (0..2)
            .map(|rank| {
                let mut exchange = RankExchange::serve(rank, ports[rank]).unwrap();
                exchange.connect(addresses.clone());
                exchange
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200)); // the servers bind
        let timeout = Duration::from_secs(20);
        let results: Vec<Vec<Vec<f32>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = ranks
                .iter()
                .enumerate()
                .map(|(rank, exchange)| {
                    scope.spawn(move || {
                        // Five exchanges in a row: burn-collective 0.21 stops after one.
                        (0..5)
                            .map(|round| {
                                let values = [rank as f32 + 1.0, round as f32, 0.1];
                                let t =
                                    Tensor::<NdArray, 1>::from_floats(values, &Default::default());
                                let sum = exchange.sum(t, timeout).unwrap();
                                sum.into_data().to_vec::<f32>().unwrap()
                            })
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results[0], results[1], "both ranks hold the same bits");
        for (round, sum) in results[0].iter().enumerate() {
            assert_eq!(sum, &vec![3.0, 2.0 * round as f32, 0.1 + 0.1]);
        }
        // Rank 1 stays silent: rank 0 gives up naming it.
        let t = Tensor::<NdArray, 1>::from_floats([1.0, 2.0, 3.0], &Default::default());
        let failure = ranks[0].sum(t, Duration::from_secs(1)).unwrap_err();
        assert_eq!(failure, ExchangeFailure::Timeout { rank: 1 });
    }
}
