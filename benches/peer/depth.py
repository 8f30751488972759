"""Extraction depth and memory, whole processes (issue 28): `probe extract` of the same prompts
reading the hidden state at half depth (layer L/2) and at full depth (layer L), each a whole
process (start, load, one pass, exit) into a fresh cache, interleaved round by round. A model that
only extracts loads the embedding and the blocks its deepest layer needs, no output head.

    depth.py --model DIR --probe target/release/probe [--prompts 64 --words 40 --rounds 2]

Prints per depth the whole-process wall time and peak RSS (ru_maxrss, from wait4), and the ratio
of half depth to full depth. Usage: see benches/peer/run.
"""
import argparse
import json
import os
import random
import sys
import tempfile
import time

from long import load_avg


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--probe", required=True, help="a release build of the probe command")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--words", type=int, default=40)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    layers = json.load(open(os.path.join(a.model, "config.json")))["num_hidden_layers"]
    rng = random.Random(0)
    vocab = "the a of model layer probe token state river stone light paper head block".split()
    with tempfile.TemporaryDirectory() as d:
        prompts = os.path.join(d, "prompts.jsonl")
        with open(prompts, "w") as f:
            for i in range(a.prompts):
                text = " ".join(rng.choice(vocab) for _ in range(a.words))
                f.write(json.dumps({"id": f"p{i}", "text": text, "label": "ab"[i % 2]}) + "\n")
        best = {}
        for r in range(a.rounds):
            for depth in (layers // 2, layers):
                out = os.path.join(d, f"run-{r}-{depth}")
                cmd = [a.probe, "extract", "--model", a.model, "--input", prompts, "--layers", str(depth),
                       "--positions", "last", "--cache", out + "-cache", "--out", out + ".safetensors", "--quiet"]
                before = load_avg()
                wall, rss = run(cmd)
                print(f"layer {depth}: {wall:.2f} s, peak RSS {rss / 1e6:.0f} MB (load {before} before)")
                w, m = best.get(depth, (wall, rss))
                best[depth] = (min(w, wall), min(m, rss))
        half, full = best[layers // 2], best[layers]
        print(f"\n{a.prompts} prompts of {a.words} words, f32, best of {a.rounds} interleaved rounds\n")
        print("| depth | whole process s | peak RSS MB |")
        print("| --- | ---: | ---: |")
        for depth in (layers // 2, layers):
            print(f"| layer {depth} of {layers} | {best[depth][0]:.2f} | {best[depth][1] / 1e6:.0f} |")
        print(f"\nhalf depth / full depth: time {half[0] / full[0]:.2f}, peak RSS {half[1] / full[1]:.2f}")


def run(cmd):
    """Runs `cmd` to its end; returns (wall s, peak RSS bytes of that process)."""
    t = time.perf_counter()
    null = os.open(os.devnull, os.O_WRONLY)
    pid = os.posix_spawnp(cmd[0], cmd, os.environ,
                          file_actions=[(os.POSIX_SPAWN_DUP2, null, 1), (os.POSIX_SPAWN_DUP2, null, 2)])
    os.close(null)
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)} failed ({status})")
    return time.perf_counter() - t, usage.ru_maxrss * 1024


if __name__ == "__main__":
    main()
