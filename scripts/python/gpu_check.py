#!/usr/bin/env python3
"""The transformers side of scripts/gpu-check: references on the same device as probe, and the
inputs and models it runs on. On the GPU machine this runs under its python3 (torch + transformers
of its image); with `gpu-check --dry`, under the test environment on the CPU.

    gpu_check.py fidelity   --fixtures F --probe-dir D --device DEV --table OUT.md
    gpu_check.py generation --fixtures F --probe-dir D --device DEV
    gpu_check.py inputs     --tokenizer DIR --out DIR --hidden H --layers L --heads N
                            --kv-heads K --intermediate I --device DEV
                            --long N T FILE.jsonl --sweep N T FILE.jsonl
                            --very-long N T FILE.jsonl
    gpu_check.py long       --model DIR --inputs FILE.jsonl --probe FILE.safetensors --dtype D --device DEV
    gpu_check.py throughput --model DIR --inputs FILE.jsonl --batch B --iters K --device DEV
    gpu_check.py hog        --leave-gib G        (holds all but G GiB of GPU 0 until killed)
    gpu_check.py same       A.safetensors B.safetensors --tol T

Probe's outputs are read from D as written by `probe extract` (`layer.<L>`, [n, hidden]) and
`probe generate` (JSON lines with `completion_token_ids`). Every check prints one line per
result and exits 1 when any fails. The models, prompts and greedy settings come from
make_fixtures.py (imported), so both sides see what the fixture tests see.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (ARCHS, PROMPTS, model_class, corpus, MAX_NEW_TOKENS)

# f32 on the same device: the fixture tests' bound on the CPU.
F32_BOUND = 1e-4
# bf16: the CPU fixture test's bound, or twice transformers' own bf16 error where that is larger.
BF16_BOUND = 5e-2


def rel_err(a, b) -> float:
    """Max |a - b| over max |b| (candle_fidelity.rs's measure), of one layer's [n, hidden]."""
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


def load_hf(arch: str, folder: Path, dtype, device: str):
    import torch

    cls = mf.model_class(arch)
    model = cls.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    return model.to(device=device, dtype=dtype).eval()


def token_ids(meta: dict, device: str) -> list:
    """The reference's token ids of each prompt, as [1, n] tensors on `device`. They, not a
    tokenizer loaded here, are what probe sees: the fixture tests check probe's tokenisation equals
    them, whereas AutoTokenizer picks a class by model type (Qwen2Tokenizer for qwen2, which splits
    digits the fixtures' tokenizer.json keeps together)."""
    import torch

    return [torch.tensor([ids], device=device) for ids in meta["token_ids"]]


def hidden_states(model, meta: dict, device: str) -> dict:
    """`last.<L>` and `mean.<L>` of every layer, unbatched, each prompt as if it ran alone (as
    make_fixtures.reference)."""
    import torch

    out: dict[str, list] = {}
    with torch.no_grad():
        for ids in token_ids(meta, device):
            mf.fresh_rope(model)
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states
            for layer, h in enumerate(hs):
                out.setdefault(f"last.{layer}", []).append(h[0, -1].float().cpu())
                out.setdefault(f"mean.{layer}", []).append(h[0].float().mean(dim=0).cpu())
    return {k: torch.stack(v) for k, v in out.items()}


def probe_file(path: Path) -> dict:
    from safetensors.torch import load_file

    return {int(k.split(".")[1]): v for k, v in load_file(str(path)).items() if k.startswith("layer.")}


def fidelity(args) -> int:
    """Per-layer error of probe's f32 and bf16 extraction against transformers f32 on `device`."""
    import torch

    fx, d = Path(args.fixtures), Path(args.probe_dir)
    rows, failed = [], 0
    for arch in mf.ARCHS:
        if not (d / f"{arch}.f32.last.safetensors").exists():
            continue
        meta = json.loads((fx / "reference" / arch / "reference.json").read_text())
        model = load_hf(arch, fx / "models" / arch, torch.float32, args.device)
        ref = hidden_states(model, meta, args.device)
        hf16 = hidden_states(model.to(torch.bfloat16), meta, args.device)
        del model
        for dtype in ("f32", "bf16"):
            for pos in ("last", "mean"):
                path = d / f"{arch}.{dtype}.{pos}.safetensors"
                if not path.exists():
                    print(f"FAIL {arch} {dtype} {pos}: probe wrote no {path.name}")
                    failed += 1
                    continue
                got = probe_file(path)
                for layer in sorted(got):
                    r = ref[f"{pos}.{layer}"]
                    err = rel_err(got[layer], r)
                    hf = rel_err(hf16[f"{pos}.{layer}"], r)
                    bound = F32_BOUND if dtype == "f32" else max(BF16_BOUND, 2 * hf)
                    ok = err <= bound
                    failed += not ok
                    rows.append((arch, dtype, pos, layer, err, hf, bound, ok))
        worst = {dt: max((r[4] for r in rows if r[0] == arch and r[1] == dt), default=float("nan")) for dt in ("f32", "bf16")}
        bad = [r for r in rows if r[0] == arch and not r[7]]
        print(f"{'ok  ' if not bad else 'FAIL'} {arch}: worst f32 {worst['f32']:.2e}, bf16 {worst['bf16']:.2e}")
    lines = [
        f"| arch | dtype | positions | layer | probe vs transformers f32 ({args.device}) | transformers bf16 vs f32 | bound | ok |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {a} | {dt} | {p} | {l} | {e:.2e} | {h:.2e} | {b:.0e} | {'yes' if ok else 'NO'} |" for a, dt, p, l, e, h, b, ok in rows]
    Path(args.table).write_text("\n".join(lines) + "\n")
    if not rows:
        print("FAIL: no probe output found in", d)
        return 1
    print(f"{len(rows)} layer rows, {failed} over their bound; table in {args.table}")
    return 1 if failed else 0


def generation(args) -> int:
    """probe generate's greedy ids against transformers' greedy generate on `device` (f32)."""
    import torch

    fx, d = Path(args.fixtures), Path(args.probe_dir)
    failed, seen = 0, 0
    for arch in mf.ARCHS:
        path = d / f"{arch}.gen.jsonl"
        if not path.exists():
            continue
        seen += 1
        meta = json.loads((fx / "reference" / arch / "reference.json").read_text())
        model = load_hf(arch, fx / "models" / arch, torch.float32, args.device)
        got = [json.loads(line)["completion_token_ids"] for line in path.read_text().splitlines() if line.strip()]
        want = []
        with torch.no_grad():
            for ids in token_ids(meta, args.device):
                mf.fresh_rope(model)
                gen = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=False,
                    max_new_tokens=meta["max_new_tokens"],
                    pad_token_id=meta["pad_token_id"],
                    eos_token_id=meta["eos_token_id"],
                )
                new = gen[0, ids.shape[1]:].tolist()
                if meta["eos_token_id"] in new:
                    new = new[: new.index(meta["eos_token_id"]) + 1]
                want.append(new)
        same = sum(g == w for g, w in zip(got, want)) if len(got) == len(want) else 0
        cpu = sum(w == r for w, r in zip(want, meta["generated_ids"]))
        ok = same == len(want)
        failed += not ok
        print(
            f"{'ok  ' if ok else 'FAIL'} {arch}: {same}/{len(want)} prompts' greedy ids equal transformers on "
            f"{args.device}; transformers {args.device} = its CPU reference on {cpu}/{len(want)}"
        )
    if not seen:
        print("FAIL: no probe generate output found in", d)
        return 1
    return 1 if failed else 0


def make_llama(args):
    """A random Llama with the fixtures' tokenizer, saved in bf16 (made on `device`: fast)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=8192,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device(args.device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(args.out, safe_serialization=True)
    tok.save_pretrained(args.out)
    n = sum(p.numel() for p in model.parameters())
    print(f"random Llama: {n / 1e9:.2f} B parameters (hidden {args.hidden}, {args.layers} layers) in {args.out}")


def texts(tokenizer: str, count: int, tokens: int, path: str, labels: bool):
    """`count` texts of exactly `tokens` tokens (BOS included) from make_fixtures' corpus, as JSON
    lines (with a label, alternating, for the sweep)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer)
    sentences = mf.corpus()
    out, i = [], 0
    for n in range(count):
        ids: list[int] = []
        while len(ids) < tokens + 8:
            ids += tok(" " + sentences[i % len(sentences)], add_special_tokens=False).input_ids
            i += 1
        # Cut, decode, re-encode until the count is exact (a cut can re-merge at the edge).
        cut = tokens - 1
        for _ in range(16):
            text = tok.decode(ids[:cut]).strip()
            have = len(tok(text).input_ids)
            if have == tokens:
                break
            cut += tokens - have
        line = {"id": f"t{n}", "text": text}
        if labels:
            line["label"] = ("even", "odd")[n % 2]
        out.append(json.dumps(line))
    Path(path).write_text("\n".join(out) + "\n")
    lengths = sorted(len(tok(json.loads(line)["text"]).input_ids) for line in out)
    print(f"{count} texts of {lengths[0]}..{lengths[-1]} tokens in {path}")


