//! Causal self-attention on burn's CPU backend: one autodiff operation each way for training, the
//! same forward for a prompt.
//!
//! Under autodiff burn 0.22 computes attention with its generic composition
//! (`attention_fallback`): the scores `Q K^T`, a causal mask built and applied, a max, a
//! subtraction, `exp`, a sum, a division and the product with `V`, each a recorded operation on a
//! `[batch, heads, seq, seq]` tensor with its own backward, the element-wise ones on one thread;
//! grouped key/value heads must first be copied out to every query head. For SmolLM2 at 4 x 256
//! training tokens, 30 layers of it took 2.3-3.0 s forward and backward (measured standalone),
//! about a third of a training step, for 54 GFLOP of products.
//!
//! [`causal`] computes the same function with one task per (sequence, query head): the scores, the
//! masked softmax and the output by small single-threaded gemm calls over blocks of 64 query rows
//! that skip the masked triangle, keeping only each row's log-sum-exp. The backward, one task per
//! (sequence, key/value head), recomputes the probabilities from it (as FlashAttention does) and
//! accumulates the gradients of the group's shared keys and values over its query heads, so
//! grouped heads are never copied. Without autodiff the forward alone serves a prompt, so training
//! and inference compute attention the same way. Elsewhere (the GPU backends, a mask, one-token
//! decoding steps) the model keeps burn's `attention`.

use burn::tensor::Tensor;

/// `softmax(Q K^T / sqrt(d) + causal mask) V` for `q: [b, h, s, d]` and `k, v: [b, kv_heads, t, d]`
/// with `h` a multiple of `kv_heads` and `t >= s` (query `i` sees keys `j <= i + t - s`, the
/// alignment of burn's `is_causal`), when all three are f32 tensors of burn's CPU backend, all
/// under autodiff or none; `None` otherwise, for the caller's general path.
///
/// ```
/// use burn::tensor::{Device, Distribution, Tensor};
///
/// let device = Device::flex().autodiff();
/// let q = Tensor::<4>::random([1, 4, 3, 8], Distribution::Default, &device);
/// let kv = Tensor::<4>::random([1, 2, 3, 8], Distribution::Default, &device);
/// let out = idlora_kernels::causal_attention::causal(&q, &kv, &kv).expect("flex autodiff tensors");
/// assert_eq!(out.dims(), [1, 4, 3, 8]);
/// // The first query sees only the first key, so its output is that key's value row.
/// let first = out.slice([0..1, 0..1, 0..1, 0..8]).into_data();
/// first.assert_approx_eq::<f32>(&kv.slice([0..1, 0..1, 0..1, 0..8]).into_data(), Default::default());
/// ```
pub fn causal(q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>) -> Option<Tensor<4>> {
    let ([b, h, s, d], [bk, kvh, t, dk], vd) = (q.dims(), k.dims(), v.dims());
    let fits = b == bk && d == dk && vd == [b, kvh, t, d] && kvh > 0 && h % kvh == 0 && t >= s && s > 0;
    if !fits {
        return None;
    }
    #[cfg(feature = "flex")]
    {
        flex::causal(q, k, v)
    }
    #[cfg(not(feature = "flex"))]
    {
        None
    }
}

