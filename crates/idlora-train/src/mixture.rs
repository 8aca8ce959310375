//! The training mixture: every source read, cut (`skip`, `take`, `fraction`), tokenised, split into
//! training and held-out validation examples, and weighted per epoch.

use std::path::Path;

use idlora_models::Tokenizer;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::config::{TrainConfig, source_format};
use crate::error::{Result, TrainError, config_err};
use crate::template::{Encoded, Example, encode};
use idlora_data::{Malformed, read_records};

/// What happened to one source's records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// Records in the file (usable or not).
    pub seen: usize,
    /// Unusable records.
    pub malformed: Vec<Malformed>,
    /// Records kept after `skip`, `take` and `fraction`.
    pub kept: usize,
    /// Examples whose end was cut at `max_length`.
    pub truncated: usize,
    /// Records whose prompt alone fills `max_length` (left out, counted here).
    pub too_long: usize,
}

/// One source, ready to train on.
#[derive(Clone, Debug)]
pub struct Source {
    /// Name in reports.
    pub name: String,
    /// Training examples.
    pub train: Vec<Example>,
    /// Held-out examples.
    pub val: Vec<Example>,
    /// Mixture weight per epoch.
    pub weight: f64,
    /// Counts for the report.
    pub stats: SourceStats,
}

/// All sources.
#[derive(Clone, Debug)]
pub struct Mixture {
    /// The sources in config order.
    pub sources: Vec<Source>,
}

fn seeded(seed: u64, a: u64, b: u64) -> ChaCha8Rng {
    // Distinct streams per (purpose, source / epoch), all derived from the run's seed.
    ChaCha8Rng::seed_from_u64(
        seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F),
    )
}

impl Mixture {
    /// Reads, tokenises and splits every source of `cfg.data`. `eos` ends each response.
    pub fn prepare(cfg: &TrainConfig, tokenizer: &Tokenizer, eos: Option<u32>) -> Result<Self> {
        let template = cfg.data.template;
        let d = &cfg.data;
        let seed = cfg.train.seed;
        let mut kept_records = Vec::new();
        let mut stats = Vec::new();
        for (i, s) in d.sources.iter().enumerate() {
            let format = source_format(s).map_err(|m| config_err(format!("data.sources[{i}].format"), m))?;
            let read = read_records(Path::new(&s.path), &format)?;
            let seen = read.records.len() + read.malformed.len();
            let mut records: Vec<_> = read.records.into_iter().skip(s.skip).collect();
            if let Some(t) = s.take {
                records.truncate(t);
            }
            if s.fraction < 1.0 {
                let n = ((records.len() as f64) * s.fraction).round() as usize;
                let mut idx: Vec<usize> = (0..records.len()).collect();
                idx.shuffle(&mut seeded(seed, 1, i as u64));
                let mut chosen = idx[..n].to_vec();
                chosen.sort_unstable();
                records = chosen.into_iter().map(|j| records[j].clone()).collect();
            }
            stats.push(SourceStats {
                seen,
                malformed: read.malformed,
                kept: records.len(),
                ..Default::default()
            });
            kept_records.push(records);
        }
        // Validation examples per source: a share of each, the total capped at `val_max`.
        let total: usize = kept_records.iter().map(Vec::len).sum();
        let mut sources = Vec::new();
        for (i, (records, mut st)) in kept_records.into_iter().zip(stats).enumerate() {
            let s = &d.sources[i];
            let name = s.name.clone().unwrap_or_else(|| {
                Path::new(&s.path).file_name().map_or(s.path.clone(), |n| n.to_string_lossy().into_owned())
            });
            let n = records.len();
            let mut n_val = ((n as f64) * d.val_fraction).round() as usize;
            if let Some(cap) = (d.val_max * n).checked_div(total) {
                n_val = n_val.min(cap);
            }
            if d.val_fraction > 0.0 && n >= 2 {
                n_val = n_val.max(1);
            }
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut seeded(seed, 2, i as u64));
            let mut is_val = vec![false; n];
            for &j in &order[..n_val.min(n)] {
                is_val[j] = true;
            }
            let mut train = Vec::new();
            let mut val = Vec::new();
            for (j, r) in records.iter().enumerate() {
                let ex = match encode(r, template, tokenizer, eos, d.max_length)? {
                    Encoded::Full(e) => e,
                    Encoded::Truncated(e) => {
                        st.truncated += 1;
                        e
                    }
                    Encoded::TooLong => {
                        st.too_long += 1;
                        continue;
                    }
                };
                if is_val[j] { val.push(ex) } else { train.push(ex) }
            }
            if train.is_empty() {
                return Err(TrainError::Data {
                    path: s.path.clone().into(),
                    message: format!(
                        "no training example left ({} records seen, {} malformed, {} kept by skip/take/fraction, \
                         {} with prompts longer than data.max_length = {}, {} held out)",
                        st.seen,
                        st.malformed.len(),
                        st.kept,
                        st.too_long,
                        d.max_length,
                        val.len()
                    ),
                });
            }
            sources.push(Source { name, train, val, weight: s.weight, stats: st });
        }
        Ok(Mixture { sources })
    }

    /// Every training example, sources concatenated in config order.
    pub fn train_examples(&self) -> Vec<&Example> {
        self.sources.iter().flat_map(|s| s.train.iter()).collect()
    }

    /// Every validation example.
    pub fn val_examples(&self) -> Vec<&Example> {
        self.sources.iter().flat_map(|s| s.val.iter()).collect()
    }

    /// Indices into [`Mixture::train_examples`] making up epoch `epoch`: each source contributes
    /// `weight x` its examples (whole copies, then a seeded subsample for the remainder).
    pub fn epoch_members(&self, seed: u64, epoch: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut offset = 0;
        for (i, s) in self.sources.iter().enumerate() {
            let n = s.train.len();
            let want = ((n as f64) * s.weight).round() as usize;
            for _ in 0..want / n {
                out.extend(offset..offset + n);
            }
            let rest = want % n;
            if rest > 0 {
                let mut idx: Vec<usize> = (offset..offset + n).collect();
                idx.shuffle(&mut seeded(seed, 3 + epoch as u64, i as u64));
                out.extend_from_slice(&idx[..rest]);
            }
            offset += n;
        }
        out
    }
}
