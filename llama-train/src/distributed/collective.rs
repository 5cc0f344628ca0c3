//! One process's membership of a data-parallel run.
//!
//! A run on `W` processes ("ranks") trains one model: every rank cuts its block of rows out
//! of each global batch ([`row_share`]), computes that block's gradients, and the gradients
//! are summed across ranks before every rank takes the same optimizer step, so all ranks
//! hold the same weights after every step. The rows' losses and predictions are gathered the
//! same way (a sum in which every other rank adds zeros, hence exact), so rank 0 reports the
//! metrics of the whole batch.
//!
//! Joining ([`Collective::join`]) first checks that the coordinator's port answers and that
//! this rank's own port is free, so the common mistakes fail within seconds; then it
//! registers with the coordinator (burn-collective's orchestrator: it waits for every rank
//! and refuses a world size that differs), and all ranks swap, in one burn-collective
//! all-reduce, their rank, a digest of their settings and where their
//! [`RankExchange`] listens. Every later sum goes through that exchange (burn-collective
//! 0.21 completes only one global all-reduce per process: see [`crate::distributed::exchange`]).
//!
//! Every wait is bounded by the configured timeout, and an error names the step and the
//! rank waited for, so a rank that died never leaves the others hanging.

use std::fmt;
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::ops::Range;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData, TensorPrimitive};

use crate::distributed::exchange::{ExchangeFailure, RankExchange};
use crate::distributed::settings::{CollectiveError, CollectiveSettings, WsAddress};
use burn_collective::{
    all_reduce, finish_collective, register, CollectiveConfig, PeerId, ReduceOperation,
};

/// How long to wait for the coordinator's port to answer before calling it unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The rows of a global batch of `rows` that `rank` of `world_size` trains on, and how the
/// ranks' gradients combine.
///
/// With at least as many rows as ranks, rank `r` takes the contiguous block
/// `r·rows/W .. (r+1)·rows/W` (sizes differ by at most one) and the gradients are summed:
/// each rank's loss is its rows' summed loss over the global divisor, so the sum is the
/// global batch's gradient. With fewer rows (a last, partial batch), every rank trains on
/// all of them and the identical gradients are averaged.
pub fn row_share(rows: usize, rank: usize, world_size: usize) -> (Range<usize>, ReduceOperation) {
    if rows >= world_size {
        (
            rank * rows / world_size..(rank + 1) * rows / world_size,
            ReduceOperation::Sum,
        )
    } else {
        (0..rows, ReduceOperation::Mean)
    }
}

/// This process's handle on a data-parallel run (`B`: the inner, non-autodiff backend,
/// whose tensors the gradients are).
pub struct Collective<B: Backend> {
    settings: CollectiveSettings,
    device: B::Device,
    exchange: RankExchange<B>,
    exchanges: AtomicU64,
    nanos: AtomicU64,
    floats: AtomicU64,
}

/// What one rank of a (possibly data-parallel) run ends with: the run's outcome on rank 0
/// (or on one process), a summary elsewhere.
#[derive(Debug)]
pub enum RankOutcome<O> {
    /// Rank 0, or a run on one process.
    Main(Box<O>),
    /// Another rank: it trained; rank 0 evaluated and saved.
    Other(RankSummary),
}

/// How a rank's run ended: the ranks' digests are equal when their weights are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RankSummary {
    /// Optimizer steps of the run so far.
    pub steps: usize,
    /// [`crate::fnv::weights_digest`] of the weights after the last step.
    pub last_weights_digest: u64,
    /// What its exchanges cost.
    pub exchange: ExchangeStats,
}

/// What a rank's exchanges cost so far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExchangeStats {
    /// Number of sums across ranks (two per step: gradients, then outputs).
    pub exchanges: u64,
    /// Wall time inside them: transfers, plus waiting for the slowest rank.
    pub seconds: f64,
    /// Bytes this rank served to the others.
    pub bytes_sent: u64,
}

impl<B: Backend> fmt::Debug for Collective<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Collective")
            .field("settings", &self.settings)
            .finish()
    }
}

/// Bytes of a rank's exchange address in the joining all-reduce.
const ADDRESS_BYTES: usize = 96;
/// A rank's row in the joining all-reduce: presence, three digest pieces, its address.
const ROW: usize = 1 + 3 + ADDRESS_BYTES;

