"""probe's hidden-states connector for vLLM: reduces in the server, writes only what was asked.

vLLM's ``ExampleHiddenStatesConnector`` writes every layer the server keeps
(``eagle_aux_hidden_state_layer_ids``) of every token of each request. This subclass reads what
probe wants from the request's ``kv_transfer_params["probe"]``::

    {"layers": [1, 3, 8],            # Hugging Face hidden-state ids, each one the server keeps
     "spans": [[0, 412]] | null,     # token ranges [start, end), each reduced to its mean
                                     # (a one-token range is that token: `last`, `marker:`);
                                     # null keeps every row (`all`)
     "dtype": "float32" | "model",   # what the file holds
     "norm": {"layer": 8, "kind": "rms" | "layer", "offset": 0.0, "eps": 1e-6,
              "weight": "model.norm.weight", "bias": null} | null}

reduces on the server's device (the final norm first, on the rows of ``norm.layer``: vLLM keeps
the last block's output before it; the weights are read from the served model's own checkpoint)
and writes ``hidden_states`` = ``[spans, layers, hidden]`` (or ``[tokens, layers, hidden]`` for
``all``) and ``token_ids`` with metadata naming the layers, spans and the normed layer. A request
without ``probe`` gets every kept layer of every token, unreduced, in the model dtype (vLLM's
layout). A layer the server does not keep is refused in the answer (``probe_error``) and no file
is written. The answer's ``kv_transfer_params`` also carry ``probe_connector`` (this format's
version) and ``probe_layers`` (the layers the server keeps).

On CUDA the reduction runs on a copy stream and the write on a thread pool, as vLLM's; on the CPU
both are synchronous (vLLM's CUDA streams, events and pinned memory kill the CPU engine).

Server flag: ``--kv-transfer-config '{"kv_connector":"ProbeHiddenStatesConnector",
"kv_connector_module_path":"probe_vllm.hidden_states","kv_role":"kv_producer",
"kv_connector_extra_config":{"shared_storage_path":DIR}}'`` with this folder's parent on
``PYTHONPATH`` (``probe vllm-args`` prints every flag).
"""

import fcntl
import glob
import json
import os
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from vllm.logger import init_logger
from vllm.utils.gpu_sync_debug import gpu_sync_allowed
from vllm.distributed.kv_transfer.kv_connector.v1.example_hidden_states_connector import (
    ExampleHiddenStatesConnector,
    PendingSave,
    extract_from_kv_cache,
)

logger = init_logger(__name__)

#: The version of the file format and of ``kv_transfer_params["probe"]``.
FORMAT = 1


@dataclass
class ProbeSave(PendingSave):
    """A pending save with what probe asked for (empty: vLLM's layout)."""

    ask: dict = field(default_factory=dict)


class _Done:
    """Stands for a CUDA event that has completed: the copy was synchronous."""

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        pass


def _check(ask: dict, kept: list[int]) -> str | None:
    """Why ``ask`` cannot be served by a server keeping ``kept`` (None when it can)."""
    if not isinstance(ask, dict):
        return "kv_transfer_params.probe must be an object"
    layers = ask.get("layers")
    if layers is not None:
        missing = [l for l in layers if l not in kept]
        if missing:
            return (
                f"layer(s) {missing} are not kept by this server (eagle_aux_hidden_state_layer_ids {kept}); "
                "restart it with them"
            )
    if ask.get("dtype", "float32") not in ("float32", "model"):
        return f"dtype {ask.get('dtype')!r} (expected float32 or model)"
    return None


