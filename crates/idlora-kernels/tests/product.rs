#![allow(clippy::unwrap_used)]
//! The CPU products of `idlora_kernels::product` against f64 loops (every shape also takes the
//! burn path where the fused one does not apply, so both are checked).

use burn::tensor::{Device, Distribution, Tensor, TensorData};

fn vec2(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

/// Largest absolute difference relative to the largest magnitude of `b` (at least 1).
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / scale
}

/// `y + a b` on the CPU backend (in place into `y` when it is unshared) against an f64 loop, on
/// shapes above and below the threaded size, with a transposed (strided) `a`; a `y` that another
/// tensor still shares must come out right and leave that other tensor untouched.
#[test]
fn add_product_matches_a_loop_and_never_writes_a_shared_buffer() {
    use idlora_kernels::product::add_product;
    let device = Device::flex();
    for &(m, k, n) in &[(3, 2, 5), (260, 40, 300)] {
        let y = Tensor::<2>::random([m, n], Distribution::Normal(0.0, 1.0), &device);
        let a_t = Tensor::<2>::random([k, m], Distribution::Normal(0.0, 1.0), &device);
        let b = Tensor::<2>::random([k, n], Distribution::Normal(0.0, 1.0), &device);
        let (yv, av, bv) = (vec2(y.clone()), vec2(a_t.clone()), vec2(b.clone()));
        let want: Vec<f32> = (0..m * n)
            .map(|idx| {
                let (i, j) = (idx / n, idx % n);
                let p: f64 = (0..k).map(|q| f64::from(av[q * m + i]) * f64::from(bv[q * n + j])).sum();
                (f64::from(yv[idx]) + p) as f32
            })
            .collect();
        let kept = y.clone();
        let shared = vec2(add_product(y.clone(), a_t.clone().transpose(), b.clone()));
        assert!(rel_err(&shared, &want) < 1e-5, "{m}x{k}x{n} shared: {}", rel_err(&shared, &want));
        drop(y);
        assert_eq!(vec2(kept.clone()), yv, "{m}x{k}x{n}: the shared y was written");
        let owned = vec2(add_product(kept, a_t.transpose(), b));
        assert!(rel_err(&owned, &want) < 1e-5, "{m}x{k}x{n} owned: {}", rel_err(&owned, &want));
    }
}

/// `x w` with the columns split across threads (few rows, on the CPU backend) against an f64
/// loop: one and several rows, widths that do not divide into the blocks, a transposed (strided)
/// `w` like the tied head's, and row counts past the split that take burn's matmul. (Through a
/// whole model: idlora-models' SmolLM2 test decodes its greedy continuation this way, in every
/// projection and the head.)
#[test]
fn matmul_matches_a_loop_at_any_row_count() {
    use idlora_kernels::product::{FEW_ROWS, matmul};
    let device = Device::flex();
    // Few rows (split across threads), just above, many rows single- and multi-threaded (the
    // fresh-output path), and a one-by-few product.
    for &(m, k, n) in &[
        (1, 300, 700),
        (3, 96, 1001),
        (FEW_ROWS, 64, 2048),
        (FEW_ROWS + 1, 64, 2048),
        (1, 4, 5),
        (37, 33, 130),
        (200, 130, 300),
    ] {
        // x is a column window of a wider tensor: a start offset and a row stride above k.
        let wide = Tensor::<2>::random([m, k + 5], Distribution::Normal(0.0, 1.0), &device);
        let x = wide.narrow(1, 2, k);
        let w_t = Tensor::<2>::random([n, k], Distribution::Normal(0.0, 1.0), &device);
        let (xv, wv) = (vec2(x.clone()), vec2(w_t.clone()));
        let want: Vec<f32> = (0..m * n)
            .map(|idx| {
                let (i, j) = (idx / n, idx % n);
                (0..k).map(|q| f64::from(xv[i * k + q]) * f64::from(wv[j * k + q])).sum::<f64>() as f32
            })
            .collect();
        let strided = vec2(matmul(x.clone(), w_t.clone().transpose()));
        assert!(rel_err(&strided, &want) < 1e-5, "{m}x{k}x{n} transposed w: {}", rel_err(&strided, &want));
        let w = Tensor::<2>::from_data(
            TensorData::new((0..k * n).map(|idx| wv[(idx % n) * k + idx / n]).collect::<Vec<f32>>(), [k, n]),
            &device,
        );
        let plain = vec2(matmul(x, w));
        assert!(rel_err(&plain, &want) < 1e-5, "{m}x{k}x{n} row-major w: {}", rel_err(&plain, &want));
    }
}
