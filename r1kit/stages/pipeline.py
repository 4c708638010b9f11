"""`r1kit pipeline`: the DeepSeek-R1 recipe as one resumable command (R1-SPEC §3.2, §4.2, §5).

Each stage is a call to an existing stage's `main` with a config derived from the pipeline's, and
writes its own run folder inside the pipeline folder:
    01-zero        GRPO from the base model, accuracy + format (R1-Zero; on problems with tests,
                   `code` instead of `accuracy` in every RL stage)
    02-cold-start  sample Zero on train prompts at T = 1.0; keep the correct, well-formed,
                   single-language, repetition-free samples, rewritten as `<think>…</think> summary
                   <answer>…</answer>` with the reasoning in the task's readable form (R1-SPEC §5)
    03-dev1        SFT of the BASE model on them (cold start)
    04-dev2        GRPO from Dev1, accuracy + summary_format + language consistency (reasoning RL)
    05-rejection   sample Dev2 several times per prompt, keep the correct ones, filtered, in the
                   same summary format; mix in non-reasoning data answered without <think>
                   (`pipeline.general_samples` built-in queries, or `sample.general_data`)
    06-dev3        SFT of the BASE model on them
    07-r1          GRPO from Dev3 with the same rewards at temperature 0.7 (R1-SPEC §3.2), plus
                   a preference model on the summary when `pipeline.preference_model` is set, for
                   the last `pipeline.preference_steps` steps only
then every checkpoint (Base, Zero, Dev1, Dev2, Dev3, R1) is evaluated on the same held-out
problems and the per-stage table (R1-SPEC §4.2) is printed and written as pipeline.json and
pipeline.md.

`manifest.json` records each finished stage and each finished evaluation (written atomically after
the stage's own summary). `--resume PIPELINE_DIR` skips what it records; an unfinished stage is
resumed from its own checkpoint (GRPO, SFT) or progress file (sampling), or restarted when it had
saved nothing yet. A stage whose summary exists but was not yet recorded counts as finished.

Table columns: pass@1 and cons@k as in `r1kit eval` (R1-SPEC §4.4); `format`: the share of
completions in the format the checkpoint was trained towards (R1-Zero's `format` for Base and Zero,
`summary_format` after the cold start, for Dev1 only when its data are in the summary form,
`sample.cold_start_format`; pipeline.json holds both for every row); `language`: the mean
share of target-language words in the reasoning (`language.language_consistency` of
`reasoning_part`, the problem's language), over the completions whose reasoning has words at all;
`tokens`: mean completion length; `reflection`: share of completions with a reflection word
(R1-SPEC §6).

Departures from the paper, on purpose: the RL after the cold start rewards `summary_format` (the
form the cold-start data teaches) instead of R1-Zero's `format`; the language reward has weight
`pipeline.language_reward` (0.2) rather than being summed with weight 1, so that on a tiny model it
does not outweigh accuracy; both SFT stages use lr 1e-3 -> 1e-4, batch 16, 3 epochs (the paper's
5e-5 barely moves the tiny model on a few hundred examples); rejection sampling drops the
`well_formed` filter (R1-Zero's format, which the summary form fails) and relies on the rewrite
into the summary form; the built-in non-reasoning data is a few hundred trivial queries, not
DeepSeek-V3's SFT set; no preference model by default (give `pipeline.preference_model`).
Also: R1-Zero's `format` and the `summary_format` rewards weigh 0.1 (the papers sum them with
weight 1; r1kit's default everywhere, `rewards.weights`); rejection sampling keeps at most
one sample per prompt (`sample.max_per_prompt`), R1 several; 07-r1 trains on the reasoning
problems only, without R1's general prompts (those need a preference model to be rewarded at all);
08-distill fine-tunes with `r1kit distill`'s own SFT settings on reasoning samples only.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from pathlib import Path

import torch

from r1kit.checkpoint import atomic_write_text
from r1kit.config import (
    ModelConfig,
    PipelineConfig,
    RewardsConfig,
    SampleConfig,
    SFTConfig,
    SFTDataConfig,
    ZeroConfig,
    from_dict,
    set_dotted,
    to_dict,
)
from r1kit.errors import UserError
from r1kit.evaluation import EvalResult, evaluate
from r1kit.filters import build_filters, check_filter_targets
from r1kit.language import reasoning_share
from r1kit.models import builtin_model_for, load_model, pick_device
from r1kit.report import write_report_safely
from r1kit.rewards import code as code_reward
from r1kit.rewards import get_reward
from r1kit.rewards.language import check_reward_targets
from r1kit.runs import RunFolder, config_changes, load_problems
from r1kit.stages import sample as sample_stage
from r1kit.stages import sft as sft_stage
from r1kit.stages import zero as rl_stage
from r1kit.tasks.general import load_general
from r1kit.tracking import check_report_to

log = logging.getLogger("r1kit")

STAGES = ("01-zero", "02-cold-start", "03-dev1", "04-dev2", "05-rejection", "06-dev3", "07-r1")
CHECKPOINTS = (("Base", None), ("Zero", "01-zero"), ("Dev1", "03-dev1"), ("Dev2", "04-dev2"),
               ("Dev3", "06-dev3"), ("R1", "07-r1"))
"""The table's rows: (label, stage folder holding `final/`; None = the base model)."""
TRAINED_ON_SUMMARY = {"Dev1", "Dev2", "Dev3", "R1"}


