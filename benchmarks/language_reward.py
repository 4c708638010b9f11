"""The language-consistency reward's effect on the reasoning-RL stage (Dev2), run three ways from the
same Dev1 of a finished pipeline: the paper's proportion, the threshold form, and no language
reward (R1-SPEC §5: R1 accepts "a slight degradation" in accuracy for readable, single-language
reasoning). Each run is the pipeline's own 04-dev2 configuration with only the rewards changed; all
are evaluated on the pipeline's held-out problems, and the per-step language share
(`train/language`) of each run is summarised too.

    python benchmarks/language_reward.py benchmarks/out/pipeline/v2 \
        --out benchmarks/results/language_reward.md

The proportion run is the pipeline's own 04-dev2 (not run again); the others go to
PIPELINE/language-ablation/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's r1kit

from r1kit.config import PipelineConfig, load_config
from r1kit.evaluation import evaluate
from r1kit.models import load_model, pick_device
from r1kit.stages import pipeline
from r1kit.stages import zero as rl_stage

NOTES_BEGIN, NOTES_END = "<!-- discussion -->", "<!-- end discussion -->"
VARIANTS = {  # name -> (pipeline.language_form, pipeline.language_reward multiplier)
    "proportion (pipeline's Dev2)": ("language", 1.0),
    "threshold 0.95": ("language_threshold", 1.0),
    "none": ("language", 0.0),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pipeline_dir", type=Path)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/language_reward.md"))
    args = ap.parse_args()
    root = args.pipeline_dir
    cfg = load_config(PipelineConfig, str(root / "config.yaml"), [])
    if not (root / "03-dev1" / "final").is_dir():
        raise SystemExit(f"{root}: no 03-dev1/final; run the pipeline first")
    ablation = root / "language-ablation"
    rows, seconds = [], {}
    for name, (form, scale) in VARIANTS.items():
        p = dataclasses.replace(cfg.pipeline, language_form=form,
                                language_reward=cfg.pipeline.language_reward * scale)
        stage_cfg = pipeline.stage_configs(dataclasses.replace(cfg, pipeline=p), root)["04-dev2"][1]
        folder = root / "04-dev2" if name.startswith("proportion") else ablation / _slug(name)
        if not (folder / "final").is_dir():
            stage_cfg = dataclasses.replace(stage_cfg, run=dataclasses.replace(
                stage_cfg.run, out_dir=str(ablation), name=_slug(name)))
            t0 = time.time()
            rl_stage.main(stage_cfg, stage="rl")
            seconds[name] = round(time.time() - t0, 1)
        rows.append({**evaluate_folder(cfg, folder / "final", name),
                     "rewards": dict(stage_cfg.rewards.weights),
                     "train_language_last20": _late_mean(folder / "metrics.jsonl", "train/language")})
    dev1 = evaluate_folder(cfg, root / "03-dev1" / "final", "Dev1 (start)")
    write(args.out, root, [dev1, *rows], seconds, cfg)


def evaluate_folder(cfg: PipelineConfig, path: Path, label: str) -> dict:
    problems = pipeline._heldout(cfg)
    model, tok = load_model(str(path), cfg.model.dtype, pick_device(cfg.run.device))
    res = evaluate(model, tok, problems, cfg.eval, template=cfg.data.template,
                   stop=cfg.rollout.stop, seed=cfg.run.seed)
    return pipeline.table_row(label, res, problems, summary=True)  # Dev1 on: the summary form


def _late_mean(metrics: Path, key: str) -> float | None:
    if not metrics.is_file():
        return None
    values = [r[key] for r in map(json.loads, metrics.read_text().splitlines())
              if isinstance(r.get(key), float) and r[key] == r[key]][-20:]
    return sum(values) / len(values) if values else None


def _slug(name: str) -> str:
    return name.split(" ")[0].lower()


def write(out: Path, root: Path, rows: list[dict], seconds: dict, cfg: PipelineConfig) -> None:
    def num(v, d=3):
        return "n/a" if v is None else f"{v:.{d}f}"

    lines = [
        "# Language-consistency reward: Dev2 with the proportion, the threshold, and none",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M')}",
        (f"- machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}"),
        f"- command: `python benchmarks/language_reward.py {root}`",
        (f"- from: `{root}/03-dev1/final`, {cfg.pipeline.reasoning_rl_steps} GRPO steps each; "
        f"held-out {cfg.eval.num_problems} problems, k={cfg.eval.k}, T={cfg.eval.temperature}"),
        f"- wall time of the runs made here (s): {seconds or 'none (all existed)'}",
        "",
        ("| run | rewards | pass@1 | language | with words | summary format | tokens | train/language "
        "(last 20 steps) |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rewards = ", ".join(f"{k} {v:g}" for k, v in r.get("rewards", {}).items()) or "-"
        lines.append(f"| {r['model']} | {rewards} | {num(r['pass@1'])} | {num(r['language'])} | "
                     f"{num(r['with_words'], 2)} | {num(r['summary_format'])} | {num(r['tokens'], 1)} "
                     f"| {num(r.get('train_language_last20'))} |")
    lines += ["", NOTES_BEGIN, "", NOTES_END]
    if out.exists():  # keep the hand-written discussion between the markers
        text = out.read_text()
        if NOTES_BEGIN in text and NOTES_END in text:
            lines[-3:] = [text[text.index(NOTES_BEGIN): text.index(NOTES_END) + len(NOTES_END)]]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
