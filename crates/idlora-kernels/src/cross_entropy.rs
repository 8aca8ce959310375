//! The training loss's cross-entropy, `-sum_i log softmax(logits_i)[targets_i]`, fused into one
//! autodiff operation on burn's CPU backend.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};

/// `-sum_i log softmax(logits_i)[targets_i]` for `logits: [n, vocab]`, as a one-element tensor.
///
/// On burn's CPU backend under autodiff this is one fused operation (the private `fused` module); elsewhere
/// `log_softmax`, `gather` and `sum`. Targets must be below `vocab` (the batcher's tokens are).
///
/// ```
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex();
/// let logits = Tensor::<2>::from_floats([[0.0, 0.0], [2.0, 0.0]], &device);
/// let nll = idlora_kernels::cross_entropy::cross_entropy_sum(logits, &[1, 0]);
/// let want = 2.0f32.ln() + (1.0 + (-2.0f32).exp()).ln();
/// let got = nll.into_data().to_vec::<f32>().unwrap()[0];
/// assert!((got - want).abs() < 1e-6);
/// ```
pub fn cross_entropy_sum(logits: Tensor<2>, targets: &[u32]) -> Tensor<1> {
    #[cfg(feature = "flex")]
    let logits = match fused::cross_entropy_sum(logits, targets) {
        Ok(nll) => return nll,
        Err(logits) => logits,
    };
    generic_cross_entropy_sum(logits, targets)
}

/// The reference composition of burn operations (any backend).
fn generic_cross_entropy_sum(logits: Tensor<2>, targets: &[u32]) -> Tensor<1> {
    let n = targets.len();
    let device = logits.device();
    let targets = Tensor::<2, Int>::from_data(
        TensorData::new(targets.iter().map(|&t| t as i32).collect::<Vec<_>>(), [n, 1]),
        &device,
    );
    log_softmax(logits, 1).gather(1, targets).sum().neg()
}