def main(cfg: PipelineConfig, resume: str | None = None) -> dict:
    """One R1 pipeline; its summary. With `resume` (its folder), `cfg` only says the stage: the
    run goes on with its saved config.yaml (edit that file to change a setting)."""
    if resume:  # (a missing manifest.json: killed before it was written, nothing done yet)
        if not (Path(resume) / "config.yaml").is_file():
            raise UserError(f"{resume}: not a pipeline folder (no config.yaml)")
        run = RunFolder.open(cfg, "pipeline", resume, checkpoints=False)
        programs = configure_code(run.cfg)  # the table's evaluation may run programs first
    else:
        cfg = builtin_model_for(cfg)  # builtin:code -> the code-capable base
        _check(cfg)  # bad settings fail before a pipeline folder is made
        programs = configure_code(cfg)  # so does a missing sandbox for code problems
        run = RunFolder.open(cfg, "pipeline")
    cfg = run.cfg
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    manifest = _load_manifest(run)
    t_start = time.time()

    # ---------------------------------------------------------------- stages
    stages = all_stage_configs(cfg, run.path, programs)
    started = manifest.setdefault("started", {})
    missed = {name: edits for name in stages if (run.path / name / "config.yaml").is_file()
              and (edits := missed_edits(name, cfg, started.get(name), run.path, programs))}
    if missed:  # said once: these settings are the stages' record from now on
        warn_missed(missed, run.path)
        started.update(dict.fromkeys(missed, to_dict(cfg)))
        run.write_json("manifest.json", manifest)
    for name, (kind, stage_cfg) in stages.items():
        if name in manifest["stages"]:
            print(f"[pipeline] {name}: finished earlier, skipped")
            continue
        print(f"\n[pipeline] ===== {name} ({kind}) =====")
        if name not in started or not (run.path / name / "config.yaml").is_file():
            started[name] = to_dict(cfg)  # the settings it starts with, for a later resume
            run.write_json("manifest.json", manifest)
        t0, spent = time.time(), manifest.setdefault("seconds_spent", {})
        try:
            summary = run_stage(name, kind, stage_cfg, run.path / name)
        finally:  # an invocation stopped by an error or Ctrl-C counts too, when resumed
            spent[name] = round(spent.get(name, 0) + time.time() - t0, 1)
            run.write_json("manifest.json", manifest)
        manifest["stages"][name] = {"kind": kind, "seconds": spent[name], "summary": summary}
        run.write_json("manifest.json", manifest)

    # ---------------------------------------------------------------- per-stage table
    t_eval = time.time()
    rows = evaluate_checkpoints(cfg, run, manifest)
    result = {"num_problems": len(_heldout(cfg)), "k": cfg.eval.k,
              "stage_seconds": {n: s["seconds"] for n, s in manifest["stages"].items()},
              "table_eval_seconds": round(time.time() - t_eval, 1),
              "seconds_this_invocation": round(time.time() - t_start, 1), "rows": rows}
    run.write_json("pipeline.json", result)
    table = markdown_table(rows, cfg.eval.k)
    atomic_write_text(
        run.path / "pipeline.md",
        f"# R1 pipeline: {run.path.name}\n\nHeld-out problems: {len(_heldout(cfg))}, "
        f"k = {cfg.eval.k} samples each (T = {cfg.eval.temperature}, top-p {cfg.eval.top_p}).\n\n"
        + table + "\n" + TABLE_NOTE + "\n"
    )
    print("\n" + table)
    write_report_safely(run.path)
    print(f"pipeline folder: {run.path}")
    return result


