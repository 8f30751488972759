"""The connector's former name (servers started with probe's earlier flags): the same class.

``CpuHiddenStatesConnector`` is :class:`probe_vllm.hidden_states.ProbeHiddenStatesConnector`,
which writes synchronously on the CPU (vLLM's stock connector kills the CPU engine at its first
write: CUDA streams, events and pinned memory) and reduces in the server when asked.
"""

from probe_vllm.hidden_states import ProbeHiddenStatesConnector


class CpuHiddenStatesConnector(ProbeHiddenStatesConnector):
    """:class:`ProbeHiddenStatesConnector` under its former name."""
