"""What export_torchscript.py and export_onnx.py share: loading a Hugging Face model folder,
the wrapper returning every hidden state (and, with `--sites`, the sites inside blocks), example
inputs, the fidelity check and export.json. The sites' forward hooks (`register_site_hooks`) are
also what sites_reference.py reads transformers through: one definition of each site.

export.json (read by probe's tch and ort backends) holds:
  format ("torchscript" | "onnx"), file (the model file in the folder), architecture
  (config.json model_type), num_layers, hidden_size, vocab_size, dtype (weights' dtype; the
  outputs are always float32), device (traced on), source (MODEL_DIR as given), source_revision
  (sha256 of config.json and each safetensors file's name and header, as the candle backend
  computes its revision), pad_token_id, exporter (script + torch + transformers versions).
"""

import argparse
import contextlib
import functools
import importlib.metadata
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


COPIED = ["config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"]
DTYPES = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}
# probe_core::Site names; every site but resid is read per block (0..L-1).
SITES = ("resid", "resid_mid", "attn_out", "mlp_out", "heads", "router")


def parse_sites(value: str) -> list[str]:
    """`--sites a,b,…` as SITES in their canonical order, resid always first; unknown names are an error."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in SITES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown site {bad[0]!r} (expected some of {', '.join(SITES)})")
    return [s for s in SITES if s == "resid" or s in names]


def parse_args(argv: list[str], doc: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", help="Hugging Face model folder (config.json, *.safetensors, tokenizer.json)")
    p.add_argument("out_dir", help="folder to write the export to (not the model folder)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--sites",
        type=parse_sites,
        default=["resid"],
        help="comma-separated sites to export besides the residual stream: resid_mid, attn_out, mlp_out, "
        "heads, router (each at every block)",
    )
    args = p.parse_args(argv)
    if Path(args.out_dir).resolve() == Path(args.model_dir).resolve():
        p.error("out_dir must not be the model folder (vLLM and others load every file there)")
    return args


def weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        names = set(json.loads(index.read_text())["weight_map"].values())
        return sorted(model_dir / n for n in names)
    single = model_dir / "model.safetensors"
    if single.exists():
        return [single]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise SystemExit(f"{model_dir} has no *.safetensors weights")
    return files


def source_revision(model_dir: Path) -> str:
    """sha256 of config.json, then each weight file's name and safetensors header (as candle)."""
    h = hashlib.sha256((model_dir / "config.json").read_bytes())
    for f in weight_files(model_dir):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            raw = fh.read(8)
            n = int.from_bytes(raw, "little")
            h.update(raw + fh.read(n))
    return h.hexdigest()


def script_hash(kind: str) -> str:
    here = Path(__file__).resolve().parent
    script = "export_torchscript.py" if kind == "torchscript" else "export_onnx.py"
    h = hashlib.sha256((here / "export_common.py").read_bytes())
    h.update((here / script).read_bytes())
    return h.hexdigest()[:16]