def inputs(args) -> int:
    """The random Llama and the texts, in one process (one import of transformers)."""
    make_llama(args)
    texts(args.tokenizer, int(args.long[0]), int(args.long[1]), args.long[2], labels=False)
    texts(args.tokenizer, int(args.sweep[0]), int(args.sweep[1]), args.sweep[2], labels=True)
    texts(args.tokenizer, int(args.very_long[0]), int(args.very_long[1]), args.very_long[2], labels=False)
    return 0


def long(args) -> int:
    """probe's last-token hidden states of long texts (`probe extract` in `dtype`) against
    transformers in f32 (SDPA, each text alone) on `device`; bf16 within the fidelity step's bound."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(args.model)
    model = LlamaForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(args.device).eval()
    rows = [json.loads(line)["text"] for line in Path(args.inputs).read_text().splitlines() if line.strip()]
    ids = [tok(text, return_tensors="pt").input_ids.to(args.device) for text in rows]
    lengths = [i.shape[1] for i in ids]

    def last_tokens(m) -> dict[int, list]:
        out: dict[int, list] = {}
        with torch.no_grad():
            for i in ids:
                for layer, h in enumerate(m(input_ids=i, output_hidden_states=True).hidden_states):
                    out.setdefault(layer, []).append(h[0, -1].float().cpu())
        return out

    ref = last_tokens(model)
    ref16 = last_tokens(model.to(torch.bfloat16)) if args.dtype == "bf16" else {}
    got = probe_file(Path(args.probe))
    failed, worst = 0, 0.0
    for layer in sorted(got):
        r = torch.stack(ref[layer])
        err = rel_err(got[layer], r)
        bound = F32_BOUND
        if args.dtype == "bf16":
            bound = max(BF16_BOUND, 2 * rel_err(torch.stack(ref16[layer]), r))
        failed += err > bound
        worst = max(worst, err)
        print(f"{'ok  ' if err <= bound else 'FAIL'} layer {layer}: {err:.2e} (bound {bound:.0e})")
    peak = f", transformers' peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if args.device.startswith("cuda") else ""
    print(f"long prompts {lengths} tokens, probe {args.dtype}: worst {worst:.2e} over {len(got)} layers{peak}")
    return 1 if failed or not got else 0


def throughput(args) -> int:
    """transformers forward with output_hidden_states, every layer reduced at the last token."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(args.model)
    model = LlamaForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16).to(args.device).eval()
    rows = [json.loads(line)["text"] for line in Path(args.inputs).read_text().splitlines() if line.strip()]
    batch = tok(rows[: args.batch], return_tensors="pt", padding=True).to(args.device)
    tokens = int(batch.attention_mask.sum())
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def step():
        hs = model.model(**batch, output_hidden_states=True).hidden_states
        return torch.stack([h[:, -1] for h in hs]).float().cpu()

    with torch.no_grad():
        step()
        sync()
        t0 = time.perf_counter()
        for _ in range(args.iters):
            step()
        sync()
        dt = time.perf_counter() - t0
    rate = tokens * args.iters / dt
    print(json.dumps({"transformers_tokens_per_s": rate, "batch": args.batch, "tokens_per_batch": tokens, "iters": args.iters, "seconds": dt}))
    return 0


