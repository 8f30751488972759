"""Long prompts, whole processes (issue 26): extraction of every hidden state of the same distinct
token-id prompts by transformers (torch CPU, its default SDPA attention, right-padded batches with
an attention mask) and by probe's candle backend (probe-extract-bench --ids), each engine a whole
process (start, imports, load, one pass over the prompts, exit), interleaved round by round.

    long.py --model DIR --probe-bin target/release/probe-extract-bench [--also NAME=BIN ...]
            [--seq 1900 --prompts 8 --batch 4 --threads 2 --rounds 1] [--prefix P]

The prompts are `--prompts` distinct random id sequences of `0.95 x seq` to `seq` tokens (so a
batch is ragged and padded); with `--prefix P` (issue 28, a templated set) each starts with the
same P random ids (one instruction) and goes on with its own item of `0.8 x seq` to `seq` ids. Prints per engine the whole-process wall time, the pass alone,
prompt tokens/s over the whole process, peak RSS (the process's ru_maxrss, from wait4) and the
ratio to transformers (each process starts with the model's files in the page cache); `--also` adds more probe binaries (e.g. an older build) to the same rounds.
Usage: see benches/peer/run.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

HF_SIDE = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
from transformers import AutoModelForCausalLM
model_dir, ids_file, batch, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
prompts = json.load(open(ids_file))
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
load = time.perf_counter() - t0
t = time.perf_counter()
keep = []
with torch.inference_mode():
    for i in range(0, len(prompts), batch):
        rows = prompts[i:i + batch]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        last = torch.tensor([len(r) - 1 for r in rows])
        keep.append([h[torch.arange(len(rows)), last].clone() for h in out.hidden_states])
secs = time.perf_counter() - t
print(json.dumps({"tokens": sum(len(r) for r in prompts), "pass_s": secs, "load_s": load}))
"""


def run_measured(cmd, env=None):
    """Runs `cmd`; returns (wall s, peak RSS bytes of that process, its last JSON line)."""
    out_file = tempfile.TemporaryFile(mode="w+")
    err_file = tempfile.TemporaryFile(mode="w+")
    t = time.perf_counter()
    pid = os.posix_spawnp(cmd[0], cmd, env if env is not None else os.environ,
                          file_actions=[(os.POSIX_SPAWN_DUP2, out_file.fileno(), 1),
                                        (os.POSIX_SPAWN_DUP2, err_file.fileno(), 2)])
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t
    out_file.seek(0)
    err_file.seek(0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{cmd[0]} failed ({status}): {err_file.read()[-2000:]}")
    lines = [line for line in out_file.read().splitlines() if line.startswith("{")]
    return wall, usage.ru_maxrss * 1024, json.loads(lines[-1])


def warm(model_dir, back_gib=0):
    """Puts every engine in the same state before it starts: the model's files in the page cache
    (else the one that runs after transformers reads its weights from disk), and with `back_gib`
    > 0 that many GiB of free memory faulted in and freed again (in a child process). On a VM
    that hands free memory back to its host (free page reporting, as on this project's
    Firecracker machines), fresh memory faults in slowly once the host has taken it back, as it
    does after a large process exits. With transparent huge pages (mimalloc's default), probe's
    generate bench took 13.5-13.8 s right after transformers (4.4-4.8 s of system time) and
    10.0-10.7 s right after this step; probe's binaries now build mimalloc without them, which
    removed that penalty, so the step is off by default. It costs transformers (~1-2 s of system
    time beside it, and its 1,900-token pass ran 30 s instead of 22 s)."""
    for name in os.listdir(model_dir):
        path = os.path.join(model_dir, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass
    if back_gib == 0:
        return
    with open("/proc/meminfo") as f:
        avail = next(int(line.split()[1]) << 10 for line in f if line.startswith("MemAvailable:"))
    n = min(back_gib << 30, int(0.6 * avail)) & ~((1 << 21) - 1)
    # In a child: a forked process inherits its parent's peak RSS, which would then count in
    # every engine's ru_maxrss.
    subprocess.run([sys.executable, "-c", BACK_MEMORY, str(n)], check=True)


BACK_MEMORY = r"""
import mmap, sys
n = int(sys.argv[1])
m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
if hasattr(mmap, "MADV_HUGEPAGE"):
    m.madvise(mmap.MADV_HUGEPAGE)
for i in range(0, n, 1 << 12):
    m[i] = 1
"""


def load_avg():
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--probe-bin", required=True)
    p.add_argument("--also", action="append", default=[], help="NAME=BIN: another probe-extract-bench")
    p.add_argument("--seq", type=int, default=1900)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--prefix", type=int, default=0, help="ids every prompt starts with (a template)")
    p.add_argument("--back-gib", type=int, default=0, help="GiB of memory faulted in before each engine (see warm(); 0: none)")
    a = p.parse_args()
    rng = random.Random(26)
    with open(os.path.join(a.model, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    shortest = int((0.8 if a.prefix else 0.95) * a.seq)
    prefix = [rng.randrange(3, vocab) for _ in range(a.prefix)]
    ids = [prefix + [rng.randrange(3, vocab) for _ in range(rng.randint(shortest, a.seq))] for _ in range(a.prompts)]
    tokens = sum(len(r) for r in ids)
    tmp = tempfile.mkdtemp(prefix="probe-long-")
    ids_file = os.path.join(tmp, "ids.json")
    with open(ids_file, "w") as f:
        json.dump(ids, f)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    engines = [("transformers", [sys.executable, "-c", HF_SIDE, a.model, ids_file, str(a.batch), str(a.threads)])]
    for name, binary in [("probe candle", a.probe_bin)] + [tuple(x.split("=", 1)) for x in a.also]:
        engines.append((name, [binary, "--model", a.model, "--ids", ids_file, "--batch", str(a.batch),
                               "--layers", "all", "--threads", str(a.threads)]))
    results = {name: [] for name, _ in engines}
    for r in range(a.rounds):
        for name, cmd in engines:
            warm(a.model, a.back_gib)
            before = load_avg()
            wall, rss, res = run_measured(cmd, env)
            results[name].append((wall, rss, res["pass_s"], before, load_avg()))
            print(f"round {r + 1} {name}: {wall:.1f} s whole, {res['pass_s']:.1f} s pass, {rss / 1e9:.2f} GB peak RSS"
                  f" (load {before} -> {load_avg()})", file=sys.stderr)
    shared = f", the first {a.prefix} the same in every prompt" if a.prefix else ""
    print(f"{a.prompts} prompts of {min(map(len, ids))}-{max(map(len, ids))} tokens{shared} ({tokens} in all), batch {a.batch},"
          f" every hidden state, {a.threads} threads, best of {a.rounds} interleaved rounds (whole processes)")
    print()
    print("| engine | whole process s | pass s | tokens/s (whole process) | peak RSS GB | vs transformers (whole process) | load (1/5/15 min) before, after |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    base = min(w for w, *_ in results["transformers"])
    for name, _ in engines:
        wall, rss, pass_s, before, after = min(results[name])
        print(f"| {name} | {wall:.1f} | {pass_s:.1f} | {tokens / wall:.0f} | {rss / 1e9:.2f} | {base / wall:.2f}x | {before}; {after} |")


if __name__ == "__main__":
    main()
