//! vLLM's hidden-states extraction, server side: the flags a server needs
//! ([`extraction_args`]), the connector probe ships (`scripts/python/probe_vllm/`), which
//! reduces in the server and writes only the asked layers and token spans, and the files it
//! writes (`[spans, layers, H]`, or `[T, layers, H]` for every position, safetensors under a
//! shared folder, read under a shared `flock` on `PATH.lock`, then deleted).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use probe_core::{Error, Result};

use super::BACKEND;

/// probe's connector (every server, GPU or CPU): vLLM's `ExampleHiddenStatesConnector` that
/// reads what to write from each request's `kv_transfer_params["probe"]` (layers, token spans,
/// dtype, final norm), reduces on the server's device and writes only that; on the CPU it
/// writes synchronously (vLLM's CUDA streams, events and pinned memory kill the CPU engine).
pub const CONNECTOR: &str = "ProbeHiddenStatesConnector";
/// The Python module of [`CONNECTOR`]; its folder's parent goes on `PYTHONPATH`.
pub const CONNECTOR_MODULE: &str = "probe_vllm.hidden_states";
/// The connector's format version, answered in `kv_transfer_params.probe_connector`.
pub const CONNECTOR_FORMAT: u64 = 1;

/// The package's files, written next to the server logs by the launcher.
const SOURCES: [(&str, &str); 3] = [
    ("__init__.py", include_str!("../../../scripts/python/probe_vllm/__init__.py")),
    ("hidden_states.py", include_str!("../../../scripts/python/probe_vllm/hidden_states.py")),
    ("cpu_hidden_states.py", include_str!("../../../scripts/python/probe_vllm/cpu_hidden_states.py")),
];

/// The server arguments that make a vLLM server keep the hidden states `layers` (Hugging
/// Face numbering, `0..=num_layers`; sorted and deduplicated here) of each request and write
/// what each request asks of them to `storage_dir`: the `extract_hidden_states` speculative
/// method keeping only those layers (`eagle_aux_hidden_state_layer_ids`, so the server's
/// hidden-state cache holds `layers.len()` values per token, not `L + 1`), probe's connector
/// ([`CONNECTOR`], importable from `PYTHONPATH`: see [`write_connector`]), eager mode, no
/// chunked prefill, and prefix caching with the cached tokens counted in each answer: the
/// hidden states live in the KV cache's blocks, so a request whose prefix another computed
/// (the extraction of a generated sequence after its generation pass) reads the prefix's
/// hidden states from the cache and computes only the rest (less than one block).
/// `allow_custom_save_path` stays off: clients cannot choose where the server writes.
pub fn extraction_args(layers: &[usize], storage_dir: &Path) -> Vec<String> {
    let ids: Vec<usize> = layers.iter().copied().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    let spec = serde_json::json!({
        "method": "extract_hidden_states",
        "num_speculative_tokens": 1,
        "draft_model_config": {"hf_config": {"eagle_aux_hidden_state_layer_ids": ids}},
    });
    let kv = serde_json::json!({
        "kv_connector": CONNECTOR,
        "kv_connector_module_path": CONNECTOR_MODULE,
        "kv_role": "kv_producer",
        "kv_connector_extra_config": {"shared_storage_path": storage_dir.display().to_string()},
    });
    vec![
        "--speculative-config".into(),
        spec.to_string(),
        "--kv-transfer-config".into(),
        kv.to_string(),
        "--enforce-eager".into(),
        "--no-enable-chunked-prefill".into(),
        "--enable-prefix-caching".into(),
        "--enable-prompt-tokens-details".into(),
    ]
}

/// Writes probe's connector package under `dir` (`dir/probe_vllm/…`) and returns `dir`, the
/// folder to put on the server's `PYTHONPATH`.
///
/// # Errors
/// [`Error::Io`] when the files cannot be written.
pub fn write_connector(dir: &Path) -> Result<PathBuf> {
    let pkg = dir.join("probe_vllm");
    std::fs::create_dir_all(&pkg).map_err(|e| Error::io(pkg.display(), e))?;
    for (name, text) in SOURCES {
        let path = pkg.join(name);
        std::fs::write(&path, text).map_err(|e| Error::io(path.display(), e))?;
    }
    Ok(dir.to_owned())
}

/// What one request asks the connector to write (`kv_transfer_params["probe"]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(crate) struct Ask {
    /// Hugging Face hidden-state ids, sorted.
    pub(crate) layers: Vec<usize>,
    /// Token ranges, each reduced to its mean (one token: that token); `None`: every row.
    pub(crate) spans: Option<Vec<[usize; 2]>>,
    /// `"float32"` or `"model"`.
    pub(crate) dtype: &'static str,
    /// The final norm, applied on the server to its layer's rows before any reduction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) norm: Option<serde_json::Value>,
}

