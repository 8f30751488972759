//! Rotary position embeddings: the inverse frequencies as transformers' rope init functions
//! compute them (`modeling_rope_utils.py`, in f32), and the cos/sin rows of a forward step.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use probe_core::hf_config::RopeParams;
use probe_core::{Error, Result};

/// Rotary embedding scaling.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3's frequency-dependent scaling.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: f64 },
    /// YaRN: interpolated low frequencies, extrapolated high ones, cos/sin scaled.
    Yarn { factor: f64, original_max_position_embeddings: f64, beta_fast: f64, beta_slow: f64, truncate: bool },
    /// Dynamic NTK: plain RoPE up to `max_positions`; a forward pass over a longer sequence
    /// rotates with a larger base (transformers' `_compute_dynamic_ntk_parameters`, updated per
    /// forward from the sequence length).
    Dynamic { factor: f64, max_positions: usize },
    /// Phi-3's longrope (`su`): per-frequency divisors, the long ones for a sequence longer than
    /// `original_max_position_embeddings` (decided per forward pass, as transformers does).
    LongRope { short: Vec<f32>, long: Vec<f32>, original_max_position_embeddings: usize },
}

/// The rotary embedding of one kind of layer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rope {
    /// The base θ.
    pub(crate) theta: f64,
    pub(crate) scaling: RopeScaling,
    /// Rotated dimensions of each head (the head dimension, or a fraction of it).
    pub(crate) dim: usize,
    /// Multiplier of cos and sin (1 except YaRN).
    pub(crate) attention_factor: f64,
}

impl Rope {
    /// The rope of `params` for heads of `head_dim` (`default_theta` when the config gives no
    /// base; `max_positions` is the model's `max_position_embeddings`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a missing parameter of the RoPE type, or a rotary dimension
    /// that is odd or 0; [`Error::NotSupported`] for a RoPE type without an implementation.
    pub(crate) fn new(
        params: &RopeParams,
        head_dim: usize,
        default_theta: f64,
        max_positions: usize,
        file: &Path,
    ) -> Result<Self> {
        let kind = params.kind();
        let need = |field: Option<f64>, name: &str| {
            field.ok_or_else(|| {
                Error::invalid(format!("rope {name} in {}", file.display()), format!("missing for rope_type {kind:?}"))
            })
        };
        let fraction = params.partial_rotary_factor.unwrap_or(1.0);
        let dim = (head_dim as f64 * fraction) as usize;
        if dim == 0 || !dim.is_multiple_of(2) || dim > head_dim {
            return Err(Error::invalid(
                format!("rotary dimension in {}", file.display()),
                format!("{dim} (head_dim {head_dim} × partial_rotary_factor {fraction}) must be even, ≥ 2, ≤ head_dim"),
            ));
        }
        let mut attention_factor = 1.0;
        let scaling = match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear { factor: need(params.factor, "factor")? },
            "dynamic" => RopeScaling::Dynamic { factor: need(params.factor, "factor")?, max_positions },
            "llama3" => RopeScaling::Llama3 {
                factor: need(params.factor, "factor")?,
                low_freq_factor: need(params.low_freq_factor, "low_freq_factor")?,
                high_freq_factor: need(params.high_freq_factor, "high_freq_factor")?,
                original_max_position_embeddings: need(
                    params.original_max_position_embeddings,
                    "original_max_position_embeddings",
                )?,
            },
            "yarn" => {
                let original = params.original_max_position_embeddings.unwrap_or(max_positions as f64);
                let factor = params.factor.unwrap_or(max_positions as f64 / original);
                let mscale = |scale: f64, m: f64| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
                attention_factor = match (params.attention_factor, params.mscale, params.mscale_all_dim) {
                    (Some(a), _, _) => a,
                    (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => mscale(factor, m) / mscale(factor, all),
                    _ => mscale(factor, 1.0),
                };
                RopeScaling::Yarn {
                    factor,
                    original_max_position_embeddings: original,
                    beta_fast: params.beta_fast.filter(|&b| b != 0.0).unwrap_or(32.0),
                    beta_slow: params.beta_slow.filter(|&b| b != 0.0).unwrap_or(1.0),
                    truncate: params.truncate.unwrap_or(true),
                }
            }
            "longrope" | "su" => {
                let original = need(params.original_max_position_embeddings, "original_max_position_embeddings")?;
                let factor = params.factor.unwrap_or(max_positions as f64 / original);
                attention_factor = match params.attention_factor {
                    Some(a) => a,
                    None if factor <= 1.0 => 1.0,
                    None => (1.0 + factor.ln() / original.ln()).sqrt(),
                };
                let factors = |v: &Option<Vec<f64>>, name: &str| -> Result<Vec<f32>> {
                    let v = v.as_ref().ok_or_else(|| {
                        Error::invalid(format!("rope {name} in {}", file.display()), format!("missing for {kind:?}"))
                    })?;
                    if v.len() != dim / 2 {
                        return Err(Error::invalid(
                            format!("rope {name} in {}", file.display()),
                            format!("{} values for {} rotary frequencies", v.len(), dim / 2),
                        ));
                    }
                    Ok(v.iter().map(|&x| x as f32).collect())
                };
                RopeScaling::LongRope {
                    short: factors(&params.short_factor, "short_factor")?,
                    long: factors(&params.long_factor, "long_factor")?,
                    original_max_position_embeddings: original as usize,
                }
            }
            other => {
                return Err(Error::not_supported(
                    format!(
                        "rope_type {other:?} in {} (supported: default, linear, dynamic, llama3, yarn, longrope)",
                        file.display()
                    ),
                    "candle",
                ));
            }
        };
        Ok(Self { theta: params.rope_theta.unwrap_or(default_theta), scaling, dim, attention_factor })
    }

