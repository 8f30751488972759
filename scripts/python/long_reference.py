#!/usr/bin/env python3
"""transformers' reference for long inputs (the candle backend's long-attention tests).

    long_reference.py REQUEST.json OUT

REQUEST.json: {"models": {"<name>": "<model folder>", ...}, "texts": [...], "max_new_tokens": N}.
For each model, each text alone (no padding), in f32 with eager attention, writes
OUT/<name>/reference.safetensors (`last.<layer>` and `mean.<layer>`, `[n_texts, hidden]`: the last
token's and the mean over tokens of output_hidden_states) and OUT/<name>/reference.json
(`token_ids`, and `generated_ids`: greedy generate's new tokens, up to and including EOS).
"""

import json
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> int:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    request = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    for name, folder in request["models"].items():
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
        tensors: dict[str, list] = {}
        token_ids, generated = [], []
        with torch.no_grad():
            for text in request["texts"]:
                ids = tok(text, return_tensors="pt").input_ids
                token_ids.append(ids[0].tolist())
                hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
                for layer, h in enumerate(hidden):
                    tensors.setdefault(f"last.{layer}", []).append(h[0, -1].clone())
                    tensors.setdefault(f"mean.{layer}", []).append(h[0].mean(dim=0).clone())
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
                generated.append(new)
        folder_out = out / name
        folder_out.mkdir(parents=True, exist_ok=True)
        save_file({k: torch.stack(v).contiguous() for k, v in tensors.items()}, str(folder_out / "reference.safetensors"))
        meta = {"token_ids": token_ids, "generated_ids": generated}
        (folder_out / "reference.json").write_text(json.dumps(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