# -------------------------------------------------------------------------------- stages


DISTILLED = "Distill"
"""Row label prefix of the students distilled from R1 in 08-distill (`Distill tiny-qwen`)."""


def distill_stage_config(cfg: PipelineConfig, root: Path) -> dict[str, tuple[str, object]]:
    """08-distill when `pipeline.distill`: R1's verified samples -> SFT of each student
    (r1kit/stages/distill.py; the students' rows are evaluated with the others')."""
    if not cfg.pipeline.distill:
        return {}
    from r1kit.config import DistillConfig, DistillStagesConfig

    p, default = cfg.pipeline, DistillConfig()
    return {"08-distill": ("distill", DistillConfig(
        run=dataclasses.replace(cfg.run, name="08-distill", out_dir=str(root)),
        distill=DistillStagesConfig(teacher=str(root / "07-r1" / "final"),
                                    students=list(p.students), dtype=cfg.model.dtype,
                                    gradient_checkpointing=cfg.model.gradient_checkpointing),
        data=cfg.data,
        rollout=dataclasses.replace(default.rollout, max_new_tokens=cfg.rollout.max_new_tokens,
                                    stop=list(cfg.rollout.stop)),
        # The user's filters and thresholds, but R1 writes the summary format: R1-Zero's
        # `well_formed` would reject all of it (`any_format` once, even if listed already).
        sample=dataclasses.replace(
            cfg.sample, num_prompts=p.distill_prompts, samples_per_prompt=p.distill_samples,
            batch_size=default.sample.batch_size, max_per_prompt=default.sample.max_per_prompt,
            general_data="", general_samples=0, cold_start_format=False,
            filters=list(dict.fromkeys(
                "any_format" if f == "well_formed" else f for f in cfg.sample.filters))),
        sft=default.sft, code=cfg.code, eval=cfg.eval,
    ))}


