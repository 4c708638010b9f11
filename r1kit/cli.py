"""The one entry point: `r1kit base | zero | rl | sft | sample | distill | eval | pipeline | report |
chat | export`.

Every stage takes `--config FILE.yaml` (overrides only) and any number of `--set key=value`;
`r1kit STAGE --help` lists every key with its default and meaning.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from r1kit.config import (
    BaseConfig,
    DistillConfig,
    EvalStageConfig,
    PipelineConfig,
    RolloutConfig,
    SampleConfig,
    SFTConfig,
    ZeroConfig,
    describe,
    load_config,
)
from r1kit.errors import UserError

STAGES = {
    "base": (BaseConfig, "build the built-in tiny base model (deterministic; cached)"),
    "zero": (ZeroConfig, "R1-Zero: GRPO with rule-based rewards straight from a base model"),
    "rl": (ZeroConfig, "GRPO from any checkpoint (e.g. Dev1), any rewards (e.g. + language)"),
    "sft": (SFTConfig, "completion-only SFT on {prompt, completion} pairs (cold start, distill)"),
    "sample": (SampleConfig, "rejection sampling / cold-start data: filtered samples -> SFT JSONL"),
    "distill": (DistillConfig, "sample a teacher, keep verified samples, SFT small students"),
    "eval": (EvalStageConfig, "pass@1 / pass@k / cons@k of models on held-out problems, side by side"),
    "pipeline": (PipelineConfig, "the R1 recipe, Zero -> ... -> R1, and the per-stage table"),
}

_ENGINE = [f"rollout.{f.name}" for f in dataclasses.fields(RolloutConfig)
           if f.name == "engine" or f.name.startswith("vllm_")]
_HF_ONLY = "it samples with the hf engine (transformers)"
_NO_STEPS = "it has no training steps"
_NO_TRAINING = "it does not train"
UNUSED = {
    # stage -> {key of its config that it does not read: why, or what to set instead}; given
    # with --set or --config, such a key is an error that says so, not silently ignored
    "eval": {
        **{f"rollout.{f.name}": "of rollout.*, only rollout.stop is read"
           for f in dataclasses.fields(RolloutConfig) if f.name != "stop"},
        **dict.fromkeys(_ENGINE, _HF_ONLY),
        "rollout.temperature": "set eval.temperature instead",
        "rollout.top_p": "set eval.top_p instead",
        "rollout.max_new_tokens": "set eval.max_new_tokens instead",
        "run.report_to": "it writes summary.json, no metric curves",
        "run.checkpoint_every": _NO_STEPS, "eval.every": _NO_STEPS,
        "run.log_completions": "samples.jsonl holds every completion",
        "model.gradient_checkpointing": _NO_TRAINING, "model.master_weights": _NO_TRAINING,
        "data.train_size": "it evaluates held-out problems only",
    },
    "sample": {
        **dict.fromkeys(_ENGINE, _HF_ONLY),
        "run.report_to": "counts.json holds its statistics",
        "run.checkpoint_every": "its progress is saved after every batch (sample.batch_size)",
        "run.log_completions": "sft.jsonl holds the kept completions",
        "model.gradient_checkpointing": _NO_TRAINING, "model.master_weights": _NO_TRAINING,
        "data.eval_split": "it samples training problems only",
    },
    "distill": {**dict.fromkeys(_ENGINE, "the teacher is sampled with the hf engine"),
                "run.log_completions": "its students' SFT samples no completions",
                "eval.every": "teacher and students are evaluated once each, for the table"},
    "sft": {"run.log_completions": "it samples no completions while training"},
    "pipeline": {  # the sizes its stages get (`dataclasses.replace` in stages/pipeline.py)
        "rl.steps": "the RL stages' steps are pipeline.zero_steps, pipeline.reasoning_rl_steps "
                    "and pipeline.final_rl_steps",
        "sample.num_prompts": "the sampling stages' prompts are pipeline.cold_start_prompts, "
                              "pipeline.rejection_prompts and pipeline.distill_prompts",
        "sample.samples_per_prompt": "the sampling stages' samples per prompt are "
                                     "pipeline.cold_start_samples, pipeline.rejection_samples "
                                     "and pipeline.distill_samples",
    },
}


def check_used(stage: str, given: list[str]) -> None:
    """A key given for `stage` that it does not read is an error saying why (`UNUSED`)."""
    for key in given:
        if key in UNUSED.get(stage, {}):
            raise UserError(f"{key} does nothing here: {UNUSED[stage][key]}")


def _config_help(cls, unused: dict) -> str:
    rows = [row for row in describe(cls) if row[0] not in unused]  # (the keys the stage reads)
    width = max(len(k) for k, _, _ in rows)
    lines = ["config keys (set with --set KEY=VALUE, or in a --config YAML file):"]
    lines += [f"  {k:<{width}}  {help}  [default: {d}]" for k, d, help in rows]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="r1kit", description="The DeepSeek-R1 training system (R1-Zero, R1, distillation).",
        allow_abbrev=False,  # `--npro 1` would pass --nproc's check, then reach torchrun as is
    )
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, (cls, help) in STAGES.items():
        p = sub.add_parser(name, help=help, description=help,
                           epilog=_config_help(cls, UNUSED.get(name, {})),
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           allow_abbrev=False)
        p.add_argument("--config", help="YAML file of overrides" + (
            " (e.g. recipes/tiny/zero.yaml)" if name in ("zero", "rl") else ""))
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help=f"override one config key, e.g. --set {SET_EXAMPLE.get(name)} "
                            "(repeatable)")
        if name in ("zero", "rl", "sft", "sample", "pipeline", "distill"):
            p.add_argument("--resume", metavar="RUN_DIR",
                           help="continue a killed run from its last checkpoint or batch "
                                "(pipeline: skip finished stages)")
        if name == "eval":
            p.add_argument("--model", help="model folder or hub name (same as --set model.path=)")
            p.add_argument("models", nargs="*", metavar="MODEL",
                           help="model folders or hub names to compare side by side in one table")
            p.add_argument("--problems", metavar="FILE|builtin",
                           help="problems to evaluate on: a .jsonl of {prompt, answer}, hf:NAME, "
                                "or builtin (the held-out split; the default)")
            p.add_argument("--out", metavar="DIR",
                           help="write the results here (with --model: summary.json and "
                                "samples.jsonl; models to compare: comparison.md and .json); "
                                "default: a run folder")
        if name == "distill":
            p.add_argument("--teacher", help="teacher model, run or pipeline folder "
                                             "(same as --set distill.teacher=)")
            p.add_argument("--students", metavar="A,B",
                           help="comma-separated students: tiny-qwen, tiny-llama, model folders "
                                "or hub names (same as --set distill.students=[A,B])")
        if name in ("zero", "rl", "eval"):
            p.add_argument("--task", metavar="SOURCE",
                           help="problems: builtin, builtin:carry, builtin:code, a .jsonl, "
                                "hf:NAME or reasoning_gym:NAME (same as --set data.source=)")
        if name in ("zero", "rl", "eval", "sft", "sample", "distill", "pipeline"):  # code problems
            p.add_argument("--unsafe-allow-unsandboxed", action="store_true",
                           help="where bubblewrap cannot run, run model-written code WITHOUT a "
                                "sandbox (same as --set code.unsafe_allow_unsandboxed=true)")
        if name in ("zero", "rl", "sft", "pipeline"):
            p.add_argument("--report-to", metavar="WRITERS",
                           help="comma-separated metric writers, e.g. tensorboard,wandb; the same "
                                "as --set run.report_to=[WRITERS] (none = metrics.jsonl only)")
        if name in ("zero", "rl", "sft", "sample"):
            p.add_argument("--model", help="HF model folder or hub name, e.g. "
                                           "Qwen/Qwen2.5-0.5B-Instruct (--set model.path=)")
        if name in ("zero", "rl", "sft"):
            p.add_argument("--lora", metavar="r=16,alpha=32,...",
                           help="train LoRA adapters: lora.* keys as k=v pairs; lists with +, "
                                "e.g. r=16,target_modules=q_proj+v_proj (needs r1kit[lora])")
            p.add_argument("--nproc", type=int, metavar="N",
                           help="train with N processes (torchrun; gloo on CPU, one GPU each)")
    p = sub.add_parser("report", help=REPORT_HELP, description=REPORT_HELP)
    p.add_argument("run", metavar="RUN_DIR", help="a run folder or a pipeline folder")
    _add_chat_export(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and args.stage not in MULTI_PROCESS:
        print(f"r1kit {args.stage}: error: runs in one process; torchrun (or --nproc) is for "
              f"{', '.join(MULTI_PROCESS)}, so run it without", file=sys.stderr)
        return 2  # each process would run the whole stage, into the same folders
    if args.stage == "report":
        return _report(args.run)
    if args.stage in ("chat", "export"):
        return _chat_export(args)
    cls = STAGES[args.stage][0]
    overrides = list(args.set)
    if getattr(args, "report_to", None):
        overrides.append(f"run.report_to=[{args.report_to}]")
    if getattr(args, "model", None) is not None:  # `--model ""` is an error, not the default
        overrides.append(f"model.path={args.model}")
    if getattr(args, "task", None) is not None:
        overrides.append(f"data.source={args.task}")
    if getattr(args, "lora", None):
        from r1kit.lora import cli_overrides

        try:
            overrides += cli_overrides(args.lora)
        except UserError as e:
            print(f"r1kit {args.stage}: error: {e}", file=sys.stderr)
            return 2
    if getattr(args, "unsafe_allow_unsandboxed", False):
        overrides.append("code.unsafe_allow_unsandboxed=true")
    if getattr(args, "problems", None):
        overrides += (["data.source=builtin"] if args.problems == "builtin" else
                      [f"data.source={args.problems}", f"data.eval_source={args.problems}"])
    if getattr(args, "teacher", None):
        overrides.append(f"distill.teacher={args.teacher}")
    if getattr(args, "students", None) is not None:  # "": an empty list, an error (not defaults)
        overrides.append(f"distill.students=[{args.students}]")
    try:
        if getattr(args, "resume", None) and (overrides or args.config):
            raise UserError(
                f"--resume continues {args.resume} with its saved config.yaml, so --set, --config "
                f"and the other settings given with it would be ignored; to change a setting (e.g. "
                f"rl.steps, to train longer), edit {Path(args.resume) / 'config.yaml'}")
        cfg = load_config(cls, args.config, overrides)  # a bad setting fails before torchrun
        given = _given_keys(cls, args.config, overrides)
        # a config file may restate a default it does not use (a run's own config.yaml does)
        check_used(args.stage, _given_keys(cls, args.config, overrides, changed_only=True))
        if getattr(args, "models", None) and "model.path" in given:
            raise UserError("name the models either as arguments (several, compared) or with "
                            "--model or model.path (one), not both")
        if getattr(args, "out", None) and {"run.name", "run.out_dir"} & set(given):
            raise UserError("--out names the folder the results go to; run.name and run.out_dir "
                            "name a new run folder instead: give one or the other")
        if getattr(args, "nproc", None) is not None:  # re-run this command under torchrun
            from r1kit.distributed import Dist, check_strategy, launch, split_batch
            from r1kit.lora import enabled

            if hasattr(cfg, "rl") and args.nproc > 0 and not getattr(args, "resume", None):
                # the groups split evenly over the ranks, or torchrun is not started at all
                split_batch(Dist(world=args.nproc), cfg.rl.prompts_per_step)
            if hasattr(cfg, "dist") and hasattr(cfg, "lora"):
                check_strategy(cfg.dist.strategy, enabled(cfg.lora), args.nproc)
            if hasattr(cfg, "rl") and hasattr(cfg, "dist"):  # GRPO: the rollout engine too
                from r1kit.rollout import check as check_engine

                check_engine(cfg.rollout.engine, cfg.rollout.vllm_mode,
                             strategy=cfg.dist.strategy, world=args.nproc)

            return launch(args.nproc, _without_nproc(sys.argv[1:] if argv is None else argv))
        if args.stage == "base":
            from r1kit.stages import base

            base.main(cfg)
        elif args.stage in ("zero", "rl"):
            from r1kit.stages import zero

            summary = zero.main(cfg, resume=args.resume, stage=args.stage)
            if "stopped" in summary:
                return 1
        elif args.stage == "sft":
            from r1kit.stages import sft

            sft.main(cfg, resume=args.resume)
        elif args.stage == "sample":
            from r1kit.stages import sample

            sample.main(cfg, resume=args.resume)
        elif args.stage == "eval":
            from r1kit.stages import evaluate

            evaluate.main(cfg, models=args.models, out=args.out,
                          template_given="data.template" in given)
        elif args.stage == "distill":
            from r1kit.stages import distill

            distill.main(cfg, resume=args.resume)
        elif args.stage == "pipeline":
            from r1kit.stages import pipeline

            pipeline.main(cfg, resume=args.resume)
    except UserError as e:
        _leave_process_group()
        _after_the_first_rank()
        print(f"r1kit {args.stage}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _leave_process_group()
        print(f"r1kit {args.stage}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `r1kit eval ... | head`: the reader left; the files are written
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (no error at exit)
        return 0
    except OSError as e:  # a file that cannot be read or written (read-only, full, gone)
        _leave_process_group()
        return _os_error(args.stage, e)
    return 0


def _leave_process_group() -> None:
    """Under torchrun, a stage that stops with an error leaves the process group first."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from r1kit.distributed import abandon

        abandon()


