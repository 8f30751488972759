"""A CPU-safe hidden-states connector for vLLM (used by probe's vLLM extractor on the CPU only).

vLLM's ``ExampleHiddenStatesConnector`` writes each request's hidden states with pinned host
memory, a CUDA stream and CUDA events (``_submit_async_write``); on the CPU build that kills the
engine at its first write. This subclass overrides that one method with a synchronous copy and
``save_file`` under the same exclusive lock, and registers a finished "copy event" so that
``get_finished`` reports the request done as the stock connector does. Everything else (file
names, lock files, ``allow_custom_save_path`` off by default) is vLLM's.

Server flag: ``--kv-transfer-config '{"kv_connector":"CpuHiddenStatesConnector",
"kv_connector_module_path":"probe_vllm.cpu_hidden_states","kv_role":"kv_producer",
"kv_connector_extra_config":{"shared_storage_path":DIR}}'`` with this folder's parent on
``PYTHONPATH``.
"""

import fcntl
import os

import torch
from safetensors.torch import save_file
from vllm.distributed.kv_transfer.kv_connector.v1.example_hidden_states_connector import (
    ExampleHiddenStatesConnector,
    PendingSave,
    extract_from_kv_cache,
)


class _Done:
    """Stands for a CUDA event that has completed: the copy was synchronous."""

    def query(self) -> bool:
        return True


class CpuHiddenStatesConnector(ExampleHiddenStatesConnector):
    """``ExampleHiddenStatesConnector`` with a synchronous write (no CUDA stream or event)."""

    def _submit_async_write(self, pending: PendingSave) -> None:
        if not self._is_tp_rank_zero:
            return
        assert self._kv_cache is not None
        block_ids = torch.tensor(pending.block_ids, dtype=torch.long)
        offsets = torch.arange(0, self._block_size, dtype=torch.long)
        slot_mapping = (offsets.reshape((1, -1)) + block_ids.reshape((-1, 1)) * self._block_size).flatten()
        num_tokens = pending.token_ids.shape[0]
        hidden = extract_from_kv_cache(self._kv_cache, slot_mapping, num_tokens).to("cpu").clone()
        tensors = {"hidden_states": hidden.contiguous(), "token_ids": pending.token_ids.clone()}
        os.makedirs(os.path.dirname(pending.filename), exist_ok=True)
        lock_fd = self._lock_fds.pop(pending.req_id, None)
        if lock_fd is None and self.use_lock:
            lock_fd = os.open(pending.filename + ".lock", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
        try:
            save_file(tensors, pending.filename)
        finally:
            if lock_fd is not None:
                os.close(lock_fd)  # releases LOCK_EX: readers waiting on LOCK_SH proceed
        self._req_copy_events[pending.req_id] = _Done()
