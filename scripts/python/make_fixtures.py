#!/usr/bin/env python3
"""Makes the fixture models and the reference tensors the backends are checked against.

    make_fixtures.py OUT

writes, with no network access and deterministically (fixed seeds):

- OUT/tokenizer/            one byte-level BPE tokenizer trained on local synthetic text
                            (BOS added by a TemplateProcessing post-processor, EOS token).
- OUT/models/<arch>/        a tiny random-weight model per architecture, saved with
                            transformers' save_pretrained (config.json, model.safetensors,
                            tokenizer files; nothing else, since vLLM loads every *.safetensors).
- OUT/reference/<arch>/     reference.safetensors + reference.json: for each prompt, unbatched,
                            transformers' output_hidden_states at every layer reduced at `last`
                            (last token) and `mean` (over tokens) as `last.<layer>` / `mean.<layer>`
                            of shape [n_prompts, hidden]; the token ids of each prompt; greedy
                            generate(do_sample=False, max_new_tokens=12) new token ids per prompt;
                            and `batched_generated_ids`: the same greedy generate over all the
                            prompts at once, left-padded (what batched decoding is checked against).

Architectures: llama, llama3 (rope_scaling rope_type llama3), mistral (sliding_window),
qwen2 (q/k/v bias), gemma2 (embedding scale, 1+w norms, soft-capping, alternating window),
qwen3 (per-head q/k norms), gemma3_text (q/k norms, local and global RoPE bases, linear scaling
on global layers, sliding_window_pattern, query_pre_attn_scalar), mixtral (sparse MoE, top-2 of
4 experts, renormalised, sliding window), qwen3_moe (q/k norms, MoE without renormalisation, a
dense layer from mlp_only_layers), olmo2 (post-norms only, q/k norms over the whole
projections), phi3 (fused qkv_proj and gate_up_proj, partial rotary 0.5, longrope with
short and long factors and original_max_position_embeddings 40: the longest prompt runs on the
long factors, the others on the short ones; an extra phi3-only prompt of 33 tokens whose greedy
generation crosses the threshold, where transformers 5.19 drops its KV cache), gpt2 (learned
positions, Conv1D, LayerNorm with bias, tied head), gpt_neox (parallel residual, rotary_pct 0.25,
per-head fused q/k/v), llama_dynamic (dynamic NTK RoPE, max_position_embeddings 16, factor 8: the
longer prompts and generations run on the rescaled base; the RoPE state is reset before each prompt,
as in a freshly loaded model), qwen3_yarn (YaRN, factor 4, original_max_position_embeddings 32).
OUT/models/<arch>_v4 (gpt2, gpt_neox, llama_dynamic, qwen3_yarn) holds the same weights with the
config.json rewritten as transformers 4.x wrote it. Router weights are scaled up so that no token's
top-k is a near tie. OUT/models/qwen3_moe_fused/ holds qwen3_moe's weights with the experts stacked as
transformers 5 keeps them in memory (mlp.experts.gate_up_proj [E, 2I, H], down_proj [E, H, I]).

Beside them, OUT/models/gemma3/ is laid out as gemma-3-12b-it ships (Gemma3ForConditionalGeneration):
a transformers-4.x-style config.json (model_type gemma3, the language model in text_config with
rope_theta / rope_local_base_freq / rope_scaling / sliding_window_pattern), weights under
language_model.model.* in two shards with an index, and vision-tower tensors beside them. Its
language model is the gemma3_text fixture's, so OUT/reference/gemma3_text applies to it.

Skips all work when OUT/.complete holds this script's hash (idempotent).
"""

import hashlib
import json
import os
import random
import re
import shutil
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ARCHS = [
    "llama", "llama3", "mistral", "qwen2", "gemma2", "qwen3", "gemma3_text", "mixtral", "qwen3_moe", "olmo2", "phi3",
    "gpt2", "gpt_neox", "llama_dynamic", "qwen3_yarn",
]

# Fixtures whose config.json transformers 5 writes in its own style (rope_parameters, dtype) also get
# a copy with the config rewritten as transformers 4.x wrote it (rope_theta / rope_scaling, GPT-NeoX's
# rotary_pct / rotary_emb_base, torch_dtype), the same weights: OUT/models/<arch>_v4.
V4_COPIES = ["gpt2", "gpt_neox", "llama_dynamic", "qwen3_yarn"]