def _after_the_first_rank() -> None:
    """Under torchrun, the other ranks wait a moment before printing an error: the same error
    (a bad data file) then comes once, from the first rank, as torchrun stops the others when it
    exits (it looks every 0.1 s); an error of one rank alone is still printed."""
    if int(os.environ.get("RANK", "0")) > 0:
        import time

        time.sleep(2.0)


def _os_error(stage: str, e: OSError) -> int:
    """The last resort for a file system error no stage turned into a `UserError`: one line, as
    `[Errno 30] Read-only file system: 'runs/x'`, without a traceback."""
    print(f"r1kit {stage}: error: {e}", file=sys.stderr)
    return 2


SET_EXAMPLE = {"base": "steps=500", "zero": "rl.beta=0.001", "rl": "rl.beta=0.001",
               "sft": "sft.epochs=3", "sample": "sample.samples_per_prompt=8",
               "eval": "eval.k=16", "distill": "distill.students=[tiny-qwen]",
               "pipeline": "pipeline.zero_steps=100"}
MULTI_PROCESS = ("zero", "rl", "sft")  # the stages that split their work over torchrun's ranks

REPORT_HELP = "write report.html (curves, tables, sample completions) in a run or pipeline folder"


def _report(folder: str) -> int:
    from r1kit.report import write_report

    try:
        print(f"report: {write_report(folder)}")
    except UserError as e:
        print(f"r1kit report: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        return _os_error("report", e)
    return 0


def _given_keys(cls, config: str | None, overrides: list[str],
                changed_only: bool = False) -> list[str]:
    """The config keys (`section.name`) that the overrides and the config file set (with
    `changed_only`, the file's only where it differs from the default); called after
    `load_config` read them."""
    keys = [o.split("=", 1)[0].strip() for o in overrides]
    if config:
        import yaml

        tree = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
        keys += _leaf_keys(cls(), tree, changed_only=changed_only)
    return keys


def _leaf_keys(default, tree: dict, prefix: str = "", changed_only: bool = False) -> list[str]:
    """The keys of a config file's `tree`: sections of `default` are walked into; a mapping that
    is a value (rewards.weights) is one key."""
    keys = []
    for name, value in tree.items():
        section = getattr(default, name, None)
        if isinstance(value, dict) and dataclasses.is_dataclass(section):
            keys += _leaf_keys(section, value, f"{prefix}{name}.", changed_only)
        elif not (changed_only and value == section):
            keys.append(prefix + name)
    return keys


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _add_chat_export(sub) -> None:
    p = sub.add_parser("chat", help="talk to a model: streamed tokens, reasoning shown apart",
                       description="Talk to a model folder, run folder or hub name in the "
                                   "terminal (r1kit/stages/chat.py).")
    p.add_argument("model", metavar="MODEL", help="model folder, run folder (its final/) or hub name")
    p.add_argument("--template", default="auto", choices=["auto", "chat", "r1_zero", "plain"],
                   help="prompt: auto = the template it was trained on (its run's data.template; "
                        "r1_zero for a built-in base), else its chat template when it has one")
    p.add_argument("--max-new-tokens", type=int, default=1024, help="per answer (default 1024)")
    p.add_argument("--temperature", type=float, default=0.6, help="0 = greedy (default: R1's 0.6)")
    p.add_argument("--top-p", type=float, default=0.95, help="in (0, 1] (default 0.95)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 (default "
                   "float32)")
    p = sub.add_parser("export", help="a clean HF folder for vLLM/transformers serving",
                       description="Export a model, LoRA adapter or run folder as a Hugging Face "
                                   "folder: merged weights, tokenizer, chat template, "
                                   "generation_config (r1kit/stages/export.py).")
    p.add_argument("source", metavar="RUN_OR_MODEL")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--dtype", default="", help="float32 | bfloat16 | float16 (default: as trained)")
    p.add_argument("--template", default="", choices=["", "chat", "r1_zero"],
                   help="chat template to ship (default: the run's data.template)")


def _chat_export(args) -> int:
    try:
        if args.stage == "chat":
            from r1kit.stages import chat

            if not args.temperature >= 0 or not 0 < args.top_p <= 1:  # (NaN fails both)
                raise UserError(f"--temperature must be >= 0 and --top-p in (0, 1]; got "
                                f"{args.temperature} and {args.top_p}")

            return chat.main(args.model, template=args.template,
                             max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                             top_p=args.top_p, device=args.device, dtype=args.dtype)
        from r1kit.stages import export

        export.main(args.source, args.out, dtype=args.dtype, template=args.template)
    except UserError as e:
        print(f"r1kit {args.stage}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"r1kit {args.stage}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        return _os_error(args.stage, e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
