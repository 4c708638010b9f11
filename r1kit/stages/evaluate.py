"""`r1kit eval`: evaluate any model folder (or hub name) on held-out problems (R1-SPEC §4.4)."""

from __future__ import annotations

import json

import torch

from r1kit.config import EvalStageConfig
from r1kit.evaluation import evaluate
from r1kit.models import load_model, pick_device
from r1kit.runs import RunFolder, load_problems


def main(cfg: EvalStageConfig) -> dict:
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    # Inputs first: a bad problem file or model path leaves no run folder behind.
    _, problems = load_problems(cfg.data, cfg.eval.num_problems)
    model, tokenizer = load_model(cfg.model.path, cfg.model.dtype, pick_device(cfg.run.device))
    run = RunFolder.open(cfg, "eval")
    cfg = run.cfg
    res = evaluate(model, tokenizer, problems, cfg.eval, template=cfg.data.template,
                   stop=cfg.rollout.stop, seed=cfg.run.seed)
    metrics = {"model": cfg.model.path, "num_problems": res.num_problems, **res.metrics()}
    run.write_json("summary.json", metrics)
    run.write_jsonl("samples.jsonl", res.samples)
    k = cfg.eval.k
    print(f"{cfg.model.path}: {res.num_problems} problems, k={k}")
    print(f"  pass@1 {res.pass1:.3f}  95% CI [{res.pass1_ci[0]:.3f}, {res.pass1_ci[1]:.3f}]")
    print(f"  pass@{k} {res.pass_k:.3f}   cons@{k} {res.cons_k:.3f}  "
          f"95% CI [{res.cons_k_ci[0]:.3f}, {res.cons_k_ci[1]:.3f}]")
    print(f"  format {res.format_rate:.3f}  tokens {res.mean_tokens:.1f}  "
          f"reflection {res.reflection:.3f}")
    print(json.dumps({"summary": str(run.path / "summary.json")}))
    return metrics