#[cfg(feature = "flex")]
mod flex {
    use std::sync::Arc;

    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::flex::FlexTensor;
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Autodiff, DispatchAutodiffContext, Flex};
    use burn::tensor::{Tensor, TensorData};
    use rayon::prelude::*;

    use crate::flex::{by_strategy, contiguous, from_plain, from_tracked, plain, tracked, values};
    use crate::vmath;

    /// Shapes of one call: batch, query heads, key/value heads, query rows, key rows, head size.
    #[derive(Clone, Copy, Debug)]
    struct Dims {
        b: usize,
        h: usize,
        kvh: usize,
        s: usize,
        t: usize,
        d: usize,
    }

    impl Dims {
        fn groups(&self) -> usize {
            self.h / self.kvh
        }
        fn scale(&self) -> f32 {
            1.0 / (self.d as f32).sqrt()
        }
        /// Keys visible to query row `i`: `0 ..= i + t - s`.
        fn visible(&self, i: usize) -> usize {
            i + self.t - self.s + 1
        }
        /// Blocks of query rows `(first, end, keys)`, `keys` the keys the block's last row sees:
        /// the products skip the masked upper triangle block by block (about half the work).
        fn blocks(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
            (0..self.s).step_by(ROWS).map(move |r0| {
                let r1 = (r0 + ROWS).min(self.s);
                (r0, r1, self.visible(r1 - 1))
            })
        }
    }

    /// Query rows per block of the products.
    const ROWS: usize = 64;

    pub(super) fn causal(q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>) -> Option<Tensor<4>> {
        let [b, h, s, d] = q.dims();
        let [_, kvh, t, _] = k.dims();
        let dims = Dims { b, h, kvh, s, t, d };
        let (qd, kd, vd) = (q.clone().into_dispatch(), k.clone().into_dispatch(), v.clone().into_dispatch());
        let context = qd.autodiff;
        if kd.autodiff != context || vd.autodiff != context {
            return None;
        }
        if context == DispatchAutodiffContext::Disabled {
            let out = infer(plain(&qd)?, plain(&kd)?, plain(&vd)?, dims);
            return Some(from_plain(out));
        }
        let out = by_strategy!(context, run(tracked(&qd)?, tracked(&kd)?, tracked(&vd)?, dims))?;
        Some(from_tracked(out, context))
    }

    /// `dst (m x n, row stride dst_rs) = alpha lhs (m x k) rhs (k x n)`, added to `dst` when
    /// `accumulate`; one thread; the inputs with any strides (`(row, column)` pairs).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        (m, n, k): (usize, usize, usize),
        dst: &mut [f32],
        dst_rs: usize,
        accumulate: bool,
        lhs: &[f32],
        (lhs_rs, lhs_cs): (usize, usize),
        rhs: &[f32],
        (rhs_rs, rhs_cs): (usize, usize),
        alpha: f32,
    ) {
        if m == 0 || n == 0 {
            return;
        }
        // Bounds the pointer arithmetic below relies on.
        assert!(dst.len() >= (m - 1) * dst_rs + n);
        if k > 0 {
            assert!(lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
            assert!(rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
        }
        // SAFETY: the asserts above keep every element gemm reads or writes inside the slices;
        // `dst` is a distinct mutable slice, so it aliases neither input.
        unsafe {
            ::gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                1,
                dst_rs as isize,
                accumulate,
                lhs.as_ptr(),
                lhs_cs as isize,
                lhs_rs as isize,
                rhs.as_ptr(),
                rhs_cs as isize,
                rhs_rs as isize,
                1.0,
                alpha,
                false,
                false,
                false,
                ::gemm::Parallelism::None,
            );
        }
    }

    /// Each query row's log-sum-exp: computed by the forward, given back to the backward.
    enum RowLse<'a> {
        Compute(&'a mut [f32]),
        Saved(&'a [f32]),
    }

    /// Scores `scale Q K^T` of one query head into `p` (`s x t`), then the causal softmax in place
    /// (masked entries 0), with the rows' log-sum-exp computed into or read from `lse`.
    fn probabilities(dims: Dims, qh: &[f32], kg: &[f32], p: &mut [f32], mut lse: RowLse<'_>) {
        let Dims { t, d, .. } = dims;
        for (r0, r1, keys) in dims.blocks() {
            gemm(
                (r1 - r0, keys, d),
                &mut p[r0 * t..],
                t,
                false,
                &qh[r0 * d..],
                (d, 1),
                kg,
                (1, d),
                dims.scale(),
            );
        }
        vmath::vectorized(
            #[inline(always)]
            || {
                for (i, row) in p.chunks_exact_mut(t).enumerate() {
                    let seen = dims.visible(i);
                    let (live, masked) = row.split_at_mut(seen);
                    masked.fill(0.0);
                    let l = match &mut lse {
                        RowLse::Saved(saved) => saved[i],
                        RowLse::Compute(out) => {
                            let max = vmath::max(live);
                            out[i] = max + vmath::sum_exp(live, max).ln();
                            out[i]
                        }
                    };
                    for x in live.iter_mut() {
                        *x = vmath::exp(*x - l);
                    }
                }
            },
        );
    }

    /// The output `[b, h, s, d]` and each row's log-sum-exp (`[b, h, s]`) of contiguous `q`, `k`,
    /// `v`. One task per (sequence, query head): each writes its own block of both.
    fn forward(qv: &[f32], kv: &[f32], vv: &[f32], dims: Dims) -> (Vec<f32>, Vec<f32>) {
        let Dims { b, h, kvh, s, t, d } = dims;
        let groups = dims.groups();
        let mut out = vec![0.0f32; b * h * s * d];
        let mut lse = vec![0.0f32; b * h * s];
        out.par_chunks_mut(s * d).zip(lse.par_chunks_mut(s)).enumerate().for_each(|(task, (out, lse))| {
            let (bi, hq) = (task / h, task % h);
            let kv_at = (bi * kvh + hq / groups) * t * d;
            let (kg, vg) = (&kv[kv_at..kv_at + t * d], &vv[kv_at..kv_at + t * d]);
            let qh = &qv[task * s * d..(task + 1) * s * d];
            let mut p = vec![0.0f32; s * t];
            probabilities(dims, qh, kg, &mut p, RowLse::Compute(lse));
            for (r0, r1, keys) in dims.blocks() {
                gemm((r1 - r0, d, keys), &mut out[r0 * d..], d, false, &p[r0 * t..], (t, 1), vg, (d, 1), 1.0);
            }
        });
        (out, lse)
    }

    /// Without autodiff: the output only.
    fn infer(q: &FlexTensor, k: &FlexTensor, v: &FlexTensor, dims: Dims) -> FlexTensor {
        let (qc, kc, vc) = (contiguous(q), contiguous(k), contiguous(v));
        let (out, _) = forward(values(&qc), values(&kc), values(&vc), dims);
        FlexTensor::from_data(TensorData::new(out, [dims.b, dims.h, dims.s, dims.d]))
    }

    fn run<C: CheckpointStrategy>(
        q: &FloatTensor<Autodiff<Flex, C>>,
        k: &FloatTensor<Autodiff<Flex, C>>,
        v: &FloatTensor<Autodiff<Flex, C>>,
        dims: Dims,
    ) -> FloatTensor<Autodiff<Flex, C>> {
        let Dims { b, h, s, d, .. } = dims;
        let (qc, kc, vc) = (contiguous(q.primitive()), contiguous(k.primitive()), contiguous(v.primitive()));
        let (out, lse) = forward(values(&qc), values(&kc), values(&vc), dims);
        let out = FlexTensor::from_data(TensorData::new(out, [b, h, s, d]));
        match FusedCausal.prepare::<C>([q.node(), k.node(), v.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let state = State { q: qc, k: kc, v: vc, out: out.clone(), lse: Arc::new(lse), dims };
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    #[derive(Debug)]
    struct FusedCausal;

    /// What the backward needs: the inputs (contiguous), the output and each row's log-sum-exp.
    #[derive(Debug, Clone)]
    struct State {
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        out: FlexTensor,
        lse: Arc<Vec<f32>>,
        dims: Dims,
    }

    impl Backward<Flex, 3> for FusedCausal {
        type State = State;

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
            let [node_q, node_k, node_v] = ops.parents;
            let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
            let State { q, k, v, out, lse, dims } = ops.state;
            let Dims { b, h, kvh, s, t, d } = dims;
            let groups = dims.groups();
            let (qv, kv, vv, ov, dov) = (values(&q), values(&k), values(&v), values(&out), values(&grad));
            let mut dq = vec![0.0f32; b * h * s * d];
            let mut dk = vec![0.0f32; b * kvh * t * d];
            let mut dv = vec![0.0f32; b * kvh * t * d];
            let scale = dims.scale();
            dq.par_chunks_mut(groups * s * d)
                .zip(dk.par_chunks_mut(t * d).zip(dv.par_chunks_mut(t * d)))
                .enumerate()
                .for_each(|(task, (dq, (dkg, dvg)))| {
                    let (bi, g) = (task / kvh, task % kvh);
                    let kv_at = (bi * kvh + g) * t * d;
                    let (kg, vg) = (&kv[kv_at..kv_at + t * d], &vv[kv_at..kv_at + t * d]);
                    let mut p = vec![0.0f32; s * t];
                    let mut dp = vec![0.0f32; s * t];
                    for j in 0..groups {
                        let hq = g * groups + j;
                        let at = (bi * h + hq) * s * d;
                        let (qh, oh, doh) = (&qv[at..at + s * d], &ov[at..at + s * d], &dov[at..at + s * d]);
                        let row_lse = &lse[(bi * h + hq) * s..(bi * h + hq + 1) * s];
                        probabilities(dims, qh, kg, &mut p, RowLse::Saved(row_lse));
                        let dqh = &mut dq[j * s * d..(j + 1) * s * d];
                        for (r0, r1, keys) in dims.blocks() {
                            let rows = r1 - r0;
                            let (pb, dob, qb) = (&p[r0 * t..], &doh[r0 * d..], &qh[r0 * d..]);
                            // dV += P^T dO
                            gemm((keys, d, rows), dvg, d, true, pb, (1, t), dob, (d, 1), 1.0);
                            // dP = dO V^T
                            gemm((rows, keys, d), &mut dp[r0 * t..], t, false, dob, (d, 1), vg, (1, d), 1.0);
                            // dS = P (dP - rowsum(dO O)) over the keys each row sees, in place over
                            // dP; the rest of the block's keys are masked (P = 0, so dS = 0).
                            for i in r0..r1 {
                                let di: f32 = doh[i * d..(i + 1) * d]
                                    .iter()
                                    .zip(&oh[i * d..(i + 1) * d])
                                    .map(|(a, b)| a * b)
                                    .sum();
                                let seen = dims.visible(i);
                                let (pr, dpr) = (&p[i * t..i * t + keys], &mut dp[i * t..i * t + keys]);
                                for (x, &pv) in dpr[..seen].iter_mut().zip(&pr[..seen]) {
                                    *x = pv * (*x - di);
                                }
                                dpr[seen..].fill(0.0);
                            }
                            // dQ = scale dS K, dK += scale dS^T Q
                            let dsb = &dp[r0 * t..];
                            gemm(
                                (rows, d, keys),
                                &mut dqh[r0 * d..],
                                d,
                                false,
                                dsb,
                                (t, 1),
                                kg,
                                (d, 1),
                                scale,
                            );
                            gemm((keys, d, rows), dkg, d, true, dsb, (1, t), qb, (d, 1), scale);
                        }
                    }
                });
            let mk = |data: Vec<f32>, shape: [usize; 4]| FlexTensor::from_data(TensorData::new(data, shape));
            if let Some(node) = node_q {
                grads.register::<Flex>(node.id, mk(dq, [b, h, s, d]));
            }
            if let Some(node) = node_k {
                grads.register::<Flex>(node.id, mk(dk, [b, kvh, t, d]));
            }
            if let Some(node) = node_v {
                grads.register::<Flex>(node.id, mk(dv, [b, kvh, t, d]));
            }
        }
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::tensor::module::attention;
    use burn::tensor::ops::AttentionModuleOptions;
    use burn::tensor::{Device, Distribution, Tensor};

    use super::causal;
    use crate::flex::testing::{close_within, values};

    fn close(a: &[f32], b: &[f32], what: &str) {
        close_within(a, b, (2e-5, 1e-4), what);
    }

    /// Output and the gradients of q, k and v against burn's attention on key/value heads repeated
    /// to the query heads: grouped and plain heads, more keys than queries (a cached prefix), a
    /// head size that is not a power of two, one and several blocks of query rows.
    #[test]
    fn fused_causal_attention_matches_burn_with_gradients() {
        let device = Device::flex().autodiff();
        device.seed(11);
        // The last two span several blocks of query rows (`ROWS`), one with a cached prefix.
        let cases = [
            (2, 4, 2, 5, 5, 8),
            (1, 3, 3, 7, 7, 6),
            (2, 6, 2, 4, 9, 16),
            (1, 9, 3, 40, 40, 64),
            (1, 4, 2, 150, 150, 16),
            (1, 2, 1, 70, 100, 8),
        ];
        for (b, h, kvh, s, t, d) in cases {
            let q = Tensor::<4>::random([b, h, s, d], Distribution::Normal(0.0, 1.0), &device);
            let k = Tensor::<4>::random([b, kvh, t, d], Distribution::Normal(0.0, 1.0), &device);
            let v = Tensor::<4>::random([b, kvh, t, d], Distribution::Normal(0.0, 1.0), &device);
            let dy = Tensor::<4>::random([b, h, s, d], Distribution::Normal(0.0, 1.0), &device);
            let run = |fused: bool| {
                let (q, k, v) =
                    (q.clone().require_grad(), k.clone().require_grad(), v.clone().require_grad());
                // Computed inputs, as in a model (the op must not care).
                let (qi, ki, vi) = (q.clone() * 1.0, k.clone() * 1.0, v.clone() * 1.0);
                let out = if fused {
                    causal(&qi, &ki, &vi).expect("flex autodiff f32 tensors take the fused path")
                } else {
                    let g = h / kvh;
                    let rep = |x: Tensor<4>| {
                        x.reshape([b, kvh, 1, t, d]).expand([b, kvh, g, t, d]).reshape([b, h, t, d])
                    };
                    let options = AttentionModuleOptions { scale: None, softcap: None, is_causal: true };
                    attention(qi, rep(ki), rep(vi), None, None, options)
                };
                let grads = (out.clone() * dy.clone()).sum().backward();
                let grad = |x: &Tensor<4>| values(x.grad(&grads).expect("input has a gradient"));
                (values(out), grad(&q), grad(&k), grad(&v))
            };
            let (fast, slow) = (run(true), run(false));
            let ctx = format!("b {b} h {h} kv {kvh} s {s} t {t} d {d}");
            close(&fast.0, &slow.0, &format!("{ctx} output"));
            close(&fast.1, &slow.1, &format!("{ctx} grad q"));
            close(&fast.2, &slow.2, &format!("{ctx} grad k"));
            close(&fast.3, &slow.3, &format!("{ctx} grad v"));
            assert!(slow.1.iter().any(|x| x.abs() > 1e-2), "{ctx}: gradients must not be trivially zero");
        }
    }

    /// Without autodiff (a prompt's forward): the output against burn's attention, grouped heads
    /// and several row blocks.
    #[test]
    fn inference_matches_burn() {
        let device = Device::flex();
        device.seed(12);
        let (b, h, kvh, s, d) = (2, 6, 2, 130, 16);
        let q = Tensor::<4>::random([b, h, s, d], Distribution::Normal(0.0, 1.0), &device);
        let k = Tensor::<4>::random([b, kvh, s, d], Distribution::Normal(0.0, 1.0), &device);
        let v = Tensor::<4>::random([b, kvh, s, d], Distribution::Normal(0.0, 1.0), &device);
        let rep =
            |x: Tensor<4>| x.reshape([b, kvh, 1, s, d]).expand([b, kvh, h / kvh, s, d]).reshape([b, h, s, d]);
        let options = AttentionModuleOptions { scale: None, softcap: None, is_causal: true };
        let want = values(attention(q.clone(), rep(k.clone()), rep(v.clone()), None, None, options));
        close(&values(causal(&q, &k, &v).expect("flex f32 tensors")), &want, "inference");
    }

    #[test]
    fn other_inputs_are_left_to_the_general_path() {
        let ad = Device::flex().autodiff();
        let mixed = Tensor::<4>::zeros([1, 3, 3, 4], &Device::flex());
        let q = Tensor::<4>::zeros([1, 3, 3, 4], &ad);
        let kv = Tensor::<4>::zeros([1, 2, 3, 4], &ad);
        assert!(causal(&q, &kv, &kv).is_none(), "3 query heads over 2 key/value heads");
        let short = Tensor::<4>::zeros([1, 3, 2, 4], &ad);
        assert!(causal(&q, &short, &short).is_none(), "fewer keys than queries");
        assert!(causal(&q, &mixed, &mixed).is_none(), "autodiff queries with plain keys");
    }
}
