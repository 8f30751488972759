"""Side-by-side extraction throughput: Hugging Face transformers (torch CPU) vs probe's
backends, on the same random-weight model and the same token ids, interleaving the engines.

Prints tokens/s, the ratio probe / transformers, and each engine's FLOP rate as a share of
the machine's measured f32 matmul peak. Usage: see benches/peer/run.
"""
import argparse
import json
import os
import subprocess
import time

import torch
from transformers import AutoModelForCausalLM


def forward_flops(cfg, n_layers, batch, seq, final_norm_only=True):
    h, inter = cfg.hidden_size, cfg.intermediate_size
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = h // heads
    tokens = batch * seq
    per_layer = 2 * tokens * (h * h + 2 * h * kv * hd + h * h + 3 * h * inter)  # q, k, v, o, mlp
    per_layer += 2 * 2 * batch * heads * seq * seq * hd  # scores and weighted sum (full square)
    return per_layer * n_layers


def matmul_peak(threads, reps=5):
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 1024), torch.randn(1024, 2816)
    torch.mm(a, b)
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * 2048 * 1024 * 2816 / (time.perf_counter() - t))
    return best


def run_transformers(model, ids, depth, iters):
    """What researchers run: the whole model with output_hidden_states, whatever the depth
    they need (transformers cannot stop early), then they pick hidden_states[:depth + 1]."""
    with torch.inference_mode():
        model(input_ids=ids, output_hidden_states=True)
        t = time.perf_counter()
        for _ in range(iters):
            out = model(input_ids=ids, output_hidden_states=True)
            states = out.hidden_states[: depth + 1]
            assert len(states) == depth + 1
        dt = time.perf_counter() - t
    return ids.numel() * iters / dt


def run_probe(binary, backend, model_dir, depth, layers_total, batch, seq, iters, threads):
    layers = "all" if depth == layers_total else f"0..={depth}"
    out = subprocess.run(
        [binary, "--backend", backend, "--model", model_dir, "--layers", layers, "--batch", str(batch),
         "--seq", str(seq), "--iters", str(iters), "--threads", str(threads)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["tokens_per_s"]


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
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    cfg = model.config
    L = cfg.num_hidden_layers
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, cfg.vocab_size, (a.batch, a.seq), generator=g)
    peak = matmul_peak(a.threads)
    results = {}
    for _ in range(a.rounds):
        for depth in (L, L // 2):
            results.setdefault(("transformers", depth), []).append(run_transformers(model, ids, depth, a.iters))
            for b in a.backends.split(","):
                results.setdefault((b, depth), []).append(
                    run_probe(a.probe_bin, b, a.model, depth, L, a.batch, a.seq, a.iters, a.threads))
    print(f"machine f32 matmul peak ({a.threads} threads): {peak / 1e9:.0f} GFLOP/s")
    print(f"model: {L} layers, hidden {cfg.hidden_size}; batch {a.batch} x {a.seq} tokens; best of {a.rounds} interleaved rounds")
    print()
    print("| engine | layers | tokens/s | vs transformers (all layers) | vs transformers (same depth) | GFLOP/s | % of matmul peak |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    base_all = max(results[("transformers", L)])
    for (engine, depth), vals in sorted(results.items(), key=lambda kv: (-kv[0][1], kv[0][0] != "transformers", kv[0][0])):
        tps = max(vals)
        base = max(results[("transformers", depth)])
        work = forward_flops(cfg, depth, a.batch, a.seq)
        if engine == "transformers":  # it always runs every layer and the LM head
            work = forward_flops(cfg, L, a.batch, a.seq) + 2 * a.batch * a.seq * cfg.hidden_size * cfg.vocab_size
        flops = work / (a.batch * a.seq) * tps
        label = "all" if depth == L else f"0..={depth}"
        print(f"| {engine} | {label} | {tps:.0f} | {tps / base_all:.2f}x | {tps / base:.2f}x | {flops / 1e9:.0f} | {100 * flops / peak:.0f}% |")


if __name__ == "__main__":
    main()
