#!/usr/bin/env python
"""Summarize benchmarks/run_trl_comparison.sh: TRL GRPOTrainer vs r1kit, one GRPO step.

Reads trl_run*.json (../shared/peer-bench/trl_grpo_bench.py --json) and r1kit_run*.json
(benchmarks/grpo_step_speed.py --json) from --dir, prints a markdown report and writes it to --out.
Only the standard library is needed.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from pathlib import Path

# Phases common to both, as (label, TRL keys summed, r1kit keys summed) per step.
PHASES = [
    ("generate", ["generate_s"], ["generate_s"]),
    ("reward / score", ["rewards_s"], ["score_s"]),
    ("reference log-probs (no grad)", ["ref_logps_s"], ["ref_logps_s"]),
    ("update: policy fwd + bwd + optimizer", ["loss_fwd_s", "backward_s", "optimizer_s"],
     ["update_s"]),
    ("other (prep, advantages, callbacks)", ["prepare_other_s", "other_s"],
     ["advantage_s", "other_s"]),
]

NOTES = """\
## Configuration (both sides)

Same model folder (the peer bench's `make_tiny_model.py`: random Qwen2, 1.10 M parameters, fp32),
same 512 prompts (`PROMPT_TEMPLATE`, a, b in [10, 99], seed 0) taken in the same order (TRL's
`RepeatSampler`: `randperm` seeded with 0, 8 unique prompts per step), 8 x 8 = 64 completions per
step, at most 64 new tokens, temperature 1.0, top_p 1, no top-k, stop at EOS only, beta = 0.04
against a frozen reference copy (reference log-probs computed every step), lr 1e-5 with linear
decay, AdamW (weight decay 0), grad clip 1.0, one update per rollout (no old-log-prob pass),
token-mean loss (TRL `dapo`), eps 0.2 / 0.2, advantages scaled by the group std, every group kept,
one micro-batch of 64, 10 steps, seed 0, torch's default thread count, CPU, fp32. Reward: 1.0 if
the right integer appears in the completion (regex `-?\\d+`).

Differences that remain, by design or by construction:

- **Generation engine.** TRL calls `transformers.generate` on the 64-row batch (each prompt
  prefilled 8 times; finished rows keep decoding as padding until every row stops or hits 64).
  r1kit's `r1kit.rollout.hf.sample` prefills each distinct prompt once, repeats its KV cache
  8 times, and drops finished rows from the batch. This is the main thing being compared.
- **Random streams.** Same seeds, but the two samplers consume random numbers differently, so the
  completions differ; the work per step (generated tokens) is listed above and is similar in
  distribution, not identical.
- **Optimizer kernel.** TRL uses transformers' default optimizer (`adamw_torch_fused` where
  available); r1kit uses `torch.optim.AdamW` defaults. Either is a few ms per step here.
- **Logging work.** TRL's trainer also computes and gathers its logging metrics (entropy, clip
  ratios, KL); r1kit's `update_policy` computes its own (entropy, clip fraction, KL, grad norm).
- **Phase boundaries.** TRL's phases come from its own profiling hooks and callbacks (see the peer
  bench); r1kit's from `r1kit.stages.zero.Timer`. "update" is forward + backward + grad clip +
  optimizer on both sides; per-step wall time is measured the same way (step start to step end,
  excluding model loading).