/// One request's hidden states as the server wrote them, in f32.
#[derive(Debug, Clone)]
pub(crate) struct HiddenStates {
    /// The token ids the server computed (the prompt, or prompt and completion).
    pub(crate) token_ids: Vec<u32>,
    /// Layers in the file (`n_layers`).
    pub(crate) layers: usize,
    /// Hidden size.
    pub(crate) hidden: usize,
    /// The layers' Hugging Face ids, when the file names them (probe's connector).
    pub(crate) layer_ids: Option<Vec<usize>>,
    /// The token ranges the rows are the means of; `None`: one row per token.
    pub(crate) spans: Option<Vec<[usize; 2]>>,
    /// The layer whose rows went through the final norm on the server, if any.
    pub(crate) normed: Option<usize>,
    /// `[rows, n_layers, H]`, row-major.
    pub(crate) data: Vec<f32>,
}

impl HiddenStates {
    /// Rows per layer: tokens, or spans.
    pub(crate) fn rows(&self) -> usize {
        self.data.len() / (self.layers * self.hidden).max(1)
    }

    /// Where Hugging Face hidden state `id` is in the file: its position in the file's layer
    /// list, or `id` itself for a file of every layer without one.
    pub(crate) fn index_of(&self, id: usize) -> Option<usize> {
        match &self.layer_ids {
            Some(ids) => ids.iter().position(|&l| l == id),
            None => (id < self.layers).then_some(id),
        }
    }

    /// Layer `l`'s (a position in the file) `[rows, H]` values.
    pub(crate) fn layer(&self, l: usize) -> Vec<f32> {
        let (n, h) = (self.layers, self.hidden);
        let mut out = Vec::with_capacity(self.rows() * h);
        for t in 0..self.rows() {
            out.extend_from_slice(&self.data[(t * n + l) * h..(t * n + l + 1) * h]);
        }
        out
    }
}

/// Reads the file at `path` under a shared lock on `PATH.lock` (the server holds it
/// exclusively until the file is complete), then deletes both. Blocking.
///
/// # Errors
/// [`Error::Temporary`] when the file is missing (a server that died before writing it:
/// the request is sent again), a backend error for a malformed file.
pub(crate) fn take(path: &Path) -> Result<HiddenStates> {
    let lock_path = PathBuf::from(format!("{}.lock", path.display()));
    let bytes = {
        let lock = File::open(&lock_path).map_err(|e| missing(&lock_path, &e))?;
        flock_shared(&lock).map_err(|e| Error::io(lock_path.display(), e))?;
        match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) => return Err(unwritten(path, &lock_path).unwrap_or_else(|| missing(path, &e))),
        }
        // The lock is released when `lock` closes.
    };
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(&lock_path);
    parse(path, &bytes)
}

/// Deletes the file at `path` and its lock once the server has finished writing it (a
/// shared lock on `PATH.lock`, as [`take`]). Blocking; a file already gone is no error.
pub(crate) fn discard(path: &Path) {
    let lock_path = PathBuf::from(format!("{}.lock", path.display()));
    if let Ok(lock) = File::open(&lock_path) {
        let _ = flock_shared(&lock);
    }
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(&lock_path);
}

/// What a completion answer says about hidden states (`kv_transfer_params`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub(crate) struct Answered {
    /// The file the server writes (`hidden_states_path`).
    #[serde(default, rename = "hidden_states_path")]
    pub(crate) path: Option<PathBuf>,
    /// probe's connector's format version; absent from vLLM's stock connector.
    #[serde(default, rename = "probe_connector")]
    pub(crate) format: Option<u64>,
    /// The layers the server keeps (probe's connector).
    #[serde(default, rename = "probe_layers")]
    pub(crate) kept: Option<Vec<usize>>,
    /// Why probe's connector refused the request (nothing is written).
    #[serde(default, rename = "probe_error")]
    pub(crate) error: Option<String>,
}

/// What the completion answer `body` from `server` says about hidden states.
///
/// # Errors
/// A backend error naming `server` for a body that is not JSON.
pub(crate) fn answered(server: &str, body: &[u8]) -> Result<Answered> {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(default)]
        kv_transfer_params: Option<Answered>,
    }
    let a: Answer = serde_json::from_slice(body)
        .map_err(|e| super::wire::bad_response(server, format!("not a completion response ({e})")))?;
    Ok(a.kv_transfer_params.unwrap_or_default())
}