class ProbeHiddenStatesConnector(ExampleHiddenStatesConnector):
    """``ExampleHiddenStatesConnector`` that writes only the asked layers and token spans."""

    def __init__(self, vllm_config, role, kv_cache_config=None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        spec = self._vllm_config.speculative_config.draft_model_config.hf_config
        ids = list(getattr(spec, "eagle_aux_hidden_state_layer_ids", []))
        # vLLM's models append the kept states in layer order, whatever order the ids are given in.
        self._kept = sorted(set(ids))
        self._norms: dict[str, tuple] = {}
        # Worker side: req_id → lock file of a request not written (yet); a request that
        # finishes without a write (refused, aborted) has its lock removed, not left behind.
        self._unwritten: dict[str, str] = {}

    # ---------------------------------------------------------------- scheduler side

    def request_finished(self, request, block_ids):
        ask = (request.kv_transfer_params or {}).get("probe")
        error = _check(ask, self._kept) if ask is not None else None
        if error is not None:
            # Nothing is written: the worker closes the lock it pre-created.
            filename = self._request_filenames.pop(request.request_id, None)
            self._pending_saves.pop(request.request_id, None)
            params = {"probe_connector": FORMAT, "probe_layers": self._kept, "probe_error": error}
            if filename is not None:
                params["hidden_states_path"] = filename
            return False, params
        delay, params = super().request_finished(request, block_ids)
        pending = self._pending_saves.get(request.request_id)
        if pending is not None:
            self._pending_saves[request.request_id] = ProbeSave(
                req_id=pending.req_id,
                filename=pending.filename,
                token_ids=pending.token_ids,
                block_ids=pending.block_ids,
                ask=ask or {},
            )
        if params is not None:
            params = dict(params, probe_connector=FORMAT, probe_layers=self._kept)
        return delay, params

    # ---------------------------------------------------------------- worker side

    def wait_for_save(self) -> None:
        super().wait_for_save()
        if not self._is_tp_rank_zero or not self.has_connector_metadata():
            return
        meta = self._get_connector_metadata()
        for req_id, filename in getattr(meta, "new_req_filenames", {}).items():
            if req_id in self._lock_fds:
                self._unwritten.setdefault(req_id, filename + ".lock")

    def get_finished(self, finished_req_ids):
        out = super().get_finished(finished_req_ids)
        for req_id, lock in list(self._unwritten.items()):
            if req_id not in self._lock_fds:  # closed without a write
                del self._unwritten[req_id]
                try:
                    os.remove(lock)
                except OSError:
                    pass
        return out

    def _norm(self, spec: dict, device) -> tuple:
        """The final norm's weight (and bias) from the served checkpoint, cached per device."""
        key = json.dumps(spec, sort_keys=True) + str(device)
        if key not in self._norms:
            names = [spec["weight"]] + ([spec["bias"]] if spec.get("bias") else [])
            found = _read_tensors(self._vllm_config.model_config, names)
            weight = found[spec["weight"]].to(device=device, dtype=torch.float32)
            bias = found[spec["bias"]].to(device=device, dtype=torch.float32) if spec.get("bias") else None
            self._norms[key] = (weight, bias)
        return self._norms[key]

    def _reduce(self, hidden: torch.Tensor, ask: dict) -> tuple[torch.Tensor, dict[str, str]]:
        """``[T, kept, H]`` → what ``ask`` wants, and the file's metadata."""
        layers = ask.get("layers")
        if layers is None:
            layers = self._kept
        spans = ask.get("spans")
        norm = ask.get("norm")
        x = hidden
        if list(layers) != self._kept:
            x = x[:, [self._kept.index(l) for l in layers], :]
        normed = ""
        if norm is not None and norm.get("layer") in layers:
            k = list(layers).index(norm["layer"])
            x = x.to(torch.float32, copy=True)  # the cache itself is never written
            x[:, k, :] = _apply_norm(x[:, k, :], norm, *self._norm(norm, x.device))
            normed = str(norm["layer"])
        if spans is not None:
            x32 = x.to(torch.float32)
            x = torch.stack([x32[s:e].mean(dim=0) for s, e in spans]) if spans else x32[:0]
        if ask.get("dtype", "float32" if spans is not None else "model") == "float32":
            x = x.to(torch.float32)
        else:
            x = x.to(hidden.dtype)
        meta = {
            "probe_format": str(FORMAT),
            "layers": ",".join(str(l) for l in layers),
            "spans": "all" if spans is None else ",".join(f"{s}:{e}" for s, e in spans),
            "normed": normed,
        }
        return x.contiguous(), meta

    def _submit_async_write(self, pending: PendingSave) -> None:
        if not self._is_tp_rank_zero:
            return
        assert self._kv_cache is not None
        ask = getattr(pending, "ask", {}) or {}
        self._unwritten.pop(pending.req_id, None)
        block_ids = torch.tensor(pending.block_ids, dtype=torch.long)
        offsets = torch.arange(0, self._block_size, dtype=torch.long)
        slots = (offsets.reshape((1, -1)) + block_ids.reshape((-1, 1)) * self._block_size).flatten()
        num_tokens = pending.token_ids.shape[0]
        os.makedirs(os.path.dirname(pending.filename), exist_ok=True)
        lock_fd = self._lock_fds.pop(pending.req_id, None)
        if lock_fd is None and self.use_lock:
            lock_fd = os.open(pending.filename + ".lock", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
        token_ids = pending.token_ids.clone()
        if not self._kv_cache.is_cuda:
            try:
                hidden = extract_from_kv_cache(self._kv_cache, slots, num_tokens)
                out, meta = self._reduce(hidden, ask)
                tensors = {"hidden_states": out.to("cpu").contiguous(), "token_ids": token_ids}
            except Exception as e:  # noqa: BLE001 - reported to the client in the file
                tensors, meta = _error_file(e)
            try:
                _write(tensors, meta, pending.filename, lock_fd)
            except Exception as e:  # noqa: BLE001 - the engine must live on; the client finds no file
                logger.error("probe: writing hidden states %s failed: %r", pending.filename, e)
            self._req_copy_events[pending.req_id] = _Done()
            return
        stream = self._get_copy_stream()
        ready = torch.cuda.Event()
        ready.record()
        stream.wait_event(ready)
        with torch.cuda.stream(stream), gpu_sync_allowed():
            try:
                hidden = extract_from_kv_cache(
                    self._kv_cache, slots.to(device=self._kv_cache.device, non_blocking=True), num_tokens
                )
                out, meta = self._reduce(hidden, ask)
                pinned = torch.empty_like(out, device="cpu", pin_memory=True)
                pinned.copy_(out, non_blocking=True)
                tensors = {"hidden_states": pinned, "token_ids": token_ids}
            except Exception as e:  # noqa: BLE001
                tensors, meta = _error_file(e)
        done = torch.cuda.Event()
        done.record(stream)
        future = self._executor.submit(_write_after, tensors, meta, done, pending.filename, lock_fd)
        self._req_copy_events[pending.req_id] = done
        self._req_futures[pending.req_id] = future
        future.add_done_callback(partial(self._on_write_done, pending.req_id))


def _apply_norm(rows: torch.Tensor, spec: dict, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The final norm of ``rows`` (``[T, H]``, f32), as Hugging Face applies it."""
    eps = float(spec.get("eps", 1e-6))
    if spec.get("kind", "rms") == "layer":
        out = torch.nn.functional.layer_norm(rows, (rows.shape[-1],), weight, bias, eps)
        return out
    rms = torch.rsqrt(rows.pow(2).mean(dim=-1, keepdim=True) + eps)
    return rows * rms * (float(spec.get("offset", 0.0)) + weight)


def _read_tensors(model_config, names: list[str]) -> dict[str, torch.Tensor]:
    """Tensors ``names`` from the served model's safetensors files (a folder, or the hub cache)."""
    folder = model_config.model
    if not os.path.isdir(folder):
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            folder, revision=getattr(model_config, "revision", None), local_files_only=True
        )
    out: dict[str, torch.Tensor] = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
        with safe_open(path, framework="pt") as f:
            for name in names:
                if name not in out and name in f.keys():
                    out[name] = f.get_tensor(name)
        if len(out) == len(names):
            return out
    missing = [n for n in names if n not in out]
    raise ValueError(f"{folder}: no tensor {missing} in its safetensors files (the final norm)")


def _error_file(e: Exception) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    return {"hidden_states": torch.zeros(0), "token_ids": torch.zeros(0, dtype=torch.long)}, {
        "probe_format": str(FORMAT),
        "probe_error": f"{type(e).__name__}: {e}",
    }


def _write(tensors: dict[str, torch.Tensor], meta: dict[str, str], filename: str, lock_fd: int | None) -> None:
    """Writes the file, removes a partial one (a full disk), and releases the lock."""
    try:
        save_file(tensors, filename, metadata=meta)
    except BaseException as e:
        try:
            os.remove(filename)
        except OSError:
            pass
        if lock_fd is not None:
            # The reader finds no file and this reason in the lock (a few bytes: the partial file
            # just removed left room for them even on a full disk).
            try:
                os.write(lock_fd, f"{type(e).__name__}: {e}".encode()[:4096])
            except OSError:
                pass
        raise
    finally:
        if lock_fd is not None:
            os.close(lock_fd)  # releases LOCK_EX: readers waiting on LOCK_SH proceed


def _write_after(tensors, meta, event, filename, lock_fd) -> None:
    try:
        event.synchronize()
    except BaseException:
        if lock_fd is not None:
            os.close(lock_fd)
        raise
    _write(tensors, meta, filename, lock_fd)