def stage_configs(cfg: PipelineConfig, root: Path, *, programs: bool = False
                  ) -> dict[str, tuple[str, object]]:
    """Stage folder name -> (kind, the config its stage `main` runs with), in order. With
    `programs` (training problems with tests) the RL stages' rule-based correctness reward is
    `code`, the tests run in the sandbox, instead of `accuracy`, which compares final answers."""
    p = cfg.pipeline
    correct = "code" if programs else "accuracy"
    later_rewards = {correct: 1.0, "summary_format": p.format_reward,
                     p.language_form: p.language_reward}
    later_rewards = {k: w for k, w in later_rewards.items() if w}
    final_rewards, active_last = dict(later_rewards), {}
    if p.preference_model:  # R1's last stage adds a preference model on the summary (§3.2)
        name = f"reward_model:{p.preference_model}"
        final_rewards[name] = p.preference_weight
        if p.preference_steps:
            active_last[name] = p.preference_steps
    base = cfg.model.path

    def run_section(name: str):
        return dataclasses.replace(cfg.run, name=name, out_dir=str(root))

    def model(path: str) -> ModelConfig:
        return dataclasses.replace(cfg.model, path=path)

    def grpo(name: str, start: str, steps: int, weights: dict, temperature: float,
             active_last: dict | None = None) -> ZeroConfig:
        rewards = RewardsConfig(weights=weights, active_last=active_last or {})
        return ZeroConfig(run=run_section(name), model=model(start), data=cfg.data,
                          rollout=dataclasses.replace(cfg.rollout, temperature=temperature),
                          rl=dataclasses.replace(cfg.rl, steps=steps), rewards=rewards,
                          code=cfg.code, eval=cfg.eval)

    def sampler(name: str, start: str, prompts: int, samples: int, filters: list,
                general: bool = False) -> SampleConfig:
        s = dataclasses.replace(cfg.sample, num_prompts=prompts, samples_per_prompt=samples,
                                filters=filters)
        # non-reasoning data goes to Dev3's SFT only, as in R1 (§3.2)
        data, n = general_data(cfg) if general else ("", 0)
        s = dataclasses.replace(s, general_data=data, general_samples=n)
        return SampleConfig(run=run_section(name), model=model(start), data=cfg.data,
                            rollout=cfg.rollout, sample=s, code=cfg.code)

    def sft(name: str, data_from: str) -> SFTConfig:
        data = SFTDataConfig(train_file=str(root / data_from / "sft.jsonl"),
                             template=cfg.data.template, max_len=0)  # whole samples, none cut
        # The table evaluates every checkpoint on the same problems; no eval inside SFT.
        return SFTConfig(run=run_section(name), model=model(base), data=data, sft=cfg.sft,
                         code=cfg.code, eval=dataclasses.replace(cfg.eval, num_problems=0))

    def final(name: str) -> str:
        return str(root / name / "final")

    rejection_filters = [f for f in cfg.sample.filters if f != "well_formed"]
    return {
        "01-zero": ("rl", grpo("01-zero", base, p.zero_steps,
                               {correct if k == "accuracy" else k: w
                                for k, w in RewardsConfig().weights.items()},
                               cfg.rollout.temperature)),
        "02-cold-start": ("sample", sampler("02-cold-start", final("01-zero"),
                                            p.cold_start_prompts, p.cold_start_samples,
                                            list(cfg.sample.filters))),
        "03-dev1": ("sft", sft("03-dev1", "02-cold-start")),
        "04-dev2": ("rl", grpo("04-dev2", final("03-dev1"), p.reasoning_rl_steps, later_rewards,
                               cfg.rollout.temperature)),
        "05-rejection": ("sample", sampler("05-rejection", final("04-dev2"), p.rejection_prompts,
                                           p.rejection_samples, rejection_filters, general=True)),
        "06-dev3": ("sft", sft("06-dev3", "05-rejection")),
        "07-r1": ("rl", grpo("07-r1", final("06-dev3"), p.final_rl_steps, final_rewards,
                             p.final_temperature, active_last)),
    }


def all_stage_configs(cfg: PipelineConfig, root: Path, programs: bool
                      ) -> dict[str, tuple[str, object]]:
    """Every stage's (kind, config), 08-distill included when asked for."""
    return {**stage_configs(cfg, root, programs=programs), **distill_stage_config(cfg, root)}


def missed_edits(name: str, cfg: PipelineConfig, started_with: dict | None, root: Path,
                 programs: bool) -> list[str]:
    """The edits of the pipeline's config.yaml since stage `name` started (`started_with`: the
    pipeline's settings then) that would have changed the stage's config, as `key old -> new`:
    a started stage goes on with (or was made with) its own config.yaml, so they miss it. Edits
    of the stage's own config.yaml are the stage's business (its resume checks them)."""
    if started_with is None:  # a pipeline folder from an r1kit that did not record it
        return []
    try:
        before = from_dict(PipelineConfig, started_with)
    except UserError:  # recorded by another r1kit version: nothing to compare with
        return []
    stage = lambda c: all_stage_configs(c, root, programs)[name][1]
    if stage(before) == stage(cfg):
        return []
    reaching = []  # the edited keys that alone change the stage's config
    for key, (old, new) in config_changes(started_with, cfg).items():
        one = copy.deepcopy(started_with)
        set_dotted(one, key, new)
        try:
            alone = stage(from_dict(PipelineConfig, one)) != stage(before)
        except UserError:  # valid only with another edit (rl.lr with rl.min_lr): say it
            alone = True
        if alone:
            reaching.append(f"{key} {old!r} -> {new!r}")
    return reaching


