#!/usr/bin/env python3
"""Exports a Hugging Face model folder to ONNX for probe's `ort` backend.

    export_onnx.py MODEL_DIR OUT_DIR [--dtype float32|bfloat16|float16] [--device cpu|cuda]
                                     [--exporter dynamo|legacy]
                                     [--sites resid,resid_mid,attn_out,mlp_out,heads,router]

writes OUT_DIR/model.onnx (plus model.onnx.data for weights stored as external data): the base
model (no LM head) with inputs `input_ids` and `attention_mask` (int64 [batch, seq]) and one
float32 output per hidden state, `hidden_state_0` .. `hidden_state_L` ([batch, seq, hidden]),
in transformers' `output_hidden_states` numbering (0 = embeddings, L = after the final norm).
Batch and sequence axes are dynamic. With `--sites`, more float32 outputs follow, `<site>_<block>`
([batch, seq, width]; width: hidden, heads·head_dim for heads, experts for router) for each site
other than resid and each block 0..L-1, read by the forward hooks of
export_common.register_site_hooks (sites_reference.py's). Next to it: the tokenizer and config files copied from
MODEL_DIR and export.json (see export_common).

`--exporter dynamo` (the default) uses torch.export + onnxscript, the exporter torch supports;
`legacy` uses the TorchScript-based exporter (about 20× faster to export, deprecated by torch).
The export is run by ONNX Runtime on a batch of another shape and checked against the eager
model before it is kept. Skips all work when OUT_DIR/export.json already describes this export
(idempotent); files are written under temporary names and renamed, export.json last.
"""

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export_common as common  # noqa: E402


def export(model_dir: Path, out_dir: Path, dtype: str, device: str, exporter: str, sites: list[str]) -> Path:
    wanted = common.describe(model_dir, "onnx", "model.onnx", dtype, device, sites)
    wanted["exporter"] += f" {exporter}"
    if common.up_to_date(out_dir, wanted):
        print(f"{out_dir} is up to date")
        return out_dir / "model.onnx"
    import torch

    model = common.load_model(model_dir, dtype, device)
    wrapper = common.hidden_state_tuple(model, sites).eval()
    names = common.output_names(wanted["num_layers"], sites)
    ids, mask = common.example_inputs(model.config, device, batch=2, seq=16)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / ".export-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    if exporter == "dynamo":
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
        dims = {0: batch, 1: seq}
        kwargs = dict(dynamo=True, dynamic_shapes={"input_ids": dims, "attention_mask": dims}, external_data=True)
    else:
        axes = {name: {0: "batch", 1: "sequence"} for name in ["input_ids", "attention_mask", *names]}
        kwargs = dict(dynamo=False, dynamic_axes=axes, opset_version=17)
    with torch.no_grad(), common.quiet_tracer_warnings():
        torch.onnx.export(
            wrapper,
            (ids, mask),
            str(tmp / "model.onnx"),
            input_names=["input_ids", "attention_mask"],
            output_names=names,
            **kwargs,
        )
    check(tmp / "model.onnx", wrapper, model.config, device, names)
    for f in sorted(tmp.iterdir(), key=lambda p: p.name == "model.onnx"):  # model.onnx last
        f.replace(out_dir / f.name)
    tmp.rmdir()
    common.finish(model_dir, out_dir, wanted)
    print(f"wrote {out_dir / 'model.onnx'} ({len(names)} outputs; sites {', '.join(sites)})")
    return out_dir / "model.onnx"


def check(path: Path, wrapper, config, device: str, names: list[str]) -> None:
    import onnxruntime
    import torch

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got_names = [o.name for o in session.get_outputs()]
    if got_names != names:
        raise SystemExit(f"ONNX outputs are {got_names}, expected {names}")
    ids, mask = common.example_inputs(config, device, batch=3, seq=29, seed=1)
    got = session.run(names, {"input_ids": ids.cpu().numpy(), "attention_mask": mask.cpu().numpy()})
    with torch.no_grad():
        want = wrapper(ids, mask)
    common.check_close([torch.from_numpy(g) for g in got], want, mask, "onnx")


def main(argv: list[str]) -> int:
    exporter = "dynamo"
    if "--exporter" in argv:
        i = argv.index("--exporter")
        exporter = argv[i + 1] if i + 1 < len(argv) else ""
        argv = argv[:i] + argv[i + 2 :]
    if exporter not in ("dynamo", "legacy"):
        print(f"--exporter must be dynamo or legacy, not {exporter!r}", file=sys.stderr)
        return 2
    args = common.parse_args(argv, __doc__)
    export(Path(args.model_dir), Path(args.out_dir), args.dtype, args.device, exporter, args.sites)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