"""


def load_runs(folder: Path, prefix: str) -> list[dict]:
    files = sorted(folder.glob(f"{prefix}_run*.json"),
                   key=lambda p: int(re.search(r"run(\d+)", p.stem).group(1)))
    runs = []
    for f in files:
        d = json.loads(f.read_text())
        d["_file"] = f.name
        runs.append(d)
    return runs


def med(xs) -> float:
    xs = list(xs)
    return statistics.median(xs) if xs else float("nan")


def phase_value(step: dict, keys: list[str]) -> float:
    return sum(step.get(k, 0.0) for k in keys)


def fmt(x: float | None, nd: int = 3) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.{nd}f}"


def summarize(trl: list[dict], r1: list[dict], command: str) -> str:
    lines: list[str] = []
    out = lines.append
    steps_n = len(r1[0]["steps"]) if r1 else len(trl[0]["steps"])
    out("# GRPO step speed: r1kit vs Hugging Face TRL `GRPOTrainer` (CPU)")
    out("")
    out(f"Command (from the repository root): `{command}`")
    out("")
    m = r1[0].get("machine", {}) if r1 else {}
    out("## Machine and versions")
    out("")
    out(f"- Machine: {m.get('cpu_model', m.get('processor', '?'))}, {m.get('cpu_count', '?')} "
        f"CPUs (affinity {m.get('cpu_affinity', '?')}), {m.get('mem_total_gib', '?')} GiB RAM, "
        f"{m.get('platform', '?')}")
    if r1:
        la = [r.get("machine", {}).get("loadavg_at_start") for r in r1]
        out("- Load average at the start of each r1kit run: "
            + ", ".join("/".join(f"{x:.2f}" for x in v) if v else "?" for v in la))
    if trl:
        v = trl[0]["versions"]
        out(f"- TRL side: python {v.get('python')}, torch {v.get('torch')}, transformers "
            f"{v.get('transformers')}, trl {v.get('trl')}, accelerate {v.get('accelerate')}, "
            f"torch threads {v.get('torch_threads')}")
    if r1:
        v = r1[0]["versions"]
        out(f"- r1kit side: python {v.get('python')}, torch {v.get('torch')}, transformers "
            f"{v.get('transformers')}, r1kit {v.get('r1kit')} ({v.get('r1kit_git')}), "
            f"torch threads {v.get('torch_threads')}")
    out(f"- {len(trl)} TRL run(s) and {len(r1)} r1kit run(s), alternating, {steps_n} steps each")
    out("")

    # ------------------------------------------------------------------ per run
    out("## Median step time per run (seconds)")
    out("")
    out("| run | TRL, all steps | TRL, steps 2.. | r1kit, all steps | r1kit, steps 2.. "
        "| TRL tokens | r1kit tokens |")
    out("|---|---|---|---|---|---|---|")
    for i in range(max(len(trl), len(r1))):
        t = trl[i] if i < len(trl) else None
        r = r1[i] if i < len(r1) else None

        def cells(d):
            if d is None:
                return ["", ""]
            w = [s["wall_s"] for s in d["steps"]]
            return [fmt(med(w)), fmt(med(w[1:])) if len(w) > 1 else "n/a"]

        out(f"| {i + 1} | " + " | ".join(cells(t) + cells(r)) + " | "
            + (str(t["total_gen_tokens"]) if t else "") + " | "
            + (str(r["total_gen_tokens"]) if r else "") + " |")
    out("")

    # ------------------------------------------------------------------ pooled + ratio
    def pooled(runs, first: bool):
        return [s["wall_s"] for d in runs for s in (d["steps"] if first else d["steps"][1:])]

    out("## Pooled result")
    out("")
    out("| | TRL | r1kit | ratio TRL / r1kit |")
    out("|---|---|---|---|")
    ratios = {}
    for label, first in (("median step, steps 2.. (s)", False), ("median step, all steps (s)",
                                                                  True)):
        a, b = med(pooled(trl, first)), med(pooled(r1, first))
        ratios[label] = a / b if b else float("nan")
        out(f"| {label} | {fmt(a)} | {fmt(b)} | **{fmt(ratios[label], 2)}x** |")
    a = med(d["sum_step_wall_s"] for d in trl)
    b = med(d["sum_step_wall_s"] for d in r1)
    out(f"| {steps_n} steps, summed wall (s), median over runs | {fmt(a, 2)} | {fmt(b, 2)} | "
        f"{fmt(a / b if b else float('nan'), 2)}x |")
    out(f"| pooled steps | {len(pooled(trl, True))} | {len(pooled(r1, True))} | |")
    gt = sum(d["total_gen_tokens"] for d in trl) / max(1, sum(len(d["steps"]) for d in trl))
    gr = sum(d["total_gen_tokens"] for d in r1) / max(1, sum(len(d["steps"]) for d in r1))
    out(f"| generated tokens per step (mean, up to EOS) | {gt:.0f} | {gr:.0f} | |")
    out(f"| peak RSS (MiB, median over runs) | {fmt(med(d['ru_maxrss_mib'] for d in trl), 0)} | "
        f"{fmt(med(d['ru_maxrss_mib'] for d in r1), 0)} | |")
    out("")
    head = next(iter(ratios.values()))
    if head >= 1:
        verdict = f"r1kit's step is {fmt(head, 2)}x as fast as TRL's"
    else:
        verdict = f"r1kit's step is {fmt(1 / head, 2)}x slower than TRL's"
    out(f"**Ratio TRL / r1kit = {fmt(head, 2)}** (pooled median step time, steps 2..{steps_n}): "
        f"{verdict} on this configuration.")
    out("")

    # ------------------------------------------------------------------ phases
    out("## Where a step's time goes")
    out("")
    out("Pooled per-step median in seconds, and share of the summed step wall time.")
    out("")
    out("| phase | TRL median s | TRL share | r1kit median s | r1kit share | TRL / r1kit |")
    out("|---|---|---|---|---|---|")
    tot_t = sum(s["wall_s"] for d in trl for s in d["steps"]) or float("nan")
    tot_r = sum(s["wall_s"] for d in r1 for s in d["steps"]) or float("nan")
    for label, tk, rk in PHASES:
        vt = [phase_value(s, tk) for d in trl for s in d["steps"]]
        vr = [phase_value(s, rk) for d in r1 for s in d["steps"]]
        mt, mr = med(vt), med(vr)
        out(f"| {label} | {fmt(mt)} | {100 * sum(vt) / tot_t:.1f} % | {fmt(mr)} | "
            f"{100 * sum(vr) / tot_r:.1f} % | {fmt(mt / mr if mr else float('nan'), 2)} |")
    out("")

    # ------------------------------------------------------------------ generation
    out("## Generation throughput")
    out("")
    out("Completion tokens up to and including the first EOS, divided by generation time.")
    out("")
    out("| | " + " | ".join(f"run {i + 1}" for i in range(max(len(trl), len(r1))))
        + " | pooled |")
    out("|---|" + "---|" * (max(len(trl), len(r1)) + 1))
    for name, runs in (("TRL tok/s", trl), ("r1kit tok/s", r1)):
        per = [fmt(d["gen_tok_per_s"], 0) for d in runs]
        tok = sum(d["total_gen_tokens"] for d in runs)
        sec = sum(s["generate_s"] for d in runs for s in d["steps"])
        per += [""] * (max(len(trl), len(r1)) - len(per))
        out(f"| {name} | " + " | ".join(per) + f" | **{fmt(tok / sec if sec else float('nan'), 0)}"
            "** |")
    out("")
    out("TRL's padded rate (64 x longest completion per step, divided by generation time): "
        + fmt(sum(d["total_gen_tokens_padded"] for d in trl)
              / max(1e-9, sum(s["generate_s"] for d in trl for s in d["steps"])), 0)
        + " tok/s. r1kit decodes only live rows, so its padded count is not work it does.")
    out("")
    out(NOTES)
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default="benchmarks/out/trl_comparison")
    p.add_argument("--out", default="benchmarks/results/grpo_step_vs_trl.md")
    p.add_argument("--command", default="bash benchmarks/run_trl_comparison.sh")
    args = p.parse_args()
    folder = Path(args.dir)
    trl, r1 = load_runs(folder, "trl"), load_runs(folder, "r1kit")
    if not trl or not r1:
        raise SystemExit(f"{folder}: need trl_run*.json and r1kit_run*.json "
                         f"(found {len(trl)} and {len(r1)})")
    text = summarize(trl, r1, args.command)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