impl<B: Backend> Collective<B> {
    /// Joins the run: checks the coordinator's port and this rank's, registers, then
    /// checks that every rank is present once and that all ranks' `settings_digest` agree,
    /// and learns where every rank's exchange listens.
    pub fn join(
        settings: CollectiveSettings,
        device: &B::Device,
        settings_digest: u64,
    ) -> Result<Self, CollectiveError> {
        let coordinator = &settings.coordinator;
        reachable(coordinator)?;
        let node = settings.node();
        let taken = |port: u16, e: std::io::Error| CollectiveError::PortTaken {
            port,
            detail: e.to_string(),
        };
        TcpListener::bind(("0.0.0.0", node.port)).map_err(|e| taken(node.port, e))?;
        // The exchange listens on a port of the system's choosing, announced when joining.
        let exchange_port = TcpListener::bind(("0.0.0.0", 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| taken(0, e))?
            .port();
        let mut exchange =
            RankExchange::<B>::serve(settings.rank, exchange_port).map_err(|detail| {
                CollectiveError::Start {
                    what: "this rank's exchange",
                    detail,
                }
            })?;
        let address = |a: &WsAddress| {
            burn_communication::Address::from_str(&a.to_string())
                .map_err(|_| CollectiveError::Address(a.to_string()))
        };
        let config = CollectiveConfig::default()
            .with_num_devices(1)
            .with_num_nodes(settings.world_size as u32)
            .with_global_address(address(coordinator)?)
            .with_node_address(address(&node)?)
            .with_data_service_port(node.port);
        let peer = PeerId::from(settings.rank);
        let registering = device.clone();
        let what = format!(
            "joining the run (rank {} of {}, coordinator {coordinator})",
            settings.rank, settings.world_size
        );
        within(&what, &settings, move || {
            register::<B>(peer, registering, config)
        })?
        .map_err(|e| failed(&what, &settings, e))?;
        let mine = WsAddress {
            host: node.host.clone(),
            port: exchange_port,
        };
        let addresses = swap_rows::<B>(&settings, device, settings_digest, &mine.to_string())?;
        exchange.connect(
            addresses
                .iter()
                .map(address)
                .collect::<Result<Vec<_>, _>>()?,
        );
        Ok(Self {
            settings,
            device: device.clone(),
            exchange,
            exchanges: AtomicU64::new(0),
            nanos: AtomicU64::new(0),
            floats: AtomicU64::new(0),
        })
    }

    /// The settings this rank joined with.
    pub fn settings(&self) -> &CollectiveSettings {
        &self.settings
    }

    /// The device this rank trains on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// Sums `grads` (of `module`'s parameters) across ranks, or averages them, per
    /// [`row_share`]'s operation: all of them flattened into one buffer, in the module's
    /// parameter order, and exchanged in one all-reduce.
    ///
    /// Burn's `GradientsParams::all_reduce` orders the tensors by parameter id, which is
    /// drawn afresh in every process; the module's structure is the same in all of them.
    pub fn all_reduce_grads<AB, M>(
        &self,
        module: &M,
        mut grads: GradientsParams,
        op: ReduceOperation,
        what: &str,
    ) -> Result<GradientsParams, CollectiveError>
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        let mut flatten = Flatten::<AB> {
            grads: &grads,
            parts: Vec::new(),
        };
        module.visit(&mut flatten);
        if flatten.parts.is_empty() {
            return Ok(grads);
        }
        let reduced = self.reduce(Tensor::cat(flatten.parts, 0), op, what)?;
        module.visit(&mut Unflatten::<AB> {
            grads: &mut grads,
            reduced,
            offset: 0,
        });
        Ok(grads)
    }

    /// The element-wise sum of every rank's `tensor` (same shape on every rank).
    pub fn sum(&self, tensor: Tensor<B, 1>, what: &str) -> Result<Tensor<B, 1>, CollectiveError> {
        self.reduce(tensor, ReduceOperation::Sum, what)
    }

    fn reduce(
        &self,
        tensor: Tensor<B, 1>,
        op: ReduceOperation,
        what: &str,
    ) -> Result<Tensor<B, 1>, CollectiveError> {
        let started = Instant::now();
        let floats = tensor.dims()[0] as u64;
        let summed = self
            .exchange
            .sum(tensor, self.settings.timeout)
            .map_err(|failure| {
                let others = |rank: usize| format!("rank {rank}");
                match failure {
                    ExchangeFailure::Timeout { rank } => CollectiveError::Timeout {
                        what: what.to_string(),
                        others: others(rank),
                        seconds: self.settings.timeout.as_secs(),
                    },
                    ExchangeFailure::Lost { rank, detail } => CollectiveError::Failed {
                        what: what.to_string(),
                        others: others(rank),
                        detail,
                    },
                }
            })?;
        self.exchanges.fetch_add(1, Ordering::Relaxed);
        self.floats.fetch_add(floats, Ordering::Relaxed);
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
        Ok(match op {
            ReduceOperation::Sum => summed,
            ReduceOperation::Mean => summed / self.settings.world_size as f32,
        })
    }

