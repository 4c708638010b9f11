#!/usr/bin/env python
"""Where rollout time goes: torch.profiler over one `r1kit.rollout.hf.sample` call (64 rows, 64 new
tokens, the built-in tiny base, 1 thread), after one warm-up call; prints the top ops by self CPU.

    .venv/bin/python benchmarks/profile_rollout.py            # the engine in this checkout
To profile an older engine, run it from a checkout of that commit (git worktree add /tmp/old REV).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch.profiler import ProfilerActivity, profile

from r1kit.models import load_model
from r1kit.rollout.hf import sample
from r1kit.tasks.arithmetic import sample_problems
from r1kit.templates import render_prompt

torch.set_num_threads(1)
model, tok = load_model(str(Path(__file__).resolve().parents[1] / "r1kit/assets/tiny-base"))
model.eval()
prompts = [render_prompt(p.prompt) for p in sample_problems(8, "train", 0)]
gen = torch.Generator().manual_seed(0)
sample(model, tok, prompts, 8, max_new_tokens=64, generator=gen)
with profile(activities=[ProfilerActivity.CPU]) as prof:
    ro = sample(model, tok, prompts, 8, max_new_tokens=64, generator=gen)
print(f"tokens {sum(ro.num_tokens)}, longest {max(ro.num_tokens)}")
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
