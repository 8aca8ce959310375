//! Learning rate per step: Hugging Face's schedules (`get_constant_schedule_with_warmup`,
//! `get_linear_schedule_with_warmup`, `get_cosine_schedule_with_warmup`), so that runs match the
//! paper's Trainer-based setup step for step.

use crate::config::Schedule;

/// Warm-up steps: the larger of `warmup_steps` and `ceil(warmup_ratio x total)`.
pub fn warmup_steps(warmup_steps: usize, warmup_ratio: f64, total: usize) -> usize {
    warmup_steps.max((warmup_ratio * total as f64).ceil() as usize)
}

/// The learning rate of optimizer step `step` (0-based) out of `total`, peaking at `peak` after
/// `warmup` steps.
///
/// ```
/// use idlora_train::config::Schedule;
/// use idlora_train::schedule::lr_at;
/// assert_eq!(lr_at(Schedule::Linear, 1e-3, 0, 10, 0), 1e-3);
/// assert_eq!(lr_at(Schedule::Linear, 1e-3, 5, 10, 0), 5e-4);
/// ```
pub fn lr_at(schedule: Schedule, peak: f64, step: usize, total: usize, warmup: usize) -> f64 {
    if step < warmup {
        return peak * step as f64 / warmup.max(1) as f64;
    }
    let decay_steps = total.saturating_sub(warmup).max(1) as f64;
    let progress = (step - warmup) as f64 / decay_steps;
    let factor = match schedule {
        Schedule::Constant => 1.0,
        Schedule::Linear => (1.0 - progress).max(0.0),
        Schedule::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
    };
    peak * factor
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_values() {
        // Linear with 2 warm-up steps over 10: 0, 0.5, 1, then (10 - s) / 8.
        let lin: Vec<f64> = (0..10).map(|s| lr_at(Schedule::Linear, 1.0, s, 10, 2)).collect();
        assert_eq!(lin, [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]);
        // Cosine without warm-up over 4: 0.5 (1 + cos(pi s / 4)).
        let cos: Vec<f64> = (0..4).map(|s| lr_at(Schedule::Cosine, 2.0, s, 4, 0)).collect();
        let want = [2.0, 1.0 + 0.5f64.sqrt(), 1.0, 1.0 - 0.5f64.sqrt()];
        for (a, b) in cos.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{cos:?}");
        }
        assert_eq!(lr_at(Schedule::Constant, 3.0, 1, 10, 4), 0.75);
        assert_eq!(lr_at(Schedule::Constant, 3.0, 9, 10, 4), 3.0);
        assert_eq!(warmup_steps(0, 0.1, 25), 3);
        assert_eq!(warmup_steps(5, 0.1, 25), 5);
    }
}
