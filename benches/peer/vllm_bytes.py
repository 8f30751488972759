#!/usr/bin/env python3
"""What a vLLM extraction server writes and how fast (issue 29): stock layout vs probe's reduction.

    vllm_bytes.py --url URL --hidden-states DIR --model M [--plain-url URL] [--prompts 32]
                  [--tokens 400] [--layers 1,4] [--in-flight 8] [--rounds 3]

URL serves M with probe's connector keeping every layer (scripts/start-vllm with
PROBE_VLLM_HIDDEN_STATES_DIR=DIR, or the launcher's GPU command); --plain-url, if given, serves M
without any extraction flag (the ceiling: plain prefill). Three modes, each `--prompts` one-token
requests of `--tokens` random token ids (new ones for every mode and round, so no prefix cache
hits), `--in-flight` at a time, interleaved over `--rounds`:

- stock: no `kv_transfer_params["probe"]`: the server writes every kept layer of every token (the
  layout of vLLM's ExampleHiddenStatesConnector);
- reduced: probe's request for `--layers` at the last token (`[1, layers, hidden]`, f32);
- plain: the same requests to the plain server, nothing written.

Each written file is waited for (its lock), measured and deleted, as a client would. Prints one
markdown row per mode: bytes written per input, prompt tokens/s (median round), time per input.
"""

import argparse
import fcntl
import json
import os
import random
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url + "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def one(url: str, model: str, ids: list[int], probe: dict | None, shared: str | None) -> int:
    body = {"model": model, "prompt": ids, "max_tokens": 1, "temperature": 0.0, "add_special_tokens": False}
    if probe is not None:
        body["kv_transfer_params"] = {"probe": probe}
    kv = post(url, body).get("kv_transfer_params") or {}
    path = kv.get("hidden_states_path")
    if path is None:
        return 0
    if shared:
        path = os.path.join(shared, os.path.basename(path))
    with open(path + ".lock") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        size = os.path.getsize(path) if os.path.exists(path) else 0
    for p in (path, path + ".lock"):
        try:
            os.remove(p)
        except OSError:
            pass
    return size


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--plain-url")
    ap.add_argument("--model", required=True)
    ap.add_argument("--hidden-states", help="the server's folder as seen here (default: the path it answers)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=400)
    ap.add_argument("--layers", default="1,4")
    ap.add_argument("--in-flight", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--vocab", type=int, help="token ids drawn below it (default: the model's config.json)")
    a = ap.parse_args()
    if a.vocab is None:
        with open(os.path.join(a.model, "config.json")) as f:
            c = json.load(f)
        a.vocab = (c.get("text_config") or c)["vocab_size"]
    rng = random.Random(0)

    def fresh() -> list[list[int]]:
        # New random prompts for every mode and round: the servers' prefix caches never hit.
        return [[rng.randrange(3, a.vocab) for _ in range(a.tokens)] for _ in range(a.prompts)]

    layers = [int(x) for x in a.layers.split(",")]
    modes = {
        "stock (every layer, every token)": (a.url, None),
        f"reduced (layers {a.layers}, last token)": (
            a.url,
            {"layers": layers, "spans": None, "dtype": "float32"},
        ),
    }
    if a.plain_url:
        modes["plain prefill (no extraction)"] = (a.plain_url, None)
    times: dict[str, list[float]] = {m: [] for m in modes}
    sizes: dict[str, list[int]] = {m: [] for m in modes}
    with ThreadPoolExecutor(a.in_flight) as pool:
        for _ in range(a.rounds):
            for mode, (url, probe) in modes.items():
                def job(ids, url=url, probe=probe):
                    p = None if probe is None else dict(probe, spans=[[len(ids) - 1, len(ids)]])
                    return one(url, a.model, ids, p, a.hidden_states)
                t0 = time.perf_counter()
                got = list(pool.map(job, fresh()))
                times[mode].append(time.perf_counter() - t0)
                sizes[mode].extend(got)
    print(f"| mode | bytes written per input | prompt tokens/s | ms per input |  ({a.prompts} x {a.tokens} tokens, "
          f"{a.in_flight} in flight, median of {a.rounds})")
    print("| --- | ---: | ---: | ---: |")
    for mode in modes:
        t = statistics.median(times[mode])
        b = statistics.mean(sizes[mode]) if sizes[mode] else 0
        print(f"| {mode} | {b:,.0f} | {a.prompts * a.tokens / t:,.0f} | {1000 * t / a.prompts:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
