"""`r1kit report RUN`: one offline HTML page (`report.html`) that shows a run.

For a run folder (`metrics.jsonl`): plots over steps of the total reward and each reward function
(accuracy among them), completion length, KL, entropy, clip fraction, reflection-word rate,
language consistency, held-out pass@1 and the loss; the eval results as a table; a few sampled
completions from the first and the last logged step with their rewards.

For a distillation folder (`r1kit distill`): the students' SFT curves, the teacher-vs-students
table of `distill.json` and held-out completions of every model.

For a pipeline folder (`manifest.json`, stage sub-folders): the same plots with one line per RL
stage (`01-zero`, `04-dev2`, `07-r1`; x = the stage's own step), the per-stage table of
`pipeline.json`, and a few held-out completions of every checkpoint (`eval/LABEL.jsonl`).

The page is one self-contained file: the PNGs are embedded as base64 data URIs, with no script and
no external style, so it can be copied off a remote machine or attached to an issue on its own and
cannot go out of step with separate image files. All model text is HTML-escaped, and the reasoning
(inside `<think>…</think>`) is shown apart from the answer.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from r1kit.checkpoint import atomic_write_text
from r1kit.errors import UserError
from r1kit.tasks.files import read_lines

log = logging.getLogger("r1kit")

PLOTS = [
    ("reward/total", "total reward"),
    ("reward/*", ""),  # one plot per reward function, accuracy first
    ("train/completion_tokens", "completion length (tokens)"),
    ("train/kl", "KL to the reference (k3)"),
    ("train/entropy", "entropy (nats per token)"),
    ("train/clip_frac", "clip fraction"),
    ("train/reflection", "reflection-word rate"),
    ("train/language", "language consistency of the reasoning"),
    ("eval/pass@1", "held-out pass@1"),
    ("train/loss", "loss"),
]
"""(metric key, title) in page order; a plot whose key no run logged is listed as missing."""

WHY_MISSING = {
    "train/kl": "not logged (only with a reference model, rl.beta > 0)",
    "train/language": "not logged, or no completion's reasoning had words",
    "eval/pass@1": "no evaluation recorded",
}
SAMPLES_PER_GROUP = 3
MAX_TEXT_CHARS = 4000


@dataclass
class Run:
    """One line on each plot: a run folder's label, per-step metrics and eval rows."""

    label: str
    path: Path
    metrics: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)

    def series(self, key: str) -> tuple[list[float], list[float]]:
        rows = self.evals if key.startswith("eval/") else self.metrics
        pts = [(r["step"], r[key]) for r in rows if _is_number(r.get(key))]
        return [float(s) for s, _ in pts], [float(v) for _, v in pts]


# -------------------------------------------------------------------------------- entry points


