//! The SwiGLU gate `silu(g) * u`, fused on burn's CPU backend.
//!
//! Written with burn's operations, `silu(g) * u` is `g * sigmoid(g) * u`: three tensors of the
//! MLP's width in the forward, about six more in the backward, each a pass on one thread with
//! `expf` per element (SmolLM2 training, 1024 tokens: `[1024, 1536]` per layer, 30 layers). On
//! `flex` [`swiglu`] makes one parallel pass each way: the forward writes the output (over `g`'s
//! own buffer when nothing else holds it and no gradient is recorded); the backward recomputes
//! `sigmoid(g)` and writes both input gradients over the saved `g` and `u` when it holds their
//! last references. Elsewhere (the GPU backends) it is the composition.

use burn::tensor::Tensor;
use burn::tensor::activation::silu;

/// `silu(g) * u` for `g` and `u` of the same shape.
///
/// ```
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex();
/// let g = Tensor::<1>::from_floats([0.0, 1.0, -2.0], &device);
/// let u = Tensor::<1>::from_floats([5.0, 2.0, 3.0], &device);
/// let got = idlora_kernels::swiglu::swiglu(g, u).into_data().to_vec::<f32>().unwrap();
/// let silu = |x: f32| x / (1.0 + (-x).exp());
/// for (a, b) in got.iter().zip([0.0, silu(1.0) * 2.0, silu(-2.0) * 3.0]) {
///     assert!((a - b).abs() < 1e-6);
/// }
/// ```
pub fn swiglu<const D: usize>(g: Tensor<D>, u: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    let (g, u) = match flex::swiglu(g, u) {
        Ok(out) => return out,
        Err(inputs) => inputs,
    };
    silu(g) * u
}

