"""Side-by-side extraction throughput: Hugging Face transformers (torch CPU) vs probe's
backends, on the same random-weight model and the same token ids, interleaving the engines.

Prints tokens/s, the ratio probe / transformers, and each engine's FLOP rate as a share of
the machine's measured matmul peak (f32 on the CPU, bf16 on a GPU). With --vllm-url, vLLM's own
hidden states (probe's vLLM extractor on a server benches/peer/run started) are timed on the same
inputs too, and each engine's start-up is printed next to one pass. Usage: see benches/peer/run.
"""
import time

T_START = time.perf_counter()  # before torch and transformers are imported: their start-up counts

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402


def forward_flops(cfg, n_layers, batch, seq, final_norm_only=True):
    h, inter = cfg.hidden_size, cfg.intermediate_size
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = h // heads
    tokens = batch * seq
    per_layer = 2 * tokens * (h * h + 2 * h * kv * hd + h * h + 3 * h * inter)  # q, k, v, o, mlp
    per_layer += 2 * 2 * batch * heads * seq * seq * hd  # scores and weighted sum (full square)
    return per_layer * n_layers


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(threads, device, dtype, reps=20):
    torch.set_num_threads(threads)
    m = 2048 if device.type == "cpu" else 8192
    a, b = torch.randn(m, 1024, device=device, dtype=dtype), torch.randn(1024, 2816, device=device, dtype=dtype)
    torch.mm(a, b)
    best = 0.0
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = max(best, 2 * m * 1024 * 2816 / (time.perf_counter() - t))
    return best


def run_transformers(model, ids, depth, iters):
    """What researchers run: the whole model with output_hidden_states, whatever the depth
    they need (transformers cannot stop early), then they pick hidden_states[:depth + 1]."""
    with torch.inference_mode():
        model(input_ids=ids, output_hidden_states=True)
        sync(ids.device)
        t = time.perf_counter()
        for _ in range(iters):
            out = model(input_ids=ids, output_hidden_states=True)
            states = out.hidden_states[: depth + 1]
            assert len(states) == depth + 1
        sync(ids.device)
        dt = time.perf_counter() - t
    return ids.numel() * iters / dt


def run_probe(binary, backend, model_dir, depth, layers_total, a, extra=()):
    """One probe-extract-bench process: its tokens/s and its load time (s)."""
    layers = "all" if depth == layers_total else f"0..={depth}"
    out = subprocess.run(
        [binary, "--backend", backend, "--model", model_dir, "--layers", layers, "--batch", str(a.batch),
         "--seq", str(a.seq), "--iters", str(a.iters), "--threads", str(a.threads), *extra],
        check=True, capture_output=True, text=True,
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return res["tokens_per_s"], res["load_s"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--probe-bin", required=True)
    p.add_argument("--backends", default="candle")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda (transformers and candle in bf16 on cuda:0)")
    p.add_argument("--vllm-url", help="also time vLLM's own hidden states on this extraction server")
    p.add_argument("--vllm-start-s", type=float, help="the server's start time, measured by benches/peer/run")
    a = p.parse_args()
    device = torch.device("cuda:0" if a.device == "cuda" else a.device)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    torch.set_num_threads(a.threads)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype).to(device).eval()
    sync(device)
    load = {"transformers": [time.perf_counter() - T_START]}
    cfg = model.config
    L = cfg.num_hidden_layers
    if a.vllm_url and a.seq + 1 > 512:
        p.error(f"--seq {a.seq}: the vLLM server's --max-model-len is 512 (prompt + 1 token)")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, cfg.vocab_size, (a.batch, a.seq), generator=g).to(device)
    peak = matmul_peak(a.threads, device, dtype)
    engines = [(b, ()) for b in a.backends.split(",")]
    if device.type == "cuda":
        engines = [(b, ("--gpu", "0", "--dtype", "bf16")) for b, _ in engines]
    if a.vllm_url:
        engines.append(("vllm", ("--url", a.vllm_url)))
    results = {}
    for _ in range(a.rounds):
        for depth in (L, L // 2):
            results.setdefault(("transformers", depth), []).append(run_transformers(model, ids, depth, a.iters))
            for b, extra in engines:
                tps, load_s = run_probe(a.probe_bin, b, a.model, depth, L, a, extra)
                results.setdefault((b, depth), []).append(tps)
                load.setdefault(b, []).append(load_s)
    what = "f32" if device.type == "cpu" else "bf16"
    print(f"machine {what} matmul peak ({device}, {a.threads} CPU threads): {peak / 1e9:.0f} GFLOP/s")
    print(f"model: {L} layers, hidden {cfg.hidden_size}; batch {a.batch} x {a.seq} tokens; best of {a.rounds} interleaved rounds")
    print()
    print("| engine | layers | tokens/s | vs transformers (all layers) | vs transformers (same depth) | GFLOP/s | % of matmul peak | every round |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    base_all = max(results[("transformers", L)])
    for (engine, depth), vals in sorted(results.items(), key=lambda kv: (-kv[0][1], kv[0][0] != "transformers", kv[0][0])):
        tps = max(vals)
        base = max(results[("transformers", depth)])
        work = forward_flops(cfg, depth, a.batch, a.seq)
        if engine in ("transformers", "vllm"):  # they always run every layer (transformers: and the LM head)
            work = forward_flops(cfg, L, a.batch, a.seq)
        if engine == "transformers":
            work += 2 * a.batch * a.seq * cfg.hidden_size * cfg.vocab_size
        flops = work / (a.batch * a.seq) * tps
        label = "all" if depth == L else f"0..={depth}"
        print(f"| {engine} | {label} | {tps:.0f} | {tps / base_all:.2f}x | {tps / base:.2f}x | {flops / 1e9:.0f} | {100 * flops / peak:.0f}% | {' '.join(f'{v:.0f}' for v in vals)} |")
    # The whole cost of a first batch: getting the engine ready, then one pass over all layers.
    print()
    print(f"Whole cost of one batch ({a.batch} x {a.seq} tokens, all layers): start-up, then one pass")
    print()
    print("| engine | start-up s | what start-up counts | one pass s | start-up + one pass s |")
    print("| --- | ---: | --- | ---: | ---: |")
    counts = {"transformers": "importing torch and transformers, from_pretrained (warm page cache)"}
    for b, _ in engines:
        counts[b] = "registry::open in probe-extract-bench (median; process start not counted, ~ms)"
    start = {e: sorted(v)[len(v) // 2] for e, v in load.items()}
    if a.vllm_url and a.vllm_start_s is not None:
        start["vllm"] += a.vllm_start_s
        counts["vllm"] = f"server start to /v1/models answering ({a.vllm_start_s:.0f} s) + registry::open"
    for e in ["transformers"] + [b for b, _ in engines]:
        one = a.batch * a.seq / max(results[(e, L)])
        print(f"| {e} | {start[e]:.1f} | {counts[e]} | {one:.1f} | {start[e] + one:.1f} |")


if __name__ == "__main__":
    main()
