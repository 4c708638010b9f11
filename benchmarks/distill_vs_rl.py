"""Distillation vs RL on the same small student, in miniature (R1-SPEC §4.3, R1v1 Table 6).

The paper: for a small model, SFT on a strong teacher's verified samples beats R1-Zero-style RL
on the same base (R1-Distill-Qwen-32B 72.6 vs R1-Zero-Qwen-32B 47.0 AIME pass@1). Here:
    1. `r1kit distill --teacher T --students S1,S2`: sample the teacher, filter, SFT each student,
       and evaluate teacher, student bases and distilled students on the same held-out problems;
    2. `r1kit zero` (R1-Zero GRPO, recipes/tiny/zero.yaml) straight from the RL student's base, with
       a held-out evaluation every `--eval-every` steps;
    3. the same with 10x the learning rate (`--extra-lr`, 1e-3), in case 1e-4 is simply too low
       for a 0.3M model;
    4. for each GRPO run, the checkpoint whose training time (sum of its steps' time) first
       reaches the distilled student's budget (teacher sampling + dataset + that student's SFT),
       and its last checkpoint, next to the distill table: same 200 problems, k = 4, T = 0.6,
       seed 0.
The teacher's own training is not counted in the distillation budget (as in the paper).
Both sides run at `run.threads` threads; run them on a quiet machine, or note the load.

    python benchmarks/distill_vs_rl.py --teacher benchmarks/out/zero-seeds/seed0-*/final

Writes benchmarks/out/distill/results.json and prints the combined table (Markdown).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
R1KIT = [sys.executable, "-m", "r1kit.cli"]


def run(cmd: list[str]) -> float:
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.time() - t0


def distill(args, out: Path) -> dict:
    folder = out / "distill"
    if (folder / "manifest.json").is_file():
        run([*R1KIT, "distill", "--resume", str(folder)])
    else:
        run([*R1KIT, "distill", "--teacher", args.teacher, "--students", args.students,
             "--set", f"run.out_dir={out}", "--set", "run.name=distill",
             "--set", f"run.threads={args.threads}"])
    return json.loads((folder / "distill.json").read_text())


def grpo(args, out: Path, base: str, lr: float | None = None, steps: int | None = None) -> Path:
    """R1-Zero GRPO from the student's base (recipes/tiny/zero.yaml; `lr` overrides its 1e-4)."""
    folder = out / (f"zero-{args.rl_student}" + (f"-lr{lr:g}" if lr else ""))
    if (folder / "summary.json").is_file():
        return folder
    cmd = [*R1KIT, "zero"]
    if (folder / "checkpoints" / "latest").is_file():  # (its config.yaml holds the settings)
        cmd += ["--resume", str(folder)]
    else:
        cmd += ["--config", "recipes/tiny/zero.yaml", "--set", f"model.path={base}", "--set", f"rl.steps={steps or args.rl_steps}",
                "--set", f"eval.every={args.eval_every}", "--set", "eval.max_new_tokens=96",
                "--set", f"run.out_dir={out}",
                "--set", f"run.name={folder.name}", "--set", f"run.threads={args.threads}"]
        cmd += ["--set", f"rl.lr={lr}"] if lr else []
    run(cmd)
    return folder


def long_sft(args, out: Path, base: str) -> dict:
    """The RL student's SFT on the same distillation data for `--long-epochs` epochs (`r1kit sft`
    with the distill run's lr schedule and batch size); its summary (held-out eval at the end)."""
    folder = out / f"sft-{args.rl_student}-{args.long_epochs}ep"
    if not (folder / "summary.json").is_file():
        cmd = [*R1KIT, "sft"]
        cmd += (["--resume", str(folder)] if (folder / "checkpoints" / "latest").is_file() else [
            "--set", f"model.path={base}",
            "--set", f"data.train_file={out / 'distill' / 'dataset' / 'train.jsonl'}",
            "--set", f"sft.epochs={args.long_epochs}", "--set", "sft.lr=1e-3",
            "--set", "sft.min_lr=1e-4", "--set", "sft.batch_size=32",
            "--set", "sft.micro_batch_size=32", "--set", "eval.num_problems=200",
            "--set", "eval.k=4", "--set", "eval.max_new_tokens=96", "--set", "eval.every=0",
            "--set", f"run.out_dir={out}", "--set", f"run.name={folder.name}",
            "--set", f"run.threads={args.threads}", "--set", "run.checkpoint_every=100"])
        run(cmd)
    return json.loads((folder / "summary.json").read_text())