def describe(model_dir: Path, kind: str, file: str, dtype: str, device: str, sites: list[str]) -> dict:
    config = json.loads((model_dir / "config.json").read_text())
    text = config.get("text_config", config)
    described = {
        "format": kind,
        "file": file,
        "architecture": config.get("model_type", ""),
        "num_layers": int(text["num_hidden_layers"]),
        "hidden_size": int(text["hidden_size"]),
        "vocab_size": int(text["vocab_size"]),
        "dtype": DTYPES[dtype],
        "device": device,
        "source": str(model_dir),
        "source_revision": source_revision(model_dir),
        "pad_token_id": config.get("pad_token_id"),
        "exporter": f"{kind}-{script_hash(kind)} torch-{_version('torch')} transformers-{_version('transformers')}",
    }
    if sites != ["resid"]:
        heads = int(text["num_attention_heads"])
        described["sites"] = sites
        described["num_heads"] = heads
        described["head_dim"] = int(text.get("head_dim") or int(text["hidden_size"]) // heads)
        described["num_experts"] = int(text.get("num_local_experts") or text.get("num_experts") or 0)
    return described


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def up_to_date(out_dir: Path, wanted: dict) -> bool:
    meta = out_dir / "export.json"
    if not meta.exists() or not (out_dir / wanted["file"]).exists():
        return False
    try:
        return json.loads(meta.read_text()) == wanted
    except ValueError:
        return False


def finish(model_dir: Path, out_dir: Path, wanted: dict) -> None:
    """Copies the tokenizer/config files, then writes export.json last (atomically)."""
    for name in COPIED:
        if (model_dir / name).exists():
            shutil.copyfile(model_dir / name, out_dir / f"{name}.tmp")
            (out_dir / f"{name}.tmp").replace(out_dir / name)
    tmp = out_dir / "export.json.tmp"
    tmp.write_text(json.dumps(wanted, indent=1) + "\n")
    tmp.replace(out_dir / "export.json")


def load_model(model_dir: Path, dtype: str, device: str):
    import torch
    import transformers
    from transformers import AutoModel

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    model = AutoModel.from_pretrained(model_dir, attn_implementation="eager", dtype=getattr(torch, dtype))
    return model.to(device).eval()


def first(x):
    return x[0] if isinstance(x, tuple) else x


def layers_of(model):
    """The decoder blocks of a causal LM or of its base model."""
    paths = ["model.layers", "transformer.h", "gpt_neox.layers", "model.language_model.layers"]
    for path in paths + ["layers", "h", "language_model.layers"]:  # then the base models' own
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            continue
    raise SystemExit(f"no decoder layers found in {type(model).__name__}")


def child(module, names):
    for n in names:
        if hasattr(module, n):
            return getattr(module, n)
    return None


def register_site_hooks(model, found: dict, wanted=SITES):
    """Forward hooks on transformers' own modules putting block b's `site` into
    `found[f"{site}.{b}"]` on every forward pass, for the sites in `wanted`:

    - `resid_mid`: the input of the MLP's norm (Gemma's `pre_feedforward_layernorm`, GPT-2's
      `ln_2`, Llama's `post_attention_layernorm`), OLMo 2's MLP input; none for a parallel residual;
    - `attn_out`: the output of the post-attention norm where the block has one after attention
      (Gemma 2/3, OLMo 2), else the attention module's output;
    - `mlp_out`: the output of `post_feedforward_layernorm` where there is one, else the MLP's;
    - `heads`: the input of the attention's output projection (`o_proj`, `c_proj`, `dense`),
      `[batch, seq, heads·head_dim]`;
    - `router`: the router logits (`mlp.gate`'s first output, `[batch·seq, experts]`).

    `site_value` gives any of them as `[batch, seq, width]`. Returns the hook handles and, per
    site, the blocks that have it.
    """
    cfg = model.config.get_text_config()
    parallel = getattr(cfg, "use_parallel_residual", False)
    handles, have = [], {}

    def output_of(key):
        return lambda module, args, output: found.__setitem__(key, first(output))

    def input_of(key):
        return lambda module, args: found.__setitem__(key, args[0])

    for b, layer in enumerate(layers_of(model)):
        attn = child(layer, ["self_attn", "attn", "attention"])
        mlp = layer.mlp
        sandwich = hasattr(layer, "post_feedforward_layernorm")
        points = {
            "attn_out": (layer.post_attention_layernorm if sandwich else attn, output_of),
            "mlp_out": (layer.post_feedforward_layernorm if sandwich else mlp, output_of),
            "heads": (child(attn, ["o_proj", "c_proj", "dense"]), input_of),
        }
        pre_mlp = child(layer, ["pre_feedforward_layernorm", "ln_2"])
        if pre_mlp is None and not sandwich:
            pre_mlp = layer.post_attention_layernorm
        if not parallel:
            # OLMo 2: the MLP reads the residual stream itself.
            points["resid_mid"] = (pre_mlp if pre_mlp is not None else mlp, input_of)
        gate = getattr(mlp, "gate", None)
        if gate is not None and type(gate).__name__.endswith("Router"):
            points["router"] = (gate, output_of)
        for site, (module, hook) in points.items():
            if site not in wanted:
                continue
            key = f"{site}.{b}"
            if hook is input_of:
                handles.append(module.register_forward_pre_hook(hook(key)))
            else:
                handles.append(module.register_forward_hook(hook(key)))
            have.setdefault(site, []).append(b)
    return handles, have


def site_value(found: dict, site: str, block: int, batch, seq):
    """What the hooks read of `site` at `block` on the last pass, `[batch, seq, width]`."""
    return found[f"{site}.{block}"].reshape(batch, seq, -1)


@functools.cache
def _wrappers():
    """The wrapper modules, defined on first use so that an up-to-date check never imports torch."""
    import torch

    class SiteOutputs(torch.nn.Module):
        """The base model's hidden states and, for each site in `sites` but resid, its value at
        every block, float32 `[batch, seq, width]` (heads side by side, `heads·head_dim`)."""

        def __init__(self, model, sites):
            super().__init__()
            self.model = model
            self.sites = [s for s in sites if s != "resid"]
            found = {}
            # A function, not the dict itself: torch.export puts copies back in place of the
            # dict (and list) attributes of the module it exports, which the hooks never see.
            self.found = lambda: found
            blocks = len(layers_of(model))
            self.hooks, have = register_site_hooks(model, found, self.sites)
            self.blocks = blocks
            for site in self.sites:
                lacking = sorted(set(range(blocks)) - set(have.get(site, [])))
                if lacking:
                    for h in self.hooks:
                        h.remove()
                    raise SystemExit(
                        f"--sites {site}: {type(model).__name__} has no {site} at blocks {lacking} "
                        f"(resid_mid needs a sequential residual, router a mixture of experts at every block)"
                    )

        def outputs(self, input_ids, attention_mask):
            found = self.found()
            found.clear()
            hidden = _hidden_states(self.model, input_ids, attention_mask)
            batch, seq = input_ids.shape[0], input_ids.shape[1]
            per_site = [
                [site_value(found, site, b, batch, seq).float() for b in range(self.blocks)] for site in self.sites
            ]
            return hidden, per_site

    class StackedHiddenStates(SiteOutputs):
        """Every hidden state, float32, stacked `[L + 1, batch, seq, hidden]`; with sites, a tuple
        of that and each site's blocks stacked `[L, batch, seq, width]`."""

        def forward(self, input_ids, attention_mask):
            hidden, per_site = self.outputs(input_ids, attention_mask)
            if not per_site:
                return torch.stack(hidden)
            return (torch.stack(hidden), *[torch.stack(blocks) for blocks in per_site])

    class HiddenStateTuple(SiteOutputs):
        """Every hidden state, float32, as a tuple (one ONNX output each), then each site's blocks."""

        def forward(self, input_ids, attention_mask):
            hidden, per_site = self.outputs(input_ids, attention_mask)
            return tuple(hidden) + tuple(t for blocks in per_site for t in blocks)

    return StackedHiddenStates, HiddenStateTuple


def stacked_hidden_states(model, sites=("resid",)):
    """`model` wrapped to return every hidden state stacked (for TorchScript), then each site's."""
    return _wrappers()[0](model, sites)


def hidden_state_tuple(model, sites=("resid",)):
    """`model` wrapped to return every hidden state as its own output (for ONNX), then each site's."""
    return _wrappers()[1](model, sites)


def output_names(num_layers: int, sites) -> list[str]:
    """The ONNX outputs: `hidden_state_<layer>` for 0..=L, then `<site>_<block>` for 0..L per site."""
    names = [f"hidden_state_{i}" for i in range(num_layers + 1)]
    return names + [f"{site}_{b}" for site in sites if site != "resid" for b in range(num_layers)]


def _hidden_states(model, input_ids, attention_mask):
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        output_hidden_states=True,
        use_cache=False,
        return_dict=True,
    )
    return [h.float() for h in out.hidden_states]


