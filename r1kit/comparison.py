"""Several models side by side on the same held-out problems (R1-SPEC §4.3, §4.4).

Every model is evaluated with the same problems, k, sampling settings and seed (the paper's
protocol: pass@1 over k samples at T = 0.6, top-p 0.95, and cons@k), and the results are one
table: printed, and written as Markdown and JSON. `r1kit eval MODEL...` and `r1kit distill` use it.

Columns: pass@1 with its 95% bootstrap interval over problems, cons@k, pass@k; `format`: the share
of completions in R1-Zero's format or the cold-start summary format (a pipeline's R1 and its
students write the second); `tokens`: mean completion length in the model's own tokens (students
may tokenize differently); `reflection`: share with a re-check word (R1-SPEC §6); `params`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from r1kit.checkpoint import atomic_write_text
from r1kit.config import EvalConfig
from r1kit.evaluation import evaluate
from r1kit.models import load_model
from r1kit.rewards import get_reward
from r1kit.tasks.base import Problem


def evaluate_row(label: str, path: str, problems: list[Problem], cfg: EvalConfig, *,
                 dtype: str = "float32", device="cpu", template: str = "r1_zero",
                 stop: list[str] = ("</answer>",), seed: int = 0, attn: str = "auto"
                 ) -> tuple[dict, list[dict]]:
    """(table row, first sample of each problem) of the model at `path`."""
    t0 = time.time()
    model, tokenizer = load_model(path, dtype, device, attn)
    res = evaluate(model, tokenizer, problems, cfg, template=template, stop=list(stop), seed=seed)
    per_row = [problems[i // res.k] for i in range(len(res.completions))]
    fmt, summary = get_reward("format"), get_reward("summary_format")
    formatted = [fmt(t, p) == 1.0 or summary(t, p) == 1.0
                 for t, p in zip(res.completions, per_row)]
    row = {
        "model": label, "path": str(path), "template": template, "arch": model.config.model_type,
        "params": sum(p.numel() for p in model.parameters()),
        "pass@1": res.pass1, "pass@1_ci": list(res.pass1_ci), "pass@k": res.pass_k,
        "cons@k": res.cons_k, "format": sum(formatted) / len(formatted),
        "tokens": res.mean_tokens, "truncated": res.truncated, "reflection": res.reflection,
        "seconds": round(time.time() - t0, 1),
    }
    return row, res.samples


def markdown_table(rows: list[dict], k: int, ratio_to: str | None = None) -> str:
    """The comparison table; with `ratio_to`, a column of pass@1 relative to that row's model."""
    ref = next((r["pass@1"] for r in rows if r["model"] == ratio_to), None)
    show_ratio = ref is not None
    pass_k = f" pass@{k} |" if k > 1 else ""  # pass@1 again at k = 1
    head = (f"| model | arch | params | pass@1 | 95% CI | cons@{k} |{pass_k} format | tokens | "
            "reflection |")
    sep = "|---|---|---|---|---|---|" + ("---|" if k > 1 else "") + "---|---|---|"
    if show_ratio:
        head, sep = head + f" vs {ratio_to} |", sep + "---|"
    lines = [head, sep]
    for r in rows:
        lo, hi = r["pass@1_ci"]
        line = (f"| {r['model']} | {r['arch']} | {r['params'] / 1e6:.2f}M | {r['pass@1']:.3f} | "
                f"[{lo:.3f}, {hi:.3f}] | {r['cons@k']:.3f} |"
                + (f" {r['pass@k']:.3f} |" if k > 1 else "")
                + f" {r['format']:.3f} | {r['tokens']:.1f} | {r['reflection']:.3f} |")
        if show_ratio:
            line += f" {r['pass@1'] / ref:.2f} |" if ref else " n/a |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def write_comparison(folder: Path, name: str, title: str, rows: list[dict], cfg: EvalConfig,
                     num_problems: int, extra: dict | None = None,
                     ratio_to: str | None = None) -> str:
    """Write `name`.md and `name`.json into `folder` (atomically); returns the table."""
    table = markdown_table(rows, cfg.k, ratio_to)
    setup = (f"Held-out problems: {num_problems}, k = {cfg.k} samples each (T = {cfg.temperature}, "
             f"top-p {cfg.top_p}, at most {cfg.max_new_tokens} new tokens).")
    note = ("format: share of completions in R1-Zero's format or the cold-start summary format. "
            "tokens: mean completion length in the model's own tokens. reflection: share with a "
            "re-check word (R1-SPEC §6).")
    templates = {r["model"]: r["template"] for r in rows if r.get("template")}
    if len(set(templates.values())) > 1:  # each model was prompted as it was trained
        note += " Prompt templates: " + ", ".join(f"{m}: {t}" for m, t in templates.items()) + "."
    atomic_write_text(Path(folder) / f"{name}.md", f"# {title}\n\n{setup}\n\n{table}\n{note}\n")
    record = {"num_problems": num_problems, "k": cfg.k, "temperature": cfg.temperature,
              "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens, **(extra or {}),
              "rows": rows}
    atomic_write_text(Path(folder) / f"{name}.json", json.dumps(record, indent=2) + "\n")
    return table