def warn_missed(missed: dict[str, list[str]], root: Path) -> None:
    """One warning per set of edits, naming the started stages they miss."""
    by_edits: dict[tuple, list[str]] = {}
    for name, edits in missed.items():
        by_edits.setdefault(tuple(edits), []).append(name)
    for edits, names in by_edits.items():
        them, its = ("it", "its own") if len(names) == 1 else ("them", "their own")
        log.warning(f"{', '.join(names)} started before {', '.join(edits)}, which do not reach "
                    f"{them}: a started stage goes on with {its} config.yaml "
                    f"({', '.join(str(root / n / 'config.yaml') for n in names)}; edit that to "
                    f"change an unfinished stage); the edits apply to the stages not started yet")


def run_stage(name: str, kind: str, cfg, folder: Path) -> dict:
    """Run (or resume, or recognise as finished) one stage; its summary."""
    if kind == "distill":  # resumable part by part through its own manifest.json
        from r1kit.stages import distill as distill_stage

        started = (folder / "config.yaml").is_file()  # (a missing manifest is an empty one)
        return distill_stage.main(cfg, resume=str(folder) if started else None, table=False)
    done_file = folder / ("counts.json" if kind == "sample" else "summary.json")
    if done_file.is_file() and (kind == "sample" or (folder / "final").is_dir()):
        log.warning(f"{folder}: finished before the manifest recorded it; not run again")
        return json.loads(done_file.read_text())
    # started: resumed in place, under the stage folder's lock (before its first checkpoint, the
    # stage itself starts over there), never removed from under another process using it
    resume = str(folder) if (folder / "config.yaml").is_file() else None
    if kind == "rl":
        summary = rl_stage.main(cfg, resume=resume, stage="rl")
        if "stopped" in summary:
            raise UserError(f"stage {name}: {summary['stopped']}")
        return summary
    if kind == "sft":
        require_sft_data(Path(cfg.data.train_file).parent, name)
        return sft_stage.main(cfg, resume=resume)
    return sample_stage.main(cfg, resume=resume)


def require_sft_data(sample_folder: Path, stage: str) -> None:
    """A clear error, not a crash, when the sampling stage before an SFT stage kept nothing."""
    counts_file = sample_folder / "counts.json"
    if not counts_file.is_file():
        raise UserError(f"stage {stage}: {counts_file} is missing; the sampling stage did not "
                        "finish")
    counts = json.loads(counts_file.read_text())
    if counts.get("kept", 0) == 0:
        rejected = ", ".join(f"{k} {v}" for k, v in counts.get("rejected", {}).items() if v)
        raise UserError(
            f"stage {stage}: {sample_folder.name} kept 0 of {counts.get('generated', 0)} samples "
            f"(rejected: {rejected or 'none'}), so there is nothing to fine-tune on. Start a new "
            "pipeline with more prompts or samples (pipeline.cold_start_prompts, "
            "pipeline.rejection_prompts, *_samples), more Zero steps, or fewer sample.filters "
            "(toy runs: sample.filters=[] and sample.cold_start_format=false)"
        )


def general_data(cfg: PipelineConfig) -> tuple[str, int]:
    """(sample.general_data, sample.general_samples) of 05-rejection: the user's file, or
    `pipeline.general_samples` built-in records unless `sample.general_samples` says how many."""
    s = cfg.sample
    if s.general_data not in ("", "builtin"):
        return s.general_data, s.general_samples
    n = s.general_samples or cfg.pipeline.general_samples
    return ("builtin", n) if n or s.general_data == "builtin" else ("", 0)