PROMPTS = [
    "Hello",
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog while the farmer sleeps in the barn.",
    "Paris is the capital of",
    "Numbers like 12345 and symbols like #@! are tokenised too, aren't they? Yes: they are, "
    "byte by byte when the vocabulary has no merge for them.",
    "one two three four five six seven eight nine ten eleven twelve",
]

# Phi-3 also gets a prompt of 33 tokens, whose greedy generation crosses longrope's threshold (40).
PHI3_CROSSING = (
    "The farmer counted seven apples in the garden while the old man painted the bridge, one two three, "
    "and the river ran past the barn at noon on Monday."
)

MAX_NEW_TOKENS = 12
VOCAB_SIZE = 1024

COMMON = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=64,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    initializer_range=0.02,
)


def script_hash() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def corpus(n: int = 6000) -> list[str]:
    """Distinct synthetic sentences, generated from a fixed seed."""
    rng = random.Random(1234)
    subjects = ["the cat", "a dog", "my friend", "the farmer", "our teacher", "a small bird", "the king",
                "every student", "the old man", "a young woman", "this machine", "the river", "Paris",
                "the committee", "a scientist", "the quick brown fox"]
    verbs = ["sat on", "looked at", "jumped over", "talked about", "wrote to", "ran past", "sang for",
             "built", "found", "painted", "counted", "remembered", "is the capital of", "visited"]
    objects = ["the mat", "a lazy dog", "the barn", "the moon", "a red house", "the capital", "France",
               "the old bridge", "seven apples", "the sea", "a long letter", "the garden", "the numbers"]
    extras = ["yesterday", "in the morning", "while sleeping", "with great care", "again and again",
              "before dinner", "for no reason", "quickly", "slowly", "at noon", "on Monday"]
    numbers = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
               "twelve"]
    out: set[str] = set()
    while len(out) < n:
        s = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}"
        if rng.random() < 0.6:
            s += f" {rng.choice(extras)}"
        if rng.random() < 0.3:
            s += f", {' '.join(rng.sample(numbers, rng.randint(2, 5)))}"
        if rng.random() < 0.2:
            s += f" {rng.randint(0, 99999)} #{rng.choice('@!$%&')}"
        s = s[0].upper() + s[1:] + rng.choice([".", "!", "?", "."])
        out.add(s)
    return sorted(out)


def train_tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", padding_side="left"
    )
    fast.save_pretrained(folder)
    return fast


