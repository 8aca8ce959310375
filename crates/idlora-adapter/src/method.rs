//! Method settings: which adapter, its rank, scale, dropout and method-specific knobs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{AdapterError, Result};

/// The fine-tuning methods this crate implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MethodKind {
    /// Full fine-tuning: every base weight trainable, no adapter.
    Full,
    /// LoRA (Hu et al. 2021).
    Lora,
    /// DoRA (Liu et al. 2024): LoRA plus a per-output-row magnitude.
    Dora,
    /// HydraLoRA: one shared `A`, `N` heads `B_j`, a router.
    HydraLora,
    /// MoELoRA: `N` experts `(A_j, B_j)`, a router.
    MoeLora,
    /// ID-LoRA: frozen bases gathered from the base output, one shared `B`, a router.
    IdLora,
}

impl MethodKind {
    /// Every method, in the paper's table order.
    pub const ALL: [MethodKind; 6] = [
        MethodKind::Full,
        MethodKind::Lora,
        MethodKind::Dora,
        MethodKind::HydraLora,
        MethodKind::MoeLora,
        MethodKind::IdLora,
    ];

    /// The name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            MethodKind::Full => "full",
            MethodKind::Lora => "lora",
            MethodKind::Dora => "dora",
            MethodKind::HydraLora => "hydralora",
            MethodKind::MoeLora => "moelora",
            MethodKind::IdLora => "idlora",
        }
    }

    /// The name as the paper prints it.
    pub fn display_name(self) -> &'static str {
        match self {
            MethodKind::Full => "FFT",
            MethodKind::Lora => "LoRA",
            MethodKind::Dora => "DoRA",
            MethodKind::HydraLora => "HydraLoRA",
            MethodKind::MoeLora => "MoELoRA",
            MethodKind::IdLora => "ID-LoRA",
        }
    }
}

impl fmt::Display for MethodKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for MethodKind {
    type Err = AdapterError;
    fn from_str(s: &str) -> Result<Self> {
        let lower = s.to_ascii_lowercase().replace(['-', '_'], "");
        MethodKind::ALL
            .into_iter()
            .find(|m| m.name() == lower || (lower == "fft" && *m == MethodKind::Full))
            .ok_or(AdapterError::InvalidSetting {
                setting: "method",
                message: format!("`{s}` is not one of full, lora, dora, hydralora, moelora, idlora"),
            })
    }
}

/// Where ID-LoRA applies dropout (see `docs/adapters.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DropoutSite {
    /// On the gathered basis outputs `u = (W0 x)[S]`: keeps the bases free (the default).
    #[default]
    Gathered,
    /// On the input `x`, as LoRA does: needs the explicit product `A_i dropout(x)`, so it costs
    /// `k r d_in` extra FLOPs per token while training.
    Input,
}

/// How ID-LoRA computes its frozen bases `A_i x`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BasisPath {
    /// A gather of `k r` entries from the base layer's output (the default; free).
    #[default]
    Gather,
    /// The explicit product with `A = W0[S, :]`: the test reference.
    Explicit,
}

/// Settings of one method. Every field has the paper's default; see [`MethodConfig::new`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodConfig {
    /// Which method.
    pub kind: MethodKind,
    /// Rank `r` (for ID-LoRA: rows per cluster).
    pub r: usize,
    /// Scale numerator: the update is scaled by `alpha / r` (or `alpha / sqrt(r)` with rsLoRA).
    pub alpha: f64,
    /// Dropout probability (paper: 0.05).
    pub dropout: f64,
    /// rsLoRA scaling `alpha / sqrt(r)` (LoRA and DoRA only).
    pub rslora: bool,
    /// Number of HydraLoRA heads or MoELoRA experts (paper: 3 and 4).
    pub experts: usize,
    /// ID-LoRA: number of clusters `k` (paper: 4).
    pub k: usize,
    /// ID-LoRA: number of rank-boosting parts `p`; `None` means `p = k`.
    pub p: Option<usize>,
    /// ID-LoRA: rank boosting on (Eq. 4, default) or off (the "w/o RB" sum form, Eq. 3).
    pub rank_boost: bool,
    /// ID-LoRA: where dropout is applied.
    pub dropout_site: DropoutSite,
    /// ID-LoRA: gather (default) or explicit bases.
    pub basis: BasisPath,
}

impl MethodConfig {
    /// The paper's settings for `kind` at rank `r`: `alpha = 2 r`, dropout 0.05, `N = 3` heads for
    /// HydraLoRA and `N = 4` experts for MoELoRA, `k = p = 4` for ID-LoRA.
    ///
    /// ```
    /// use idlora_adapter::{MethodConfig, MethodKind};
    /// let c = MethodConfig::new(MethodKind::IdLora, 128);
    /// assert_eq!((c.k, c.parts(), c.scale()), (4, 4, 2.0));
    /// ```
    pub fn new(kind: MethodKind, r: usize) -> Self {
        MethodConfig {
            kind,
            r,
            alpha: 2.0 * r as f64,
            dropout: 0.05,
            rslora: false,
            experts: if kind == MethodKind::HydraLora { 3 } else { 4 },
            k: 4,
            p: None,
            rank_boost: true,
            dropout_site: DropoutSite::Gathered,
            basis: BasisPath::Gather,
        }
    }

    /// Sets alpha.
    pub fn with_alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }

    /// Sets the dropout probability.
    pub fn with_dropout(mut self, dropout: f64) -> Self {
        self.dropout = dropout;
        self
    }

    /// The scale applied to the adapter's update.
    pub fn scale(&self) -> f64 {
        if self.rslora { self.alpha / (self.r as f64).sqrt() } else { self.alpha / self.r as f64 }
    }

    /// ID-LoRA's number of rank-boosting parts (`p`, default `k`); 1 without rank boosting.
    pub fn parts(&self) -> usize {
        if self.rank_boost { self.p.unwrap_or(self.k) } else { 1 }
    }

    /// Checks the settings that do not depend on a layer's shape.
    pub fn validate(&self) -> Result<()> {
        let bad = |setting, message: String| Err(AdapterError::InvalidSetting { setting, message });
        if self.kind == MethodKind::Full {
            return Ok(());
        }
        if self.r == 0 {
            return bad("r", "the rank must be at least 1".into());
        }
        if !self.alpha.is_finite() {
            return bad("alpha", format!("{} is not finite", self.alpha));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("dropout", format!("{} is not in [0, 1)", self.dropout));
        }
        match self.kind {
            MethodKind::HydraLora | MethodKind::MoeLora if self.experts == 0 => {
                bad("experts", "at least one head / expert is needed".into())
            }
            MethodKind::IdLora if self.k == 0 => bad("k", "at least one cluster is needed".into()),
            MethodKind::IdLora if self.p == Some(0) => bad("p", "at least one part is needed".into()),
            MethodKind::IdLora if self.rslora => {
                bad("rslora", "rsLoRA scaling applies to LoRA and DoRA only".into())
            }
            _ => Ok(()),
        }
    }
}