    /// For longrope: the length past which the long factors apply.
    pub(crate) fn longrope_threshold(&self) -> Option<usize> {
        match &self.scaling {
            RopeScaling::LongRope { original_max_position_embeddings, .. } => Some(*original_max_position_embeddings),
            _ => None,
        }
    }

    /// Whether sequences of `a` and of `b` positions rotate with the same frequencies (so a
    /// prefix run alone rotates as it does inside a longer input).
    pub(crate) fn same_frequencies(&self, a: usize, b: usize) -> bool {
        self.inv_freq_for(a) == self.inv_freq_for(b)
    }

    /// The inverse frequencies of a forward pass over `len` positions, where they differ from
    /// [`Rope::inv_freq`]: longrope's long factors past its threshold, dynamic NTK's larger base
    /// past `max_position_embeddings` (each as transformers' `dynamic_rope_update` sets them).
    fn inv_freq_for(&self, len: usize) -> Option<Vec<f32>> {
        match &self.scaling {
            RopeScaling::LongRope { long, original_max_position_embeddings, .. }
                if len > *original_max_position_embeddings =>
            {
                Some(self.divided(long))
            }
            &RopeScaling::Dynamic { factor, max_positions } if len > max_positions => {
                // As transformers computes it from a tensor `seq_len`: f32 throughout.
                let dim = self.dim;
                let t = (factor as f32 * len as f32) / max_positions as f32 - (factor - 1.0) as f32;
                let base = self.theta as f32 * t.powf((dim as f64 / (dim as f64 - 2.0)) as f32);
                Some((0..dim / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / dim as f32)).collect())
            }
            _ => None,
        }
    }

    /// `1 / (factor · θ^(2i/dim))` (longrope), in f32.
    fn divided(&self, factors: &[f32]) -> Vec<f32> {
        let base = self.theta as f32;
        factors.iter().enumerate().map(|(i, f)| 1.0 / (f * base.powf((2 * i) as f32 / self.dim as f32))).collect()
    }

    /// The inverse frequencies, `dim / 2` of them, as transformers computes them in f32.
    pub(crate) fn inv_freq(&self) -> Vec<f32> {
        let dim = self.dim;
        let base = self.theta as f32;
        let pos_freq = |i: usize| base.powf((2 * i) as f32 / dim as f32);
        let plain: Vec<f32> = (0..dim / 2).map(|i| 1.0 / pos_freq(i)).collect();
        match self.scaling.clone() {
            RopeScaling::LongRope { short, .. } => self.divided(&short),
            RopeScaling::None | RopeScaling::Dynamic { .. } => plain,
            RopeScaling::Linear { factor } => plain.iter().map(|f| f / factor as f32).collect(),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let (factor, low, high, old) = (
                    factor as f32,
                    low_freq_factor as f32,
                    high_freq_factor as f32,
                    original_max_position_embeddings as f32,
                );
                let low_wavelen = old / low;
                let high_wavelen = old / high;
                plain
                    .iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                        if medium {
                            let smooth = (old / wavelen - low) / (high - low);
                            (1.0 - smooth) * scaled / factor + smooth * scaled
                        } else {
                            scaled
                        }
                    })
                    .collect()
            }
            RopeScaling::Yarn { factor, original_max_position_embeddings, beta_fast, beta_slow, truncate } => {
                // Python floats (f64) for the correction range, f32 tensors for the rest.
                let d = dim as f64;
                let correction = |rot: f64| {
                    d * (original_max_position_embeddings / (rot * 2.0 * std::f64::consts::PI)).ln()
                        / (2.0 * self.theta.ln())
                };
                let (mut low, mut high) = (correction(beta_fast), correction(beta_slow));
                if truncate {
                    (low, high) = (low.floor(), high.ceil());
                }
                let (low, mut high) = (low.max(0.0) as f32, high.min(d - 1.0) as f32);
                if low == high {
                    high += 0.001;
                }
                (0..dim / 2)
                    .map(|i| {
                        let pf = pos_freq(i);
                        let extrapolation = 1.0 / pf;
                        let interpolation = 1.0 / (factor as f32 * pf);
                        let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                        let keep = 1.0 - ramp;
                        interpolation * (1.0 - keep) + extrapolation * keep
                    })
                    .collect()
            }
        }
    }

    /// cos and sin of positions `offset..offset + s` for rows of real lengths `lens`
    /// (`offset + s` in generation): `[s, dim / 2]`, or `[b, s, dim / 2]` when the rows'
    /// frequencies differ (longrope on both sides of its threshold, dynamic NTK past
    /// `max_position_embeddings`: each row as transformers runs it alone).
    pub(crate) fn rows(
        &self,
        inv_freq: &[f32],
        lens: &[usize],
        offset: usize,
        s: usize,
        device: &Device,
        dtype: DType,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let per_row: Vec<Option<Vec<f32>>> = lens.iter().map(|&len| self.inv_freq_for(len)).collect();
        if per_row.iter().all(|f| *f == per_row[0]) {
            let freq = per_row.first().cloned().flatten();
            return self.tables(freq.as_deref().unwrap_or(inv_freq), offset, s, device, dtype);
        }
        let mut cos = Vec::with_capacity(lens.len());
        let mut sin = Vec::with_capacity(lens.len());
        for f in &per_row {
            let (c, si) = self.tables(f.as_deref().unwrap_or(inv_freq), offset, s, device, dtype)?;
            cos.push(c);
            sin.push(si);
        }
        Ok((Tensor::stack(&cos, 0)?, Tensor::stack(&sin, 0)?))
    }

    /// cos and sin (`[s, dim / 2]`, in `dtype`) of positions `offset..offset + s`, from
    /// `inv_freq` (this rope's [`Rope::inv_freq`]).
    pub(crate) fn tables(
        &self,
        inv_freq: &[f32],
        offset: usize,
        s: usize,
        device: &Device,
        dtype: DType,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (mut cos, mut sin) = (Vec::with_capacity(s * inv_freq.len()), Vec::with_capacity(s * inv_freq.len()));
        for p in offset..offset + s {
            self.push_angles(inv_freq, p, &mut cos, &mut sin);
        }
        let cos = Tensor::from_vec(cos, (s, inv_freq.len()), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (s, inv_freq.len()), device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }

    /// cos and sin (`[b, 1, dim / 2]`, in `dtype`) of one new position per row: row `r` at
    /// `positions[r]`, with the frequencies of a sequence of `positions[r] + 1` tokens run
    /// alone (longrope's and dynamic NTK's switch per row; `inv_freq` elsewhere).
    pub(crate) fn at_positions(
        &self,
        inv_freq: &[f32],
        positions: &[usize],
        device: &Device,
        dtype: DType,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let half = inv_freq.len();
        let (mut cos, mut sin) =
            (Vec::with_capacity(positions.len() * half), Vec::with_capacity(positions.len() * half));
        for &p in positions {
            let own = self.inv_freq_for(p + 1);
            self.push_angles(own.as_deref().unwrap_or(inv_freq), p, &mut cos, &mut sin);
        }
        let cos = Tensor::from_vec(cos, (positions.len(), 1, half), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (positions.len(), 1, half), device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }

    /// Appends cos and sin of position `p` for each of `inv_freq` (times the attention factor).
    fn push_angles(&self, inv_freq: &[f32], p: usize, cos: &mut Vec<f32>, sin: &mut Vec<f32>) {
        let k = self.attention_factor as f32;
        for &f in inv_freq {
            let a = p as f32 * f;
            cos.push(a.cos() * k);
            sin.push(a.sin() * k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rope(json: &str) -> Result<Rope> {
        let p: RopeParams = serde_json::from_str(json).expect("json");
        Rope::new(&p, 16, 10_000.0, 4096, Path::new("/m/config.json"))
    }

    #[test]
    fn llama3_rope_scales_low_frequencies_only() {
        let r = rope(
            r#"{"rope_type":"llama3","rope_theta":500000.0,"factor":8.0,"low_freq_factor":1.0,
                "high_freq_factor":4.0,"original_max_position_embeddings":64}"#,
        )
        .expect("llama3");
        let plain = Rope { scaling: RopeScaling::None, ..r.clone() }.inv_freq();
        let scaled = r.inv_freq();
        assert_eq!(plain[0], scaled[0], "the highest frequency is kept");
        assert!((scaled[7] - plain[7] / 8.0).abs() < 1e-12, "the lowest frequency is divided by the factor");
    }

    #[test]
    fn yarn_interpolates_low_frequencies_and_scales_attention() {
        let r = rope(r#"{"rope_type":"yarn","factor":4.0,"original_max_position_embeddings":1024}"#).expect("yarn");
        assert!((r.attention_factor - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12);
        let plain = Rope { scaling: RopeScaling::None, ..r.clone() }.inv_freq();
        let scaled = r.inv_freq();
        assert_eq!(plain[0], scaled[0], "the highest frequency is extrapolated");
        assert!((scaled[7] - plain[7] / 4.0).abs() <= 1e-9 * plain[7], "the lowest is interpolated");
    }

    #[test]
    fn dynamic_ntk_grows_the_base_past_max_positions_only() {
        let r = rope(r#"{"rope_type":"dynamic","factor":2.0}"#).expect("dynamic");
        let plain = Rope { scaling: RopeScaling::None, ..r.clone() }.inv_freq();
        assert_eq!(r.inv_freq(), plain);
        assert_eq!(r.inv_freq_for(4096), None, "at max_position_embeddings: plain");
        let long = r.inv_freq_for(8192).expect("past it: rescaled");
        // base · (2 · 8192 / 4096 - 1)^(16/14) = 10 000 · 3^(8/7)
        let base = 10_000f64 * 3f64.powf(16.0 / 14.0);
        assert!((f64::from(long[1]) - base.powf(-2.0 / 16.0)).abs() < 1e-6 * base.powf(-2.0 / 16.0));
        assert_eq!(long[0], 1.0);
    }

    #[test]
    fn unknown_types_and_missing_fields_are_named() {
        let err = rope(r#"{"rope_type":"ntk-by-parts","factor":2.0}"#).expect_err("unknown").to_string();
        assert!(err.contains("ntk-by-parts") && err.contains("supported"), "{err}");
        let err = rope(r#"{"rope_type":"linear"}"#).expect_err("no factor").to_string();
        assert!(err.contains("factor") && err.contains("/m/config.json"), "{err}");
        let half = rope(r#"{"partial_rotary_factor":0.5}"#).expect("partial");
        assert_eq!((half.dim, half.inv_freq().len()), (8, 4));
    }
}
