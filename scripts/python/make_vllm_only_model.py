#!/usr/bin/env python3
"""Makes a tiny random-weight Granite model (llama-like, with embedding, residual, attention and
logit multipliers), an architecture probe's candle backend does not implement but vLLM serves and
can extract hidden states from (it implements vLLM's EAGLE3 interface, which vLLM's
`extract_hidden_states` needs), and transformers' own hidden states of a few prompts on it.

    make_vllm_only_model.py TOKENIZER_DIR OUT

TOKENIZER_DIR: the fixtures' tokenizer (make_fixtures.py's OUT/tokenizer). Writes OUT/model/
(config.json, model.safetensors, tokenizer files) and OUT/reference.json: {"prompts": [...],
"num_layers": L, "mean": [[[float] * hidden] * n_prompts] * (L + 1)}: output_hidden_states at
every layer, averaged over each prompt's tokens, each prompt alone. Deterministic, no network.
"""

import json
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import torch
import transformers as tf

PROMPTS = [
    "Hello",
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog while the farmer sleeps in the barn.",
    "Paris is the capital of",
]


def main() -> int:
    tok_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    tok = tf.AutoTokenizer.from_pretrained(tok_dir)
    cfg = tf.GraniteConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        embedding_multiplier=4.0,
        residual_multiplier=0.5,
        attention_multiplier=0.1,
        logits_scaling=2.0,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = tf.GraniteForCausalLM(cfg).eval()
    # Larger than the default initialisation, so every layer moves the residual stream visibly.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(5.0)
    folder = out / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    mean = None
    with torch.no_grad():
        for p in PROMPTS:
            ids = torch.tensor([tok(p)["input_ids"]])
            hs = model(ids, output_hidden_states=True).hidden_states
            if mean is None:
                mean = [[] for _ in hs]
            for layer, h in enumerate(hs):
                mean[layer].append(h[0].mean(dim=0).tolist())
    meta = {"prompts": PROMPTS, "num_layers": cfg.num_hidden_layers, "mean": mean}
    (out / "reference.json").write_text(json.dumps(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
