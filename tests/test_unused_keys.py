"""A key a stage's --help would list but the stage does not read is refused, naming what it reads
instead: `r1kit eval` samples with eval.*, `r1kit sample` with the hf engine, and `r1kit pipeline`
sizes its stages with pipeline.*."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from r1kit.cli import UNUSED, build_parser
from r1kit.cli import main as cli
from r1kit.config import RolloutConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("stage, setting, message", [
    ("eval", "rollout.temperature=0", "does nothing here: set eval.temperature instead"),
    ("eval", "rollout.max_new_tokens=5", "set eval.max_new_tokens instead"),
    ("eval", "rollout.engine=vllm", "does nothing here: it samples with the hf engine"),
    ("eval", "run.report_to=[wandb]", "run.report_to does nothing here"),
    ("eval", "eval.every=3", "eval.every does nothing here: it has no training steps"),
    ("sample", "rollout.engine=vllm", "does nothing here: it samples with the hf engine"),
    ("sample", "run.report_to=[wandb]", "run.report_to does nothing here"),
    ("distill", "rollout.vllm_mode=server", "the teacher is sampled with the hf engine"),
    ("sft", "run.log_completions=8", "run.log_completions does nothing here"),
    ("pipeline", "rl.steps=10", "steps are pipeline.zero_steps, pipeline.reasoning_rl_steps"),
    ("pipeline", "sample.num_prompts=10", "pipeline.cold_start_prompts"),
    ("pipeline", "sample.samples_per_prompt=2", "pipeline.rejection_samples"),
])
def test_a_key_the_stage_does_not_read_is_refused(tmp_path, capsys, stage, setting, message):
    missing = {"distill": "distill.teacher", "sft": "data.train_file"}.get(stage, "model.path")
    code = cli([stage, "--set", setting, "--set", f"run.out_dir={tmp_path}",  # (else: fails fast)
                "--set", f"{missing}={tmp_path / 'missing'}"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_a_config_file_is_checked_too(tmp_path, capsys):
    (tmp_path / "zero.yaml").write_text("rl:\n  steps: 10\n")
    assert cli(["pipeline", "--config", str(tmp_path / "zero.yaml"),
                "--set", f"run.out_dir={tmp_path}", "--set", f"model.path={tmp_path / 'no'}"]) == 2
    assert "rl.steps does nothing here" in capsys.readouterr().err
    # a file that restates a default it does not use (as a run's own config.yaml does) is fine
    (tmp_path / "sft.yaml").write_text("run:\n  log_completions: 4\n")
    assert cli(["sft", "--config", str(tmp_path / "sft.yaml"), "--set", f"run.out_dir={tmp_path}",
                "--set", f"data.train_file={tmp_path / 'missing.jsonl'}"]) == 2
    assert "does nothing here" not in capsys.readouterr().err
    (tmp_path / "eval.yaml").write_text("rollout:\n  stop: ['</answer>']\n  temperature: 0\n")
    assert cli(["eval", "--config", str(tmp_path / "eval.yaml"), "--model", str(tmp_path / "no")]
               ) == 2
    assert "rollout.temperature does nothing here" in capsys.readouterr().err


def test_eval_reads_only_the_stop_strings_of_rollout():
    """A rollout key added later is refused by `r1kit eval` until it reads it."""
    keys = {f"rollout.{f.name}" for f in dataclasses.fields(RolloutConfig)}
    assert keys - set(UNUSED["eval"]) == {"rollout.stop"}


def test_help_lists_only_the_keys_a_stage_reads():
    helps = {name: p.epilog for name, p in
             build_parser()._subparsers._group_actions[0].choices.items()}
    assert "rollout.temperature " not in helps["eval"] and "rollout.stop " in helps["eval"]
    assert "rl.steps " not in helps["pipeline"] and "pipeline.zero_steps " in helps["pipeline"]
    assert "rollout.engine " in helps["zero"]


def test_models_to_compare_and_model_path_are_not_both_given(capsys):
    assert cli(["eval", "a", "b", "--set", "model.path=c"]) == 2
    assert "not both" in capsys.readouterr().err
    assert cli(["eval", "--model", "a", "--out", "o", "--set", "run.name=x"]) == 2
    assert "--out names the folder" in capsys.readouterr().err


def test_an_empty_model_or_task_flag_is_an_error_not_the_default(tmp_path, capsys):
    # (`--model "$MODEL"` with MODEL unset used to evaluate the built-in model)
    assert cli(["eval", "--model", "", "--set", f"run.out_dir={tmp_path}"]) == 2
    assert "'model.path' is empty" in capsys.readouterr().err
    assert cli(["zero", "--task", "", "--set", f"run.out_dir={tmp_path}"]) == 2
    assert "data source ''" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