def example_inputs(config, device: str, batch: int, seq: int, seed: int = 0):
    """Random token ids with right padding on the last row (so the padding-mask path is traced)."""
    import torch


    g = torch.Generator().manual_seed(seed)
    vocab = int(getattr(config, "vocab_size", None) or config.get_text_config().vocab_size)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[-1, seq // 2 :] = 0
    return ids.to(device), mask.to(device)


def check_close(got, want, mask, what: str, tol: float = 1e-4) -> float:
    """Max relative error over real positions, per output (each `[..., batch, seq, width]`: the
    stacked hidden states, a site's blocks, or one of them); fails above `tol`."""
    import torch

    got = list(got) if isinstance(got, (tuple, list)) else [got]
    want = list(want) if isinstance(want, (tuple, list)) else [want]
    if len(got) != len(want):
        raise SystemExit(f"{what} export returned {len(got)} outputs, expected {len(want)}")
    real = mask.bool().cpu()
    err = 0.0
    for g, w in zip(got, want):
        g, w = torch.as_tensor(g).float().cpu(), w.float().cpu()
        g = g.reshape(-1, *g.shape[-3:])[:, real]
        w = w.reshape(-1, *w.shape[-3:])[:, real]
        err = max(err, float((g - w).abs().max() / w.abs().max().clamp_min(1e-12)))
    if not err <= tol:
        raise SystemExit(f"{what} export disagrees with the eager model: max relative error {err:.3g}")
    print(f"{what} export matches the eager model on a new shape: max relative error {err:.3g}")
    return err


@contextlib.contextmanager
def quiet_tracer_warnings():
    """The tracer warns about Python values it records as constants; the check after tracing is what counts."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
