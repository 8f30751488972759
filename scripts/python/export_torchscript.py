#!/usr/bin/env python3
"""Exports a Hugging Face model folder as a TorchScript module for probe's `tch` backend.

    export_torchscript.py MODEL_DIR OUT_DIR [--dtype float32|bfloat16|float16] [--device cpu|cuda]
                                            [--sites resid,resid_mid,attn_out,mlp_out,heads,router]

writes OUT_DIR/model.pt: `torch.jit.trace` of the base model (no LM head), called as
`module(input_ids: int64 [batch, seq], attention_mask: int64 [batch, seq])` and returning every
hidden state stacked as float32 `[num_layers + 1, batch, seq, hidden]` in transformers'
`output_hidden_states` numbering (0 = embeddings, L = after the final norm). Batch and sequence
lengths are dynamic. With `--sites`, it returns a tuple: that tensor, then for each site other
than resid (in export.json's `sites` order) its value at every block stacked as float32
`[num_layers, batch, seq, width]` (width: hidden, heads·head_dim for heads, experts for router),
read by the forward hooks of export_common.register_site_hooks (sites_reference.py's). Next to
it: the tokenizer and config files copied from MODEL_DIR and export.json (see
export_common.describe), so OUT_DIR is all the backend needs.

The trace is made with eager attention on an example batch that has padding, so the general
masking path (padding + causal + sliding window) is the one recorded, then checked against the
eager model on a batch of another shape. Skips all work when OUT_DIR/export.json already
describes this export of this model (idempotent); writes atomically (temporary names, then
rename), so a reader never sees half an export.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export_common as common  # noqa: E402


def export(model_dir: Path, out_dir: Path, dtype: str, device: str, sites: list[str]) -> Path:
    wanted = common.describe(model_dir, "torchscript", "model.pt", dtype, device, sites)
    if common.up_to_date(out_dir, wanted):
        print(f"{out_dir} is up to date")
        return out_dir / "model.pt"
    import torch

    model = common.load_model(model_dir, dtype, device)
    wrapper = common.stacked_hidden_states(model, sites).eval()
    ids, mask = common.example_inputs(model.config, device, batch=2, seq=16)
    with torch.no_grad(), common.quiet_tracer_warnings():
        traced = torch.jit.trace(wrapper, (ids, mask), check_trace=False)
    check_ids, check_mask = common.example_inputs(model.config, device, batch=3, seq=29, seed=1)
    with torch.no_grad():
        common.check_close(traced(check_ids, check_mask), wrapper(check_ids, check_mask), check_mask, "torchscript")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "model.pt.tmp"
    traced.save(str(tmp))
    tmp.replace(out_dir / "model.pt")
    common.finish(model_dir, out_dir, wanted)
    print(f"wrote {out_dir / 'model.pt'} ({wanted['num_layers'] + 1} hidden states; sites {', '.join(sites)})")
    return out_dir / "model.pt"


def main(argv: list[str]) -> int:
    args = common.parse_args(argv, __doc__)
    export(Path(args.model_dir), Path(args.out_dir), args.dtype, args.device, args.sites)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
