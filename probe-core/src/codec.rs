//! Payload formats of cache entries: activations as safetensors, generations as JSON lines.
//! Both are readable from Python with stock `safetensors`/`numpy` and `json`.

use std::collections::HashMap;

use safetensors::tensor::{Dtype, TensorView};

use crate::{Error, Generation, Result, Tensor};

/// Name of the tensor holding the activations in an activation entry.
pub const ACTIVATIONS_TENSOR: &str = "activations";
/// Name of the tensor holding the `[n, seq]` mask for `Positions::All`.
pub const MASK_TENSOR: &str = "mask";

fn f32_bytes(data: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 4);
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Encodes named f32 tensors plus string metadata as safetensors bytes.
///
/// # Errors
/// [`Error::InvalidInput`] when a tensor's data does not match its shape.
pub fn encode_tensors(tensors: &[(&str, &Tensor)], metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, t)| f32_bytes(&t.data)).collect();
    let mut views = Vec::with_capacity(tensors.len());
    for ((name, t), b) in tensors.iter().zip(&bytes) {
        let view = TensorView::new(Dtype::F32, t.shape.clone(), b)
            .map_err(|e| Error::invalid("tensor", format!("{name}: {e}")))?;
        views.push((name.to_string(), view));
    }
    safetensors::serialize(views, metadata).map_err(|e| Error::backend("safetensors", e))
}

/// Decodes every f32 tensor of a safetensors buffer.
///
/// # Errors
/// [`Error::Corrupt`] when the buffer is not valid safetensors or holds a non-f32 tensor.
pub fn decode_tensors(bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    let corrupt = |m: String| Error::Corrupt { key: "safetensors payload".into(), message: m };
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| corrupt(e.to_string()))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(corrupt(format!("tensor {name} has dtype {:?}, expected F32", view.dtype())));
        }
        let data = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        out.push((name, Tensor::new(view.shape().to_vec(), data)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Encodes generations as JSON lines, one per generation.
pub fn encode_generations(gens: &[Generation]) -> Vec<u8> {
    let mut out = Vec::new();
    for g in gens {
        serde_json::to_writer(&mut out, g).expect("generations serialise");
        out.push(b'\n');
    }
    out
}

/// Decodes JSON lines written by [`encode_generations`].
///
/// # Errors
/// [`Error::Corrupt`] on a malformed line.
pub fn decode_generations(bytes: &[u8]) -> Result<Vec<Generation>> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| Error::Corrupt { key: "generations payload".into(), message: e.to_string() })?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::Corrupt {
                key: "generations payload".into(),
                message: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FinishReason;

    #[test]
    fn tensors_round_trip() {
        let t = Tensor::new(vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, -6.5]);
        let bytes = encode_tensors(&[(ACTIVATIONS_TENSOR, &t)], None).unwrap();
        let back = decode_tensors(&bytes).unwrap();
        assert_eq!(back, vec![(ACTIVATIONS_TENSOR.to_string(), t)]);
        assert!(decode_tensors(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn generations_round_trip() {
        let g = vec![Generation::new(0, 0, "a\nb", "c\"d", FinishReason::Length, Some(vec![1, 2]))];
        assert_eq!(decode_generations(&encode_generations(&g)).unwrap(), g);
    }
}
