"""Resuming a run whose config.yaml was edited since its checkpoint (to train longer, as the
README says, or by mistake): each checkpoint records the config it was trained with; a resume
logs what changed and refuses what it cannot continue with, in one line naming the keys."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from r1kit import checkpoint as ckpt
from r1kit.cli import main as cli
from r1kit.config import SampleConfig, SFTConfig, ZeroConfig, load_config
from r1kit.errors import UserError
from r1kit.filters import build_filters
from r1kit.models import load_model
from r1kit.runs import RunFolder

TINY = Path(__file__).resolve().parents[1] / "r1kit" / "assets" / "tiny-base"


@pytest.fixture(scope="module")
def tiny():
    return load_model(str(TINY), "float32", "cpu")


def _run(tmp_path: Path, cls=ZeroConfig, stage: str = "zero", *sets: str) -> RunFolder:
    cfg = load_config(cls, None, [f"run.out_dir={tmp_path}", "run.name=r", *sets])
    return RunFolder.open(cfg, stage)


def _edit(run: Path, section: str, key: str, value) -> None:
    tree = yaml.safe_load((run / "config.yaml").read_text())
    tree[section][key] = value
    (run / "config.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))


def test_a_checkpoint_records_the_config_its_run_trains_with(tmp_path, tiny):
    run = _run(tmp_path)
    _edit(run.path, "rl", "steps", 900)  # an edit while the run goes on: not what it trained with
    saved = ckpt.save_checkpoint(run.path, 1, *tiny, {}, config_text=run.config_text)
    assert yaml.safe_load(ckpt.checkpoint_config(saved))["rl"]["steps"] == 300


def test_resume_logs_the_keys_changed_since_the_checkpoint(tmp_path, tiny, caplog):
    run = _run(tmp_path)
    ckpt.save_checkpoint(run.path, 1, *tiny, {}, config_text=run.config_text)
    _edit(run.path, "rl", "steps", 600)
    _edit(run.path, "eval", "every", 8)
    with caplog.at_level(logging.WARNING, logger="r1kit"):
        resumed = RunFolder.open(run.cfg, "zero", str(run.path))
    assert resumed.cfg.rl.steps == 600
    said = [r.getMessage() for r in caplog.records if "changed since" in r.getMessage()]
    where = run.path / "checkpoints" / "step-000001"
    changes = "rl.steps 300 -> 600, eval.every 50 -> 8"
    assert said == [f"{run.path / 'config.yaml'}: changed since {where}: {changes}"]
    # the next checkpoint records the new config: nothing changed since it
    ckpt.save_checkpoint(run.path, 2, *tiny, {}, config_text=resumed.config_text)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="r1kit"):
        RunFolder.open(run.cfg, "zero", str(run.path))
    assert not [r for r in caplog.records if "changed since" in r.getMessage()]


@pytest.mark.parametrize("cls, stage, section, key, value", [
    (ZeroConfig, "zero", "lora", "r", 4),  # full FT -> LoRA: the optimizer state does not fit
    (ZeroConfig, "zero", "run", "seed", 7),
    (ZeroConfig, "zero", "model", "dtype", "bfloat16"),
    (ZeroConfig, "zero", "data", "train_size", 100),  # the saved data order indexes the problems
    (ZeroConfig, "zero", "rl", "lr", 0.5),  # the saved optimizer keeps its own
    (ZeroConfig, "zero", "rl", "beta", 0.01),  # from 0: the checkpoint holds no reference
    (ZeroConfig, "zero", "dist", "strategy", "fsdp"),
    (SFTConfig, "sft", "sft", "batch_size", 4),  # the position in the epoch's batches
    (SFTConfig, "sft", "data", "template", "chat"),
])
def test_resume_refuses_a_change_it_cannot_continue_with(tmp_path, tiny, cls, stage, section,
                                                        key, value):
    sets = ["rl.beta=0"] if cls is ZeroConfig else ["data.train_file=x.jsonl"]
    run = _run(tmp_path, cls, stage, *sets)
    ckpt.save_checkpoint(run.path, 2, *tiny, {}, config_text=run.config_text)
    _edit(run.path, section, key, value)
    with pytest.raises(UserError) as e:
        RunFolder.open(run.cfg, stage, str(run.path))
    message = str(e.value)
    assert message.startswith(f"{run.path / 'config.yaml'}: {section}.{key} ")
    assert "checkpoints/step-000002" in message and "start a new run" in message
    assert "\n" not in message


@pytest.mark.parametrize("cls, stage, key, value", [
    (ZeroConfig, "zero", "k", 8), (ZeroConfig, "zero", "temperature", 1.0),
    (ZeroConfig, "zero", "num_problems", 50), (SFTConfig, "sft", "max_new_tokens", 32),
])
def test_resume_refuses_other_evaluation_settings(tmp_path, tiny, cls, stage, key, value):
    """The base model was evaluated with them: a final eval with others would be compared with
    it under one caption (eval.k crashed the run's end, leaving the last final/ and summary)."""
    run = _run(tmp_path, cls, stage, *([] if cls is ZeroConfig else ["data.train_file=x.jsonl"]))
    ckpt.save_checkpoint(run.path, 2, *tiny, {}, config_text=run.config_text)
    _edit(run.path, "eval", key, value)
    with pytest.raises(UserError, match=f"config.yaml: eval.{key} .* the evaluations so far, "
                                        "the one before training included, were made with it"):
        RunFolder.open(run.cfg, stage, str(run.path))


def test_an_sft_run_that_evaluates_nothing_may_change_the_other_evaluation_settings(tmp_path,
                                                                                    tiny):
    run = _run(tmp_path, SFTConfig, "sft", "data.train_file=x.jsonl", "eval.num_problems=0")
    ckpt.save_checkpoint(run.path, 2, *tiny, {}, config_text=run.config_text)
    _edit(run.path, "eval", "k", 3)
    assert RunFolder.open(run.cfg, "sft", str(run.path)).cfg.eval.k == 3
    _edit(run.path, "eval", "num_problems", 20)  # no evaluation before training to compare with
    with pytest.raises(UserError, match="eval.num_problems 0 -> 20"):
        RunFolder.open(run.cfg, "sft", str(run.path))


def test_changes_a_resume_takes(tmp_path, tiny):
    run = _run(tmp_path, ZeroConfig, "zero", "rl.beta=0.001")
    ckpt.save_checkpoint(run.path, 2, *tiny, {}, config_text=run.config_text)
    for section, key, value in [("rl", "steps", 10), ("rl", "beta", 0.0), ("eval", "every", 1),
                                ("run", "checkpoint_every", 1), ("rollout", "temperature", 0.9),
                                ("rl", "prompts_per_step", 3), ("run", "report_to", [])]:
        _edit(run.path, section, key, value)
    assert RunFolder.open(run.cfg, "zero", str(run.path)).cfg.rl.steps == 10


def test_a_moved_path_resumes_with_a_warning(tmp_path, tiny, caplog):
    # a relative path resumed from elsewhere, or a moved folder, can be pointed at again
    run = _run(tmp_path, ZeroConfig, "zero", "data.source=probs.jsonl")
    ckpt.save_checkpoint(run.path, 2, *tiny, {}, config_text=run.config_text)
    _edit(run.path, "data", "source", str(tmp_path / "probs.jsonl"))
    _edit(run.path, "model", "path", str(TINY))
    with caplog.at_level(logging.WARNING, logger="r1kit"):
        RunFolder.open(run.cfg, "zero", str(run.path))
    assert any("model.path, data.source must name the same model or data" in r.getMessage()
               for r in caplog.records)


def test_a_checkpoint_of_an_earlier_version_still_resumes(tmp_path, tiny, caplog):
    run = _run(tmp_path)
    saved = ckpt.save_checkpoint(run.path, 2, *tiny, {}, config_text=run.config_text)
    (saved / ckpt.RUN_CONFIG).unlink()
    _edit(run.path, "rl", "steps", 600)
    with caplog.at_level(logging.WARNING, logger="r1kit"):
        assert RunFolder.open(run.cfg, "zero", str(run.path)).cfg.rl.steps == 600
    assert any("does not record the config" in r.getMessage() for r in caplog.records)


def test_a_bad_edit_names_the_key_and_the_file(tmp_path):
    run = _run(tmp_path)
    text = (run.path / "config.yaml").read_text()
    (run.path / "config.yaml").write_text(text.replace("steps: 300", "steps: 4x"))
    with pytest.raises(UserError) as e:
        RunFolder.saved_config(run.cfg, "zero", str(run.path))
    line = text.splitlines().index("  steps: 300") + 1
    assert str(e.value) == (f"{run.path / 'config.yaml'}:{line}: config key 'rl.steps' must be "
                            "an integer, got '4x'")
    (run.path / "config.yaml").write_text(text.replace("rl:", "rll:"))
    with pytest.raises(UserError, match=r"config.yaml:\d+: unknown config key 'rll'"):
        RunFolder.saved_config(run.cfg, "zero", str(run.path))


def test_the_folder_of_another_stage_is_named_as_such(tmp_path, capsys):
    run = _run(tmp_path, SFTConfig, "sft", "data.train_file=x.jsonl")
    assert cli(["zero", "--resume", str(run.path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"r1kit zero: error: {run.path}: not a run folder of `r1kit zero` but of `r1kit sft`; "
        "resume it with the command that made it")


def test_sampling_progress_records_its_config(tmp_path):
    from r1kit.stages.sample import _load_progress

    run = _run(tmp_path, SampleConfig, "sample")
    chain = build_filters([])
    run.write_json("progress.json", _load_progress(run, chain))
    _edit(run.path, "sample", "num_prompts", 900)  # would pick other prompts for each batch
    resumed = RunFolder.open(run.cfg, "sample", str(run.path), checkpoints=False)
    with pytest.raises(UserError, match=r"sample.num_prompts 500 -> 900 since .*progress.json"):
        _load_progress(resumed, chain)
    _edit(run.path, "sample", "num_prompts", 500)
    _edit(run.path, "run", "threads", 2)
    resumed = RunFolder.open(run.cfg, "sample", str(run.path), checkpoints=False)
    assert _load_progress(resumed, chain)["config"]["run"]["threads"] == 2


def test_resume_after_an_edit_end_to_end(tiny_base, tmp_path, capsys):
    """The QA's case: a finished full fine-tuning run, lora.r raised, resumed: one line, not a
    traceback from the optimizer; rl.steps raised: trains on, and the summary's wall time
    counts both sessions."""
    sets = [f"model.path={tiny_base}", f"run.out_dir={tmp_path}", "run.name=e", "rl.steps=1",
            "rl.prompts_per_step=2", "rl.group_size=2", "eval.num_problems=2", "eval.k=1",
            "eval.max_new_tokens=8", "rollout.max_new_tokens=8", "run.report_to=[]"]
    assert cli(["zero", *[a for s in sets for a in ("--set", s)]]) == 0
    run = tmp_path / "e"
    import torch  # the first session's time, as its last checkpoint recorded it

    first = torch.load(run / "checkpoints" / "step-000001" / "trainer_state.pt",
                       weights_only=False)["state"]["wall_seconds"]
    _edit(run, "lora", "r", 4)
    capsys.readouterr()
    assert cli(["zero", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"r1kit zero: error: {run / 'config.yaml'}: lora.r 0 -> 4 since ")
    assert len(err.splitlines()) == 1
    _edit(run, "lora", "r", 0)
    _edit(run, "rl", "steps", 2)
    assert cli(["zero", "--resume", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["wall_seconds"] > first
