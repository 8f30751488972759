//! What the tch, ort and cross-backend tests share: the fixture folder, exporting a fixture
//! model with the project's export scripts (into `$PROBE_FIXTURES/exported/<arch>/<format>`,
//! or `<format>-sites` with `--sites`, idempotent), and the transformers reference tensors
//! (the fixtures' for the residual stream, scripts/python/sites_reference.py's forward hooks for
//! the sites inside blocks).
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use probe_core::testing::require_service;
use probe_core::{ActivationExtractor, ActivationRequest, Positions, Site};
use serde::Deserialize;

/// Every fixture architecture; the export scripts support them all.
pub const ARCHS: &[&str] = &["llama", "llama3", "mistral", "qwen2", "gemma2"];

/// What `reference.json` holds (the fields these tests read).
#[derive(Debug, Deserialize)]
pub struct Reference {
    pub num_layers: usize,
    pub hidden_size: usize,
    pub prompts: Vec<String>,
    pub token_ids: Vec<Vec<u32>>,
}

/// `$PROBE_FIXTURES` (made by scripts/python/make_fixtures.py), or None (skipped) outside scripts/test.
pub fn fixtures() -> Option<PathBuf> {
    require_service("PROBE_FIXTURES").map(PathBuf::from)
}

/// `$PROBE_PYTHON` (the venv's python that runs the export scripts).
pub fn python() -> Option<String> {
    require_service("PROBE_PYTHON")
}

static EXPORT_LOCK: Mutex<()> = Mutex::new(());

/// Exports the fixture model `arch` with `scripts/python/<script>` into
/// `root/exported/<arch>/<format>` (the script skips the work when it is up to date) and
/// returns that folder.
pub fn export(root: &Path, python: &str, arch: &str, format: &str) -> PathBuf {
    export_with(root, python, arch, format, None)
}

/// [`export`] with `--sites <sites>` (comma-separated), into `root/exported/<arch>/<format>-sites`.
pub fn export_sites(root: &Path, python: &str, arch: &str, format: &str, sites: &[Site]) -> PathBuf {
    let list = sites.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",");
    export_with(root, python, arch, format, Some(&list))
}

fn export_with(root: &Path, python: &str, arch: &str, format: &str, sites: Option<&str>) -> PathBuf {
    let script = match format {
        "torchscript" => "export_torchscript.py",
        "onnx" => "export_onnx.py",
        other => panic!("unknown export format {other}"),
    };
    let _guard = EXPORT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/python");
    let folder = if sites.is_some() { format!("{format}-sites") } else { format.to_owned() };
    let out = root.join("exported").join(arch).join(folder);
    let mut command = Command::new(python);
    command.arg(scripts.join(script)).arg(root.join("models").join(arch)).arg(&out);
    if let Some(sites) = sites {
        command.arg("--sites").arg(sites);
    }
    let status = command.status().unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    assert!(status.success(), "{script} failed for {arch}: {status}");
    out
}

/// The reference of `arch`: its metadata and tensors (`last.<layer>`, `mean.<layer>`, each
/// `[n_prompts, hidden]`).
pub fn reference(root: &Path, arch: &str) -> (Reference, HashMap<String, Vec<f32>>) {
    let dir = root.join("reference").join(arch);
    let meta: Reference =
        serde_json::from_slice(&std::fs::read(dir.join("reference.json")).expect("reference.json")).expect("json");
    let bytes = std::fs::read(dir.join("reference.safetensors")).expect("reference.safetensors");
    (meta, read_safetensors(&bytes))
}

/// transformers' values of every site inside blocks of each fixture of `archs` on `texts`,
/// read by the forward hooks of scripts/python/sites_reference.py (one run for all): per arch,
/// `<site>.<last|mean>.<block>`, each `[n_texts, ...]` flattened. Kept, as the exports are,
/// under `root/exported/sites_reference/<key>`, the key a hash of the request, the scripts and
/// the models' files: a second run reads them.
pub fn sites_reference(
    root: &Path,
    python: &str,
    archs: &[&str],
    texts: &[String],
) -> HashMap<String, HashMap<String, Vec<f32>>> {
    use std::hash::{Hash, Hasher};
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/python");
    let models: serde_json::Map<String, serde_json::Value> =
        archs.iter().map(|a| (a.to_string(), root.join("models").join(a).display().to_string().into())).collect();
    let request = serde_json::to_vec(&serde_json::json!({ "models": models, "texts": texts })).expect("json");
    let mut key = std::hash::DefaultHasher::new();
    request.hash(&mut key);
    let inputs = ["sites_reference.py", "export_common.py"].map(|f| scripts.join(f));
    let weights =
        archs.iter().flat_map(|a| ["config.json", "model.safetensors"].map(|f| root.join("models").join(a).join(f)));
    for file in inputs.iter().cloned().chain(weights) {
        std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display())).hash(&mut key);
    }
    let kept = root.join("exported").join("sites_reference");
    let out = kept.join(format!("{:016x}", key.finish()));
    if !out.exists() {
        std::fs::create_dir_all(&kept).expect("create the reference folder");
        let tmp = tempfile::tempdir_in(&kept).expect("tempdir");
        let req = tmp.path().join("request.json");
        std::fs::write(&req, &request).expect("write request");
        let run = Command::new(python).arg(&inputs[0]).arg(&req).arg(tmp.path()).output().expect("start PROBE_PYTHON");
        assert!(run.status.success(), "sites_reference.py failed: {}", String::from_utf8_lossy(&run.stderr));
        // Another test process may have kept the same reference meanwhile: either copy will do.
        let _ = std::fs::rename(tmp.keep(), &out);
    }
    archs
        .iter()
        .map(|a| {
            let bytes = std::fs::read(out.join(a).join("sites.safetensors")).expect("sites.safetensors");
            (a.to_string(), read_safetensors(&bytes))
        })
        .collect()
}