def hog(args) -> int:
    """Holds all but `leave_gib` GiB of GPU 0 (plain allocations) until killed."""
    import torch

    free, total = torch.cuda.mem_get_info(0)
    take = free - int(args.leave_gib * (1 << 30))
    held = torch.empty(max(take, 0), dtype=torch.uint8, device="cuda:0")
    free2, _ = torch.cuda.mem_get_info(0)
    print(f"holding {held.numel() / (1 << 30):.1f} GiB of {total / (1 << 30):.1f}; {free2 / (1 << 30):.2f} GiB free", flush=True)
    while True:
        time.sleep(3600)


def same(args) -> int:
    """Two probe extract files hold the same layers within `tol` (rel_err per layer)."""
    a, b = probe_file(Path(args.a)), probe_file(Path(args.b))
    if sorted(a) != sorted(b):
        print(f"FAIL: layers differ: {sorted(a)} vs {sorted(b)}")
        return 1
    worst = max(rel_err(a[k], b[k]) for k in a)
    ok = worst <= args.tol
    print(f"{'ok  ' if ok else 'FAIL'} {len(a)} layers, worst relative difference {worst:.2e} (bound {args.tol:.0e})")
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fidelity")
    g = sub.add_parser("generation")
    for s in (f, g):
        s.add_argument("--fixtures", required=True)
        s.add_argument("--probe-dir", required=True)
        s.add_argument("--device", default="cuda")
    f.add_argument("--table", required=True)
    m = sub.add_parser("inputs")
    m.add_argument("--tokenizer", required=True)
    m.add_argument("--out", required=True)
    for k in ("hidden", "layers", "heads", "kv-heads", "intermediate"):
        m.add_argument(f"--{k}", type=int, required=True)
    m.add_argument("--device", default="cuda")
    for k in ("long", "sweep", "very-long"):
        m.add_argument(f"--{k}", nargs=3, metavar=("N", "TOKENS", "FILE"), required=True)
    lp = sub.add_parser("long")
    lp.add_argument("--model", required=True)
    lp.add_argument("--inputs", required=True)
    lp.add_argument("--probe", required=True)
    lp.add_argument("--dtype", default="bf16")
    lp.add_argument("--device", default="cuda")
    r = sub.add_parser("throughput")
    r.add_argument("--model", required=True)
    r.add_argument("--inputs", required=True)
    r.add_argument("--batch", type=int, default=16)
    r.add_argument("--iters", type=int, default=8)
    r.add_argument("--device", default="cuda")
    h = sub.add_parser("hog")
    h.add_argument("--leave-gib", type=float, required=True)
    s = sub.add_parser("same")
    s.add_argument("a")
    s.add_argument("b")
    s.add_argument("--tol", type=float, required=True)
    args = p.parse_args()
    run = {"fidelity": fidelity, "generation": generation, "inputs": inputs,
           "throughput": throughput, "hog": hog, "same": same, "long": long}[args.cmd]
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
