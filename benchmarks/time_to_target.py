"""Time for R1-Zero on the built-in base to reach a held-out pass@1 target (issue #6).

Runs the real CLI (`r1kit zero --config recipes/tiny/zero.yaml`) once per (variant, seed), with a
held-out evaluation every `--every` steps, and stops a run as soon as an evaluation reaches the
target (the run's own `rl.steps` is kept, so a decaying lr schedule is the recipe's). Time to target = the summed `time/step` of the steps up to that evaluation (training time
only: the dense evaluations are the benchmark's, not the run's), and the step it happened at.

    .venv/bin/python benchmarks/time_to_target.py --seeds 0 1 \\
        --variant "recorded:" --variant "lr3e-4:rl.lr=3e-4" \\
        --out benchmarks/results/time_to_target.md

A variant is NAME:KEY=VALUE,KEY=VALUE (overrides on top of the recipe); "recorded:" (an empty
list of overrides) is the recipe as it is now; results/time_to_target.md names the R1-Zero
issue's settings as its own variant.
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


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            break
    return rows


def run_one(name: str, sets: list[str], seed: int, args) -> dict:
    run = f"{name}-s{seed}-{time.strftime('%H%M%S')}"
    out_dir = ROOT / args.runs
    cmd = [sys.executable, "-m", "r1kit.cli", "zero", "--config", args.config,
           "--set", f"run.seed={seed}", "--set", f"run.out_dir={out_dir}",
           "--set", f"run.name={run}", "--set", f"run.threads={args.threads}",
           "--set", f"eval.every={args.every}",
           "--set", "run.checkpoint_every=0", "--set", "run.report_to=[]"]
    for s in sets:
        cmd += ["--set", s]
    print("$", " ".join(cmd[2:]), flush=True)
    folder = out_dir / run
    load0 = os.getloadavg()[0]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    hit, stopped = None, False
    while proc.poll() is None:
        time.sleep(1.0)
        for e in _read_jsonl(folder / "eval.jsonl"):
            if e["step"] > 0 and e["eval/pass@1"] >= args.target:
                hit = e
                break
        steps = _read_jsonl(folder / "metrics.jsonl")
        if hit or (steps and steps[-1]["step"] >= args.max_steps):  # the schedule stays the run's
            proc.terminate()
            proc.wait()
            stopped = True
            break
    if proc.returncode not in (0, None) and not stopped:
        raise SystemExit(f"{name} seed {seed} failed:\n{proc.stderr.read()[-3000:]}")
    evals = _read_jsonl(folder / "eval.jsonl")
    hit = hit or next((e for e in evals if e["step"] > 0 and e["eval/pass@1"] >= args.target),
                      None)
    metrics = [m for m in _read_jsonl(folder / "metrics.jsonl") if "time/step" in m]
    reached = hit["step"] if hit else None
    upto = [m for m in metrics if reached is None or m["step"] <= reached]
    return {
        "variant": name, "seed": seed, "sets": sets, "folder": os.path.relpath(folder, ROOT),
        "step": reached, "pass@1": hit["eval/pass@1"] if hit else None,
        "seconds": round(sum(m["time/step"] for m in upto), 1) if hit else None,
        "step_s": round(statistics.median(m["time/step"] for m in upto), 3),
        "gen_s": round(statistics.median(m["time/generate"] for m in upto), 3),
        "curve": [(e["step"], e["eval/pass@1"]) for e in evals],
        "load": (round(load0, 2), round(os.getloadavg()[0], 2)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME:KEY=VALUE,KEY=VALUE (repeatable); default: the recipe as recorded")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--config", default="recipes/tiny/zero.yaml")
    ap.add_argument("--target", type=float, default=0.70)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--max-steps", type=int, default=200,
                    help="give up after this many steps (rl.steps, and so the lr schedule, stay "
                         "the recipe's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", default="benchmarks/out/time-to-target")
    ap.add_argument("--json", default="benchmarks/out/time-to-target/results.json")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    variants = []
    for v in args.variant or ["recorded:"]:
        name, _, sets = v.partition(":")
        variants.append((name, [s for s in sets.split(",") if s]))

    results = []
    for seed in args.seeds:  # seeds outermost: variants interleave, so load drift hits all
        for name, sets in variants:
            r = run_one(name, sets, seed, args)
            print(json.dumps({k: r[k] for k in ("variant", "seed", "step", "pass@1", "seconds",
                                                "step_s", "load")}), flush=True)
            results.append(r)
            Path(ROOT / args.json).parent.mkdir(parents=True, exist_ok=True)
            (ROOT / args.json).write_text(json.dumps(results, indent=1))
    if args.out:
        write_report(results, variants, args)


def write_report(results: list[dict], variants, args) -> None:
    import torch

    lines = [
        f"# Time to {args.target:.0%} held-out pass@1: R1-Zero on the built-in base (issue #6)",
        "",
        (f"- date: {time.strftime('%Y-%m-%d %H:%M')}; machine: {platform.machine()}, "
        f"{os.cpu_count()} CPUs, {platform.platform()}"),
        (f"- python {platform.python_version()}, torch {torch.__version__}, "
        f"{args.threads} torch threads"),
        f"- command: `.venv/bin/python benchmarks/time_to_target.py --seeds "
        f"{' '.join(map(str, args.seeds))} "
        + " ".join(f'--variant "{n}:{",".join(s)}"' for n, s in variants)
        + f" --every {args.every} --target {args.target} --max-steps {args.max_steps}"
        + (f" --out {args.out}" if args.out else "") + "`",
        (f"- each run: `r1kit zero --config {args.config}` plus the variant's overrides, a "
        f"held-out evaluation (200 problems, k=4, T=0.6) every {args.every} steps, stopped at the "
        f"first evaluation >= {args.target}. Seconds = summed `time/step` up to that step "
        "(training only; the dense evaluations are the benchmark's)."),
        "",
        ("| variant | overrides | seed | step reached | pass@1 there | seconds to target | "
        "median step s | median generate s | load avg (start, end) |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['variant']} | {', '.join(r['sets']) or '(recipe)'} | {r['seed']} | "
                     f"{r['step']} | {r['pass@1']} | {r['seconds']} | {r['step_s']} | "
                     f"{r['gen_s']} | {r['load'][0]}, {r['load'][1]} |")
    lines += ["", "| variant | mean seconds to target | mean steps | ratio to the first variant |",
              "|---|---|---|---|"]
    base = None
    for name, _ in variants:
        rs = [r for r in results if r["variant"] == name and r["seconds"] is not None]
        if len(rs) < len([r for r in results if r["variant"] == name]):
            lines.append(f"| {name} | not reached in every seed | | |")
            continue
        secs = statistics.mean(r["seconds"] for r in rs)
        base = base or secs
        lines.append(f"| {name} | {secs:.1f} | {statistics.mean(r['step'] for r in rs):.0f} | "
                     f"{base / secs:.2f}x |")
    write_results(ROOT / args.out, "\n".join(lines) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
