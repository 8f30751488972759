//! The layers the decoder is built of: linear projections (weights as stored) and norms.

use candle_core::{CpuStorage, DType, Result, Storage, Tensor};
use candle_nn::VarBuilder;

use super::config::{Activation, ArchSpec};

/// A linear layer: `x · wᵀ + b` with `w` as stored (`[out, in]`).
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    pub(crate) weight: Tensor,
    pub(crate) bias: Option<Tensor>,
}

impl Linear {
    /// Loads `{name}.weight` (`[out, in]`) and `{name}.bias` (when required or present).
    pub(crate) fn load(vb: &VarBuilder, name: &str, out: usize, inp: usize, bias_required: bool) -> Result<Self> {
        let weight = vb.get((out, inp), &format!("{name}.weight"))?;
        let bias_name = format!("{name}.bias");
        let bias = if bias_required || vb.contains_tensor(&bias_name) { Some(vb.get(out, &bias_name)?) } else { None };
        Ok(Self { weight, bias })
    }

    /// Loads a GPT-2 `Conv1D` (`{name}.weight` stored `[in, out]`, and its bias) as a linear
    /// layer (the weight transposed once, here).
    pub(crate) fn load_conv1d(vb: &VarBuilder, name: &str, out: usize, inp: usize) -> Result<Self> {
        let weight = transposed_copy(&vb.get((inp, out), &format!("{name}.weight"))?)?;
        Ok(Self { weight, bias: Some(vb.get(out, &format!("{name}.bias"))?) })
    }

    /// A GPT-style projection: a `Conv1D` (always with a bias) when `conv1d`, else a linear
    /// layer (with a bias when `bias`).
    pub(crate) fn load_gpt(
        vb: &VarBuilder,
        name: &str,
        out: usize,
        inp: usize,
        conv1d: bool,
        bias: bool,
    ) -> Result<Self> {
        if conv1d { Self::load_conv1d(vb, name, out, inp) } else { Self::load(vb, name, out, inp, bias) }
    }

    /// A fused q/k/v projection whose outputs are interleaved per head (`[heads, 3, head_dim]`,
    /// GPT-NeoX) reordered as q of every head, then k, then v.
    pub(crate) fn per_head_to_stacked(self, heads: usize, head_dim: usize) -> Result<Self> {
        let inp = self.weight.dim(1)?;
        let reorder = |t: Tensor, tail: &[usize]| -> Result<Tensor> {
            let mut shape = vec![heads, 3, head_dim];
            shape.extend_from_slice(tail);
            let stacked = t.reshape(shape)?.transpose(0, 1)?.contiguous()?;
            let mut flat = vec![3 * heads * head_dim];
            flat.extend_from_slice(tail);
            stacked.reshape(flat)
        };
        Ok(Self { weight: reorder(self.weight, &[inp])?, bias: self.bias.map(|b| reorder(b, &[])).transpose()? })
    }

