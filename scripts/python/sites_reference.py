#!/usr/bin/env python3
"""transformers' reference for the sites inside blocks (the candle backend's site tests).

    sites_reference.py REQUEST.json OUT

REQUEST.json: {"models": {"<name>": "<model folder>", ...}, "texts": [...]}. For each model, each
text alone (no padding), in f32 with eager attention, reads through forward hooks on
transformers' own modules, at every block b:

- `resid_mid`: the input of the MLP's norm (Gemma's `pre_feedforward_layernorm`, GPT-2's `ln_2`,
  Llama's `post_attention_layernorm`), OLMo 2's MLP input; none for a parallel residual;
- `attn_out`: the output of the post-attention norm where the block has one after attention
  (Gemma 2/3, OLMo 2), else the attention module's output;
- `mlp_out`: the output of `post_feedforward_layernorm` where there is one, else the MLP's;
- `heads`: the input of the attention's output projection (`o_proj`, `c_proj`, `dense`),
  `[heads, head_dim]` per token;
- `router`: the router logits (`mlp.gate`'s first output), for mixtures of experts.

Writes OUT/<name>/sites.safetensors: `<site>.<last|mean>.<block>`, `[n_texts, ...]` (the last
token's and the mean over tokens), and `resid.last.<layer>` (`output_hidden_states`).
"""

import json
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def first(x):
    return x[0] if isinstance(x, tuple) else x


def layers_of(model):
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.language_model.layers"):
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
        parallel = getattr(cfg, "use_parallel_residual", False)
        found: dict[str, torch.Tensor] = {}
        hooks = []
        for b, layer in enumerate(layers_of(model)):
            attn = child(layer, ["self_attn", "attn", "attention"])
            o_proj = child(attn, ["o_proj", "c_proj", "dense"])
            mlp = layer.mlp

            def keep(site, b=b):
                def hook(module, args, output):
                    found[f"{site}.{b}"] = first(output).detach().clone()

                return hook

            sandwich = hasattr(layer, "post_feedforward_layernorm")
            if sandwich:
                hooks.append(layer.post_attention_layernorm.register_forward_hook(keep("attn_out")))
                hooks.append(layer.post_feedforward_layernorm.register_forward_hook(keep("mlp_out")))
            else:
                hooks.append(attn.register_forward_hook(keep("attn_out")))
                hooks.append(mlp.register_forward_hook(keep("mlp_out")))
            pre_mlp = child(layer, ["pre_feedforward_layernorm", "ln_2"])
            if pre_mlp is None and not sandwich:
                pre_mlp = layer.post_attention_layernorm
            if pre_mlp is None:
                pre_mlp = mlp  # OLMo 2: the MLP reads the residual stream itself
            if not parallel:
                hooks.append(pre_mlp.register_forward_pre_hook(lambda m, a, b=b: found.__setitem__(f"resid_mid.{b}", a[0].detach().clone())))
            hooks.append(o_proj.register_forward_pre_hook(lambda m, a, b=b: found.__setitem__(f"heads.{b}", a[0].detach().clone().reshape(a[0].shape[0], a[0].shape[1], nh, d))))
            gate = getattr(mlp, "gate", None)
            if gate is not None and type(gate).__name__.endswith("Router"):
                hooks.append(gate.register_forward_hook(keep("router")))
        tensors: dict[str, list] = {}
        with torch.no_grad():
            for text in request["texts"]:
                ids = tok(text, return_tensors="pt").input_ids
                found.clear()
                hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
                for layer, h in enumerate(hidden):
                    tensors.setdefault(f"resid.last.{layer}", []).append(h[0, -1].clone())
                for key, t in found.items():
                    site, b = key.split(".")
                    if site == "router":
                        t = t.reshape(1, ids.shape[1], -1)
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