    /// Gathers a table of `rows` rows `[rows, width]` of which this rank holds the `share`
    /// rows (`block` `[share.len(), width]`; an empty share contributes nothing), and whether
    /// any rank asked to stop. A sum in which each row comes from one rank and the others add
    /// zeros: exact.
    pub fn gather_rows(
        &self,
        block: Option<Tensor<B, 2>>,
        share: Range<usize>,
        [rows, width]: [usize; 2],
        stop: bool,
        step: usize,
    ) -> Result<(Tensor<B, 2>, bool), CollectiveError> {
        let device = self.device.clone();
        let mut table = Tensor::<B, 2>::zeros([rows, width], &device);
        if let Some(block) = block.filter(|_| !share.is_empty()) {
            table = table.slice_assign([share, 0..width], block);
        }
        let flag = Tensor::<B, 1>::from_floats([f32::from(u8::from(stop))], &device);
        let flat = Tensor::cat(vec![table.reshape([rows * width]), flag], 0);
        let summed = self.sum(flat, &format!("step {step}'s gathering of outputs"))?;
        let any_stop = summed
            .clone()
            .slice(rows * width..rows * width + 1)
            .into_scalar()
            .elem::<f32>()
            > 0.0;
        Ok((
            summed.slice(0..rows * width).reshape([rows, width]),
            any_stop,
        ))
    }

    /// The element-wise sums across ranks of a few values (a loss, a stop flag).
    pub fn sum_values(&self, values: &[f32], what: &str) -> Result<Vec<f32>, CollectiveError> {
        let data = TensorData::new(values.to_vec(), [values.len()]);
        let tensor = Tensor::<B, 1>::from_data(data, &self.device);
        self.sum(tensor, what)?
            .into_data()
            .to_vec()
            .map_err(|e| CollectiveError::Mismatch(format!("{what}: {e:?}")))
    }

    /// Whether any rank's `flag` is set (the ranks agree on stopping).
    pub fn any(&self, flag: bool, what: &str) -> Result<bool, CollectiveError> {
        Ok(self.sum_values(&[f32::from(u8::from(flag))], what)?[0] > 0.0)
    }

    /// What the exchanges cost so far.
    pub fn stats(&self) -> ExchangeStats {
        let others = self.settings.world_size.saturating_sub(1) as u64;
        ExchangeStats {
            exchanges: self.exchanges.load(Ordering::Relaxed),
            seconds: self.nanos.load(Ordering::Relaxed) as f64 * 1e-9,
            bytes_sent: self.floats.load(Ordering::Relaxed) * 4 * others,
        }
    }

    /// Leaves the run: waits until the other ranks have fetched this rank's last buffers
    /// (at most 30 s), then unregisters from the coordinator.
    pub fn leave(&self) {
        self.exchange.drain(Duration::from_secs(30));
        let peer = PeerId::from(self.settings.rank);
        let quick = CollectiveSettings {
            timeout: Duration::from_secs(10),
            ..self.settings.clone()
        };
        let _ = within("leaving the run", &quick, move || {
            finish_collective::<B>(peer)
        });
    }
}

/// The joining all-reduce (burn-collective's, the one it completes per process): each rank
/// fills its row with 1, its settings digest in 16-bit pieces and its exchange address, and
/// the others' rows are zero; the sum holds every rank's row. Returns the addresses by rank.
fn swap_rows<B: Backend>(
    settings: &CollectiveSettings,
    device: &B::Device,
    digest: u64,
    address: &str,
) -> Result<Vec<WsAddress>, CollectiveError> {
    let w = settings.world_size;
    let pieces: Vec<f32> = (0..3)
        .map(|i| ((digest >> (16 * i)) & 0xffff) as f32)
        .collect();
    if address.len() > ADDRESS_BYTES {
        return Err(CollectiveError::Address(address.to_string()));
    }
    let mut rows = vec![0.0f32; w * ROW];
    let row = &mut rows[settings.rank * ROW..(settings.rank + 1) * ROW];
    row[0] = 1.0;
    row[1..4].copy_from_slice(&pieces);
    for (slot, byte) in row[4..].iter_mut().zip(address.bytes()) {
        *slot = f32::from(byte);
    }
    let what = "the ranks' handshake";
    let tensor = Tensor::<B, 1>::from_data(TensorData::new(rows, [w * ROW]), device);
    let primitive = tensor.into_primitive().tensor();
    let peer = PeerId::from(settings.rank);
    let summed = within(what, settings, move || {
        all_reduce::<B>(peer, primitive, ReduceOperation::Sum)
    })?
    .map_err(|e| failed(what, settings, e))?;
    let summed: Vec<f32> = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(summed))
        .into_data()
        .to_vec()
        .map_err(|e| CollectiveError::Mismatch(format!("{e:?}")))?;
    let mut addresses = Vec::with_capacity(w);
    for (rank, row) in summed.chunks(ROW).enumerate() {
        if row[0] != 1.0 {
            return Err(CollectiveError::Mismatch(format!(
                "rank {rank} was claimed by {} processes (each rank 0..{w} must be given to exactly one)",
                row[0]
            )));
        }
        if row[1..4] != pieces[..] {
            return Err(CollectiveError::Mismatch(format!(
                "rank {rank}'s settings or training data differ from rank {}'s (every rank must get the same command and files)",
                settings.rank
            )));
        }
        let bytes: Vec<u8> = row[4..]
            .iter()
            .take_while(|&&b| b != 0.0)
            .map(|&b| b as u8)
            .collect();
        let text = String::from_utf8(bytes)
            .map_err(|e| CollectiveError::Mismatch(format!("rank {rank}'s address: {e}")))?;
        addresses.push(text.parse()?);
    }
    Ok(addresses)
}

