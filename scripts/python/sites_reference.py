#!/usr/bin/env python3
"""transformers' reference for the sites inside blocks (the candle backend's site tests).

    sites_reference.py REQUEST.json OUT

REQUEST.json: {"models": {"<name>": "<model folder>", ...}, "texts": [...]}. For each model, each
text alone (no padding), in f32 with eager attention, reads through forward hooks on
transformers' own modules, at every block b, every site of export_common.register_site_hooks
(the one definition of resid_mid, attn_out, mlp_out, heads and router, which the TorchScript and
ONNX exports' `--sites` read too); heads as `[heads, head_dim]` per token.

Writes OUT/<name>/sites.safetensors: `<site>.<last|mean>.<block>`, `[n_texts, ...]` (the last
token's and the mean over tokens), and `resid.last.<layer>` (`output_hidden_states`).
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export_common as common  # noqa: E402

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> int:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    request = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    for name, folder in request["models"].items():
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
        cfg = AutoConfig.from_pretrained(folder)
        cfg = getattr(cfg, "text_config", cfg)
        nh = cfg.num_attention_heads
        d = getattr(cfg, "head_dim", None) or cfg.hidden_size // nh
        found: dict[str, torch.Tensor] = {}
        hooks, _ = common.register_site_hooks(model, found)
        tensors: dict[str, list] = {}
        with torch.no_grad():
            for text in request["texts"]:
                ids = tok(text, return_tensors="pt").input_ids
                found.clear()
                hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
                for layer, h in enumerate(hidden):
                    tensors.setdefault(f"resid.last.{layer}", []).append(h[0, -1].clone())
                for key in list(found):
                    site, b = key.split(".")
                    t = common.site_value(found, site, int(b), 1, ids.shape[1])
                    if site == "heads":
                        t = t.reshape(1, ids.shape[1], nh, d)
                    tensors.setdefault(f"{site}.last.{b}", []).append(t[0, -1].clone())
                    tensors.setdefault(f"{site}.mean.{b}", []).append(t[0].mean(dim=0).clone())
        for h in hooks:
            h.remove()
        folder_out = out / name
        folder_out.mkdir(parents=True, exist_ok=True)
        save_file({k: torch.stack(v).contiguous() for k, v in tensors.items()}, str(folder_out / "sites.safetensors"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