def build_config(arch: str, tok):
    import transformers as tf

    ids = dict(
        vocab_size=VOCAB_SIZE,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    if arch == "llama":
        return tf.LlamaConfig(**COMMON, **ids, rope_theta=10000.0, tie_word_embeddings=True)
    if arch == "llama3":
        return tf.LlamaConfig(
            **COMMON,
            **ids,
            rope_theta=500000.0,
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=64,
            ),
            tie_word_embeddings=False,
        )
    if arch == "mistral":
        return tf.MistralConfig(**COMMON, **ids, rope_theta=10000.0, sliding_window=16, tie_word_embeddings=False)
    if arch == "qwen2":
        c = dict(COMMON)
        return tf.Qwen2Config(**c, **ids, rope_theta=1000000.0, tie_word_embeddings=True, use_sliding_window=False)
    if arch == "gemma2":
        return tf.Gemma2Config(
            **COMMON,
            **ids,
            rope_theta=10000.0,
            query_pre_attn_scalar=64,
            sliding_window=8,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
            hidden_activation="gelu_pytorch_tanh",
            tie_word_embeddings=True,
        )
    if arch == "qwen3":
        return tf.Qwen3Config(**COMMON, **ids, rope_theta=1000000.0, tie_word_embeddings=True)
    if arch == "gemma3_text":
        return tf.Gemma3TextConfig(
            **COMMON,
            **ids,
            query_pre_attn_scalar=48,
            sliding_window=8,
            sliding_window_pattern=2,
            rope_parameters={
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            },
            hidden_activation="gelu_pytorch_tanh",
            tie_word_embeddings=True,
        )
    if arch == "mixtral":
        return tf.MixtralConfig(
            **COMMON, **ids, num_local_experts=4, num_experts_per_tok=2, sliding_window=16, tie_word_embeddings=False
        )
    if arch == "qwen3_moe":
        return tf.Qwen3MoeConfig(
            **COMMON,
            **ids,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=64,
            norm_topk_prob=False,
            mlp_only_layers=[2],
            rope_theta=1000000.0,
            tie_word_embeddings=False,
        )
    if arch == "olmo2":
        return tf.Olmo2Config(**COMMON, **ids, rope_theta=500000.0, tie_word_embeddings=False)
    if arch == "gpt2":
        return tf.GPT2Config(
            n_embd=COMMON["hidden_size"],
            n_layer=COMMON["num_hidden_layers"],
            n_head=COMMON["num_attention_heads"],
            n_positions=COMMON["max_position_embeddings"],
            activation_function="gelu_new",
            layer_norm_epsilon=1e-5,
            **ids,
        )
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(
            **{k: v for k, v in COMMON.items() if k not in ("head_dim", "num_key_value_heads", "rms_norm_eps")},
            **ids,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
            use_parallel_residual=True,
            hidden_act="gelu",
            layer_norm_eps=1e-5,
            tie_word_embeddings=False,
        )
    if arch == "llama_dynamic":
        # max_position_embeddings 16: the prompts of 22 and 85 tokens, and generation past 16, run
        # on the rescaled base; the short prompts on the plain one.
        c = dict(COMMON, max_position_embeddings=16)
        return tf.LlamaConfig(
            **c, **ids, rope_parameters={"rope_type": "dynamic", "factor": 8.0, "rope_theta": 10000.0},
            tie_word_embeddings=False,
        )
    if arch == "qwen3_yarn":
        c = dict(COMMON, max_position_embeddings=128)
        return tf.Qwen3Config(
            **c,
            **ids,
            rope_parameters={
                "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "rope_theta": 1000000.0,
            },
            tie_word_embeddings=True,
        )
    if arch == "phi3":
        rot = COMMON["head_dim"] // 4  # frequencies of a half-rotated head
        return tf.Phi3Config(
            **{k: v for k, v in COMMON.items() if k != "head_dim"},
            **ids,
            partial_rotary_factor=0.5,
            original_max_position_embeddings=40,
            rope_parameters={
                "rope_type": "longrope",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.5,
                "short_factor": [1.0 + 0.1 * i for i in range(rot)],
                "long_factor": [2.0 + 0.5 * i for i in range(rot)],
            },
            tie_word_embeddings=False,
        )
    raise ValueError(arch)


def model_class(arch: str):
    import transformers as tf

    return {
        "llama": tf.LlamaForCausalLM,
        "llama3": tf.LlamaForCausalLM,
        "mistral": tf.MistralForCausalLM,
        "qwen2": tf.Qwen2ForCausalLM,
        "gemma2": tf.Gemma2ForCausalLM,
        "qwen3": tf.Qwen3ForCausalLM,
        "gemma3_text": tf.Gemma3ForCausalLM,
        "mixtral": tf.MixtralForCausalLM,
        "qwen3_moe": tf.Qwen3MoeForCausalLM,
        "olmo2": tf.Olmo2ForCausalLM,
        "phi3": tf.Phi3ForCausalLM,
        "gpt2": tf.GPT2LMHeadModel,
        "gpt_neox": tf.GPTNeoXForCausalLM,
        "llama_dynamic": tf.LlamaForCausalLM,
        "qwen3_yarn": tf.Qwen3ForCausalLM,
    }[arch]


def make_model(arch: str, tok, folder: Path):
    import torch

    torch.manual_seed(ARCHS.index(arch) + 1)
    config = build_config(arch, tok)
    config._attn_implementation = "eager"
    model = model_class(arch)(config)
    # Randomise the norms too (HF initialises them to 1, or 0 for gemma's 1+w), so a wrong
    # norm convention shows up, and make the biases nonzero.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.1)
            elif "norm" in name or re.search(r"(^|\.)ln_", name):
                p.copy_((torch.rand_like(p) * 0.5 + 0.75) if not arch.startswith("gemma") else (torch.rand_like(p) * 0.5 - 0.25))
            elif name.endswith("mlp.gate.weight") or name.endswith("block_sparse_moe.gate.weight"):
                p.normal_(0.0, 1.0)  # routers: well-separated top-k choices
    model = model.to(torch.float32).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    # Nothing but model and tokenizer files in a model folder.
    for extra in folder.iterdir():
        if extra.name not in {
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "generation_config.json",
        }:
            if extra.is_dir():
                shutil.rmtree(extra)
            else:
                extra.unlink()
    return model


