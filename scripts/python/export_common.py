"""What export_torchscript.py and export_onnx.py share: loading a Hugging Face model folder,
the wrapper returning every hidden state, example inputs, the fidelity check and export.json.

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


def parse_args(argv: list[str], doc: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", help="Hugging Face model folder (config.json, *.safetensors, tokenizer.json)")
    p.add_argument("out_dir", help="folder to write the export to (not the model folder)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
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


def describe(model_dir: Path, kind: str, file: str, dtype: str, device: str) -> dict:
    config = json.loads((model_dir / "config.json").read_text())
    text = config.get("text_config", config)
    return {
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


@functools.cache
def _wrappers():
    """The wrapper modules, defined on first use so that an up-to-date check never imports torch."""
    import torch

    class StackedHiddenStates(torch.nn.Module):
        """The base model returning all hidden states, float32, stacked `[L + 1, batch, seq, hidden]`."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return torch.stack(_hidden_states(self.model, input_ids, attention_mask))

    class HiddenStateTuple(torch.nn.Module):
        """The base model returning all hidden states, float32, as a tuple (one ONNX output each)."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return tuple(_hidden_states(self.model, input_ids, attention_mask))

    return StackedHiddenStates, HiddenStateTuple


def stacked_hidden_states(model):
    """`model` wrapped to return every hidden state stacked (for TorchScript)."""
    return _wrappers()[0](model)


def hidden_state_tuple(model):
    """`model` wrapped to return every hidden state as its own output (for ONNX)."""
    return _wrappers()[1](model)


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
    """Max relative error over real positions of every hidden state; fails above `tol`."""
    import torch


    if isinstance(got, (tuple, list)):
        got = torch.stack([torch.as_tensor(g) for g in got])
    if isinstance(want, (tuple, list)):
        want = torch.stack(list(want))
    real = mask.bool().cpu()
    got, want = got.float().cpu()[:, real], want.float().cpu()[:, real]
    err = float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))
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
