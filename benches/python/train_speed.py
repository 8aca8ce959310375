#!/usr/bin/env python3
"""PyTorch + PEFT side of `cargo xtask bench train`: training steps of a GGUF model dequantised to
f32 with a LoRA adapter, on the CPU, with the same token ids as the Rust side.

usage: train_speed.py GGUF TOKEN_IDS(comma-separated, batch*seq) BATCH SEQ RANK THREADS STEPS
prints one JSON line: step_s (median of the timed steps after one warm-up), peak_rss_mb, loss.
"""
import json
import os
import resource
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM


def main():
    gguf, ids = sys.argv[1], sys.argv[2]
    batch, seq, rank, threads, steps = (int(v) for v in sys.argv[3:8])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    folder, name = os.path.split(os.path.abspath(gguf))
    model = LlamaForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.05,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, cfg)
    model.train()
    tokens = torch.tensor([int(t) for t in ids.split(",")]).reshape(batch, seq)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    times, loss = [], None
    for _ in range(steps + 1):
        t = time.perf_counter()
        out = model(input_ids=tokens, labels=tokens)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
        loss = out.loss.item()
    timed = sorted(times[1:])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"step_s": timed[len(timed) // 2], "peak_rss_mb": peak, "loss": loss}))


if __name__ == "__main__":
    main()