/// Checks `e` (fixture `arch` exported with `--sites`) against transformers' forward hooks
/// (`want`, from [`sites_reference`] on the fixture's prompts) for every site of `sites` at
/// every block, `last` and `mean`, the prompts batched by 4 (so padding is exercised): the
/// shapes are candle's (`[n, hidden]`, `[n, heads, head_dim]`, `[n, experts]`) and the values
/// within `tol` relative. Returns the worst relative error.
pub async fn check_sites(
    e: &dyn ActivationExtractor,
    prompts: &[String],
    want: &HashMap<String, Vec<f32>>,
    sites: &[Site],
    tol: f32,
) -> f32 {
    let info = e.model_info();
    let blocks: Vec<usize> = (0..info.num_layers).collect();
    let mut worst = 0f32;
    let mut alone: HashMap<(Site, usize), Vec<f32>> = HashMap::new();
    for &site in sites {
        let per_position = match site {
            Site::Heads => vec![info.num_heads, info.head_dim],
            _ => vec![info.width(site)],
        };
        for positions in [Positions::Last, Positions::Mean] {
            let req = ActivationRequest::texts(prompts.to_vec(), blocks.clone())
                .with_site(site)
                .with_positions(positions)
                .with_batch_size(4);
            let acts = e.extract(req).await.unwrap_or_else(|err| panic!("{site} {positions}: {err}"));
            assert_eq!(acts.layers.iter().map(|l| l.layer).collect::<Vec<_>>(), blocks, "{site}: every block");
            for la in &acts.layers {
                let name = format!("{site}.{positions}.{}", la.layer);
                assert_eq!(la.tensor.shape, [vec![prompts.len()], per_position.clone()].concat(), "{name}: shape");
                let reference = want.get(&name).unwrap_or_else(|| panic!("the reference has no {name}"));
                let err = rel_err(&la.tensor.data, reference);
                assert!(err <= tol, "{name}: relative error {err:e}");
                worst = worst.max(err);
                if positions == Positions::Last {
                    alone.insert((site, la.layer), la.tensor.data.clone());
                }
            }
        }
    }
    // Every site in one request: each (site, layer) labelled and equal to its site read alone.
    let req = ActivationRequest::texts(prompts.to_vec(), blocks.clone()).with_sites(sites).with_batch_size(4);
    let acts = e.extract(req).await.unwrap_or_else(|err| panic!("{sites:?} in one request: {err}"));
    assert_eq!(acts.layers.len(), sites.len() * blocks.len(), "{sites:?}: one entry per (site, layer)");
    for la in &acts.layers {
        assert_eq!(Some(&la.tensor.data), alone.get(&(la.site, la.layer)), "{} {}: as alone", la.site, la.layer);
    }
    worst
}

/// A minimal safetensors reader for f32 tensors (header length, JSON header, raw data).
fn read_safetensors(bytes: &[u8]) -> HashMap<String, Vec<f32>> {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: HashMap<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n]).expect("header");
    let data = &bytes[8 + n..];
    header
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(name, v)| {
            assert_eq!(v["dtype"], "F32", "{name} is f32");
            let off = &v["data_offsets"];
            let (a, b) = (off[0].as_u64().expect("offset") as usize, off[1].as_u64().expect("offset") as usize);
            let values = data[a..b].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            (name, values)
        })
        .collect()
}

/// max |a - b| / max |b|.
pub fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "same length");
    let num = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let den = b.iter().map(|y| y.abs()).fold(0f32, f32::max).max(1e-12);
    num / den
}

/// Texts of different lengths for the conformance suite.
pub fn conformance_texts(meta: &Reference) -> Vec<&str> {
    meta.prompts.iter().map(String::as_str).collect()
}

