"""R1-Zero on the built-in base model, several seeds: held-out pass@1 before/after and the curve.

Runs the real CLI (`r1kit zero --config recipes/tiny/zero.yaml --set run.seed=S`) one seed after
another and writes a markdown report with the machine, the command, each seed's summary and its
held-out pass@1 curve.

    .venv/bin/python benchmarks/zero_seeds.py --seeds 0 1 2 --out benchmarks/results/zero_tiny.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from results_file import write_results

ROOT = Path(__file__).resolve().parent.parent


def run_seed(seed: int, config: str, extra: list[str], out_dir: Path) -> Path:
    name = f"seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = [sys.executable, "-m", "r1kit.cli", "zero", "--config", config,
           "--set", f"run.seed={seed}", "--set", f"run.out_dir={out_dir}",
           "--set", f"run.name={name}"]
    for e in extra:
        cmd += ["--set", e]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return out_dir / name


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--config", default="recipes/tiny/zero.yaml")
    ap.add_argument("--set", action="append", default=[], help="extra overrides for every seed")
    ap.add_argument("--runs", default="benchmarks/out/zero-seeds")
    ap.add_argument("--out", default="benchmarks/results/zero_tiny.md")
    args = ap.parse_args()

    out_dir = ROOT / args.runs
    rows, curves = [], {}
    for seed in args.seeds:
        run = run_seed(seed, args.config, args.set, out_dir)
        summary = json.loads((run / "summary.json").read_text())
        evals = [json.loads(x) for x in (run / "eval.jsonl").read_text().splitlines()]
        rows.append((seed, summary))
        curves[seed] = [(e["step"], e["eval/pass@1"]) for e in evals]

    import torch

    lines = [
        "# R1-Zero on the built-in base model",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        f"- python {platform.python_version()}, torch {torch.__version__}",
        (f"- command (per seed): `r1kit zero --config {args.config} --set run.seed=S"
         + "".join(f" --set {e}" for e in args.set) + "`"),
        (f"- report: `.venv/bin/python benchmarks/zero_seeds.py --seeds "
         f"{' '.join(map(str, args.seeds))}" + "".join(f" --set {e}" for e in args.set)
         + f" --out {args.out}`"),
        "",
        ("| seed | base pass@1 [95% CI] | final pass@1 [95% CI] | base cons@k | final cons@k "
         "| steps | training wall s |"),
        "|---|---|---|---|---|---|---|",
    ]
    for seed, s in rows:
        lines.append(
            f"| {seed} | {s['base_pass@1']:.3f} [{s['base_pass@1_ci'][0]:.3f}, "
            f"{s['base_pass@1_ci'][1]:.3f}] | {s['final_pass@1']:.3f} "
            f"[{s['final_pass@1_ci'][0]:.3f}, {s['final_pass@1_ci'][1]:.3f}] | "
            f"{s['base_cons@k']:.3f} | {s['final_cons@k']:.3f} | {s['steps']} | "
            f"{s['wall_seconds']:.0f} |"
        )
    finals = [s["final_pass@1"] for _, s in rows]
    lines += ["", (f"Mean final pass@1 over seeds: {statistics.mean(finals):.3f} "
                   f"(min {min(finals):.3f}, max {max(finals):.3f})."), "",
              "## Held-out pass@1 curve", "",
              ("| step | " + " | ".join(f"seed {s}" for s in curves) + " |"),
              "|---|" + "---|" * len(curves)]
    steps = sorted({st for c in curves.values() for st, _ in c})
    for st in steps:
        vals = [dict(c).get(st) for c in curves.values()]
        lines.append(f"| {st} | " + " | ".join("" if v is None else f"{v:.3f}" for v in vals) + " |")
    text = "\n".join(lines) + "\n"
    write_results(ROOT / args.out, text)
    print(text)


if __name__ == "__main__":
    main()