def grpo_curve(folder: Path) -> list[dict]:
    """Held-out evaluations of the GRPO run with the training seconds spent before each."""
    steps = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    spent, total = {}, 0.0
    for m in steps:
        total += m.get("time/step", 0.0)
        spent[m["step"]] = total
    curve = []
    for e in (json.loads(line) for line in (folder / "eval.jsonl").read_text().splitlines()):
        curve.append({"step": e["step"], "train_seconds": round(spent.get(e["step"], 0.0), 1),
                      "pass@1": e["eval/pass@1"], "pass@1_ci": [e["eval/pass@1_lo"],
                                                                e["eval/pass@1_hi"]],
                      "cons@k": next(v for k, v in e.items() if k.startswith("eval/cons@")),
                      "format": e["eval/format"]})
    return curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--students", default="tiny-llama,tiny-qwen")
    ap.add_argument("--rl-student", default="tiny-llama")
    ap.add_argument("--rl-steps", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--extra-lr", type=float, default=1e-3,
                    help="a second GRPO run at this lr (0 = none), --extra-steps steps")
    ap.add_argument("--extra-steps", type=int, default=200)
    ap.add_argument("--long-epochs", type=int, default=10,
                    help="also SFT the RL student this many epochs on the same data (0 = no)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/out/distill")
    args = ap.parse_args()
    out = ROOT / args.out

    sys.path.insert(0, str(ROOT))
    from r1kit.students import student_path

    table = distill(args, out)
    base = student_path(args.rl_student)
    runs = {"GRPO lr 1e-4 (recipe)": grpo(args, out, base)}
    if args.extra_lr:
        runs[f"GRPO lr {args.extra_lr:g}"] = grpo(args, out, base, args.extra_lr, args.extra_steps)

    long = long_sft(args, out, base) if args.long_epochs else None
    manifest = json.loads((out / "distill" / "manifest.json").read_text())
    parts = {name: p["seconds"] for name, p in manifest["parts"].items()}
    budget = parts["samples"] + parts["dataset"] + parts[f"sft-{args.rl_student}"]
    rows = {r["model"]: r for r in table["rows"]}
    teacher = rows["Teacher"]["pass@1"]
    grpo_runs = {}
    for name, folder in runs.items():
        curve = grpo_curve(folder)
        matched = next((c for c in curve if c["train_seconds"] >= budget), curve[-1])
        grpo_runs[name] = {"folder": str(folder), "curve": curve, "matched": matched,
                           "last": curve[-1]}
    result = {
        "machine": f"{platform.machine()}, {platform.processor() or '?'}",
        "python": platform.python_version(), "teacher": args.teacher,
        "distill_part_seconds": parts, "distill_budget_seconds": round(budget, 1),
        "distill_table": table["rows"], "grpo_student": args.rl_student, "grpo_base": base,
        "grpo": grpo_runs, "long_sft": long,
        "ratios_to_teacher": {m: round(r["pass@1"] / teacher, 3) for m, r in rows.items()},
    }
    if long:
        result["ratios_to_teacher"][f"{args.rl_student} {args.long_epochs} epochs"] = round(
            long["final_pass@1"] / teacher, 3)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")

    s = args.rl_student
    lines = [("base", rows[f"{s} base"], 0.0),
             ("distilled (SFT on the teacher's verified samples)", rows[f"{s} distilled"], budget)]
    if long:
        lines.append((f"distilled, {args.long_epochs} epochs on the same samples",
                      {"pass@1": long["final_pass@1"], "pass@1_ci": long["final_pass@1_ci"],
                       "cons@k": long["final_cons@k"]},
                      parts["samples"] + parts["dataset"] + long["train_seconds"]))
    for name, g in grpo_runs.items():
        reached = g["matched"]["train_seconds"] >= budget
        note = "matched budget" if reached else "under the budget: all it ran"
        lines += [(f"{name}, step {g['matched']['step']} ({note})", g["matched"],
                   g["matched"]["train_seconds"]),
                  (f"{name}, step {g['last']['step']} (last)", g["last"], g["last"]["train_seconds"])]
    print(f"\n| {s} | pass@1 | 95% CI | cons@4 | training seconds |")
    print("|---|---|---|---|---|")
    for label, r, secs in lines:
        lo, hi = r["pass@1_ci"]
        print(f"| {label} | {r['pass@1']:.3f} | [{lo:.3f}, {hi:.3f}] | {r['cons@k']:.3f} | "
              f"{secs:.0f} |")
    print(f"\nteacher pass@1 {teacher:.3f}; ratios to it: {result['ratios_to_teacher']}")
    print(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
