#!/usr/bin/env python3
"""transformers side of `cargo xtask bench lm`: prompt processing and greedy decoding speed of a
GGUF model dequantised to f32, on the CPU, with the same token ids as the Rust side.

usage: lm_speed.py GGUF PROMPT_IDS(comma-separated) NEW_TOKENS THREADS ROUNDS
prints one JSON line: prefill_s, decode_s (median over rounds), peak_rss_mb, tokens.
"""
import json
import os
import resource
import sys
import time

import torch
from transformers import LlamaForCausalLM


def main():
    gguf, ids, new_tokens, threads, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    torch.set_num_threads(threads)
    folder, name = os.path.split(os.path.abspath(gguf))
    model = LlamaForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32).eval()
    prompt = torch.tensor([[int(t) for t in ids.split(",")]])
    prefill, decode, tokens = [], [], None
    with torch.inference_mode():
        for _ in range(rounds + 1):
            t = time.perf_counter()
            # The head on the last position only, as `generate` does (and as our side does).
            out = model(prompt, use_cache=True, logits_to_keep=1)
            prefill.append(time.perf_counter() - t)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            gen = [nxt.item()]
            t = time.perf_counter()
            for _ in range(new_tokens - 1):
                out = model(nxt, past_key_values=past, use_cache=True)
                past = out.past_key_values
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                gen.append(nxt.item())
            decode.append(time.perf_counter() - t)
            tokens = gen
    med = lambda v: sorted(v[1:])[len(v[1:]) // 2]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"prefill_s": med(prefill), "decode_s": med(decode), "peak_rss_mb": peak, "tokens": tokens}))


if __name__ == "__main__":
    main()
