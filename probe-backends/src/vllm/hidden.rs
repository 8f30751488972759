//! vLLM's hidden-states extraction, server side: the flags a server needs
//! ([`extraction_args`]), the CPU-safe connector probe ships (`scripts/python/probe_vllm/`),
//! and the files the server writes (`[T, n_layers, H]` safetensors under a shared folder,
//! read under a shared `flock` on `PATH.lock`, then deleted).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use probe_core::{Error, Result};

use super::BACKEND;

/// vLLM's stock connector (GPU servers).
pub const STOCK_CONNECTOR: &str = "ExampleHiddenStatesConnector";
/// probe's CPU-safe subclass of it (CPU servers): a synchronous write instead of a CUDA
/// stream, pinned memory and events, which kill the CPU engine at its first write.
pub const CPU_CONNECTOR: &str = "CpuHiddenStatesConnector";
/// The Python module of [`CPU_CONNECTOR`]; its folder's parent goes on `PYTHONPATH`.
pub const CPU_CONNECTOR_MODULE: &str = "probe_vllm.cpu_hidden_states";

/// The connector's source, written next to the server logs by the launcher.
const CPU_CONNECTOR_SOURCE: &str = include_str!("../../../scripts/python/probe_vllm/cpu_hidden_states.py");
const PACKAGE_INIT: &str = include_str!("../../../scripts/python/probe_vllm/__init__.py");

/// The server arguments that make a vLLM server write every layer's hidden states (`0..=
/// num_layers`, Hugging Face numbering) of each request's prompt to `storage_dir`: the
/// `extract_hidden_states` speculative method, the hidden-states connector (probe's CPU-safe
/// one when `cpu`; it must then be importable, see [`write_cpu_connector`]), eager mode, no
/// chunked prefill and no prefix caching (a cached prefix would not be written).
/// `allow_custom_save_path` stays off: clients cannot choose where the server writes.
pub fn extraction_args(num_layers: usize, storage_dir: &Path, cpu: bool) -> Vec<String> {
    let ids: Vec<usize> = (0..=num_layers).collect();
    let spec = serde_json::json!({
        "method": "extract_hidden_states",
        "num_speculative_tokens": 1,
        "draft_model_config": {"hf_config": {"eagle_aux_hidden_state_layer_ids": ids}},
    });
    let mut kv = serde_json::json!({
        "kv_connector": if cpu { CPU_CONNECTOR } else { STOCK_CONNECTOR },
        "kv_role": "kv_producer",
        "kv_connector_extra_config": {"shared_storage_path": storage_dir.display().to_string()},
    });
    if cpu {
        kv["kv_connector_module_path"] = CPU_CONNECTOR_MODULE.into();
    }
    vec![
        "--speculative-config".into(),
        spec.to_string(),
        "--kv-transfer-config".into(),
        kv.to_string(),
        "--enforce-eager".into(),
        "--no-enable-chunked-prefill".into(),
        "--no-enable-prefix-caching".into(),
    ]
}

/// Writes the CPU-safe connector package under `dir` (`dir/probe_vllm/…`) and returns `dir`,
/// the folder to put on the server's `PYTHONPATH`.
///
/// # Errors
/// [`Error::Io`] when the files cannot be written.
pub fn write_cpu_connector(dir: &Path) -> Result<PathBuf> {
    let pkg = dir.join("probe_vllm");
    std::fs::create_dir_all(&pkg).map_err(|e| Error::io(pkg.display(), e))?;
    for (name, text) in [("__init__.py", PACKAGE_INIT), ("cpu_hidden_states.py", CPU_CONNECTOR_SOURCE)] {
        let path = pkg.join(name);
        std::fs::write(&path, text).map_err(|e| Error::io(path.display(), e))?;
    }
    Ok(dir.to_owned())
}

