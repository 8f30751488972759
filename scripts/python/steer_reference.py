#!/usr/bin/env python3
"""transformers' reference for steering (the candle backend's steering tests).

    steer_reference.py REQUEST.json OUT.json

REQUEST.json: {"models": {"<name>": {"folder": "<model folder>", "interventions": [{"layer": L,
"head": H or null, "alpha": A, "direction": [...]}, ...]}}, "texts": [...], "max_new_tokens": N}.
For each model, each text alone, in f32 with eager attention, greedy generate with every
intervention applied by a forward pre-hook at every position, prompt and generated: without a head,
`alpha · d/‖d‖` added to the input of decoder layer L (the residual stream entering block L,
`hidden_states[L]`); with a head, added to head H's slice of layer L's output-projection input.
Writes OUT.json: {"<name>": {"steered": [[ids...], ...], "plain": [[ids...], ...]}} (new tokens, up to
and including EOS).
"""

import json
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).parent))
from export_common import child, layers_of  # noqa: E402


def main() -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    request = json.loads(Path(sys.argv[1]).read_text())
    result = {}
    for name, spec in request["models"].items():
        folder = spec["folder"]
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
        cfg = AutoConfig.from_pretrained(folder)
        cfg = getattr(cfg, "text_config", cfg)
        nh = cfg.num_attention_heads
        d = getattr(cfg, "head_dim", None) or cfg.hidden_size // nh
        layers = layers_of(model)

        def generate():
            out = []
            with torch.no_grad():
                for text in request["texts"]:
                    ids = tok(text, return_tensors="pt").input_ids
                    gen = model.generate(
                        input_ids=ids,
                        attention_mask=torch.ones_like(ids),
                        do_sample=False,
                        max_new_tokens=request["max_new_tokens"],
                        pad_token_id=tok.pad_token_id,
                        eos_token_id=tok.eos_token_id,
                    )
                    new = gen[0, ids.shape[1]:].tolist()
                    if tok.eos_token_id in new:
                        new = new[: new.index(tok.eos_token_id) + 1]
                    out.append(new)
            return out

        plain = generate()
        hooks = []
        for iv in spec["interventions"]:
            v = torch.tensor(iv["direction"], dtype=torch.float32)
            v = iv["alpha"] * v / v.norm()
            layer = layers[iv["layer"]]
            if iv.get("head") is None:

                def resid(module, args, kwargs, v=v):
                    if args:
                        return (args[0] + v,) + tuple(args[1:]), kwargs
                    kwargs = dict(kwargs)
                    kwargs["hidden_states"] = kwargs["hidden_states"] + v
                    return args, kwargs

                hooks.append(layer.register_forward_pre_hook(resid, with_kwargs=True))
            else:
                h = iv["head"]
                o_proj = child(child(layer, ["self_attn", "attn", "attention"]), ["o_proj", "c_proj", "dense"])

                def head(module, args, v=v, h=h):
                    x = args[0].clone()
                    x[..., h * d:(h + 1) * d] += v
                    return (x,) + tuple(args[1:])

                hooks.append(o_proj.register_forward_pre_hook(head))
        steered = generate()
        for hk in hooks:
            hk.remove()
        result[name] = {"steered": steered, "plain": plain}
    Path(sys.argv[2]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
