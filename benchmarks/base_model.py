"""Build the built-in base model from scratch and check it against its targets.

- build time on this machine (target: at most 20 minutes on 2 cores);
- held-out pass@1 at T=0.6 / top-p 0.95, k=4, 200 problems (target: between 5% and 35%);
- format rate (target: at least 90% of completions in the R1-Zero template);
- reproducibility: the rebuilt weights against the copy shipped in r1kit/assets/tiny-base.

    .venv/bin/python benchmarks/base_model.py --out benchmarks/results/base_model.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's r1kit

from results_file import write_results

from r1kit.config import BaseConfig, EvalConfig
from r1kit.evaluation import evaluate
from r1kit.models import load_model
from r1kit.stages.base import PACKAGED_BASE
from r1kit.stages.base import main as build
from r1kit.tasks.arithmetic import sample_problems

ROOT = Path(__file__).resolve().parent.parent


def describe(folder: Path) -> dict:
    model, tok = load_model(str(folder))
    problems = sample_problems(200, "heldout", seed=0)
    res = evaluate(model, tok, problems, EvalConfig(k=4))
    return {"pass@1": res.pass1, "pass@1_ci": res.pass1_ci, "cons@4": res.cons_k,
            "format": res.format_rate, "reflection": res.reflection, "tokens": res.mean_tokens}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/base_model.md")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        record = build(BaseConfig(), out=Path(tmp) / "base", log=print)
        seconds = time.time() - t0
        rebuilt = describe(Path(tmp) / "base")
        same = None
        if (PACKAGED_BASE / "model.safetensors").is_file():
            a = load_file(str(Path(tmp) / "base" / "model.safetensors"))
            b = load_file(str(PACKAGED_BASE / "model.safetensors"))
            same = max((a[k] - b[k]).abs().max().item() for k in a)
        shipped = describe(PACKAGED_BASE) if PACKAGED_BASE.is_dir() else None
    lines = [
        "# The built-in base model",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M')}",
        (f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
         f"{torch.get_num_threads()} threads"),
        "- command: `.venv/bin/python benchmarks/base_model.py` (builds with `r1kit base` defaults)",
        (f"- build: {seconds / 60:.1f} min, {record['params'] / 1e6:.2f}M parameters, vocab "
         f"{record['vocab']}, final pretraining loss {record['final_loss']:.3f}"),
        f"- rebuilt vs shipped weights, max abs difference: {same}",
        "",
        "| model | held-out pass@1 [95% CI] | cons@4 | format | reflection | tokens |",
        "|---|---|---|---|---|---|",
    ]
    for name, d in (("rebuilt", rebuilt), ("shipped", shipped)):
        if d:
            lines.append(f"| {name} | {d['pass@1']:.3f} [{d['pass@1_ci'][0]:.3f}, "
                         f"{d['pass@1_ci'][1]:.3f}] | {d['cons@4']:.3f} | {d['format']:.3f} | "
                         f"{d['reflection']:.3f} | {d['tokens']:.1f} |")
    text = "\n".join(lines) + "\n"
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    write_results(out, text)
    print(text)
    print(json.dumps({"rebuilt": rebuilt, "max_abs_diff": same}))


if __name__ == "__main__":
    main()
