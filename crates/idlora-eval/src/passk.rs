//! The unbiased pass@k estimator (Chen et al., 2021, "Evaluating Large Language Models Trained on
//! Code", eq. 1): with `n` samples of which `c` pass, `1 - C(n - c, k) / C(n, k)`, computed as a
//! product so that large `n` does not overflow.

/// pass@k for one task with `n` samples, `c` of them correct. `k > n` is clamped to `n` (every
/// sample is drawn); `n = 0` gives 0.
///
/// ```
/// use idlora_eval::pass_at_k;
/// // 2 of 4 samples pass: pass@1 = 1/2, pass@2 = 1 - C(2,2)/C(4,2) = 5/6.
/// assert!((pass_at_k(4, 2, 1) - 0.5).abs() < 1e-12);
/// assert!((pass_at_k(4, 2, 2) - 5.0 / 6.0).abs() < 1e-12);
/// ```
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    let c = c.min(n);
    let k = k.min(n);
    if n == 0 || k == 0 {
        return 0.0;
    }
    if n - c < k {
        return 1.0;
    }
    // C(n-c, k) / C(n, k) = prod_{i = n-c+1}^{n} (1 - k / i)
    1.0 - ((n - c + 1)..=n).map(|i| 1.0 - k as f64 / i as f64).product::<f64>()
}

/// The mean of [`pass_at_k`] over tasks given as `(n, c)`.
pub fn mean_pass_at_k(tasks: &[(usize, usize)], k: usize) -> f64 {
    if tasks.is_empty() {
        return 0.0;
    }
    tasks.iter().map(|&(n, c)| pass_at_k(n, c, k)).sum::<f64>() / tasks.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, with exact binomials (small n only).
    fn by_binomials(n: u64, c: u64, k: u64) -> f64 {
        fn choose(n: u64, k: u64) -> f64 {
            if k > n {
                return 0.0;
            }
            (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
        }
        1.0 - choose(n - c, k) / choose(n, k)
    }

    #[test]
    fn hand_computed_values() {
        assert_eq!(pass_at_k(10, 0, 1), 0.0);
        assert_eq!(pass_at_k(10, 10, 5), 1.0);
        assert!((pass_at_k(10, 3, 1) - 0.3).abs() < 1e-12);
        // 1 - C(7,5)/C(10,5) = 1 - 21/252 = 11/12.
        assert!((pass_at_k(10, 3, 5) - 11.0 / 12.0).abs() < 1e-12);
        // Only 2 failures and k = 3: some drawn sample always passes.
        assert_eq!(pass_at_k(5, 3, 3), 1.0);
        assert_eq!(pass_at_k(0, 0, 1), 0.0);
        assert!((mean_pass_at_k(&[(4, 2), (4, 0)], 1) - 0.25).abs() < 1e-12);
    }

    #[test]
    fn equals_the_binomial_definition() {
        for n in 1..=20u64 {
            for c in 0..=n {
                for k in 1..=n {
                    let a = pass_at_k(n as usize, c as usize, k as usize);
                    let b = by_binomials(n, c, k);
                    assert!((a - b).abs() < 1e-12, "n={n} c={c} k={k}: {a} vs {b}");
                }
            }
        }
        // Large n stays finite and in range.
        let v = pass_at_k(200, 17, 10);
        assert!(v > 0.0 && v < 1.0);
    }
}
