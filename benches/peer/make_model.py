"""Makes the random-weight peer model of issue 8 (no hub access): a Llama with 8 layers,
hidden 1024, 16 heads, vocab 32000, saved with save_pretrained, plus a small locally trained
tokenizer (the benchmark feeds token ids, so the tokenizer only has to load)."""
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

out = sys.argv[1]
if os.path.exists(os.path.join(out, ".complete")):
    sys.exit(0)
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
cfg = LlamaConfig(
    vocab_size=32000,
    hidden_size=1024,
    intermediate_size=2816,
    num_hidden_layers=8,
    num_attention_heads=16,
    num_key_value_heads=16,
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    torch_dtype="float32",
)
model = LlamaForCausalLM(cfg).eval()
model.save_pretrained(out, safe_serialization=True)
tok = Tokenizer(models.BPE(unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
words = [f"word{i} thing{i % 97} item{i % 13}" for i in range(3000)]
tok.train_from_iterator(words, trainers.BpeTrainer(vocab_size=500, special_tokens=["<unk>", "<s>", "</s>"]))
PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>").save_pretrained(out)
open(os.path.join(out, ".complete"), "w").close()
print(f"peer model written to {out}")