    /// `x`: `[.., in]` → `[.., out]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let inp = dims[dims.len() - 1];
        let rows = x.elem_count() / inp;
        let y = times_transposed(&x.reshape((rows, inp))?, &self.weight)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out = dims;
        let last = out.len() - 1;
        out[last] = self.weight.dim(0)?;
        y.reshape(out)
    }

    /// Stacks `parts` along the output axis: one matmul instead of several (a missing bias
    /// counts as zeros).
    pub(crate) fn fuse(parts: &[Linear]) -> Result<Self> {
        let weights: Vec<&Tensor> = parts.iter().map(|p| &p.weight).collect();
        let weight = Tensor::cat(&weights, 0)?;
        let bias = if parts.iter().any(|p| p.bias.is_some()) {
            let biases = parts
                .iter()
                .map(|p| match &p.bias {
                    Some(b) => Ok(b.clone()),
                    None => Tensor::zeros(p.weight.dim(0)?, p.weight.dtype(), p.weight.device()),
                })
                .collect::<Result<Vec<_>>>()?;
            Some(Tensor::cat(&biases, 0)?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// Outputs `at..at + n` of the layer (a part of a fused projection).
    pub(crate) fn rows(&self, at: usize, n: usize) -> Result<Self> {
        Ok(Self {
            weight: self.weight.narrow(0, at, n)?,
            bias: self.bias.as_ref().map(|b| b.narrow(0, at, n)).transpose()?,
        })
    }

    /// Multiplies the layer's output by `k` (folded into the weights).
    pub(crate) fn scaled(self, k: f64) -> Result<Self> {
        Ok(Self { weight: (self.weight * k)?, bias: self.bias.map(|b| b * k).transpose()? })
    }
}

/// Rows up to which [`times_transposed`] computes `(w · xᵀ)ᵀ` on the CPU.
const FEW_ROWS: usize = 128;

/// `x · wᵀ` for `x` `[rows, in]` and a weight `w` as stored (`[out, in]`). On the CPU, for up to
/// [`FEW_ROWS`] rows (a decode step, a prefill's last positions), as `(w · xᵀ)ᵀ`: candle's gemm
/// then streams `w` once in its memory order, where `x · wᵀ` packs it per call: 1.2–2× faster
/// from 16 to 64 rows than `x · wᵀ` or than a weight transposed to `[in, out]` at load, which
/// this replaces (`cargo run --release -p probe-benches --example gemm_rows`; docs/performance.md).
/// More rows (extraction, a prefill) multiply as `x · wᵀ`.
pub(crate) fn times_transposed(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if w.device().is_cpu() && x.dim(0)? <= FEW_ROWS && w.is_contiguous() {
        transposed_copy(&w.matmul(&x.t()?)?)
    } else {
        x.matmul(&w.t()?)
    }
}

/// `w` (`[rows, cols]`) transposed into a new contiguous `[cols, rows]` tensor: on the CPU in
/// 32 × 32 blocks (candle's strided copy goes element by element), elsewhere by candle.
fn transposed_copy(w: &Tensor) -> Result<Tensor> {
    fn blocked<T: Copy + Default>(src: &[T], rows: usize, cols: usize) -> Vec<T> {
        const B: usize = 32;
        let mut out = vec![T::default(); rows * cols];
        for r0 in (0..rows).step_by(B) {
            for c0 in (0..cols).step_by(B) {
                for r in r0..(r0 + B).min(rows) {
                    for c in c0..(c0 + B).min(cols) {
                        out[c * rows + r] = src[r * cols + c];
                    }
                }
            }
        }
        out
    }
    let (rows, cols) = w.dims2()?;
    if !w.device().is_cpu() || !w.is_contiguous() {
        return w.t()?.contiguous();
    }
    let (storage, layout) = w.storage_and_layout();
    let at = layout.start_offset();
    let n = rows * cols;
    let (device, shape) = (w.device(), (cols, rows));
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => Tensor::from_vec(blocked(&v[at..at + n], rows, cols), shape, device),
        Storage::Cpu(CpuStorage::BF16(v)) => Tensor::from_vec(blocked(&v[at..at + n], rows, cols), shape, device),
        Storage::Cpu(CpuStorage::F16(v)) => Tensor::from_vec(blocked(&v[at..at + n], rows, cols), shape, device),
        _ => {
            drop(storage);
            w.t()?.contiguous()
        }
    }
}

/// RMSNorm with the architecture's weight offset folded into `alpha` at load time, or a
/// LayerNorm (with `beta`, GPT-2 / GPT-NeoX).
#[derive(Debug, Clone)]
pub(crate) struct Norm {
    alpha: Tensor,
    /// The LayerNorm's bias; `None`: an RMSNorm.
    beta: Option<Tensor>,
    eps: f32,
}

impl Norm {
    /// Loads `{name}.weight` (`size` values).
    pub(crate) fn load(vb: &VarBuilder, name: &str, size: usize, spec: &ArchSpec, eps: f64) -> Result<Self> {
        Self::load_scaled(vb, name, size, spec, eps, 1.0)
    }

    /// Loads `{name}.weight` with its output multiplied by `k` (an attention scale folded into
    /// a query norm).
    pub(crate) fn load_scaled(
        vb: &VarBuilder,
        name: &str,
        size: usize,
        spec: &ArchSpec,
        eps: f64,
        k: f64,
    ) -> Result<Self> {
        // Loaded in f32 so that `1 + w` (and the scale) is exact before any cast to the
        // compute dtype.
        let w = vb.get_with_hints_dtype(size, &format!("{name}.weight"), Default::default(), DType::F32)?;
        let alpha = if spec.norm_offset != 0.0 { (w + f64::from(spec.norm_offset))? } else { w };
        let alpha = if k != 1.0 { (alpha * k)? } else { alpha };
        Ok(Self { alpha: alpha.to_dtype(vb.dtype())?, beta: None, eps: eps as f32 })
    }

    /// Loads a LayerNorm: `{name}.weight` and `{name}.bias` (`size` values each).
    pub(crate) fn load_layer_norm(vb: &VarBuilder, name: &str, size: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            alpha: vb.get(size, &format!("{name}.weight"))?,
            beta: Some(vb.get(size, &format!("{name}.bias"))?),
            eps: eps as f32,
        })
    }

    /// Normalises over the last axis (accumulating in f32 whatever the dtype).
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.beta {
            None => candle_nn::ops::rms_norm(x, &self.alpha, self.eps),
            Some(beta) => {
                let dtype = x.dtype();
                let f32 = |t: &Tensor| t.to_dtype(DType::F32);
                let y = candle_nn::ops::layer_norm(&f32(&x.contiguous()?)?, &f32(&self.alpha)?, &f32(beta)?, self.eps)?;
                y.to_dtype(dtype)
            }
        }
    }
}

impl Activation {
    /// Applies the activation elementwise.
    pub(crate) fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Silu => candle_nn::ops::silu(x),
            Activation::GeluTanh => x.gelu(),
            Activation::GeluErf => x.gelu_erf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::*;

    #[test]
    fn few_and_many_rows_multiply_alike() {
        let dev = Device::Cpu;
        for dtype in [DType::F32, DType::BF16] {
            // 70 × 45: blocks of 32 with ragged edges.
            let w = Tensor::randn(0f32, 1.0, (70, 45), &dev).unwrap().to_dtype(dtype).unwrap();
            let t = transposed_copy(&w).unwrap();
            assert!(t.is_contiguous());
            let want = w.t().unwrap().contiguous().unwrap().to_dtype(DType::F32).unwrap();
            let got = t.to_dtype(DType::F32).unwrap();
            assert_eq!(got.to_vec2::<f32>().unwrap(), want.to_vec2::<f32>().unwrap(), "{dtype:?}");
            // Both sides of FEW_ROWS, against candle's own x · wᵀ.
            for rows in [1, 3, FEW_ROWS, FEW_ROWS + 1] {
                let x = Tensor::randn(0f32, 1.0, (rows, 45), &dev).unwrap().to_dtype(dtype).unwrap();
                let a = x.matmul(&w.t().unwrap()).unwrap().to_dtype(DType::F32).unwrap();
                let y = times_transposed(&x, &w).unwrap();
                assert!(y.is_contiguous());
                assert_eq!(y.dims(), &[rows, 70]);
                let b = y.to_dtype(DType::F32).unwrap();
                let diff: f32 = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
                assert!(diff < 1e-4, "{dtype:?}, {rows} rows: {diff}");
            }
        }
    }
}
