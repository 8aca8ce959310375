//! The step's gradients: forward and backward of its micro-batches (on one device or spread over
//! several), the global gradient norm and clipping by it.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Tensor};
use idlora_models::CausalLm;

use super::scalar;
use crate::batch::Batch;
use crate::config::GradientCheckpointing;
use crate::error::{Result, TrainError};
use crate::loss::splitmix;
use crate::recompute::batch_grads;

/// Derives the dropout seed of micro-batch `index` (each layer's follows from it,
/// [`crate::loss::layer_seed`]).
fn micro_seed(seed: u64, index: usize) -> u64 {
    splitmix(seed ^ (index as u64).wrapping_add(0x9E37_79B9_7F4A_7C15))
}

/// One step's work: its micro-batches, each with its global index (which seeds its dropout), the
/// run's seed, the step's target count, by which every micro-batch's loss is divided so that
/// the gradients sum to those of the step's mean, and `train.gradient_checkpointing`.
#[derive(Clone, Copy)]
pub(super) struct StepBatches<'a> {
    pub batches: &'a [(usize, Batch)],
    pub seed: u64,
    pub targets: usize,
    pub checkpointing: GradientCheckpointing,
}

/// The step's gradients on the model's device, or spread over it and `replicas` when there are
/// any. Returns the gradients and the summed negative log-likelihood.
pub(super) fn step_grads(
    model: &CausalLm,
    replicas: &[Device],
    step: StepBatches<'_>,
) -> Result<(GradientsParams, f64)> {
    if replicas.is_empty() {
        micro_batch_grads(model, step, 0, 1)
    } else {
        data_parallel_grads(model, replicas, step)
    }
}

/// Forward and backward of the micro-batches `first, first + stride, ...` of `step` on `model`,
/// gradients accumulated. Returns the gradients and the summed negative log-likelihood.
fn micro_batch_grads(
    model: &CausalLm,
    step: StepBatches<'_>,
    first: usize,
    stride: usize,
) -> Result<(GradientsParams, f64)> {
    let mut acc = GradientsAccumulator::<CausalLm>::new();
    let mut nll_total = 0.0;
    let scale = step.targets.max(1) as f64;
    for (g, batch) in step.batches.iter().skip(first).step_by(stride) {
        // Each layer's dropout is seeded from the micro-batch's seed, so that a recomputed layer
        // draws the masks of its first pass.
        let (grads, nll) = batch_grads(model, batch, micro_seed(step.seed, *g), scale, step.checkpointing)?;
        nll_total += nll;
        acc.accumulate(model, grads);
    }
    Ok((acc.grads(), nll_total))
}

/// [`micro_batch_grads`] spread over the model's device and `replicas` (micro-batch `i` on device
/// `i mod n`), one thread per device, the gradients moved to the model's device and summed.
fn data_parallel_grads(
    model: &CausalLm,
    replicas: &[Device],
    step: StepBatches<'_>,
) -> Result<(GradientsParams, f64)> {
    let main = model.device();
    let devices: Vec<Device> = std::iter::once(main.clone()).chain(replicas.iter().cloned()).collect();
    let n = devices.len();
    let results: Vec<Result<(GradientsParams, f64)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(j, dev)| {
                let replica = if j == 0 { model.clone() } else { model.clone().fork(dev) };
                scope.spawn(move || micro_batch_grads(&replica, step, j, n))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(TrainError::Tensor {
                        name: "data-parallel worker".into(),
                        message: "panicked".into(),
                    })
                })
            })
            .collect()
    });
    let mut acc = GradientsAccumulator::<CausalLm>::new();
    let mut nll_total = 0.0;
    for r in results {
        let (grads, nll) = r?;
        acc.accumulate(model, grads.to_device(&main, model));
        nll_total += nll;
    }
    Ok((acc.grads(), nll_total))
}

/// The global L2 norm of the gradients of `model`'s trainable parameters.
pub(super) fn grad_norm(model: &CausalLm, grads: &GradientsParams) -> Result<f64> {
    struct Norm<'a> {
        grads: &'a GradientsParams,
        sum: Option<Tensor<1>>,
    }
    impl ModuleVisitor for Norm<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                let s = g.square().sum();
                self.sum = Some(match self.sum.take() {
                    Some(acc) => acc + s,
                    None => s,
                });
            }
        }
    }
    let mut v = Norm { grads, sum: None };
    model.visit(&mut v);
    match v.sum {
        Some(s) => Ok(scalar(s, "gradient norm")?.sqrt()),
        None => Ok(0.0),
    }
}

/// Multiplies every gradient by `factor`.
pub(super) fn scale_grads(model: &CausalLm, grads: GradientsParams, factor: f64) -> GradientsParams {
    struct Scale {
        grads: GradientsParams,
        factor: f64,
    }
    impl ModuleVisitor for Scale {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                self.grads.register(param.id, g.mul_scalar(self.factor));
            }
        }
    }
    let mut s = Scale { grads, factor };
    model.visit(&mut s);
    s.grads
}