def _check(cfg: PipelineConfig) -> None:
    p = cfg.pipeline
    check_report_to(cfg.run.report_to)
    if cfg.eval.num_problems < 1:
        raise UserError("eval.num_problems must be at least 1: the pipeline's table compares every "
                        "checkpoint on held-out problems")
    if p.distill:
        from r1kit.students import check_student

        for name in p.students:
            check_student(str(name))
        if not p.students:
            raise UserError("pipeline.distill needs pipeline.students")
    # (the ranges of the sizes, weights and language_form are checked by the config itself)
    if p.preference_model:
        get_reward(f"reward_model:{p.preference_model}")  # loads it: a bad path fails now
    elif p.preference_steps or p.preference_weight != 1.0:
        log.warning("pipeline.preference_steps / preference_weight do nothing without "
                    "pipeline.preference_model")
    if p.preference_model and p.preference_steps > p.final_rl_steps:
        log.warning(f"pipeline.preference_steps={p.preference_steps} is more than "
                    f"pipeline.final_rl_steps={p.final_rl_steps}: the preference reward counts in "
                    "every step of 07-r1")
    # what would stop a later stage, hours in: filter names, the non-reasoning data, a problem's
    # target_language that a later stage's language reward or filter cannot label words with
    build_filters(list(cfg.sample.filters))
    train = load_problems(cfg.data, cfg.eval.num_problems)[0]
    stages = {**stage_configs(cfg, Path(cfg.run.out_dir)),
              **distill_stage_config(cfg, Path(cfg.run.out_dir))}
    for name, (kind, stage_cfg) in stages.items():
        if kind == "rl":
            check_reward_targets(train, stage_cfg.rewards.weights, "pipeline.language_form",
                                 context=f"stage {name}: ")
        elif kind in ("sample", "distill"):
            check_filter_targets(train, stage_cfg.sample.filters, context=f"stage {name}: ")
    data, n = general_data(cfg)
    if data:
        load_general(data, n, cfg.run.seed)
    if cfg.sample.cold_start_format and "correct" not in cfg.sample.filters:
        raise UserError("sample.cold_start_format needs the 'correct' filter in sample.filters "
                        "(the summary states the answer); or set sample.cold_start_format=false")


def configure_code(cfg) -> bool:
    """Start the sandbox with `cfg.code` (a pipeline's or a distillation's) when its problems, train
    or held-out, have tests: a missing bubblewrap stops now, before any folder or model, and the
    table's evaluation runs with the user's limits. Every stage gets the same `code` section.
    True if the training problems have tests."""
    train, heldout = load_problems(cfg.data, cfg.eval.num_problems)
    trained_on_programs = code_reward.any_tests(train)
    code_reward.configure_for(heldout, cfg.code, needed=trained_on_programs)
    return trained_on_programs


def _load_manifest(run: RunFolder) -> dict:
    saved = run.read_state("manifest.json")
    if saved is not None:
        return saved
    manifest = {"stages": {}, "evals": {}}
    run.write_json("manifest.json", manifest)
    return manifest


# -------------------------------------------------------------------------------- the table


def _heldout(cfg: PipelineConfig) -> list:
    return load_problems(cfg.data, cfg.eval.num_problems)[1]


