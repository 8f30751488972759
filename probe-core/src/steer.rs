//! Steering: an [`Intervention`] adds a direction to the residual stream (or to one attention
//! head's output) at every position while a model generates.

use serde::{Deserialize, Serialize};

use crate::sweep::SavedProbe;
use crate::{Error, ModelId, ModelInfo, Result, Site, codec};

/// Adds `alpha · direction / ‖direction‖` at every position, prompt and generated:
/// - without a head, to the residual stream **entering block `layer`** (Hugging Face
///   `hidden_states[layer]`; `direction` is `[hidden]`);
/// - with a head `h` (Inference-Time Intervention), to head `h`'s slice of block `layer`'s
///   output-projection input (`direction` is `[head_dim]`).
///
/// Interventions are part of [`crate::SamplingParams::steering`], so of the generation cache
/// key: steered completions never mix with plain ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Intervention {
    /// The block (see above); `0..L`.
    pub layer: usize,
    /// An attention head of block `layer`, or none (the residual stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<usize>,
    /// The step along the unit direction.
    pub alpha: f32,
    /// The direction, as given (normalised when applied).
    pub direction: Vec<f32>,
    /// The model a probe's direction was found in: another model is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelId>,
}

/// The name of the tensor a steering vector file holds.
pub const DIRECTION_TENSOR: &str = "direction";

impl Intervention {
    /// Adds `alpha · direction/‖direction‖` to the residual stream entering block `layer`.
    pub fn residual(layer: usize, direction: Vec<f32>, alpha: f32) -> Self {
        Self { layer, head: None, alpha, direction, model: None }
    }

    /// Adds `alpha · direction/‖direction‖` to head `head` of block `layer` (its slice of the
    /// output projection's input; `direction` is `[head_dim]`).
    pub fn head(layer: usize, head: usize, direction: Vec<f32>, alpha: f32) -> Self {
        Self { layer, head: Some(head), alpha, direction, model: None }
    }

    /// The direction of a safetensors file holding a tensor `direction` (`[hidden]`, or
    /// `[head_dim]` for a head), f32.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the file: unreadable, not safetensors, no `direction`
    /// tensor, or not one-dimensional.
    pub fn read_vector(path: &std::path::Path) -> Result<Vec<f32>> {
        let bytes =
            std::fs::read(path).map_err(|e| Error::invalid("steer-vector", format!("{}: {e}", path.display())))?;
        let tensors = codec::decode_tensors(&bytes)
            .map_err(|e| Error::invalid("steer-vector", format!("{}: {e}", path.display())))?;
        let t = tensors.into_iter().find(|(n, _)| n == DIRECTION_TENSOR).map(|(_, t)| t).ok_or_else(|| {
            Error::invalid("steer-vector", format!("{} holds no `{DIRECTION_TENSOR}` tensor", path.display()))
        })?;
        if t.shape.len() != 1 {
            return Err(Error::invalid(
                "steer-vector",
                format!("{}: `{DIRECTION_TENSOR}` has shape {:?}, expected [hidden]", path.display(), t.shape),
            ));
        }
        Ok(t.data)
    }

    /// The direction a binary probe found, in residual-stream space: its weight over
    /// standardised features `(x − mean) / scale` is `w / scale` over the hidden states
    /// themselves (the mean only shifts the bias). Steers the residual stream entering block
    /// `probe.meta.layer` (the hidden states it read).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a probe of another site than the residual stream, of more than
    /// two classes, or reading layer L (after the final norm: no block follows it).
    pub fn from_probe(probe: &SavedProbe, alpha: f32) -> Result<Self> {
        let m = &probe.meta;
        if m.site != Site::Resid {
            return Err(Error::invalid(
                "steer-probe",
                format!("the probe reads site {}; steering reads resid probes", m.site),
            ));
        }
        let [w] = probe.probe.weights.as_slice() else {
            return Err(Error::invalid(
                "steer-probe",
                format!("the probe has {} classes; a steering direction comes from a binary probe", m.classes.len()),
            ));
        };
        let scale = &probe.probe.standardizer.scale;
        let direction = w.iter().zip(scale).map(|(w, s)| (w / s) as f32).collect();
        Ok(Self {
            model: Some(ModelId::new(m.model.clone(), m.revision.clone())),
            ..Self::residual(m.layer, direction, alpha)
        })
    }

    /// `alpha · direction / ‖direction‖`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a zero or non-finite direction.
    pub fn scaled(&self) -> Result<Vec<f32>> {
        let norm = self.direction.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
        if !(norm.is_finite() && norm > 0.0) {
            return Err(Error::invalid("steer-vector", format!("a direction of norm {norm} (block {})", self.layer)));
        }
        Ok(self.direction.iter().map(|x| (f64::from(*x) * f64::from(self.alpha) / norm) as f32).collect())
    }

    /// Checks the intervention against a model before any work.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the value: a block out of `0..L`, a head out of range, a
    /// direction of the wrong size, a zero direction or a non-finite alpha.
    pub fn validate(&self, info: &ModelInfo) -> Result<()> {
        if let Some(m) = &self.model {
            // The same weights (a content revision) under another path are the same model.
            let same = (!m.revision.is_empty() && m.revision == info.id.revision) || m.id == info.id.id;
            if !same {
                return Err(Error::invalid(
                    "steer-probe",
                    format!("the probe was trained on {:?}, this model is {:?}", m.id, info.id.id),
                ));
            }
        }
        if self.layer >= info.num_layers {
            return Err(Error::invalid(
                "steer-layer",
                format!(
                    "{} is out of range: steering adds to the residual stream entering a block, 0..{}",
                    self.layer, info.num_layers
                ),
            ));
        }
        if !self.alpha.is_finite() {
            return Err(Error::invalid("steer-alpha", format!("{} (must be finite)", self.alpha)));
        }
        let want = match self.head {
            Some(h) if h >= info.num_heads => {
                return Err(Error::invalid(
                    "steer-head",
                    format!("{}:{h}: head {h} is out of range, the model has heads 0..{}", self.layer, info.num_heads),
                ));
            }
            Some(_) => info.head_dim,
            None => info.hidden_size,
        };
        if self.direction.len() != want {
            let what = if self.head.is_some() { "head_dim" } else { "hidden size" };
            return Err(Error::invalid(
                "steer-vector",
                format!("a direction of {} values; the model's {what} is {want}", self.direction.len()),
            ));
        }
        self.scaled().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModelId;

    #[test]
    fn bad_interventions_are_refused_naming_the_value() {
        let info = ModelInfo::new(ModelId::new("m", "r"), "llama", 4, 8, 10).with_heads(2, 4);
        let ok = Intervention::residual(3, vec![1.0; 8], 2.0);
        ok.validate(&info).unwrap();
        let scaled = ok.scaled().unwrap();
        let norm: f32 = scaled.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 2.0).abs() < 1e-6, "{norm}");
        let msg = |i: Intervention| i.validate(&info).unwrap_err().to_string();
        assert!(msg(Intervention::residual(4, vec![1.0; 8], 1.0)).contains("4 is out of range"));
        assert!(msg(Intervention::residual(0, vec![1.0; 7], 1.0)).contains("7 values"));
        assert!(msg(Intervention::residual(0, vec![0.0; 8], 1.0)).contains("norm 0"));
        assert!(msg(Intervention::head(1, 2, vec![1.0; 4], 1.0)).contains("head 2 is out of range"));
        assert!(msg(Intervention::head(1, 1, vec![1.0; 8], 1.0)).contains("head_dim is 4"));
        Intervention::head(1, 1, vec![1.0; 4], 1.0).validate(&info).unwrap();
    }
}
