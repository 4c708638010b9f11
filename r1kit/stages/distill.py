"""`r1kit distill`: distil a reasoning teacher into small students by plain SFT (R1-SPEC §3.5, §4.3).

R1's students are Qwen2.5 and Llama bases fine-tuned, with no RL, on ~800k samples curated from
R1. One run, each part in its own sub-folder of the distill folder:
    samples/          sample the teacher on TRAIN prompts (`r1kit sample`: batched, resumable);
                      keep the verified-correct, well-formed, single-language, repetition-free
                      completions (r1kit/filters.py), at most `sample.max_per_prompt` per prompt;
                      well-formed is `think_format` by default: reasoning closed by </think>, then
                      a final answer (R1-Distill's `</think> … \boxed{}`, R1-Zero's <answer>, the
                      summary form); a teacher whose template prefills <think> gets it back at the
                      start of each row, so the student learns to open its reasoning
    dataset/          the kept samples as train.jsonl and a `datasets` folder (hf/), with the
                      generation settings and per-filter counts (r1kit/sft_dataset.py)
    students/NAME/    SFT of each student's base on them (`r1kit sft`) on whole samples
                      (`distill.max_len` 0: the longest; a number caps them); presets tiny-qwen
                      and tiny-llama start from their own pretrained bases (r1kit/students.py)
then the teacher, every student base and every distilled student are evaluated on the same
held-out problems and one table is printed and written as distill.md and distill.json, with each
student's pass@1 as a share of the teacher's.

`manifest.json` records each finished part and evaluation; `--resume DISTILL_DIR` skips them, and
an unfinished part resumes from its own progress file (sampling) or checkpoint (SFT).

Departures from the paper, on purpose: a few thousand samples instead of 800k; the SFT lr is
1e-3 -> 1e-4 (the paper's 1e-4 for a 1.5B model barely moves a 0.3M one); the prompt template
is the teacher's (R1-Zero's by default), not each student's chat template.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from r1kit.checkpoint import read_json
from r1kit.comparison import evaluate_row, write_comparison
from r1kit.config import (
    DistillConfig,
    ModelConfig,
    SampleConfig,
    SFTConfig,
    SFTDataConfig,
)
from r1kit.errors import UserError
from r1kit.filters import build_filters, check_filter_targets
from r1kit.models import check_trainable_dtype, is_local_path, prepare_torch, resolve_dtype
from r1kit.runs import RunFolder, load_problems
from r1kit.sft_dataset import write_sft_dataset
from r1kit.stages.pipeline import configure_code, run_stage
from r1kit.stages.sft import check_lr
from r1kit.students import check_student, student_path
from r1kit.tracking import check_report_to

log = logging.getLogger("r1kit")

TEACHER = "Teacher"


def main(cfg: DistillConfig, resume: str | None = None, table: bool = True) -> dict:
    """Run or resume a distillation; `table=False` (inside `r1kit pipeline`) stops after the
    students' SFT, and the caller evaluates them. With `resume`, `cfg` only says the stage: the
    run goes on with its saved config.yaml (edit that file to change a setting)."""
    if resume:  # (a missing manifest.json: killed before it was written, nothing done yet)
        if not (Path(resume) / "config.yaml").is_file():
            raise UserError(f"{resume}: not a distill folder (no config.yaml)")
        run = RunFolder.open(cfg, "distill", resume, checkpoints=False)
        configure_code(run.cfg)  # the table's evaluation may run programs without a stage first
    else:
        check(cfg)  # a bad teacher, student or setting, or no sandbox, fails before a folder
        run = RunFolder.open(cfg, "distill")
    cfg = run.cfg
    device = prepare_torch(cfg.run)
    teacher = resolve_teacher(cfg.distill.teacher)
    labels = student_labels(cfg.distill.students)
    manifest = run.read_state("manifest.json") or {"parts": {}, "evals": {}}
    run.write_json("manifest.json", manifest)

    def part(name: str, fn) -> dict:
        if name in manifest["parts"]:
            print(f"[distill] {name}: finished earlier, skipped")
            return manifest["parts"][name]["summary"]
        print(f"\n[distill] ===== {name} =====")
        t0 = time.time()
        summary = fn()
        manifest["parts"][name] = {"seconds": round(time.time() - t0, 1), "summary": summary}
        run.write_json("manifest.json", manifest)
        return summary

    # ---------------------------------------------------------------- teacher samples
    part("samples", lambda: run_stage("samples", "sample", sample_config(cfg, teacher, run.path),
                                      run.path / "samples"))

    # ---------------------------------------------------------------- dataset
    def dataset() -> dict:
        samples = run.path / "samples"
        if not (samples / "sft.jsonl").read_text().strip():
            raise UserError(f"the teacher {teacher} kept 0 samples (see {samples}/counts.json); "
                            "sample more prompts (sample.num_prompts) or loosen sample.filters")
        n = write_sft_dataset(samples / "sft.jsonl", run.path / "dataset",
                              read_json(samples / "generation.json"),
                              read_json(samples / "counts.json"))
        return {"rows": n}

    part("dataset", dataset)

    # ---------------------------------------------------------------- students
    bases = {}
    for label, name in zip(labels, cfg.distill.students):
        bases[label] = student_path(name, log=print)
        part(f"sft-{label}", lambda label=label: run_stage(
            f"students/{label}", "sft", sft_config(cfg, bases[label], label, run.path),
            run.path / "students" / label))

    if not table:
        return {"students": {label: str(run.path / "students" / label / "final")
                             for label in labels}}

    # ---------------------------------------------------------------- the table
    problems = load_problems(cfg.data, cfg.eval.num_problems)[1]
    models = [(TEACHER, teacher)]
    for label in labels:
        models += [(f"{label} base", bases[label]),
                   (f"{label} distilled", str(run.path / "students" / label / "final"))]
    for label, path in models:
        if label in manifest["evals"]:
            continue
        print(f"[distill] evaluating {label} ({path}) on {len(problems)} held-out problems")
        row, samples = evaluate_row(label, path, problems, cfg.eval, dtype=cfg.distill.dtype,
                                    device=device, template=cfg.data.template,
                                    stop=cfg.rollout.stop, seed=cfg.run.seed)
        run.write_jsonl(f"eval/{label.replace(' ', '-')}.jsonl", samples)
        manifest["evals"][label] = row
        run.write_json("manifest.json", manifest)
    rows = [manifest["evals"][label] for label, _ in models]
    seconds = {name: p["seconds"] for name, p in manifest["parts"].items()}
    table = write_comparison(run.path, "distill", f"Distillation: {run.path.name}", rows, cfg.eval,
                             len(problems), extra={"teacher": teacher, "part_seconds": seconds,
                                                   "dataset_rows": manifest["parts"]["dataset"]
                                                   ["summary"]["rows"]},
                             ratio_to=TEACHER)
    print("\n" + table)
    print(f"distill folder: {run.path}")
    return {"rows": rows, "part_seconds": seconds}


# -------------------------------------------------------------------------------- inputs


def check(cfg: DistillConfig) -> None:
    """Every mistake a user can make in the inputs, as one clear error."""
    resolve_teacher(cfg.distill.teacher)
    if not cfg.distill.students:
        raise UserError("distill.students is empty: name at least one student (e.g. tiny-llama)")
    for name in cfg.distill.students:
        check_student(str(name), cfg.data.template)
    resolve_dtype(cfg.distill.dtype, key="distill.dtype")
    check_trainable_dtype(cfg.distill.dtype, key="distill.dtype")  # the students are trained
    s = cfg.sample
    for key, value in (("sample.num_prompts", s.num_prompts), ("sample.batch_size", s.batch_size),
                       ("sample.samples_per_prompt", s.samples_per_prompt),
                       ("sft.epochs", cfg.sft.epochs), ("eval.k", cfg.eval.k),
                       ("eval.num_problems", cfg.eval.num_problems)):
        if value < 1:  # (eval.num_problems: the table compares teacher and students on them)
            raise UserError(f"{key} must be at least 1, got {value}")
    check_lr(cfg.sft)
    check_report_to(cfg.run.report_to)
    build_filters(list(s.filters))  # an unknown filter name fails here
    # a target_language single_language cannot label stops now, not when sampling reaches it
    check_filter_targets(load_problems(cfg.data, 0)[0], s.filters)
    configure_code(cfg)


def resolve_teacher(path: str) -> str:
    """The teacher's model folder: `path` itself, its final/ (a run folder), or its 07-r1/final
    (a pipeline folder); a name that is no local path is taken as a hub name."""
    if not path:
        raise UserError("no teacher: give --teacher MODEL_DIR (or --set distill.teacher=...)")
    p = Path(path)
    for folder in (p, p / "final", p / "07-r1" / "final"):
        if (folder / "config.json").is_file():
            return str(folder)
    if p.exists():
        raise UserError(f"teacher {path}: not a model folder (no config.json), nor a run folder "
                        "with final/, nor a pipeline folder with 07-r1/final")
    if is_local_path(path) or path.count("/") != 1:  # a teacher on the hub is ORG/NAME
        raise UserError(f"teacher {path}: no such folder")
    return path


def student_labels(names: list[str]) -> list[str]:
    """Folder-safe, distinct labels: the preset name, or the last part of a folder / hub name."""
    labels = []
    for name in names:
        label = Path(str(name).rstrip("/")).name or "student"
        if label == "final":
            label = Path(str(name).rstrip("/")).parent.name or label
        base, i = label, 2
        while label in labels:
            label, i = f"{base}-{i}", i + 1
        labels.append(label)
    return labels


def sample_config(cfg: DistillConfig, teacher: str, root: Path) -> SampleConfig:
    return SampleConfig(
        run=dataclasses.replace(cfg.run, name="samples", out_dir=str(root)),
        model=ModelConfig(path=teacher, dtype=cfg.distill.dtype), data=cfg.data,
        rollout=cfg.rollout, sample=cfg.sample, code=cfg.code,
    )


def sft_config(cfg: DistillConfig, base: str, label: str, root: Path) -> SFTConfig:
    d = cfg.data
    # Whole samples by default (distill.max_len 0: the longest, in the student's tokens), not
    # r1kit sft's 256 tokens, which would cut every long-CoT sample before its answer.
    data = SFTDataConfig(train_file=str(root / "samples" / "sft.jsonl"), template=d.template,
                         eval_source=d.eval_source, eval_split=d.eval_split,
                         prompt_key=d.prompt_key, answer_key=d.answer_key,
                         max_len=cfg.distill.max_len)
    model = ModelConfig(path=base, dtype=cfg.distill.dtype,
                        gradient_checkpointing=cfg.distill.gradient_checkpointing)
    # The distill table evaluates every model on the same problems; no eval inside SFT.
    return SFTConfig(run=dataclasses.replace(cfg.run, name=f"students/{label}",
                                             out_dir=str(root)),
                     model=model, data=data, sft=cfg.sft, code=cfg.code,
                     eval=dataclasses.replace(cfg.eval, num_problems=0))
