#!/usr/bin/env python
"""Rollout tokens/s on a CUDA GPU: r1kit's hf engine vs `generate` (and vLLM where importable).

Two models: the built-in tiny base in fp32 (launch-bound on a GPU), and a random 71M-parameter
Llama (hidden 768, 12 layers, tests/tiny_models.py) in bf16 with 128 new tokens, where the matrix
work is no longer negligible. 8 built-in prompts x 8 completions, temperature 1, no top-p/top-k,
stop at EOS; the sides alternate call by call after one warm-up call each; tokens are completion
tokens up to and including EOS. Run by benchmarks/gpu_check.sh:

    python3 benchmarks/rollout_cuda.py [--profile]
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch

from benchmarks.rollout_speed import hf_generate
from r1kit.models import load_model
from r1kit.rollout.hf import sample
from r1kit.tasks.arithmetic import sample_problems
from r1kit.templates import render_prompt
from tests.tiny_models import build


def sides(model, tok, path, prompts, g, budget):
    def generate(seed):  # the CPU benchmark's `generate` call, on the model's device
        return hf_generate(model, tok, prompts, g, budget, seed)

    def r1kit_hf(seed):
        gen = torch.Generator("cuda").manual_seed(seed)
        return sum(sample(model, tok, prompts, g, max_new_tokens=budget, generator=gen).num_tokens)

    out = {"generate": generate, "r1kit_hf": r1kit_hf}
    if importlib.util.find_spec("vllm"):
        from r1kit.rollout import make_engine

        engine = make_engine("vllm", path, vllm_gpu_memory_utilization=0.3, max_new_tokens=budget)
        out["vllm"] = lambda seed: sum(engine.sample(
            model, tok, prompts, g, max_new_tokens=budget,
            generator=torch.Generator("cuda").manual_seed(seed)).num_tokens)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--profile", action="store_true", help="print each side's top ops for a call")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("rollout_cuda.py: CUDA is not available here (it measures the GPU path)")
    prompts = [render_prompt(q.prompt) for q in sample_problems(8, "train", 0)]
    big = build(Path(tempfile.mkdtemp()) / "m", "llama", hidden=768, layers=12, heads=12,
                kv_heads=12)
    for path, dtype, budget in (("r1kit/assets/tiny-base", "float32", 64), (big, "auto", 128)):
        model, tok = load_model(path, dtype, "cuda")
        model.eval()
        print(f"-- {Path(path).name}: {sum(q.numel() for q in model.parameters()) / 1e6:.1f}M "
              f"parameters, {next(model.parameters()).dtype}, attention "
              f"{model.config._attn_implementation}, 8 prompts x 8, {budget} new tokens")
        fns = sides(model, tok, path, prompts, 8, budget)
        rates = {k: [] for k in fns}
        for rep in range(args.repeats + 1):
            for name, fn in fns.items():
                torch.cuda.synchronize()
                t = time.perf_counter()
                n = fn(rep)
                torch.cuda.synchronize()
                if rep:  # the first call of each side is its warm-up
                    rates[name].append(n / (time.perf_counter() - t))
        base = statistics.median(rates["generate"])
        for name, r in rates.items():
            print(f"{name}: median {statistics.median(r):.0f} tok/s over {len(r)} calls "
                  f"({statistics.median(r) / base:.2f}x generate)")
        if args.profile:
            for name, fn in fns.items():
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                        torch.profiler.ProfilerActivity.CUDA]) as prof:
                    fn(99)
                    torch.cuda.synchronize()
                print(f"--- profile: {name}")
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
        # the first model's vLLM engine (held by its sampling closure) goes before the second is
        # built: its weights and KV cache would otherwise stay on the GPU
        fns.clear()
        del model, fns
        _free_vllm()
        gc.collect()
        torch.cuda.empty_cache()


def _free_vllm() -> None:
    """vLLM's process-wide state (its distributed groups), so that another LLM can start."""
    try:
        from vllm.distributed import destroy_distributed_environment, destroy_model_parallel
    except ImportError:
        return
    destroy_model_parallel()
    destroy_distributed_environment()


if __name__ == "__main__":
    main()