/// Checks `e` (a model exported from fixture `arch`) against transformers at every layer at
/// `last` and `mean`, with the prompts batched by 4 (so padding is exercised), and that
/// texts tokenise to the reference ids. Returns the worst relative error (≤ 1e-4 asserted).
pub async fn check_fidelity(e: &dyn ActivationExtractor, root: &Path, arch: &str) -> f32 {
    let (meta, tensors) = reference(root, arch);
    let info = e.model_info();
    assert_eq!((info.num_layers, info.hidden_size), (meta.num_layers, meta.hidden_size), "{arch}: shape");
    let layers: Vec<usize> = (0..=meta.num_layers).collect();
    let mut worst = 0f32;
    for positions in [Positions::Last, Positions::Mean] {
        let req =
            ActivationRequest::texts(meta.prompts.clone(), layers.clone()).with_positions(positions).with_batch_size(4);
        let acts = e.extract(req).await.unwrap_or_else(|err| panic!("{arch} {positions}: {err}"));
        let counts: Vec<usize> = meta.token_ids.iter().map(Vec::len).collect();
        assert_eq!(acts.token_counts, counts, "{arch}: texts tokenise to the reference ids");
        for layer in &layers {
            let want = &tensors[&format!("{positions}.{layer}")];
            let got = &acts.layer(*layer).expect("layer").data;
            let err = rel_err(got, want);
            assert!(err <= 1e-4, "{arch} {positions} layer {layer}: relative error {err}");
            worst = worst.max(err);
        }
    }
    // Token-id input gives the same as the texts.
    let req = ActivationRequest::token_ids(meta.token_ids.clone(), vec![meta.num_layers]);
    let acts = e.extract(req).await.expect("token ids");
    let err = rel_err(&acts.layers[0].tensor.data, &tensors[&format!("last.{}", meta.num_layers)]);
    assert!(err <= 1e-4, "{arch}: token-id input, relative error {err}");
    worst
}

/// Checks `Positions::All` rows against `Positions::Last` / the mask on `e`.
pub async fn check_all_positions(e: &dyn ActivationExtractor, texts: &[String]) {
    let l = e.model_info().num_layers;
    let h = e.model_info().hidden_size;
    let all = e
        .extract(ActivationRequest::texts(texts.to_vec(), vec![l]).with_positions(Positions::All).with_batch_size(2))
        .await
        .expect("all");
    let last = e.extract(ActivationRequest::texts(texts.to_vec(), vec![l])).await.expect("last");
    let t = &all.layers[0].tensor;
    let w = t.shape[1];
    for (i, &n) in all.token_counts.iter().enumerate() {
        let row = &t.data[(i * w + n - 1) * h..(i * w + n) * h];
        assert!(rel_err(row, last.layers[0].tensor.row(i)) <= 1e-5, "row {i}: last real position of `all` is `last`");
        assert!(t.data[(i * w + n) * h..(i + 1) * w * h].iter().all(|&v| v == 0.0), "row {i}: padding is zero");
    }
}

/// The sites of a dense model (all but the router).
pub const DENSE_SITES: &[Site] = &[Site::ResidMid, Site::AttnOut, Site::MlpOut, Site::Heads];
/// The sites of a mixture of experts.
pub const MOE_SITES: &[Site] = &[Site::ResidMid, Site::AttnOut, Site::MlpOut, Site::Heads, Site::Router];

/// The `--sites` test of an exported backend (`format`, loaded by `load`): each fixture of
/// `cases` exported with its sites equals transformers' forward hooks at every block, `last`
/// and `mean` (≤ 1e-5), on the llama fixture's prompts; the residual stream of llama's such
/// export is still transformers', and a site an export lacks is refused naming the folder, the
/// site, the sites it holds and `--sites`. Returns the worst relative error over the sites.
pub async fn check_exported_sites<E: ActivationExtractor>(
    root: &Path,
    python: &str,
    format: &str,
    cases: &[(&str, &[Site])],
    load: impl Fn(&Path) -> E,
) -> f32 {
    let (meta, _) = reference(root, "llama");
    let archs: Vec<&str> = cases.iter().map(|c| c.0).collect();
    let want = sites_reference(root, python, &archs, &meta.prompts);
    let mut worst = 0f32;
    for &(arch, sites) in cases {
        let dir = export_sites(root, python, arch, format, sites);
        let e = load(&dir);
        let err = check_sites(&e, &meta.prompts, &want[arch], sites, 1e-5).await;
        eprintln!("{format} {arch} --sites: max relative error vs transformers' hooks: {err:.3e}");
        worst = worst.max(err);
        if arch == "llama" {
            check_fidelity(&e, root, arch).await;
            let err = e
                .extract(ActivationRequest::texts(meta.prompts.clone(), vec![0]).with_site(Site::Router))
                .await
                .expect_err("llama has no router");
            let msg = err.to_string();
            for part in [&dir.display().to_string(), "router", "resid, resid_mid, attn_out, mlp_out, heads", "--sites"]
            {
                assert!(msg.contains(part), "the error names {part}: {msg}");
            }
        }
    }
    let plain = load(&export(root, python, "llama", format));
    let err = plain
        .extract(ActivationRequest::texts(vec!["a".into()], vec![0]).with_site(Site::AttnOut))
        .await
        .expect_err("a plain export holds only resid");
    let msg = err.to_string();
    assert!(matches!(err, probe_core::Error::InvalidInput { .. }), "{err}");
    assert!(
        msg.contains("attn_out") && msg.contains("holds only resid;") && msg.contains("--sites resid,attn_out"),
        "{msg}"
    );
    worst
}