/// Collects the gradients of a module's parameters, flattened, in visiting order.
struct Flatten<'a, AB: AutodiffBackend> {
    grads: &'a GradientsParams,
    parts: Vec<Tensor<AB::InnerBackend, 1>>,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for Flatten<'_, AB> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        if let Some(grad) = self.grads.get::<AB::InnerBackend, D>(param.id) {
            let n = grad.shape().num_elements();
            self.parts.push(grad.reshape([n]));
        }
    }
}

/// Puts the reduced gradients back, in the same order as [`Flatten`] took them.
struct Unflatten<'a, AB: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    reduced: Tensor<AB::InnerBackend, 1>,
    offset: usize,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for Unflatten<'_, AB> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        if let Some(grad) = self.grads.remove::<AB::InnerBackend, D>(param.id) {
            let dims = grad.dims();
            let n = grad.shape().num_elements();
            let part = self
                .reduced
                .clone()
                .slice(self.offset..self.offset + n)
                .reshape(dims);
            self.grads.register::<AB::InnerBackend, D>(param.id, part);
            self.offset += n;
        }
    }
}

/// Runs `f` on a helper thread and waits at most `settings.timeout` for it.
fn within<T: Send + 'static>(
    what: &str,
    settings: &CollectiveSettings,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, CollectiveError> {
    let (sender, receiver) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("collective".into())
        .spawn(move || {
            let _ = sender.send(f());
        })
        .map_err(|e| failed(what, settings, e))?;
    receiver
        .recv_timeout(settings.timeout)
        .map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => CollectiveError::Timeout {
                what: what.to_string(),
                others: others(settings),
                seconds: settings.timeout.as_secs(),
            },
            // The helper panicked inside burn-collective (it panics on a lost connection).
            mpsc::RecvTimeoutError::Disconnected => {
                failed(what, settings, "the connection to another rank broke")
            }
        })
}

/// The ranks other than this one, in words: `rank 1`, `ranks 0, 2, 3`.
fn others(settings: &CollectiveSettings) -> String {
    let ranks: Vec<String> = (0..settings.world_size)
        .filter(|&r| r != settings.rank)
        .map(|r| r.to_string())
        .collect();
    match ranks.len() {
        1 => format!("rank {}", ranks[0]),
        _ => format!("ranks {}", ranks.join(", ")),
    }
}

fn failed(what: &str, settings: &CollectiveSettings, error: impl fmt::Debug) -> CollectiveError {
    CollectiveError::Failed {
        what: what.to_string(),
        others: others(settings),
        detail: format!("{error:?}"),
    }
}

/// Whether the coordinator's port accepts a connection, within [`CONNECT_TIMEOUT`].
fn reachable(address: &WsAddress) -> Result<(), CollectiveError> {
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
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(unreachable(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_shared_in_contiguous_blocks() {
        let blocks: Vec<_> = (0..3).map(|r| row_share(8, r, 3).0).collect();
        assert_eq!(blocks, [0..2, 2..5, 5..8]);
        assert_eq!(row_share(8, 1, 2), (4..8, ReduceOperation::Sum));
        assert_eq!(row_share(1, 1, 2), (0..1, ReduceOperation::Mean));
        assert_eq!(row_share(5, 0, 1), (0..5, ReduceOperation::Sum));
    }

    #[test]
    fn an_unreachable_coordinator_is_an_error_within_seconds() {
        // A port that was just free: nothing listens there.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let settings = CollectiveSettings::new(
            2,
            0,
            WsAddress {
                host: "127.0.0.1".into(),
                port,
            },
        )
        .unwrap();
        let started = Instant::now();
        let err = Collective::<burn::backend::NdArray>::join(settings, &Default::default(), 0)
            .unwrap_err();
        assert!(matches!(err, CollectiveError::Unreachable { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
