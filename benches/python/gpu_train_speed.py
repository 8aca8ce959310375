#!/usr/bin/env python3
"""PyTorch + PEFT side of scripts/gpu-check.sh: LoRA training steps on a GPU, on a SmolLM2-135M-shaped
LLaMA with random weights (the same shape `cargo xtask gpu-check` builds), batch x seq tokens.

usage: gpu_train_speed.py DTYPE(f32|bf16) RANK BATCH SEQ STEPS
prints one JSON line: step_s (median of the timed steps after one warm-up), tokens_per_s,
peak_mem_mb (torch.cuda.max_memory_allocated), loss.
"""
import json
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[sys.argv[1]]
    rank, batch, seq, steps = (int(v) for v in sys.argv[2:6])
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, rms_norm_eps=1e-5, rope_theta=100000.0,
                         tie_word_embeddings=True, max_position_embeddings=8192)
    model = LlamaForCausalLM(config).to(device="cuda", dtype=dtype)
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, cfg)
    # Adapters in f32 over a bf16 base, as idlora keeps them.
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    model.train()
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(100, 20000, (batch, seq), generator=gen).cuda()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    torch.cuda.reset_peak_memory_stats()
    times, loss = [], None
    for _ in range(steps + 1):
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            out = model(input_ids=tokens, labels=tokens)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        loss = out.loss.item()
    timed = sorted(times[1:])
    step = timed[len(timed) // 2]
    print(json.dumps({"step_s": step, "tokens_per_s": batch * seq / step,
                      "peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20, "loss": loss}))


if __name__ == "__main__":
    main()
