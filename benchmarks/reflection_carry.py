"""Reflection and length under R1-Zero RL on the built-in task's two tiers (R1-SPEC §6: R1-Zero's
responses grew longer and more reflective as RL went on).

For each held-out evaluation of each run (samples/eval-TAG.jsonl) it counts, over all completions:
pass@1; the reflection-word rate; mean tokens; the share of steps written with a wrong result
(slips); `wait, ...` re-checks per completion, and which of them change the step before into a
correct one (a fix) or restate it unchanged (a repeat). So it says whether RL raised accuracy by
slipping less or by catching more, and what its re-checks are.

    r1kit zero --config recipes/tiny/zero.yaml --set data.source=builtin:carry \
        --set run.out_dir=benchmarks/out --set run.name=zero-carry
    python benchmarks/reflection_carry.py default=benchmarks/out/zero-seeds/seed0-* \
        carry=benchmarks/out/zero-carry --out benchmarks/results/reflection_carry.md
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

BEGIN, END = "<!-- table: benchmarks/reflection_carry.py -->", "<!-- end table -->"
STEP = re.compile(r"(wait,\s*)?(\d+)\s*([+-])\s*(\d+)\s*(?:=|is)\s*(-?\d+)")


def trace_stats(completion: str) -> dict[str, int]:
    """Counts for one completion's reasoning: `steps` written (re-checks included), `slips`
    (steps whose result is wrong), `rechecks` (`wait, ...` steps), `fixes` (a re-check that
    changes the step before it into a correct one: a caught slip or a misread operand) and
    `repeats` (a re-check that restates the step before it unchanged)."""
    found = [(bool(w), int(a), op, int(b), int(c))
             for w, a, op, b, c in STEP.findall(completion.split("</think>")[0])]
    out = dict.fromkeys(("steps", "slips", "rechecks", "fixes", "repeats"), 0)
    for i, (recheck, a, op, b, c) in enumerate(found):
        right = c == (a + b if op == "+" else a - b)
        out["steps"] += 1
        out["slips"] += not right
        if recheck and i:
            out["rechecks"] += 1
            if found[i - 1][1:] == (a, op, b, c):
                out["repeats"] += 1
            elif right:
                out["fixes"] += 1
    return out


def eval_rows(run: Path) -> list[dict]:
    evals = {r["tag"]: r for r in map(json.loads, (run / "eval.jsonl").read_text().splitlines())}
    rows = []
    for tag, e in sorted(evals.items(), key=lambda kv: kv[1]["step"]):
        samples = [json.loads(line) for line in
                   (run / "samples" / f"eval-{tag}.jsonl").read_text().splitlines()]
        texts = [c for s in samples for c in (s["completions"] if "completions" in s
                                              else [s["completion"]])]
        n = dict.fromkeys(("steps", "slips", "rechecks", "fixes", "repeats"), 0)
        for t in texts:
            for k, v in trace_stats(t).items():
                n[k] += v
        rows.append({"step": e["step"], "pass@1": e["eval/pass@1"],
                     "reflection": e["eval/reflection"], "tokens": e["eval/tokens"],
                     "slip_rate": n["slips"] / max(n["steps"], 1),
                     "rechecks": n["rechecks"] / len(texts),
                     "fixes": n["fixes"] / max(n["rechecks"], 1),
                     "repeats": n["repeats"] / max(n["rechecks"], 1)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="NAME=RUN_FOLDER")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/reflection_carry.md"))
    args = ap.parse_args()
    lines = [("| tier | step | pass@1 | reflection | tokens | slipped steps | re-checks per "
             "completion | re-checks that fix | re-checks that repeat |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for spec in args.runs:
        name, _, folder = spec.partition("=")
        for r in eval_rows(Path(folder)):
            lines.append(f"| {name} | {r['step']} | {r['pass@1']:.3f} | {r['reflection']:.3f} | "
                         f"{r['tokens']:.1f} | {r['slip_rate']:.3f} | {r['rechecks']:.2f} | "
                         f"{r['fixes']:.2f} | {r['repeats']:.2f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out.exists():  # keep the hand-written discussion; replace only the table
        text = args.out.read_text()
        start, end = text.find(BEGIN), text.find(END)
        if start >= 0 and end > start:
            table = text[: start + len(BEGIN)] + "\n" + table + text[end:]
    else:
        table = f"{BEGIN}\n{table}{END}\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)


if __name__ == "__main__":
    main()