def gemma3_multimodal(text_folder: Path, folder: Path):
    """A Gemma3ForConditionalGeneration folder (4.x layout) around the gemma3_text fixture."""
    import torch
    from safetensors.torch import load_file, save_file

    text = json.loads((text_folder / "config.json").read_text())
    rope = text.pop("rope_parameters")
    text.pop("layer_types")
    text.pop("dtype", None)
    text.update(
        rope_theta=rope["full_attention"]["rope_theta"],
        rope_local_base_freq=rope["sliding_attention"]["rope_theta"],
        rope_scaling={"rope_type": "linear", "factor": rope["full_attention"]["factor"]},
        sliding_window_pattern=2,
        torch_dtype="float32",
    )
    text.pop("architectures", None)
    config = {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "text_config": text,
        "vision_config": {
            "model_type": "siglip_vision_model",
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 16,
            "patch_size": 4,
        },
        "mm_tokens_per_image": 4,
        "eos_token_id": text["eos_token_id"],
        "torch_dtype": "float32",
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    weights = load_file(str(text_folder / "model.safetensors"))
    lm = {k.replace("model.", "language_model.model.", 1): v for k, v in weights.items() if k.startswith("model.")}
    g = torch.Generator().manual_seed(7)
    vision = {
        "vision_tower.vision_model.embeddings.patch_embedding.weight": torch.randn(16, 3, 4, 4, generator=g),
        "multi_modal_projector.mm_input_projection_weight": torch.randn(16, 128, generator=g),
    }
    index = {"metadata": {}, "weight_map": {}}
    for i, part in enumerate([lm, vision]):
        name = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file(part, str(folder / name), metadata={"format": "pt"})
        index["weight_map"].update({k: name for k in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (text_folder / f).exists():
            shutil.copy(text_folder / f, folder / f)


def qwen3_moe_fused(src: Path, folder: Path):
    """qwen3_moe's folder with each layer's experts stacked into 3-D tensors."""
    import re

    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(str(src / "model.safetensors"))
    out, experts = {}, {}
    for k, v in weights.items():
        m = re.fullmatch(r"(.*\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight", k)
        if m:
            experts.setdefault(m.group(1), {}).setdefault(m.group(3), {})[int(m.group(2))] = v
        else:
            out[k] = v
    for prefix, parts in experts.items():
        n = len(parts["gate_proj"])
        out[f"{prefix}.gate_up_proj"] = torch.stack(
            [torch.cat([parts["gate_proj"][e], parts["up_proj"][e]]) for e in range(n)]
        ).contiguous()
        out[f"{prefix}.down_proj"] = torch.stack([parts["down_proj"][e] for e in range(n)]).contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    save_file(out, str(folder / "model.safetensors"), metadata={"format": "pt"})
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (src / f).exists():
            shutil.copy(src / f, folder / f)


def fresh_rope(model):
    """Dynamic NTK keeps its grown frequencies across forward calls: start each prompt as a freshly
    loaded model does (each prompt's reference as if it ran alone)."""
    for module in model.modules():
        if hasattr(module, "original_inv_freq") and hasattr(module, "original_max_seq_len"):
            module.inv_freq = module.original_inv_freq.clone()
            module.max_seq_len_cached = module.original_max_seq_len


def v4_copy(src: Path, folder: Path):
    """src's model with its config.json as transformers 4.x wrote it; weights hard-linked."""
    c = json.loads((src / "config.json").read_text())
    c["torch_dtype"] = c.pop("dtype", "float32")
    rope = c.pop("rope_parameters", None)
    if rope is not None:
        rope = dict(rope)
        theta = rope.pop("rope_theta")
        partial = rope.pop("partial_rotary_factor", None)
        if c["model_type"] == "gpt_neox":
            c["rotary_emb_base"] = theta
            c["rotary_pct"] = partial
        else:
            c["rope_theta"] = theta
        kind = rope.pop("rope_type", "default")
        if kind == "dynamic":
            c["rope_scaling"] = {"type": kind, **rope}  # the early spelling
        elif kind != "default":
            c["rope_scaling"] = {"rope_type": kind, **rope}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(c, indent=2))
    for f in src.iterdir():
        if f.name != "config.json":
            os.link(f, folder / f.name)


def cut_at_eos(new: list[int], eos: int) -> list[int]:
    """New token ids up to and including the first EOS."""
    return new[: new.index(eos) + 1] if eos in new else new


def batched_greedy(model, tok, prompts: list[str]) -> list[list[int]]:
    """Greedy generate over all `prompts` as one left-padded batch (attention mask and position ids
    from the padding, as transformers' generate derives them)."""
    import torch

    fresh_rope(model)
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    gen = model.generate(
        input_ids=enc.input_ids,
        attention_mask=enc.attention_mask,
        do_sample=False,
        max_new_tokens=MAX_NEW_TOKENS,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    width = enc.input_ids.shape[1]
    fresh_rope(model)
    return [cut_at_eos(row[width:].tolist(), tok.eos_token_id) for row in gen]


def reference(arch: str, model, tok, folder: Path):
    import torch
    from safetensors.torch import save_file

    tensors: dict[str, list] = {}
    token_ids, generated = [], []
    prompts = PROMPTS + [PHI3_CROSSING] if arch == "phi3" else PROMPTS
    with torch.no_grad():
        for prompt in prompts:
            fresh_rope(model)
            ids = tok(prompt, return_tensors="pt").input_ids
            token_ids.append(ids[0].tolist())
            out = model(input_ids=ids, output_hidden_states=True)
            for layer, h in enumerate(out.hidden_states):
                tensors.setdefault(f"last.{layer}", []).append(h[0, -1].clone())
                tensors.setdefault(f"mean.{layer}", []).append(h[0].mean(dim=0).clone())
            gen = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=MAX_NEW_TOKENS,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
            generated.append(cut_at_eos(gen[0, ids.shape[1]:].tolist(), tok.eos_token_id))
        batched = batched_greedy(model, tok, prompts)
    stacked = {k: torch.stack(v).contiguous() for k, v in tensors.items()}
    scale = max(float(t.abs().max()) for t in stacked.values())
    folder.mkdir(parents=True, exist_ok=True)
    save_file(stacked, str(folder / "reference.safetensors"))
    meta = {
        "arch": arch,
        "num_layers": model.config.num_hidden_layers,
        "hidden_size": model.config.hidden_size,
        "prompts": prompts,
        "token_ids": token_ids,
        "generated_ids": generated,
        "batched_generated_ids": batched,
        "generated_text": [tok.decode(g, skip_special_tokens=True) for g in generated],
        "max_new_tokens": MAX_NEW_TOKENS,
        "eos_token_id": tok.eos_token_id,
        "bos_token_id": tok.bos_token_id,
        "pad_token_id": tok.pad_token_id,
        "max_abs_hidden": scale,
    }
    (folder / "reference.json").write_text(json.dumps(meta, indent=1))
    return scale


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    marker = out / ".complete"
    h = script_hash()
    if marker.exists() and marker.read_text().strip() == h:
        print(f"fixtures in {out} are up to date")
        return 0
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    torch.use_deterministic_algorithms(True)
    if marker.exists():
        marker.unlink()
    # Exports (tests' TorchScript/ONNX folders) are made from the models: stale once they change.
    for sub in ("tokenizer", "models", "reference", "exported"):
        shutil.rmtree(out / sub, ignore_errors=True)
    tok = train_tokenizer(out / "tokenizer")
    for arch in ARCHS:
        model = make_model(arch, tok, out / "models" / arch)
        scale = reference(arch, model, tok, out / "reference" / arch)
        print(f"{arch}: model and reference written (max |hidden| {scale:.3f})")
    gemma3_multimodal(out / "models" / "gemma3_text", out / "models" / "gemma3")
    print("gemma3: Gemma3ForConditionalGeneration layout around gemma3_text written")
    qwen3_moe_fused(out / "models" / "qwen3_moe", out / "models" / "qwen3_moe_fused")
    print("qwen3_moe_fused: qwen3_moe with stacked experts written")
    for arch in V4_COPIES:
        v4_copy(out / "models" / arch, out / "models" / f"{arch}_v4")
    print(f"{', '.join(V4_COPIES)}: copies with 4.x-style config.json written (<arch>_v4)")
    marker.write_text(h + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
