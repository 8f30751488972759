//! Loading ONNX Runtime (once per process) and opening sessions on the best provider.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::environment::Environment;
use ort::session::Session;
use probe_core::{Error, Result};

pub(super) const BACKEND: &str = "ort";

/// The process's ONNX Runtime: the library it was loaded from and its one environment.
/// A failed load is not remembered, so a later call with a good path can still succeed.
static RUNTIME: Mutex<Option<(Environment, PathBuf)>> = Mutex::new(None);

const HINT: &str = "point ORT_DYLIB_PATH (or OrtOptions::with_library) at the libonnxruntime.so.<version> shipped \
                    in PyPI's onnxruntime wheel: <site-packages>/onnxruntime/capi/libonnxruntime.so.1.31.1";

/// The library to load: the explicit path, else `ORT_DYLIB_PATH`.
fn library_path(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => Err(Error::backend(BACKEND, format!("no ONNX Runtime library given: {HINT}"))),
    }
}

/// Loads ONNX Runtime (first call) and returns its environment and the library path.
/// A later call naming another library keeps the first one (a process holds one ONNX
/// Runtime) and says so in a warning.
pub(super) fn environment(explicit: Option<&Path>) -> Result<(Environment, PathBuf)> {
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((env, loaded)) = slot.as_ref() {
        if let Some(p) = explicit
            && p != loaded
        {
            tracing::warn!(
                "ort: ONNX Runtime is already loaded from {}; ignoring {} (one per process)",
                loaded.display(),
                p.display()
            );
        }
        return Ok((env.clone(), loaded.clone()));
    }
    let path = library_path(explicit)?;
    if !path.is_file() {
        return Err(Error::backend(BACKEND, format!("ONNX Runtime library {} does not exist: {HINT}", path.display())));
    }
    let builder = ort::init_from(&path)
        .map_err(|e| Error::backend(BACKEND, format!("cannot load ONNX Runtime from {}: {e}", path.display())))?;
    let env = builder
        .with_name("probe")
        .build()
        .map_err(|e| Error::backend(BACKEND, format!("cannot create the ONNX Runtime environment: {e}")))?;
    tracing::info!(library = %path.display(), "ort: ONNX Runtime loaded");
    *slot = Some((env.clone(), path.clone()));
    Ok((env, path))
}

/// Opens `model` with the CUDA provider when built with `cuda` and it works here, else on
/// the CPU provider. Returns the session and the provider's name.
pub(super) fn open_session(
    env: &Environment,
    model: &Path,
    intra_threads: Option<usize>,
    want_cuda: bool,
) -> Result<(Session, &'static str)> {
    let fail = |e: ort::Error| Error::backend(BACKEND, format!("cannot open {}: {e}", model.display()));
    if want_cuda {
        match cuda_session(env, model, intra_threads) {
            Ok(s) => return Ok((s, "CUDAExecutionProvider")),
            Err(reason) => tracing::warn!("ort: the CUDA execution provider is not usable ({reason}); using the CPU"),
        }
    }
    let mut builder = Session::builder(env).map_err(fail)?;
    if let Some(n) = intra_threads {
        builder = builder.with_intra_threads(n).map_err(|e| fail(e.into()))?;
    }
    let session = builder.commit_from_file(model).map_err(fail)?;
    Ok((session, "CPUExecutionProvider"))
}

#[cfg(feature = "cuda")]
fn cuda_session(env: &Environment, model: &Path, intra_threads: Option<usize>) -> std::result::Result<Session, String> {
    use ort::ep::ExecutionProvider;
    if !ort::ep::CUDA::is_available().map_err(|e| e.to_string())? {
        return Err("this ONNX Runtime library was built without it (the onnxruntime-gpu wheel has it)".into());
    }
    let mut builder = Session::builder(env).map_err(|e| e.to_string())?;
    if let Some(n) = intra_threads {
        builder = builder.with_intra_threads(n).map_err(|e| e.to_string())?;
    }
    builder
        .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
        .map_err(|e| e.to_string())?
        .commit_from_file(model)
        .map_err(|e| e.to_string())
}

#[cfg(not(feature = "cuda"))]
fn cuda_session(_: &Environment, _: &Path, _: Option<usize>) -> std::result::Result<Session, String> {
    Err("probe was built without the `cuda` feature".into())
}
