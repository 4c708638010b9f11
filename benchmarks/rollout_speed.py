#!/usr/bin/env python
"""Rollout tokens/s on CPU: r1kit's `sample` vs Hugging Face `generate`, same model and sampling.

Both sides sample G x B = 64 completions (8 built-in training prompts x 8, the r1_zero template)
of at most 64 new tokens at temperature 1.0, top-p 1.0, no top-k, stopping at EOS only, from the
built-in tiny base model (r1kit/assets/tiny-base). `generate` gets the 64 left-padded rows (KV
cache, no compile), as TRL calls it. The two alternate, call by call, after a warm-up of each, so
that the load of a shared machine falls on both alike; tokens are completion tokens up to and
including EOS, tokens/s is tokens over the wall time of the call. Writes a JSON with every call
and prints the medians and their ratio.

    .venv/bin/python benchmarks/rollout_speed.py --repeats 9 --json benchmarks/out/rollout.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch
import transformers

from r1kit.models import load_model
from r1kit.rollout.hf import sample
from r1kit.tasks.arithmetic import sample_problems
from r1kit.templates import render_prompt


def hf_generate(model, tokenizer, prompts, g, max_new_tokens, seed):
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False,
                    padding_side="left")
    ids = enc["input_ids"].repeat_interleave(g, 0).to(model.device)  # (B*G, P)
    mask = enc["attention_mask"].repeat_interleave(g, 0).to(model.device)  # (B*G, P)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0,
                             top_p=1.0, top_k=0, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, disable_compile=True)
    comp = out[:, ids.shape[1]:]  # (B*G, steps)
    is_eos = comp == tokenizer.eos_token_id
    lens = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, comp.shape[1])
    return int(lens.sum())


def r1kit_sample(model, tokenizer, prompts, g, max_new_tokens, seed):
    ro = sample(model, tokenizer, prompts, g, max_new_tokens=max_new_tokens, temperature=1.0,
                top_p=1.0, stop=[], generator=torch.Generator().manual_seed(seed))
    return sum(ro.num_tokens)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(ROOT / "r1kit" / "assets" / "tiny-base"))
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads, both sides")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    model.eval()
    prompts = [render_prompt(q.prompt) for q in sample_problems(args.prompts, "train", 0)]
    sides = {"hf_generate": hf_generate, "r1kit": r1kit_sample}
    calls = {name: [] for name in sides}
    load = [os.getloadavg()]
    for rep in range(args.repeats + 1):  # rep 0 is the warm-up
        order = list(sides) if rep % 2 else list(reversed(sides))
        for name in order:
            t = time.perf_counter()
            tokens = sides[name](model, tokenizer, prompts, args.group_size, args.max_new_tokens,
                                 seed=rep)
            dt = time.perf_counter() - t
            if rep:
                calls[name].append({"s": dt, "tokens": tokens, "tok_per_s": tokens / dt})
            print(f"[{name:>11}] rep {rep}{' (warm-up)' if not rep else ''}: {dt:.3f}s "
                  f"{tokens} tokens, {tokens / dt:.0f} tok/s", flush=True)
    load.append(os.getloadavg())

    med = {n: statistics.median(c["tok_per_s"] for c in calls[n]) for n in sides}
    pair = statistics.median(a["tok_per_s"] / b["tok_per_s"]
                             for a, b in zip(calls["r1kit"], calls["hf_generate"]))
    summary = {
        "command": [sys.executable, *sys.argv],
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "threads": args.threads},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "loadavg_start_end": load},
        "config": {"model": args.model, "prompts": args.prompts, "group_size": args.group_size,
                   "max_new_tokens": args.max_new_tokens, "temperature": 1.0, "top_p": 1.0,
                   "stop": "EOS only"},
        "median_tok_per_s": med,
        "ratio_of_medians": med["r1kit"] / med["hf_generate"],
        "median_paired_ratio": pair,
        "calls": calls,
    }
    print(f"median tok/s: r1kit {med['r1kit']:.0f}, generate {med['hf_generate']:.0f}; "
          f"ratio {summary['ratio_of_medians']:.2f}x (paired median {pair:.2f}x); "
          f"load {load[0]} -> {load[1]}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
