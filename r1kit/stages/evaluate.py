"""`r1kit eval`: evaluate model folders (or hub names) on held-out problems (R1-SPEC §4.4).

`r1kit eval --model M` reports one model; `r1kit eval M1 M2 ...` evaluates each on the same
problems with the same sampling and seed and prints one comparison table (r1kit/comparison.py),
also written as comparison.md and comparison.json to `--out DIR` (default: the run folder).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer

from r1kit.comparison import evaluate_row, write_comparison
from r1kit.config import EvalStageConfig
from r1kit.errors import UserError
from r1kit.evaluation import evaluate
from r1kit.models import (
    builtin_model_for,
    is_local_path,
    load_model,
    pick_device,
    resolve_model_path,
)
from r1kit.rewards import code as code_reward
from r1kit.runs import RunFolder, load_problems
from r1kit.stages.export import resolve_source, template_of
from r1kit.templates import check_template

log = logging.getLogger("r1kit")


def main(cfg: EvalStageConfig, models: list[str] | None = None, out: str | None = None,
         template_given: bool = True) -> dict:
    """Evaluate `cfg.model.path`, or compare `models`. A model may be a model folder, a hub name,
    a LoRA adapter folder or a run folder (its `final/`). Unless `template_given`, a model from a
    run is prompted with the template it was trained with (`data.template` of its run)."""
    if models:
        return compare(cfg, models, out, template_given)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    # Inputs first: a bad problem file or model path leaves no run folder behind.
    _, problems = load_problems(cfg.data, cfg.eval.num_problems)
    if not problems:
        raise UserError("no problems to evaluate (eval.num_problems=0 or an empty eval source)")
    code_reward.configure_for(problems, cfg.code)
    cfg = builtin_model_for(cfg)
    path = resolve_source(cfg.model.path)
    template = cfg.data.template if template_given else _trained_template(path, cfg.data.template)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, template=template))
    model, tokenizer = load_model(path, cfg.model.dtype, pick_device(cfg.run.device),
                                  cfg.model.attn_implementation)
    check_template(cfg.data.template, tokenizer, f"{cfg.model.path}: data.template")
    if out:  # the summary and samples go to OUT instead of a new run folder
        run = RunFolder(_out_folder(out), cfg, resumed=False)
    else:
        run = RunFolder.open(cfg, "eval")
        cfg = run.cfg
    res = evaluate(model, tokenizer, problems, cfg.eval, template=cfg.data.template,
                   stop=cfg.rollout.stop, seed=cfg.run.seed)
    metrics = {"model": cfg.model.path, "num_problems": res.num_problems, **res.metrics(),
               "k": cfg.eval.k, "temperature": cfg.eval.temperature, "top_p": cfg.eval.top_p,
               "seed": cfg.run.seed, "template": cfg.data.template}
    run.write_json("summary.json", metrics)
    run.write_jsonl("samples.jsonl", res.samples)
    k = cfg.eval.k
    print(f"{cfg.model.path}: {res.num_problems} problems, k={k}, template {cfg.data.template}")
    print(f"  pass@1 {res.pass1:.3f}  95% CI [{res.pass1_ci[0]:.3f}, {res.pass1_ci[1]:.3f}]")
    print((f"  pass@{k} {res.pass_k:.3f}   " if k > 1 else "  ") + f"cons@{k} {res.cons_k:.3f}  "
          f"95% CI [{res.cons_k_ci[0]:.3f}, {res.cons_k_ci[1]:.3f}]")
    print(f"  format {res.format_rate:.3f}  summary_format {res.summary_format_rate:.3f}  "
          f"tokens {res.mean_tokens:.1f}  reflection {res.reflection:.3f}")
    print(json.dumps({"summary": str(run.path / "summary.json")}))
    return metrics


def compare(cfg: EvalStageConfig, models: list[str], out: str | None = None,
            template_given: bool = True) -> dict:
    """Evaluate every model of `models` on the same problems; one table, printed and written."""
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    labels = _labels(models)
    if cfg.data.source == "builtin:code":  # `builtin` means what it means for one model
        models = ["builtin:code" if m == "builtin" else m for m in models]
    paths, templates = [], []
    for path in models:  # every path checked before any model is evaluated
        resolved = path if path in ("builtin", "builtin:code") else _check_model(path)
        template = (cfg.data.template if template_given
                    else _trained_template(resolved, cfg.data.template))
        if template == "chat":
            check_template("chat", AutoTokenizer.from_pretrained(resolved),
                           f"{path}: data.template")
        paths.append(resolved)
        templates.append(template)
    _, problems = load_problems(cfg.data, cfg.eval.num_problems)
    if not problems:
        raise UserError("no problems to evaluate (eval.num_problems=0 or an empty eval source)")
    code_reward.configure_for(problems, cfg.code)
    if out:
        run_path = _out_folder(out)
    else:
        run = RunFolder.open(cfg, "eval")
        cfg, run_path = run.cfg, run.path
    device = pick_device(cfg.run.device)
    rows = []
    for label, path, template in zip(labels, paths, templates):
        print(f"evaluating {label} ({path}) on {len(problems)} problems, k={cfg.eval.k}, "
              f"template {template}", file=sys.stderr)  # progress; stdout holds the table
        row, _ = evaluate_row(label, resolve_model_path(path), problems, cfg.eval,
                              dtype=cfg.model.dtype, device=device, template=template,
                              stop=cfg.rollout.stop, seed=cfg.run.seed,
                              attn=cfg.model.attn_implementation)
        rows.append(row)
    table = write_comparison(run_path, "comparison", "Model comparison", rows, cfg.eval,
                             len(problems), extra={"problems": cfg.data.eval_source or
                                                   cfg.data.source, "seed": cfg.run.seed})
    print("\n" + table)
    print(json.dumps({"comparison": str(run_path / "comparison.md")}))
    return {"rows": rows}


def _trained_template(path: str, default: str) -> str:
    """The template the model at `path` was trained with, when its run folder says; else
    `default`."""
    recorded = template_of(path) if Path(path).exists() else None
    if recorded and recorded != default:
        log.info(f"{path}: prompted with data.template={recorded}, as its run was trained "
                 "(--set data.template=... to choose)")
    return recorded or default


def _check_model(path: str) -> str:
    """The model folder of `path` (a run folder's `final/`), or a hub name the hub (or its cache)
    has: checked before any evaluation."""
    p = Path(path).expanduser()
    if is_local_path(path):
        if not p.exists():
            raise UserError(f"{path}: no such folder")
        return resolve_source(str(p))
    else:
        try:
            AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{path}: no such folder, and the hub cannot give it ({reason})"
                            ) from None
    return path


def _out_folder(out: str) -> Path:
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {out}: a file, not a folder")
    run = [name for name in ("metrics.jsonl", "manifest.json", "checkpoints")
           if (folder / name).exists()]
    if run:  # its summary.json would be replaced by the evaluation's
        raise UserError(f"--out {out}: a training run or pipeline folder ({run[0]}); write the "
                        "evaluation to a folder of its own")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _labels(models: list[str]) -> list[str]:
    """Short, distinct row labels: the folder name, with its run's name for a run's `final/`,
    `final-adapter/` or checkpoint (`run/step-000002`)."""
    labels = []
    for m in models:
        p = Path(m)
        run = p.parent.parent if p.parent.name == "checkpoints" else p.parent
        in_run = p.name in ("final", "final-adapter") or p.parent.name == "checkpoints"
        label = f"{run.name}/{p.name}" if in_run and run.name else p.name or m
        while label in labels:
            label += "'"
        labels.append(label)
    return labels
