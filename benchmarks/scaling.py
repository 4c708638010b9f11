"""How a GRPO step's time and peak memory grow with G, with completion length and with model size
(issue #6), on this machine's CPU.

One step is what `r1kit zero` runs (r1kit/stages/zero.py): `sample` B prompts x G completions with
the hf engine, then `update_policy` (reference log-probs for the KL term, beta = 1e-3 as in the
tiny recipe, then forward + backward + AdamW over micro-batches of 64 rows). One factor moves at a
time from the base point (B = 8, G = 8, at most 64 new tokens, a 0.6M-parameter Llama). Each point
runs in a fresh process (peak RSS is per process): one warm-up step, then the median of
`--repeats` steps.

Models are random-weight Llamas with the built-in tokenizer (tests/tiny_models.py): they stop at
EOS with probability about 1/638 per token, so completions are shorter than the budget at the long
end; the table gives the tokens actually generated.

    .venv/bin/python benchmarks/scaling.py --out benchmarks/results/scaling.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_file import write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BASE = {"B": 8, "G": 8, "T": 64, "model": "0.6M"}
MODELS = {  # name -> (hidden, layers, heads): about 10 * hidden^2 parameters per layer
    "0.6M": (128, 3, 4), "2.8M": (256, 4, 4), "9M": (384, 6, 6), "30M": (576, 9, 9),
}
SWEEPS = {"G": [2, 4, 8, 16, 32], "T": [64, 128, 256, 512], "model": list(MODELS)}


def points() -> list[dict]:
    out, seen = [], set()
    for factor, values in SWEEPS.items():
        for v in values:
            p = dict(BASE, **{factor: v})
            key = tuple(sorted(p.items()))
            out.append(dict(p, sweep=factor, repeat_of_base=key in seen))
            seen.add(key)
    return out


def child(point: dict, repeats: int, threads: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r1kit import grpo, memory
    from r1kit.config import RLConfig, RolloutConfig
    from r1kit.rollout.hf import sample
    from r1kit.stages.zero import Timer, update_policy
    from r1kit.templates import render_prompt
    from tests.tiny_models import build

    torch.set_num_threads(threads)
    hidden, layers, heads = MODELS[point["model"]]
    folder = build(Path(tempfile.mkdtemp()) / "m", "llama", hidden=hidden, layers=layers,
                   heads=heads, kv_heads=heads)
    policy = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    B, G, T = point["B"], point["G"], point["T"]
    rl = RLConfig(beta=1e-3, micro_batch_size=64, dynamic_sampling=False)
    ref = memory.make_reference(policy, rl.beta, False, False)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-5)
    rollout = RolloutConfig(max_new_tokens=T)
    gen = torch.Generator().manual_seed(0)
    steps = []
    for i in range(repeats + 1):
        prompts = [render_prompt(f"Compute {10 + 7 * (i * B + j) % 90}+{j % 9}-3")
                   for j in range(B)]
        t0 = time.perf_counter()
        ro = sample(policy, tok, prompts, G, max_new_tokens=T, temperature=1.0, stop=[],
                    generator=gen)
        t_gen = time.perf_counter() - t0
        rewards = torch.tensor([float(n % 3) for n in ro.num_tokens])  # any reward with variance
        adv = grpo.group_advantages(rewards, G)
        timer = Timer()
        update_policy(policy, ref, opt, ro, adv, ro.completion_mask, torch.arange(len(ro)), rl,
                      rollout, T, timer)
        steps.append({"step": time.perf_counter() - t0, "generate": t_gen,
                      "ref_logprobs": timer.times.get("time/logprobs", 0.0),
                      "update": timer.times.get("time/update", 0.0),
                      "tokens": sum(ro.num_tokens) / len(ro)})
    steps = steps[1:]  # the first is warm-up
    med = {k: statistics.median(s[k] for s in steps) for k in steps[0]}
    return dict(point, **med, params=sum(p.numel() for p in policy.parameters()),
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    labels = {"G": "G (completions per prompt; B = 8)", "T": "max new tokens",
              "model": "parameters (M)"}
    for col, factor in enumerate(SWEEPS):
        rs = [r for r in rows if r["sweep"] == factor]
        xs = [r["params"] / 1e6 if factor == "model" else r[factor] for r in rs]
        ax = axes[0, col]
        bottom = [0.0] * len(rs)
        for phase in ("generate", "ref_logprobs", "update"):
            ys = [r[phase] for r in rs]
            ax.bar([str(round(x, 1)) for x in xs], ys, bottom=bottom, label=phase)
            bottom = [b + y for b, y in zip(bottom, ys)]
        ax.set_title(f"step time vs {factor}")
        ax.set_ylabel("seconds per step")
        ax.set_xlabel(labels[factor])
        if col == 0:
            ax.legend()
        ax = axes[1, col]
        ax.plot([str(round(x, 1)) for x in xs], [r["peak_rss_mb"] for r in rs], marker="o")
        ax.set_ylabel("peak RSS (MiB)")
        ax.set_xlabel(labels[factor])
        ax.set_ylim(bottom=0)
    fig.suptitle("GRPO step on CPU (hf engine, beta = 1e-3): time by phase and peak memory")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/scaling.md")
    ap.add_argument("--json", default="benchmarks/out/scaling.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child), args.repeats, args.threads)))
        return

    rows = []
    load0 = os.getloadavg()
    for p in points():
        if p.pop("repeat_of_base"):  # the base point is in every sweep: measured once
            base = next(r for r in rows if all(r[k] == p[k] for k in BASE))
            rows.append(dict(base, sweep=p["sweep"]))
            continue
        out = subprocess.run([sys.executable, __file__, "--child", json.dumps(p), "--repeats",
                              str(args.repeats), "--threads", str(args.threads)],
                             check=True, capture_output=True, text=True, cwd=ROOT,
                             env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{p['sweep']:>5} B={r['B']} G={r['G']} T={r['T']} {r['model']:>5}: step "
              f"{r['step']:.2f}s (gen {r['generate']:.2f}, ref {r['ref_logprobs']:.2f}, update "
              f"{r['update']:.2f}), {r['tokens']:.0f} tokens, {r['peak_rss_mb']:.0f} MiB", flush=True)
    Path(ROOT / args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(ROOT / args.json).write_text(json.dumps(rows, indent=1))
    png = Path(ROOT / args.out).with_suffix(".png")
    plot(rows, png)
    write_report(rows, args, load0, os.getloadavg(), png.name)


def write_report(rows, args, load0, load1, png: str) -> None:
    import torch

    lines = [
        "# Scaling of a GRPO step on CPU: G, completion length, model size (issue #6)",
        "",
        (f"- date: {time.strftime('%Y-%m-%d %H:%M')}; machine: {platform.machine()}, "
        f"{os.cpu_count()} CPUs, {platform.platform()}; python {platform.python_version()}, "
        f"torch {torch.__version__}, {args.threads} torch threads"),
        (f"- command: `.venv/bin/python benchmarks/scaling.py --repeats {args.repeats} "
        f"--threads {args.threads}`; load average {load0[0]:.2f} at the start, "
        f"{load1[0]:.2f} at the end"),
        ("- a step = sample B x G completions (hf engine) + reference log-probs (beta = 1e-3) + "
        "forward/backward/AdamW in micro-batches of 64 rows; median of "
        f"{args.repeats} steps after a warm-up; one factor varies from B = 8, G = 8, T = 64, 0.6M"),
        ("- random-weight Llamas (they rarely emit EOS): `tokens` is the mean completion length "
        "actually generated"),
        "",
        f"![scaling]({png})",
        "",
    ]
    for factor in SWEEPS:
        lines += [f"## Varying {factor}", "",
                  ("| B | G | max new tokens | params | tokens | step s | generate s | "
                  "ref log-probs s | update s | peak RSS MiB | step s per 1k tokens |"),
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r["sweep"] == factor):
            k_tokens = r["B"] * r["G"] * r["tokens"] / 1000
            lines.append(
                f"| {r['B']} | {r['G']} | {r['T']} | {r['params'] / 1e6:.1f}M | "
                f"{r['tokens']:.0f} | {r['step']:.2f} | {r['generate']:.2f} | "
                f"{r['ref_logprobs']:.2f} | {r['update']:.2f} | {r['peak_rss_mb']:.0f} | "
                f"{r['step'] / k_tokens:.3f} |")
        lines.append("")
    write_results(ROOT / args.out, "\n".join(lines))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
