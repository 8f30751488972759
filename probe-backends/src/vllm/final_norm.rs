//! The model's final norm, read from its checkpoint: vLLM writes the last block's output
//! (`id L`) before the final norm, while Hugging Face's `hidden_states[L]` is after it.

use std::path::{Path, PathBuf};

use probe_core::hf_config::HfConfig;
use probe_core::{Error, Result};

use super::hidden::{read_header, read_tensor};

/// RMSNorm or LayerNorm, with the checkpoint's weights.
#[derive(Debug, Clone)]
pub(crate) struct FinalNorm {
    kind: Kind,
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
    eps: f64,
    /// The tensor it came from (for messages).
    pub(crate) name: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// `x / rms(x) · (offset + w)`: offset 1 for Gemma, 0 elsewhere.
    Rms { offset: f32 },
    /// `(x − mean) / std · w + b`.
    Layer,
}

impl FinalNorm {
    /// Finds the final norm of the model folder `dir` (config `cfg`) in its safetensors files:
    /// GPT-2's `ln_f` and GPT-NeoX's `final_layer_norm` are LayerNorms, every other
    /// architecture's `norm` an RMSNorm (Gemma's scaled by `1 + w`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the folder when no weight file holds the tensor.
    pub(crate) fn load(dir: &Path, cfg: &HfConfig, hidden: usize) -> Result<Self> {
        let model_type = cfg.model_type();
        let (kind, names): (Kind, &[&str]) = match model_type {
            "gpt2" => (Kind::Layer, &["transformer.ln_f", "ln_f"]),
            "gpt_neox" => (Kind::Layer, &["gpt_neox.final_layer_norm", "final_layer_norm"]),
            t if t.starts_with("gemma") => {
                (Kind::Rms { offset: 1.0 }, &["model.norm", "model.language_model.norm", "language_model.model.norm"])
            }
            _ => (Kind::Rms { offset: 0.0 }, &["model.norm", "norm", "model.language_model.norm"]),
        };
        let eps = match kind {
            Kind::Layer => cfg.layer_norm_eps.or(cfg.rms_norm_eps),
            Kind::Rms { .. } => cfg.rms_norm_eps,
        }
        .unwrap_or(1e-6);
        let files = weight_files(dir)?;
        for file in &files {
            let (entries, start) = read_header(file)?;
            for name in names {
                let Some(w) = entries.get(&format!("{name}.weight")) else { continue };
                let weight = read_tensor(file, w, start)?;
                if weight.len() != hidden {
                    return Err(Error::invalid(
                        "model",
                        format!(
                            "{}: {name}.weight has {} values, hidden size is {hidden}",
                            file.display(),
                            weight.len()
                        ),
                    ));
                }
                let bias = match (kind, entries.get(&format!("{name}.bias"))) {
                    (Kind::Layer, Some(b)) => Some(read_tensor(file, b, start)?),
                    _ => None,
                };
                return Ok(Self { kind, weight, bias, eps, name: format!("{name}.weight") });
            }
        }
        Err(Error::invalid(
            "model",
            format!(
                "{}: no final norm ({}) in its safetensors files; the vLLM extractor needs it for the last layer",
                dir.display(),
                names.iter().map(|n| format!("{n}.weight")).collect::<Vec<_>>().join(", ")
            ),
        ))
    }

    /// The norm as probe's connector applies it on the server to hidden state `layer`'s rows
    /// (`kv_transfer_params["probe"]["norm"]`): the server reads the same tensors from its own
    /// copy of the checkpoint.
    pub(crate) fn spec(&self, layer: usize) -> serde_json::Value {
        let (kind, offset) = match self.kind {
            Kind::Rms { offset } => ("rms", offset),
            Kind::Layer => ("layer", 0.0),
        };
        let bias = self.bias.as_ref().map(|_| format!("{}.bias", self.name.trim_end_matches(".weight")));
        serde_json::json!({
            "layer": layer, "kind": kind, "offset": offset, "eps": self.eps, "weight": self.name, "bias": bias,
        })
    }

    /// Normalises every row of `rows` (`[T, H]`) in place.
    pub(crate) fn apply(&self, rows: &mut [f32]) {
        let h = self.weight.len();
        for row in rows.chunks_exact_mut(h) {
            let n = h as f64;
            let (scale, mean) = match self.kind {
                Kind::Rms { .. } => {
                    let ms = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / n;
                    (1.0 / (ms + self.eps).sqrt(), 0.0)
                }
                Kind::Layer => {
                    let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
                    let var = row.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
                    (1.0 / (var + self.eps).sqrt(), mean)
                }
            };
            let offset = match self.kind {
                Kind::Rms { offset } => offset,
                Kind::Layer => 0.0,
            };
            for (j, v) in row.iter_mut().enumerate() {
                let x = ((f64::from(*v) - mean) * scale) as f32;
                *v = x * (offset + self.weight[j]) + self.bias.as_ref().map_or(0.0, |b| b[j]);
            }
        }
    }
}

/// The folder's `*.safetensors` files, sorted.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir.display(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_and_layer_norm() {
        let rms = FinalNorm {
            kind: Kind::Rms { offset: 0.0 },
            weight: vec![1.0, 2.0],
            bias: None,
            eps: 0.0,
            name: "n".into(),
        };
        let mut r = vec![3.0, 4.0];
        rms.apply(&mut r);
        let s = (12.5f32).sqrt();
        assert!((r[0] - 3.0 / s).abs() < 1e-6 && (r[1] - 8.0 / s).abs() < 1e-6, "{r:?}");
        let gemma = FinalNorm { kind: Kind::Rms { offset: 1.0 }, weight: vec![0.0, 1.0], ..rms.clone() };
        let mut g = vec![3.0, 4.0];
        gemma.apply(&mut g);
        assert!((g[1] - 8.0 / s).abs() < 1e-6, "{g:?}");
        let ln = FinalNorm {
            kind: Kind::Layer,
            weight: vec![1.0, 1.0],
            bias: Some(vec![0.5, 0.5]),
            eps: 0.0,
            name: "n".into(),
        };
        let mut l = vec![1.0, 3.0];
        ln.apply(&mut l);
        assert_eq!(l, vec![-0.5, 1.5]);
    }
}
