//! Saved probes: the logistic probe of one layer trained on every prompt of a sweep, with
//! what it was trained on, as `layer-<L>.safetensors` (f64 tensors `weight` `[m, hidden]`,
//! `bias` `[m]`, `mean` `[hidden]`, `scale` `[hidden]`; readable by stock numpy/safetensors)
//! beside `layer-<L>.json` (its [`ProbeMeta`]). `probe apply` loads one and refuses
//! activations of another model, dtype, tokenizer, layer or readout.

use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use super::linalg::Standardizer;
use super::logistic::argmax;
use super::{LogisticProbe, ProbeConfig, Targets, choose_c_all};
use crate::{Error, ModelInfo, Readout, Result, SamplingParams, Site, Tensor};

/// What a saved probe was trained on, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProbeMeta {
    /// Model id of the activations.
    pub model: String,
    /// Model revision.
    pub revision: String,
    /// Compute dtype of the activations.
    pub dtype: String,
    /// Tokenizer settings of the activations.
    pub tokenizer: String,
    /// Layer (Hugging Face numbering; a block for a site inside blocks).
    pub layer: usize,
    /// Values per row it reads: the hidden size (the width of its site, see [`ModelInfo::width`]).
    pub hidden_size: usize,
    /// Where it reads (absent: the residual stream).
    #[serde(default, skip_serializing_if = "Site::is_resid")]
    pub site: Site,
    /// The tokens read.
    pub positions: Readout,
    /// Class labels: class `i` is `classes[i]`.
    pub classes: Vec<String>,
    /// Inverse regularisation strength used.
    pub c: f64,
    /// The prompt set it was trained on, and its size.
    pub prompt_set: String,
    /// Training rows.
    pub n_train: usize,
    /// The completions it was trained on (`None`: the prompts alone).
    pub sampling: Option<SamplingParams>,
}

/// A logistic probe ready to apply to new activations.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SavedProbe {
    /// What it was trained on.
    pub meta: ProbeMeta,
    /// The probe.
    pub probe: LogisticProbe,
}

/// One input's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Applied {
    /// Decision score: the logit of `classes[1]` for two classes, else one per class.
    pub score: Vec<f64>,
    /// Predicted class index.
    pub class: usize,
}

impl SavedProbe {
    /// Trains the probe of `layer` on every row of `features` (`C` from `config`'s grid by
    /// inner cross-validation over all rows when it has several values).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for numeric targets (ridge probes are not saved) and bad settings.
    pub fn train(features: &Tensor, targets: &Targets, config: &ProbeConfig, meta: ProbeMeta) -> Result<Self> {
        let Targets::Classes { labels, n_classes } = targets else {
            return Err(Error::invalid("probe", "only classification probes are saved (labels are numeric)"));
        };
        let rows: Vec<usize> = (0..labels.len()).collect();
        let c = choose_c_all(features, targets, &rows, config)?;
        let probe = LogisticProbe::fit(features, labels, &rows, *n_classes, c, config)?;
        Ok(Self { meta: ProbeMeta { c, n_train: rows.len(), ..meta }, probe })
    }

    /// Writes `layer-<L>.safetensors` and `layer-<L>.json` into `dir` (each atomically:
    /// written aside, then renamed); returns the safetensors path.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    pub fn save(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
        let (m, d) = (self.probe.weights.len(), self.probe.standardizer.mean.len());
        let bytes = |v: &mut dyn Iterator<Item = f64>| v.flat_map(f64::to_le_bytes).collect::<Vec<u8>>();
        let weight = bytes(&mut self.probe.weights.iter().flatten().copied());
        let bias = bytes(&mut self.probe.bias.iter().copied());
        let mean = bytes(&mut self.probe.standardizer.mean.iter().copied());
        let scale = bytes(&mut self.probe.standardizer.scale.iter().copied());
        let views = [
            ("weight", TensorView::new(Dtype::F64, vec![m, d], &weight)),
            ("bias", TensorView::new(Dtype::F64, vec![m], &bias)),
            ("mean", TensorView::new(Dtype::F64, vec![d], &mean)),
            ("scale", TensorView::new(Dtype::F64, vec![d], &scale)),
        ];
        let views: Vec<(&str, TensorView<'_>)> = views
            .into_iter()
            .map(|(n, v)| v.map(|v| (n, v)).map_err(|e| Error::backend("safetensors", e)))
            .collect::<Result<_>>()?;
        let json = serde_json::to_string_pretty(&self.meta).map_err(|e| Error::backend("json", e))?;
        let meta = [("probe".to_owned(), json.clone())].into_iter().collect();
        let st = safetensors::serialize(views, Some(meta)).map_err(|e| Error::backend("safetensors", e))?;
        let base = dir.join(format!("layer-{}", self.meta.layer));
        let path = base.with_extension("safetensors");
        write_atomic(&path, &st)?;
        write_atomic(&base.with_extension("json"), json.as_bytes())?;
        Ok(path)
    }