/// A completion answer's prompt tokens and, of those, the ones the server's prefix cache served
/// (`usage.prompt_tokens_details.cached_tokens`, given with `--enable-prompt-tokens-details`);
/// zeros when absent.
pub(crate) fn prompt_tokens(body: &[u8]) -> (u64, u64) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let u = &v["usage"];
    (u["prompt_tokens"].as_u64().unwrap_or(0), u["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0))
}

/// The server's reason for not writing `path` (its write failed, e.g. a full disk), which
/// probe's connector leaves in the lock file: a fatal error naming the folder (sending the
/// request again would fill it again); the lock is deleted. `None` when the lock is empty.
fn unwritten(path: &Path, lock_path: &Path) -> Option<Error> {
    let why = std::fs::read_to_string(lock_path).ok()?;
    let why = why.trim();
    if why.is_empty() {
        return None;
    }
    let _ = std::fs::remove_file(lock_path);
    let folder = path.parent().unwrap_or(path);
    Some(Error::backend(
        BACKEND,
        format!(
            "the vLLM server could not write hidden states into {}: {why} (make room there and run again: \
             what was computed is cached)",
            folder.display()
        ),
    ))
}

fn missing(path: &Path, e: &std::io::Error) -> Error {
    Error::Temporary { backend: BACKEND.into(), message: format!("hidden states {}: {e}", path.display()) }
}

fn flock_shared(f: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: flock on a descriptor this function's caller keeps open.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One tensor's entry in a safetensors header.
#[derive(Debug, Clone, serde::Deserialize)]
pub(crate) struct TensorEntry {
    pub(crate) dtype: String,
    pub(crate) shape: Vec<usize>,
    pub(crate) data_offsets: [usize; 2],
}

/// A safetensors header: its tensors (metadata dropped) and where the data starts.
pub(crate) fn header(path: &Path, bytes: &[u8]) -> Result<(std::collections::HashMap<String, TensorEntry>, usize)> {
    let bad = |m: String| Error::backend(BACKEND, format!("{}: not a safetensors file: {m}", path.display()));
    let len = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize);
    let len = len.ok_or_else(|| bad("shorter than 8 bytes".into()))?;
    let json = bytes.get(8..8 + len).ok_or_else(|| bad(format!("header of {len} bytes is cut")))?;
    let mut map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    map.remove("__metadata__");
    let entries = map
        .into_iter()
        .map(|(k, v)| serde_json::from_value(v).map(|e| (k, e)))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    Ok((entries, 8 + len))
}

/// Reads the header of the safetensors file at `path` without its data.
pub(crate) fn read_header(path: &Path) -> Result<(std::collections::HashMap<String, TensorEntry>, usize)> {
    let mut f = File::open(path).map_err(|e| Error::io(path.display(), e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| Error::io(path.display(), e))?;
    let n = u64::from_le_bytes(len) as usize;
    if n > 100 << 20 {
        return Err(Error::invalid("model", format!("{}: a safetensors header of {n} bytes", path.display())));
    }
    let mut buf = vec![0u8; 8 + n];
    buf[..8].copy_from_slice(&len);
    f.read_exact(&mut buf[8..]).map_err(|e| Error::io(path.display(), e))?;
    header(path, &buf)
}

/// Reads one tensor's values (as f32) from the safetensors file at `path`.
pub(crate) fn read_tensor(path: &Path, entry: &TensorEntry, data_start: usize) -> Result<Vec<f32>> {
    let [a, b] = entry.data_offsets;
    let mut f = File::open(path).map_err(|e| Error::io(path.display(), e))?;
    f.seek(SeekFrom::Start((data_start + a) as u64)).map_err(|e| Error::io(path.display(), e))?;
    let mut raw = vec![0u8; b.saturating_sub(a)];
    f.read_exact(&mut raw).map_err(|e| Error::io(path.display(), e))?;
    to_f32(path, &entry.dtype, &raw)
}

/// Little-endian F32, BF16 or F16 bytes as f32 values.
pub(crate) fn to_f32(path: &Path, dtype: &str, raw: &[u8]) -> Result<Vec<f32>> {
    let halves = || raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]));
    Ok(match dtype {
        "F32" => raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        "BF16" => halves().map(|h| f32::from_bits(u32::from(h) << 16)).collect(),
        "F16" => halves().map(f16_to_f32).collect(),
        other => {
            return Err(Error::backend(
                BACKEND,
                format!("{}: dtype {other} (expected F32, BF16 or F16)", path.display()),
            ));
        }
    })
}