/// One request's hidden states as the server wrote them, in f32.
#[derive(Debug, Clone)]
pub(crate) struct HiddenStates {
    /// The prompt's token ids.
    pub(crate) token_ids: Vec<u32>,
    /// Layers in the file (`n_layers`).
    pub(crate) layers: usize,
    /// Hidden size.
    pub(crate) hidden: usize,
    /// `[T, n_layers, H]`, row-major.
    pub(crate) data: Vec<f32>,
}

impl HiddenStates {
    /// Layer `l`'s `[T, H]` values.
    pub(crate) fn layer(&self, l: usize) -> Vec<f32> {
        let (n, h) = (self.layers, self.hidden);
        let mut out = Vec::with_capacity(self.token_ids.len() * h);
        for t in 0..self.token_ids.len() {
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
        std::fs::read(path).map_err(|e| missing(path, &e))?
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

/// The file a completion answer names (`kv_transfer_params.hidden_states_path`), if any.
///
/// # Errors
/// A backend error naming `server` for a body that is not JSON.
pub(crate) fn answer_path(server: &str, body: &[u8]) -> Result<Option<PathBuf>> {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(default)]
        kv_transfer_params: Option<KvParams>,
    }
    #[derive(serde::Deserialize)]
    struct KvParams {
        #[serde(default)]
        hidden_states_path: Option<String>,
    }
    let a: Answer = serde_json::from_slice(body)
        .map_err(|e| super::wire::bad_response(server, format!("not a completion response ({e})")))?;
    Ok(a.kv_transfer_params.and_then(|k| k.hidden_states_path).map(PathBuf::from))
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

/// The hidden-states file's two tensors, checked.
fn parse(path: &Path, bytes: &[u8]) -> Result<HiddenStates> {
    let bad = |m: String| Error::backend(BACKEND, format!("hidden states {}: {m}", path.display()));
    let (entries, start) = header(path, bytes)?;
    let get = |name: &str| entries.get(name).ok_or_else(|| bad(format!("no `{name}` tensor")));
    let (hs, ids) = (get("hidden_states")?, get("token_ids")?);
    let slice = |e: &TensorEntry| {
        bytes.get(start + e.data_offsets[0]..start + e.data_offsets[1]).ok_or_else(|| bad("data is cut".into()))
    };
    let [t, layers, hidden] = hs.shape[..] else {
        return Err(bad(format!("hidden_states has shape {:?}, expected [tokens, layers, hidden]", hs.shape)));
    };
    let data = to_f32(path, &hs.dtype, slice(hs)?)?;
    if data.len() != t * layers * hidden {
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
    if token_ids.len() != t {
        return Err(bad(format!("{} token ids for {t} hidden-state rows", token_ids.len())));
    }
    Ok(HiddenStates { token_ids, layers, hidden, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_name_every_layer_and_the_connector() {
        let args = extraction_args(2, Path::new("/shared/hs"), true);
        let joined = args.join(" ");
        assert!(joined.contains(r#""eagle_aux_hidden_state_layer_ids":[0,1,2]"#), "{joined}");
        assert!(joined.contains(CPU_CONNECTOR) && joined.contains(CPU_CONNECTOR_MODULE), "{joined}");
        assert!(joined.contains(r#""shared_storage_path":"/shared/hs""#), "{joined}");
        assert!(!joined.contains("allow_custom_save_path"), "{joined}");
        let gpu = extraction_args(2, Path::new("/x"), false).join(" ");
        assert!(gpu.contains(STOCK_CONNECTOR) && !gpu.contains("kv_connector_module_path"), "{gpu}");
    }

    #[test]
    fn half_precision_converts() {
        for (h, f) in [(0x3c00u16, 1.0f32), (0xc000, -2.0), (0x0001, 5.960_464_5e-8), (0x7bff, 65504.0), (0, 0.0)] {
            assert_eq!(f16_to_f32(h), f, "{h:#x}");
        }
        assert_eq!(to_f32(Path::new("x"), "BF16", &[0x80, 0x3f]).unwrap(), vec![1.0]);
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
    }
}
