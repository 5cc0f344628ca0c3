//! One process's membership of a data-parallel run.
//!
//! A run on `W` processes ("ranks") trains one model: every rank cuts its block of rows out
//! of each global batch ([`row_share`]), computes that block's gradients, and the gradients
//! are summed across ranks before every rank takes the same optimizer step, so all ranks
//! hold the same weights after every step. The rows' losses and predictions are gathered the
//! same way (a sum in which every other rank adds zeros, hence exact), so rank 0 reports the
//! metrics of the whole batch.
//!
//! Joining ([`Collective::join`]) starts this rank's exchange on its own address (bound to
//! that host only), then joins at the coordinator, which waits for every rank, checks that
//! their settings digests agree, and sends each the others' addresses and a fresh run id
//! ([`crate::distributed::rendezvous`]). Every later sum goes through the exchange
//! ([`crate::distributed::exchange`]); every message is signed with the run's token.
//!
//! Every wait is bounded by the configured timeout, and an error names the step and the
//! rank waited for, so a rank that died never leaves the others hanging.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};

use crate::distributed::exchange::{ExchangeFailure, RankExchange};
use crate::distributed::rendezvous;
use crate::distributed::run_key::RunKey;
use crate::distributed::settings::{CollectiveError, CollectiveSettings};

/// How the ranks' buffers of a step combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOperation {
    /// Each rank trained its own rows: the gradients add up.
    Sum,
    /// Every rank trained the same rows: the identical gradients are averaged.
    Mean,
}

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
    exchange: RankExchange,
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

impl<B: Backend> Collective<B> {
    /// Joins the run: refuses one that reaches past this machine without a token (unless
    /// `insecure`), starts this rank's exchange on its address, joins at the coordinator
    /// (which checks that every rank is present once and that all ranks' `settings_digest`
    /// agree), and connects to every other rank.
    pub fn join(
        settings: CollectiveSettings,
        device: &B::Device,
        settings_digest: u64,
    ) -> Result<Self, CollectiveError> {
        settings.check_security()?;
        let key = RunKey::new(settings.token.as_ref());
        let node = settings.node();
        let mut exchange = RankExchange::serve(
            settings.rank,
            settings.world_size,
            &node,
            key.clone(),
            settings.timeout.saturating_mul(2) + Duration::from_secs(60),
        )
        .map_err(|e| CollectiveError::Listen {
            address: node.to_string(),
            detail: e.to_string(),
            hint: "choose another --node-address: a free port on an address of this machine",
        })?;
        let roster = rendezvous::join(&settings, &key, settings_digest, &node)?;
        exchange
            .connect(&roster.run_id, &roster.addresses, settings.timeout)
            .map_err(|failure| {
                describe(
                    failure,
                    "connecting to the other ranks",
                    settings.timeout.as_secs(),
                )
            })?;
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
        let values: Vec<f32> = tensor
            .into_data()
            .convert::<f32>()
            .into_vec()
            .map_err(|e| CollectiveError::Mismatch(format!("{what}: {e:?}")))?;
        let summed = self
            .exchange
            .sum(values, self.settings.timeout)
            .map_err(|failure| describe(failure, what, self.settings.timeout.as_secs()))?;
        let n = summed.len();
        let summed = Tensor::<B, 1>::from_data(TensorData::new(summed, [n]), &self.device);
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
    /// (at most 30 s).
    pub fn leave(&self) {
        self.exchange.drain(Duration::from_secs(30));
    }
}

/// The error of a failed exchange, naming the rank that failed.
fn describe(failure: ExchangeFailure, what: &str, seconds: u64) -> CollectiveError {
    let what = what.to_string();
    match failure {
        ExchangeFailure::Timeout { rank } => CollectiveError::Timeout {
            what,
            others: format!("rank {rank}"),
            seconds,
        },
        ExchangeFailure::Lost { rank, detail } => CollectiveError::Failed {
            what,
            others: format!("rank {rank}"),
            detail,
        },
        ExchangeFailure::Forged { rank } => CollectiveError::Forged {
            what,
            party: format!("rank {rank}"),
        },
        ExchangeFailure::Invalid { rank, detail } => {
            CollectiveError::Invalid { what, rank, detail }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributed::settings::PeerAddress;
    use std::net::TcpListener;

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
            PeerAddress {
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