/// IEEE half to single precision.
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: normalise.
            let shift = m.leading_zeros() - 21;
            sign | ((113 - shift) << 23) | (((m << shift) & 0x3ff) << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// The hidden-states file's two tensors and probe's metadata, checked.
fn parse(path: &Path, bytes: &[u8]) -> Result<HiddenStates> {
    let bad = |m: String| Error::backend(BACKEND, format!("hidden states {}: {m}", path.display()));
    let meta = metadata(bytes);
    let field = |k: &str| meta.as_ref().and_then(|m| m.get(k)).and_then(|v| v.as_str()).map(str::to_owned);
    if let Some(e) = field("probe_error") {
        return Err(Error::backend(BACKEND, format!("the server could not write {}: {e}", path.display())));
    }
    let (entries, start) = header(path, bytes)?;
    let get = |name: &str| entries.get(name).ok_or_else(|| bad(format!("no `{name}` tensor")));
    let (hs, ids) = (get("hidden_states")?, get("token_ids")?);
    let slice = |e: &TensorEntry| {
        bytes.get(start + e.data_offsets[0]..start + e.data_offsets[1]).ok_or_else(|| bad("data is cut".into()))
    };
    let [rows, layers, hidden] = hs.shape[..] else {
        return Err(bad(format!("hidden_states has shape {:?}, expected [rows, layers, hidden]", hs.shape)));
    };
    let data = to_f32(path, &hs.dtype, slice(hs)?)?;
    if data.len() != rows * layers * hidden {
        return Err(bad(format!("hidden_states holds {} values for shape {:?}", data.len(), hs.shape)));
    }
    let raw = slice(ids)?;
    let token_ids: Vec<i64> = match ids.dtype.as_str() {
        "I64" => raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
        "I32" => raw.chunks_exact(4).map(|c| i64::from(i32::from_le_bytes(c.try_into().expect("4 bytes")))).collect(),
        other => return Err(bad(format!("token_ids has dtype {other}"))),
    };
    let token_ids = token_ids
        .into_iter()
        .map(|t| u32::try_from(t).map_err(|_| bad(format!("token id {t}"))))
        .collect::<Result<Vec<u32>>>()?;
    let numbers = |v: &str| {
        v.split(',').filter(|s| !s.is_empty()).map(str::parse::<usize>).collect::<std::result::Result<Vec<_>, _>>()
    };
    let layer_ids = match field("layers") {
        Some(v) => Some(numbers(&v).map_err(|e| bad(format!("layers {v:?}: {e}")))?),
        None => None,
    };
    let spans = match field("spans").as_deref() {
        None | Some("all") => None,
        Some(v) => Some(
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(|s| {
                    let (a, b) = s.split_once(':')?;
                    Some([a.parse().ok()?, b.parse().ok()?])
                })
                .collect::<Option<Vec<[usize; 2]>>>()
                .ok_or_else(|| bad(format!("spans {v:?}")))?,
        ),
    };
    let normed = match field("normed").filter(|v| !v.is_empty()) {
        Some(v) => Some(v.parse().map_err(|e| bad(format!("normed {v:?}: {e}")))?),
        None => None,
    };
    let want_rows = spans.as_ref().map_or(token_ids.len(), Vec::len);
    if rows != want_rows {
        return Err(bad(format!("{rows} rows for {} token ids and spans {spans:?}", token_ids.len())));
    }
    if layer_ids.as_ref().is_some_and(|l| l.len() != layers) {
        return Err(bad(format!("{layers} layers in the tensor, {layer_ids:?} in the metadata")));
    }
    Ok(HiddenStates { token_ids, layers, hidden, layer_ids, spans, normed, data })
}

/// The safetensors header's `__metadata__`, if any.
fn metadata(bytes: &[u8]) -> Option<serde_json::Map<String, serde_json::Value>> {
    let len = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let mut map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(bytes.get(8..8 + len)?).ok()?;
    match map.remove("__metadata__")? {
        serde_json::Value::Object(m) => Some(m),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_name_the_asked_layers_sorted_and_probes_connector() {
        let args = extraction_args(&[4, 0, 2, 4], Path::new("/shared/hs"));
        let joined = args.join(" ");
        assert!(joined.contains(r#""eagle_aux_hidden_state_layer_ids":[0,2,4]"#), "{joined}");
        assert!(joined.contains(CONNECTOR) && joined.contains(CONNECTOR_MODULE), "{joined}");
        assert!(joined.contains(r#""shared_storage_path":"/shared/hs""#), "{joined}");
        assert!(!joined.contains("allow_custom_save_path"), "{joined}");
    }

    #[test]
    fn half_precision_converts() {
        for (h, f) in [(0x3c00u16, 1.0f32), (0xc000, -2.0), (0x0001, 5.960_464_5e-8), (0x7bff, 65504.0), (0, 0.0)] {
            assert_eq!(f16_to_f32(h), f, "{h:#x}");
        }
        assert_eq!(to_f32(Path::new("x"), "BF16", &[0x80, 0x3f]).unwrap(), vec![1.0]);
    }

    /// A file probe's connector wrote: one span's mean of layers 3 and 4 (4 normed on the
    /// server), named in the metadata; a refusal written as a file is an error with its reason.
    #[test]
    fn a_reduced_file_names_its_layers_spans_and_norm() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.safetensors");
        let write = |meta: &str, rows: usize| {
            let header = format!(
                r#"{{"__metadata__":{meta},"hidden_states":{{"dtype":"F32","shape":[{rows},2,1],"data_offsets":[0,{}]}},"token_ids":{{"dtype":"I64","shape":[3],"data_offsets":[{},{}]}}}}"#,
                rows * 8,
                rows * 8,
                rows * 8 + 24
            );
            let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
            bytes.extend_from_slice(header.as_bytes());
            for v in 0..rows * 2 {
                bytes.extend_from_slice(&(v as f32).to_le_bytes());
            }
            for t in [7i64, 8, 9] {
                bytes.extend_from_slice(&t.to_le_bytes());
            }
            std::fs::write(&path, &bytes).unwrap();
            std::fs::write(dir.path().join("r.safetensors.lock"), b"").unwrap();
        };
        write(r#"{"probe_format":"1","layers":"3,4","spans":"0:3","normed":"4"}"#, 1);
        let hs = take(&path).unwrap();
        assert_eq!(
            (hs.rows(), hs.layer_ids.clone(), hs.spans.clone(), hs.normed),
            (1, Some(vec![3, 4]), Some(vec![[0, 3]]), Some(4))
        );
        assert_eq!((hs.index_of(4), hs.index_of(0)), (Some(1), None));
        assert_eq!((hs.layer(0), hs.layer(1)), (vec![0.0], vec![1.0]));
        write(r#"{"probe_format":"1","layers":"3,4","spans":"all","normed":""}"#, 3);
        let hs = take(&path).unwrap();
        assert_eq!((hs.rows(), hs.spans.clone(), hs.normed), (3, None, None));
        write(r#"{"probe_format":"1","layers":"3,4","spans":"0:3,1:2","normed":""}"#, 1);
        assert!(take(&path).unwrap_err().to_string().contains("1 rows"), "rows must match the spans");
        write(r#"{"probe_format":"1","probe_error":"OSError: no space left on device"}"#, 1);
        assert!(take(&path).unwrap_err().to_string().contains("no space left"));
    }

    #[test]
    fn a_file_is_read_under_its_lock_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.safetensors");
        // hidden_states [2, 2, 1] f32 = 1, 2, 3, 4; token_ids [2] i64 = 7, 9.
        let header = r#"{"hidden_states":{"dtype":"F32","shape":[2,2,1],"data_offsets":[0,16]},"token_ids":{"dtype":"I64","shape":[2],"data_offsets":[16,32]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        for v in [1f32, 2.0, 3.0, 4.0] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        for t in [7i64, 9] {
            bytes.extend_from_slice(&t.to_le_bytes());
        }
        std::fs::write(&path, &bytes).unwrap();
        std::fs::write(dir.path().join("r.safetensors.lock"), b"").unwrap();
        let hs = take(&path).unwrap();
        assert_eq!((hs.token_ids.clone(), hs.layers, hs.hidden), (vec![7, 9], 2, 1));
        assert_eq!((hs.layer(0), hs.layer(1)), (vec![1.0, 3.0], vec![2.0, 4.0]));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "file and lock deleted");
        assert!(matches!(take(&path), Err(Error::Temporary { .. })), "a missing file is retried");
        // An empty lock and no file (a server that died while writing): retried.
        std::fs::write(dir.path().join("r.safetensors.lock"), b"").unwrap();
        assert!(matches!(take(&path), Err(Error::Temporary { .. })), "a dead server's request is retried");
        // The server's reason in the lock (its write failed): fatal, naming the folder.
        std::fs::write(dir.path().join("r.safetensors.lock"), b"OSError: [Errno 28] No space left on device").unwrap();
        let e = take(&path).unwrap_err();
        let text = e.to_string();
        assert!(!matches!(e, Error::Temporary { .. }), "not retried: {text}");
        assert!(text.contains(&dir.path().display().to_string()) && text.contains("No space left"), "{text}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "lock deleted");
    }
}