/// Cross-entropy as one autodiff operation on the CPU backend (`flex`).
///
/// Composed from burn operations, the loss over a `[tokens, vocab]` block (1024 x 49152 for a
/// SmolLM2 batch of 4 x 256: 200 MB) makes about five tensors of that size between forward and
/// backward (exponentials, sums broadcast back, the log-probabilities, the softmax of the
/// backward, the scattered gradient of the gather), each a fresh mapping that the kernel
/// zero-fills, with the exponentials on one thread. Here the forward reads the logits once per
/// row to get each row's log-sum-exp (rows in parallel) and keeps only those `n` numbers; the
/// backward writes `g (softmax - onehot)` over the logits' own buffer, which nothing else holds by
/// then (the head's matmul does not keep its output), so no `[n, vocab]` tensor is allocated.
#[cfg(feature = "flex")]
mod fused {
    use std::sync::Arc;

    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
    use burn::backend::flex::FlexTensor;
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Tensor, TensorData};
    use rayon::prelude::*;

    use crate::flex::{by_strategy, from_tracked, owned, tracked, usable, values};
    use crate::vmath;

    /// The fused loss, or the logits back when they are not an `f32` flex tensor under autodiff.
    #[allow(clippy::result_large_err)] // the `Err` hands the caller's own tensor back, once
    pub(super) fn cross_entropy_sum(logits: Tensor<2>, targets: &[u32]) -> Result<Tensor<1>, Tensor<2>> {
        let [n, vocab] = logits.dims();
        if n != targets.len() || targets.iter().any(|&t| t as usize >= vocab) {
            return Err(logits);
        }
        let dispatch = logits.into_dispatch();
        let Some(tensor) = tracked(&dispatch).filter(|t| usable(t.primitive())) else {
            return Err(Tensor::from_dispatch(dispatch));
        };
        match by_strategy!(dispatch.autodiff, op(tensor, targets, vocab)) {
            Some(out) => Ok(from_tracked(out, dispatch.autodiff)),
            None => Err(Tensor::from_dispatch(dispatch)),
        }
    }

    /// Each row's log-sum-exp, in `f64`, rows in parallel.
    fn row_lse(x: &[f32], vocab: usize) -> Vec<f64> {
        x.par_chunks(vocab)
            .map(|row| {
                vmath::vectorized(
                    #[inline(always)]
                    || {
                        let max = vmath::max(row);
                        f64::from(max) + vmath::sum_exp_f64(row, max).ln()
                    },
                )
            })
            .collect()
    }

    fn op<C: CheckpointStrategy>(
        logits: &FloatTensor<Autodiff<Flex, C>>,
        targets: &[u32],
        vocab: usize,
    ) -> FloatTensor<Autodiff<Flex, C>> {
        let x = values(logits.primitive());
        let lse = row_lse(x, vocab);
        let nll: f64 = lse
            .iter()
            .zip(targets)
            .enumerate()
            .map(|(i, (l, &t))| l - f64::from(x[i * vocab + t as usize]))
            .sum();
        let out = FlexTensor::from_data(TensorData::new(vec![nll as f32], [1]));
        let state = State {
            logits: logits.primitive().clone(),
            lse: Arc::new(lse),
            targets: Arc::new(targets.to_vec()),
            vocab,
        };
        match CrossEntropy.prepare::<C>([logits.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(state, out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    #[derive(Debug)]
    struct CrossEntropy;

    #[derive(Debug, Clone)]
    struct State {
        logits: FlexTensor,
        lse: Arc<Vec<f64>>,
        targets: Arc<Vec<u32>>,
        vocab: usize,
    }

    impl Backward<Flex, 1> for CrossEntropy {
        type State = State;

        fn backward(self, ops: Ops<State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
            let State { logits, lse, targets, vocab } = ops.state;
            unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
                let g =
                    grad.to_contiguous().as_slice::<f32>().and_then(|v| v.first().copied()).unwrap_or(0.0);
                // In place when this is the last reference to the logits (the usual case), else
                // into a copy.
                let mut out = owned(logits);
                if let Some(storage) = out.try_storage_mut::<f32>() {
                    let rows = storage[..lse.len() * vocab].par_chunks_mut(vocab);
                    rows.zip(lse.par_iter()).zip(targets.par_iter()).for_each(|((row, &lse), &t)| {
                        let lse = lse as f32;
                        vmath::vectorized(
                            #[inline(always)]
                            || {
                                for v in row.iter_mut() {
                                    *v = g * vmath::exp(*v - lse);
                                }
                            },
                        );
                        row[t as usize] -= g;
                    });
                }
                out
            });
        }
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::tensor::{Device, Distribution, Tensor};

    use super::{cross_entropy_sum, fused, generic_cross_entropy_sum};
    use crate::flex::testing::values;

    /// Loss and input gradient of the fused operation against burn's own composition, with the
    /// logits computed from a leaf (so the backward may write over them: the in-place path) and
    /// with the logits a leaf themselves (shared with the caller: the copying path).
    #[test]
    fn fused_cross_entropy_matches_the_composition_of_burn_operations() {
        let device = Device::flex().autodiff();
        device.seed(11);
        let (n, d, vocab) = (9, 6, 301);
        let targets: Vec<u32> = (0..n as u32).map(|i| (i * 97 + 5) % vocab as u32).collect();
        let h = Tensor::<2>::random([n, d], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<2>::random([d, vocab], Distribution::Normal(0.0, 2.0), &device);
        for through_matmul in [true, false] {
            let run = |fast: bool| {
                let h = h.clone().require_grad();
                let leaf = h.clone().matmul(w.clone()).detach().require_grad();
                let logits = if through_matmul { h.clone().matmul(w.clone()) } else { leaf.clone() };
                let loss = if fast {
                    fused::cross_entropy_sum(logits, &targets).expect("flex autodiff takes the fused path")
                } else {
                    generic_cross_entropy_sum(logits, &targets)
                };
                let grads = loss.clone().mul_scalar(0.7).backward();
                let grad = if through_matmul { h.grad(&grads) } else { leaf.grad(&grads) };
                (values(loss)[0], values(grad.expect("a gradient")))
            };
            let (fast, slow) = (run(true), run(false));
            let ctx = if through_matmul { "through a matmul" } else { "leaf logits" };
            assert!((fast.0 - slow.0).abs() <= 1e-5 * slow.0.abs(), "{ctx}: loss {} vs {}", fast.0, slow.0);
            assert!(slow.1.iter().any(|v| v.abs() > 1e-3), "{ctx}: the gradient must not be trivially zero");
            for (i, (a, b)) in fast.1.iter().zip(&slow.1).enumerate() {
                assert!((a - b).abs() <= 1e-5 + 1e-4 * b.abs(), "{ctx}: gradient [{i}] {a} vs {b}");
            }
        }
    }

    #[test]
    fn fused_path_only_under_autodiff_and_for_valid_targets() {
        let logits = Tensor::<2>::zeros([2, 3], &Device::flex());
        assert!(fused::cross_entropy_sum(logits, &[0, 2]).is_err(), "no autodiff: the generic path");
        let logits = Tensor::<2>::zeros([2, 3], &Device::flex().autodiff());
        assert!(fused::cross_entropy_sum(logits.clone(), &[0, 3]).is_err(), "a target past the vocabulary");
        assert!(fused::cross_entropy_sum(logits, &[0, 2]).is_ok());
        // Uniform logits: the loss is n ln(vocab) either way.
        let nll = cross_entropy_sum(Tensor::<2>::zeros([2, 3], &Device::flex().autodiff()), &[0, 2]);
        assert!((values(nll)[0] - 2.0 * 3.0f32.ln()).abs() < 1e-6);
    }
}