def write_report(folder: str | Path) -> Path:
    """Build `report.html` in a run or pipeline folder; its path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder")
    if "parts" in (_read_json(folder / "manifest.json") or {}):  # `r1kit distill`
        page = _distill_page(folder)
    elif (folder / "manifest.json").is_file():
        page = _pipeline_page(folder)
    elif (folder / "metrics.jsonl").is_file() or (folder / "eval.jsonl").is_file():
        page = _run_page(folder)  # (only eval.jsonl: killed or still in its first step)
    else:
        raise UserError(f"{folder}: nothing to report: no metrics.jsonl or eval.jsonl (a zero, rl "
                        "or sft run writes them) and no manifest.json (a pipeline or distill "
                        "folder); a sample folder's results are counts.json and sft.jsonl")
    out = folder / "report.html"
    atomic_write_text(out, page)
    return out


def write_report_safely(folder: str | Path) -> Path | None:
    """`write_report` at the end of a training run: a failure is a warning, never an error, so
    that a finished run is never lost to its report."""
    try:
        out = write_report(folder)
    except Exception as e:  # noqa: BLE001 -- the run itself is complete and saved
        log.warning(f"could not write the report of {folder} ({type(e).__name__}: {e}); the run "
                    f"is complete; retry with `r1kit report {folder}`")
        return None
    print(f"report: {out}")
    return out


# -------------------------------------------------------------------------------- pages


def _run_page(folder: Path) -> str:
    run = _load_run(folder, folder.name)
    body = [_plots_section([run])]
    if run.evals:
        body.append("<h2>Evaluations</h2>" + _eval_table(run.evals))
    summary = _read_json(folder / "summary.json")
    if summary:
        body.append("<h2>Summary</h2>" + _kv_table(summary))
    body.append(_completions_section(
        "Sampled completions",
        _rollout_samples(folder / "completions.jsonl"),
        "no completions.jsonl in this run",
    ))
    body.append(_config_section(folder))
    return _html(f"r1kit report: {folder.name}", _subtitle(folder, run), body)


def _pipeline_page(folder: Path) -> str:
    manifest = _read_json(folder / "manifest.json") or {}
    stages = [d for d in sorted(folder.iterdir()) if (d / "metrics.jsonl").is_file()]
    runs = [_load_run(d, d.name) for d in stages]
    rl_runs = [r for r in runs if any("reward/total" in m for m in r.metrics)]
    body = []
    result = _read_json(folder / "pipeline.json")
    if result:
        body.append("<h2>Per-stage table</h2>" + _pipeline_table(result))
    else:
        body.append("<h2>Per-stage table</h2><p>Not written yet: the table is made after the "
                    "last stage (pipeline.json).</p>")
    stage_rows = [{"stage": name, "kind": s.get("kind", ""),
                   "seconds": f"{s['seconds']:.1f}" if _is_number(s.get("seconds")) else None}
                  for name, s in manifest.get("stages", {}).items()]
    if stage_rows:
        body.append("<h2>Stages</h2>" + _rows_table(stage_rows, ["stage", "kind", "seconds"]))
    body.insert(0, _plots_section(rl_runs))
    groups = []
    order = [r["model"] for r in (result or {}).get("rows", [])]
    eval_files = sorted((folder / "eval").glob("*.jsonl"), key=lambda p: (
        order.index(p.stem) if p.stem in order else len(order), p.stem))
    for path in eval_files:
        groups.append((f"{path.stem} (held-out)", _eval_samples(path)))
    body.append(_completions_section("Held-out completions per checkpoint", groups,
                                     "no eval/*.jsonl yet (written with the per-stage table)"))
    body.append(_config_section(folder))
    sub = f"pipeline folder {folder} · RL stages: {', '.join(r.label for r in rl_runs) or 'none'}"
    return _html(f"r1kit report: {folder.name}", html.escape(sub), body)


def _distill_page(folder: Path) -> str:
    """The students' SFT curves, the teacher-vs-students table of `distill.json` and a few held-out
    completions of every model."""
    students = [d for d in sorted((folder / "students").glob("*"))
                if (d / "metrics.jsonl").is_file()]
    body = [_plots_section([_load_run(d, d.name) for d in students])]
    result = _read_json(folder / "distill.json")
    if result:
        rows = [dict(r, ci=f"[{r['pass@1_ci'][0]:.3f}, {r['pass@1_ci'][1]:.3f}]")
                if len(r.get("pass@1_ci") or []) == 2 else dict(r) for r in result["rows"]]
        k = result.get("k", "k")
        body.append("<h2>Teacher and students</h2>" + _rows_table(
            rows, ["model", "arch", "params", "pass@1", "ci", "cons@k", "format", "tokens",
                   "reflection"],
            ["model", "arch", "params", "pass@1", "95% CI", f"cons@{k}", "format", "tokens",
             "reflection"]) + f"<p>{html.escape(str(result.get('num_problems', '?')))} held-out "
            f"problems, k = {html.escape(str(k))} samples each.</p>")
    else:
        body.append("<h2>Teacher and students</h2><p>Not written yet: the table is made after "
                    "the last student (distill.json).</p>")
    groups = [(f"{p.stem} (held-out)", _eval_samples(p)) for p in sorted(
        (folder / "eval").glob("*.jsonl"))]
    body.append(_completions_section("Held-out completions per model", groups,
                                     "no eval/*.jsonl yet (written with the table)"))
    body.append(_config_section(folder))
    names = ", ".join(d.name for d in students) or "none"
    sub = f"distillation folder {folder} · students: {names}"
    return _html(f"r1kit report: {folder.name}", html.escape(sub), body)


def _subtitle(folder: Path, run: Run) -> str:
    steps = run.metrics[-1]["step"] if run.metrics else 0
    return html.escape(f"run folder {folder} · {steps} steps logged")


# -------------------------------------------------------------------------------- data


def _load_run(folder: Path, label: str) -> Run:
    return Run(label, folder, _by_step(_read_jsonl(folder / "metrics.jsonl")),
               _by_step(_read_jsonl(folder / "eval.jsonl")))


def _read_jsonl(path: Path) -> list[dict]:
    """The records of a run's log. A last line cut off mid-write (a killed run: no final newline,
    not JSON) is skipped with a warning; any other bad line is a `UserError` naming it."""
    if not path.is_file():
        return []
    lines = read_lines(path)
    if lines[-1].strip():  # no final newline
        try:
            json.loads(lines[-1])
        except json.JSONDecodeError:
            log.warning(f"{path}:{len(lines)}: skipped an unfinished last line")
            lines = lines[:-1]
    rows = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object")
        rows.append(record)
    return rows


def _by_step(rows: list[dict]) -> list[dict]:
    """One row per step, the last written winning (a resumed run may log a step twice)."""
    out: dict[int, dict] = {}
    for r in rows:
        if _is_number(r.get("step")):
            out[int(r["step"])] = r
    return [out[s] for s in sorted(out)]


def _read_json(path: Path):
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON ({e.msg})") from None


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _reward_keys(runs: list[Run]) -> list[str]:
    keys = {k for r in runs for m in r.metrics for k in m
            if k.startswith("reward/") and k != "reward/total" and not k.endswith("_failures")}
    return sorted(keys, key=lambda k: (k != "reward/accuracy", k))


def split_completion(text: str) -> tuple[str, str]:
    """(reasoning, answer part) of a completion: the reasoning is inside `<think>…</think>` (or
    before `</think>` when the prompt opened it); a completion cut off inside the reasoning has no
    answer part; one without tags is all answer.

    >>> split_completion("<think> 4+5=9 </think> <answer> 9 </answer>")
    ('4+5=9', '<answer> 9 </answer>')
    >>> split_completion("<think> 4+5="), split_completion("9")
    (('4+5=', ''), ('', '9'))
    """
    end = text.find("</think>")
    if end >= 0:
        start = text.rfind("<think>", 0, end)
        reasoning = text[start + len("<think>") if start >= 0 else 0 : end]
        return reasoning.strip(), text[end + len("</think>") :].strip()
    start = text.find("<think>")
    if start >= 0:
        return text[start + len("<think>") :].strip(), text[:start].strip()
    return "", text.strip()


def _rollout_samples(path: Path) -> list[tuple[str, list[dict]]]:
    """A few completions of the first and of the last logged step."""
    rows = [r for r in _read_jsonl(path) if "completion" in r]
    if not rows:
        return []
    steps = sorted({r.get("step", 0) for r in rows})
    groups = []
    for step in dict.fromkeys([steps[0], steps[-1]]):
        picked = [r for r in rows if r.get("step", 0) == step][:SAMPLES_PER_GROUP]
        groups.append((f"step {step}", [
            {"id": r.get("id", ""), "answer": r.get("answer", ""), "completion": r["completion"],
             "score": f"reward {r['reward']:.3f}" if _is_number(r.get("reward")) else "reward n/a"}
            for r in picked
        ]))
    return groups


def _eval_samples(path: Path) -> list[dict]:
    return [{"id": r.get("id", ""), "answer": r.get("answer", ""),
             "completion": r.get("completion", ""),
             "score": "correct" if r.get("correct") else "wrong"}
            for r in _read_jsonl(path)[:SAMPLES_PER_GROUP]]


# -------------------------------------------------------------------------------- plots


def _plots_section(runs: list[Run]) -> str:
    keys: list[tuple[str, str]] = []
    for key, title in PLOTS:
        if key == "reward/*":
            keys += [(k, "accuracy" if k == "reward/accuracy" else
                      f"reward: {k.split('/', 1)[1]}") for k in _reward_keys(runs)]
        else:
            keys.append((key, title))
    figures, missing = [], []
    is_rl = any("reward/total" in m for r in runs for m in r.metrics)
    colors = {r.label: f"C{i}" for i, r in enumerate(runs)}  # a stage keeps its colour throughout
    for key, title in keys:
        lines = [(r.label, *r.series(key)) for r in runs]
        lines = [(label, x, y) for label, x, y in lines if x]
        if not lines:
            if not is_rl:  # an SFT run: only what it logs
                continue
            missing.append(f"{title} (<code>{html.escape(key)}</code>): "
                           f"{WHY_MISSING.get(key, 'not logged')}")
            continue
        png = plot_png(title, lines, bands=_ci_bands(runs) if key == "eval/pass@1" else None,
                       colors=colors, legend=len(runs) > 1)
        figures.append(
            f'<figure><img alt="{html.escape(title)}" data-metric="{html.escape(key)}" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode()}">'
            f"<figcaption><code>{html.escape(key)}</code></figcaption>"
            "</figure>"
        )
    out = "<h2>Training curves</h2>"
    out += f'<div class="grid">{"".join(figures)}</div>' if figures else "<p>No metrics yet.</p>"
    if missing:
        out += "<p>Not plotted:</p><ul>" + "".join(f"<li>{m}</li>" for m in missing) + "</ul>"
    return out


def _ci_bands(runs: list[Run]) -> dict[str, tuple[list[float], list[float], list[float]]]:
    bands = {}
    for r in runs:
        pts = [(e["step"], e["eval/pass@1_lo"], e["eval/pass@1_hi"]) for e in r.evals
               if _is_number(e.get("eval/pass@1_lo")) and _is_number(e.get("eval/pass@1_hi"))]
        if pts:
            bands[r.label] = tuple(list(map(float, c)) for c in zip(*pts))
    return bands


def plot_png(title: str, lines: list[tuple[str, list[float], list[float]]],
             bands: dict | None = None, colors: dict | None = None, legend: bool = False) -> bytes:
    """One line per (label, steps, values) as PNG bytes. Long noisy curves get a moving average
    drawn over the faint raw values. The Figure is used without pyplot: it renders with the Agg
    canvas, needs no display and keeps no global figure state."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(5.2, 3.0), dpi=100, layout="constrained")
    ax = fig.subplots()
    for i, (label, x, y) in enumerate(lines):
        color = (colors or {}).get(label, f"C{i}")
        if bands and label in bands:
            bx, lo, hi = bands[label]
            ax.fill_between(bx, lo, hi, color=color, alpha=0.15, linewidth=0)
        if len(y) >= 30:
            ax.plot(x, y, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(x, _moving_average(y, max(2, len(y) // 15)), color=color, linewidth=1.6,
                    label=label)
        else:
            ax.plot(x, y, color=color, marker="o", markersize=3, linewidth=1.4, label=label)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step", fontsize=9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=8, frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _moving_average(y: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` points (the first points average what there is)."""
    out, total = [], 0.0
    for i, v in enumerate(y):
        total += v - (y[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


# -------------------------------------------------------------------------------- tables


def _num(v, digits: int = 3) -> str:
    if isinstance(v, bool) or v is None:
        return "n/a" if v is None else str(v)
    if isinstance(v, float):
        return f"{v:.{digits}f}" if math.isfinite(v) else str(v)
    return str(v)


def _rows_table(rows: list[dict], cols: list[str], heads: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in (heads or cols))
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_num(r.get(c)))}</td>" for c in cols) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _eval_table(evals: list[dict]) -> str:
    """eval.jsonl as a table: one row per evaluation (base, stepN, final)."""
    k_keys = sorted({k for e in evals for k in e if k.startswith(("eval/pass@", "eval/cons@"))
                     and not k.endswith(("_lo", "_hi")) and k != "eval/pass@1"})
    cols = ["tag", "step", "eval/pass@1", "ci", *k_keys, "eval/format", "eval/tokens",
            "eval/truncated", "eval/reflection"]
    rows = []
    for e in evals:
        row = dict(e)
        if _is_number(e.get("eval/pass@1_lo")) and _is_number(e.get("eval/pass@1_hi")):
            row["ci"] = f"[{e['eval/pass@1_lo']:.3f}, {e['eval/pass@1_hi']:.3f}]"
        rows.append(row)
    heads = [c.removeprefix("eval/") if c != "ci" else "pass@1 95% CI" for c in cols]
    return _rows_table(rows, cols, heads)


def _pipeline_table(result: dict) -> str:
    rows = []
    for r in result.get("rows", []):
        row = dict(r)
        ci = r.get("pass@1_ci")
        if isinstance(ci, list) and len(ci) == 2 and all(_is_number(c) for c in ci):
            row["ci"] = f"[{ci[0]:.3f}, {ci[1]:.3f}]"
        rows.append(row)
    k = result.get("k", "k")
    cols = ["model", "pass@1", "ci", "cons@k", "format_rate", "language", "tokens", "reflection"]
    heads = ["model", "pass@1", "95% CI", f"cons@{k}", "format", "language", "tokens",
             "reflection"]
    note = (f"<p>{html.escape(str(result.get('num_problems', '?')))} held-out problems, k = "
            f"{html.escape(str(k))} samples each. format: share in the format the checkpoint was "
            "trained towards (R1-Zero's for Base and Zero, the summary format after the cold "
            "start); language: mean share of target-language words in the reasoning; reflection: "
            "share of completions with a reflection word.</p>")
    return _rows_table(rows, cols, heads) + note


def _kv_table(d: dict) -> str:
    rows = ""
    for k, v in d.items():
        value = ", ".join(_num(x) for x in v) if isinstance(v, list) else _num(v)
        rows += f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(value)}</td></tr>"
    return f"<table class='kv'>{rows}</table>"


# -------------------------------------------------------------------------------- completions


def _clip(text: str) -> str:
    if len(text) <= MAX_TEXT_CHARS:
        return text
    return text[:MAX_TEXT_CHARS] + f"\n… ({len(text) - MAX_TEXT_CHARS} more characters)"


def _sample_html(s: dict) -> str:
    reasoning, answer = split_completion(str(s["completion"]))
    head = html.escape(f"{s['id']} · reference answer {s['answer']} · {s['score']}")
    parts = [f'<div class="sample"><div class="meta">{head}</div>']
    for label, cls, text in (("reasoning", "think", reasoning), ("answer", "answer", answer)):
        shown = html.escape(_clip(text)) or "<em>(none)</em>"
        parts.append(f'<div class="label">{label}</div><pre class="{cls}">{shown}</pre>')
    return "".join(parts) + "</div>"


def _completions_section(title: str, groups: list, empty: str) -> str:
    out = f"<h2>{html.escape(title)}</h2>"
    groups = [(name, samples) for name, samples in groups if samples]
    if not groups:
        return out + f"<p>{html.escape(empty)}</p>"
    for name, samples in groups:
        out += f"<h3>{html.escape(name)}</h3>" + "".join(_sample_html(s) for s in samples)
    return out


def _config_section(folder: Path) -> str:
    cfg = folder / "config.yaml"
    if not cfg.is_file():
        return ""
    return (f"<details><summary>config.yaml</summary><pre>{html.escape(cfg.read_text())}</pre>"
            "</details>")


STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; }
.grid { display: flex; flex-wrap: wrap; gap: 8px; }
figure { margin: 0; } figcaption { font-size: 0.8em; color: #555; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, .kv th { text-align: left; }
.sample { border: 1px solid #ddd; border-radius: 4px; padding: 6px 10px; margin: 8px 0; }
.meta { font-size: 0.85em; color: #555; } .label { font-size: 0.75em; color: #888; }
pre { white-space: pre-wrap; word-break: break-word; margin: 2px 0 6px; padding: 4px 6px; }
pre.think { background: #f6f6fb; color: #445; } pre.answer { background: #f3faf3; }
"""


def _html(title: str, subtitle_html: str, body: list[str]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{subtitle_html} · written {when}</p>"
        + "\n".join(body) + "</body></html>\n"
    )