    /// Reads a probe written by [`SavedProbe::save`] (the `.safetensors` file or its `.json`).
    ///
    /// # Errors
    /// [`Error::Io`] for a missing file, [`Error::InvalidInput`] naming the file when it is not
    /// a saved probe or its tensors do not fit its description.
    pub fn load(path: &Path) -> Result<Self> {
        let path = path.with_extension("safetensors");
        let bad = |m: String| Error::invalid("probe", format!("{}: {m}", path.display()));
        let bytes = std::fs::read(&path).map_err(|e| Error::io(path.display(), e))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let json =
            header.metadata().as_ref().and_then(|m| m.get("probe")).ok_or_else(|| bad("not a saved probe".into()))?;
        let meta: ProbeMeta = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let read = |name: &str, len: usize| -> Result<Vec<f64>> {
            let t = st.tensor(name).map_err(|e| bad(format!("{name}: {e}")))?;
            if t.dtype() != Dtype::F64 || t.data().len() != len * 8 {
                return Err(bad(format!(
                    "{name} has dtype {:?} and {} bytes, expected {len} f64",
                    t.dtype(),
                    t.data().len()
                )));
            }
            Ok(t.data().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
        };
        let d = meta.hidden_size;
        let n_classes = meta.classes.len();
        if n_classes < 2 {
            return Err(bad(format!("{n_classes} classes")));
        }
        let m = if n_classes == 2 { 1 } else { n_classes };
        let weight = read("weight", m * d)?;
        let standardizer = Standardizer { mean: read("mean", d)?, scale: read("scale", d)? };
        let probe = LogisticProbe {
            standardizer,
            weights: weight.chunks(d.max(1)).map(<[f64]>::to_vec).collect(),
            bias: read("bias", m)?,
            n_classes,
            c: meta.c,
        };
        Ok(Self { meta, probe })
    }

    /// Refuses activations that are not what the probe was trained on.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field that differs (model — unless the revision, a
    /// hash of the weights, is the same —, revision, dtype, tokenizer, hidden size, or a layer
    /// the model does not have).
    pub fn check(&self, info: &ModelInfo) -> Result<()> {
        let m = &self.meta;
        // The same weights (a content revision) under another path or name are the same model.
        let same_weights = !m.revision.is_empty() && m.revision == info.id.revision;
        let model = if same_weights { &info.id.id } else { &m.model };
        let pairs = [
            ("model", model, &info.id.id),
            ("revision", &m.revision, &info.id.revision),
            ("dtype", &m.dtype, &info.dtype),
            ("tokenizer", &m.tokenizer, &info.tokenizer),
        ];
        for (what, trained, given) in pairs {
            if trained != given {
                return Err(Error::invalid(
                    what,
                    format!("the probe was trained on {what} {trained:?}, these activations are of {given:?}"),
                ));
            }
        }
        let last = if m.site.in_block() { info.num_layers.saturating_sub(1) } else { info.num_layers };
        if m.hidden_size != info.width(m.site) || m.layer > last {
            return Err(Error::invalid(
                "layer",
                format!(
                    "the probe reads {} layer {} of width {}; the model has layers 0..={last} of width {}",
                    m.site,
                    m.layer,
                    m.hidden_size,
                    info.width(m.site)
                ),
            ));
        }
        Ok(())
    }

    /// Scores and predicted class of every row of `features` (`[n, hidden]`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for features of another width.
    pub fn apply(&self, features: &Tensor) -> Result<Vec<Applied>> {
        if features.shape.len() != 2 || features.shape[1] != self.meta.hidden_size {
            return Err(Error::invalid(
                "features",
                format!("shape {:?}, the probe reads [n, {}]", features.shape, self.meta.hidden_size),
            ));
        }
        Ok((0..features.rows())
            .map(|r| {
                let s = self.probe.scores(features.row(r));
                let class = argmax(&s);
                let score = if self.probe.n_classes == 2 { vec![s[1]] } else { s };
                Applied { score, class }
            })
            .collect())
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("{}.partial", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(tmp.display(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path.display(), e))
}