def evaluate_checkpoints(cfg: PipelineConfig, run: RunFolder, manifest: dict) -> list[dict]:
    """One table row per checkpoint, each evaluated once (recorded in the manifest), all with
    the same settings: when they were edited since, every checkpoint is evaluated again."""
    problems = _heldout(cfg)
    device = pick_device(cfg.run.device)
    settings = {"eval": {k: getattr(cfg.eval, k) for k in
                         ("k", "temperature", "top_p", "num_problems", "max_new_tokens")},
                "data": {k: getattr(cfg.data, k) for k in ("eval_source", "template")}}
    before = manifest.setdefault("eval_settings", settings)  # (older manifests: as they are)
    if before != settings and manifest["evals"]:
        edits = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in config_changes(
            before, cfg).items())
        log.warning(f"the evaluation settings changed since the table's evaluations ({edits}): "
                    "every checkpoint is evaluated again")
        manifest["evals"] = {}
    manifest["eval_settings"] = settings  # (an older manifest starts recording them here)
    run.write_json("manifest.json", manifest)
    for label, folder in checkpoints(cfg):
        if label in manifest["evals"]:
            continue
        path = cfg.model.path if folder is None else str(run.path / folder / "final")
        print(f"[pipeline] evaluating {label} ({path}) on {len(problems)} held-out problems")
        model, tokenizer = load_model(path, cfg.model.dtype, device, cfg.model.attn_implementation)
        res = evaluate(model, tokenizer, problems, cfg.eval, template=cfg.data.template,
                       stop=cfg.rollout.stop, seed=cfg.run.seed)
        run.write_jsonl(f"eval/{label}.jsonl", res.samples)
        manifest["evals"][label] = table_row(label, res, problems,
                                             summary=trained_on_summary(label, cfg))
        run.write_json("manifest.json", manifest)
    return [manifest["evals"][label] for label, _ in checkpoints(cfg)]


def checkpoints(cfg: PipelineConfig) -> list[tuple[str, str | None]]:
    """CHECKPOINTS, then the distilled students of 08-distill when `pipeline.distill`."""
    from r1kit.stages.distill import student_labels

    rows = list(CHECKPOINTS)
    if cfg.pipeline.distill:
        rows += [(f"{DISTILLED} {s}", f"08-distill/students/{s}")
                 for s in student_labels(list(cfg.pipeline.students))]
    return rows


def trained_on_summary(label: str, cfg: PipelineConfig) -> bool:
    """Was this checkpoint trained towards the summary format? Dev1 only with the summary-form
    cold-start data (`sample.cold_start_format`); Dev2 and R1 by their reward; Dev3 and the
    students by SFT on samples of a model that was."""
    if label == "Dev1":
        return cfg.sample.cold_start_format
    return label in TRAINED_ON_SUMMARY or label.startswith(DISTILLED)


def table_row(label: str, res: EvalResult, problems: list, *, summary: bool) -> dict:
    """The table's numbers for one checkpoint, from all k completions of every problem;
    `format_rate` is the share in the summary format if `summary`, else R1-Zero's."""
    texts = res.completions
    per_row = [problems[i // res.k] for i in range(len(texts))]
    shares = [reasoning_share(t, p) for t, p in zip(texts, per_row)]
    shares = [s for s in shares if s is not None]
    formats = {"format": res.format_rate, "summary_format": res.summary_format_rate}
    return {
        "model": label,
        "pass@1": res.pass1, "pass@1_ci": list(res.pass1_ci), "cons@k": res.cons_k,
        "format_rate": formats["summary_format" if summary else "format"],
        **formats,
        "language": sum(shares) / len(shares) if shares else None,
        "with_words": len(shares) / len(texts),
        "tokens": res.mean_tokens,
        "reflection": res.reflection,
    }


TABLE_NOTE = (
    "format: share in the format the checkpoint was trained towards (R1-Zero's `format` for Base "
    "and Zero, `summary_format` after a summary-form cold start; pipeline.json has both). language: mean "
    "share of target-language words in the reasoning, over completions whose reasoning has words. "
    "reflection: share of completions with a reflection word (R1-SPEC §6)."
)


def markdown_table(rows: list[dict], k: int) -> str:
    def num(v, digits=3):
        return "n/a" if v is None else f"{v:.{digits}f}"

    lines = [f"| model | pass@1 | cons@{k} | format | language | tokens | reflection |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {num(r['pass@1'])} | {num(r['cons@k'])} | "
                     f"{num(r['format_rate'])} | {num(r['language'])} | {num(r['tokens'], 1)} | "
                     f"{num(r['reflection'])} |")
    return "\n".join(lines) + "\n"