#[cfg(feature = "flex")]
#[allow(clippy::result_large_err)] // the `Err` hands the caller's own two tensors back, once
mod flex {
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::flex::FlexTensor;
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Tensor, TensorData};
    use rayon::prelude::*;

    use crate::flex::{by_strategy, from_plain, from_tracked, owned, plain, tracked, usable, values};
    use crate::vmath::{self, sigmoid};

    /// Elements per parallel task: large enough that a task's `exp`s outweigh handing it out.
    const CHUNK: usize = 16 * 1024;

    /// `o <- silu(o) * u`, one chunk, vectorised.
    fn gate_in_place(o: &mut [f32], u: &[f32]) {
        vmath::vectorized(
            #[inline(always)]
            || {
                for (o, &u) in o.iter_mut().zip(u) {
                    *o = *o * sigmoid(*o) * u;
                }
            },
        )
    }

    /// `o <- silu(g) * u`, one chunk, vectorised.
    fn gate(o: &mut [f32], g: &[f32], u: &[f32]) {
        vmath::vectorized(
            #[inline(always)]
            || {
                for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                    *o = g * sigmoid(g) * u;
                }
            },
        )
    }

    /// Both input gradients written over the saved `g` and `u` (formulas at the backward), one
    /// chunk, vectorised.
    fn gate_backward(gs: &mut [f32], us: &mut [f32], dy: &[f32]) {
        vmath::vectorized(
            #[inline(always)]
            || {
                for ((g, u), &dy) in gs.iter_mut().zip(us.iter_mut()).zip(dy) {
                    let s = sigmoid(*g);
                    let (gv, uv) = (*g, *u);
                    *g = dy * uv * s * (1.0 + gv * (1.0 - s));
                    *u = dy * gv * s;
                }
            },
        )
    }

    pub(super) fn swiglu<const D: usize>(
        g: Tensor<D>,
        u: Tensor<D>,
    ) -> Result<Tensor<D>, (Tensor<D>, Tensor<D>)> {
        if g.dims() != u.dims() {
            return Err((g, u));
        }
        let (g, u) = (g.into_dispatch(), u.into_dispatch());
        let back = |g, u| Err((Tensor::from_dispatch(g), Tensor::from_dispatch(u)));
        if g.autodiff != u.autodiff {
            return back(g, u);
        }
        // Inference: no graph, so the output may take `g`'s buffer.
        if let (Some(gf), Some(uf)) = (plain(&g), plain(&u))
            && usable(gf)
            && usable(uf)
        {
            let (gf, uf) = (gf.clone(), uf.clone());
            drop((g, u));
            let mut out = owned(gf);
            let n = out.layout().num_elements();
            let uv = values(&uf);
            out.storage_mut::<f32>()[..n]
                .par_chunks_mut(CHUNK)
                .zip(uv.par_chunks(CHUNK))
                .for_each(|(o, u)| gate_in_place(o, u));
            return Ok(from_plain(out));
        }
        let (Some(ga), Some(ua)) = (tracked(&g), tracked(&u)) else {
            return back(g, u);
        };
        if !usable(ga.primitive()) || !usable(ua.primitive()) {
            return back(g, u);
        }
        match by_strategy!(g.autodiff, run(ga, ua)) {
            Some(out) => Ok(from_tracked(out, g.autodiff)),
            None => back(g, u),
        }
    }

    fn run<C: CheckpointStrategy>(
        g: &FloatTensor<Autodiff<Flex, C>>,
        u: &FloatTensor<Autodiff<Flex, C>>,
    ) -> FloatTensor<Autodiff<Flex, C>> {
        let (gv, uv) = (values(g.primitive()), values(u.primitive()));
        let mut out = vec![0.0f32; gv.len()];
        out.par_chunks_mut(CHUNK)
            .zip(gv.par_chunks(CHUNK).zip(uv.par_chunks(CHUNK)))
            .for_each(|(o, (g, u))| gate(o, g, u));
        let out = FlexTensor::from_data(TensorData::new(out, g.primitive().layout().shape().clone()));
        match SwiGlu.prepare::<C>([g.node(), u.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((g.primitive().clone(), u.primitive().clone()), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    #[derive(Debug)]
    struct SwiGlu;

    impl Backward<Flex, 2> for SwiGlu {
        /// `g` and `u` as they were in the forward.
        type State = (FlexTensor, FlexTensor);

        fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
            let [node_g, node_u] = ops.parents;
            // The output is f32 (`run`), so its gradient is too.
            let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
            let (g, u) = ops.state;
            // d/dg = dy u s (1 + g (1 - s)), d/du = dy g s, with s = sigmoid(g); written over the
            // saved inputs, element by element (each position reads its g and u before writing).
            let (mut dg, mut du) = (owned(g), owned(u));
            let n = dg.layout().num_elements();
            let dy = values(&grad);
            let (dgs, dus) = (&mut dg.storage_mut::<f32>()[..n], &mut du.storage_mut::<f32>()[..n]);
            dgs.par_chunks_mut(CHUNK)
                .zip(dus.par_chunks_mut(CHUNK))
                .zip(dy.par_chunks(CHUNK))
                .for_each(|((gs, us), dy)| gate_backward(gs, us, dy));
            if let Some(node) = node_g {
                grads.register::<Flex>(node.id, dg);
            }
            if let Some(node) = node_u {
                grads.register::<Flex>(node.id, du);
            }
        }
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::tensor::activation::silu;
    use burn::tensor::{Device, Distribution, Tensor};

    use super::swiglu;
    use crate::flex::testing::{close_within, values};

    fn close(a: &[f32], b: &[f32], what: &str) {
        close_within(a, b, (1e-6, 1e-5), what);
    }

    /// Forward and both input gradients against burn's `silu(g) * u`, with the inputs computed
    /// (so the fused backward may write over them) and with them as leaves held by the caller
    /// (so it must copy). Sizes above and below one parallel chunk.
    #[test]
    fn fused_swiglu_matches_the_composition_with_gradients() {
        let device = Device::flex().autodiff();
        device.seed(5);
        for shape in [[2, 3, 7], [3, 50, 400]] {
            let x = Tensor::<3>::random(shape, Distribution::Normal(0.0, 2.0), &device);
            let y = Tensor::<3>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            let dy = Tensor::<3>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            for computed in [true, false] {
                let run = |fused: bool| {
                    let (x, y) = (x.clone().require_grad(), y.clone().require_grad());
                    let (g, u) =
                        if computed { (x.clone() * 1.5, y.clone() - 0.25) } else { (x.clone(), y.clone()) };
                    let out = if fused { swiglu(g, u) } else { silu(g) * u };
                    let grads = (out.clone() * dy.clone()).sum().backward();
                    let gx = values(x.grad(&grads).expect("x has a gradient"));
                    let gy = values(y.grad(&grads).expect("y has a gradient"));
                    (values(out), gx, gy)
                };
                let (fast, slow) = (run(true), run(false));
                let ctx = format!("{shape:?} computed {computed}");
                close(&fast.0, &slow.0, &format!("{ctx} forward"));
                close(&fast.1, &slow.1, &format!("{ctx} grad g"));
                close(&fast.2, &slow.2, &format!("{ctx} grad u"));
                assert!(slow.1.iter().any(|v| v.abs() > 1e-2), "{ctx}: gradients must not be trivially zero");
            }
        }
    }

    /// Without autodiff: the value, and a `g` still held by the caller is left untouched.
    #[test]
    fn inference_swiglu_matches_and_never_writes_a_shared_input() {
        let device = Device::flex();
        let g = Tensor::<2>::random([33, 700], Distribution::Normal(0.0, 2.0), &device);
        let u = Tensor::<2>::random([33, 700], Distribution::Normal(0.0, 1.0), &device);
        let before = values(g.clone());
        let want = values(silu(g.clone()) * u.clone());
        close(&values(swiglu(g.clone(), u.clone())), &want, "shared g");
        assert_eq!(values(g.clone()), before, "a shared g must not be written");
        // An owned g (the projection's fresh output) takes the in-place path.
        close(&values(swiglu(g * 1.0, u)), &want, "owned g");
    }
}
