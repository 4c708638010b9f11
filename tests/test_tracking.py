"""Metric writers: TensorBoard event files (default), W&B offline without an account, the
`run.report_to` / `--report-to` settings, and the writers wired into the RL and SFT loops."""

from __future__ import annotations

import json
import logging
import os

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from r1kit.cli import main as cli
from r1kit.config import SFTConfig, ZeroConfig, load_config
from r1kit.errors import UserError
from r1kit.stages import sft as sft_stage
from r1kit.stages import zero as zero_stage
from r1kit.tracking import Tracker, check_report_to


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_are_readable_and_a_resume_replaces_later_steps(tmp_path):
    t = Tracker(tmp_path, ["tensorboard"])
    for step in range(1, 5):
        t.log({"reward/total": step / 10, "note": "skipped", "flag": True}, step)
    t.close()
    assert _scalars(tmp_path / "tb") == {
        "reward/total": [(1, pytest.approx(0.1)), (2, pytest.approx(0.2)),
                         (3, pytest.approx(0.3)), (4, pytest.approx(0.4))]}
    # Resumed from the step-2 checkpoint: steps 3 and 4 are logged again, with new values.
    t = Tracker(tmp_path, ["tensorboard"], resume_step=2)
    for step in (3, 4):
        t.log({"reward/total": step}, step)
    t.close()
    assert _scalars(tmp_path / "tb")["reward/total"] == [
        (1, pytest.approx(0.1)), (2, pytest.approx(0.2)), (3, 3.0), (4, 4.0)]


def test_report_to_is_checked():
    assert check_report_to(["TensorBoard", "none", "tensorboard"]) == ["tensorboard"]
    assert check_report_to([]) == []
    with pytest.raises(UserError, match="run.report_to: unknown writer 'mlflow'"):
        check_report_to(["mlflow"])


def test_report_to_flag_sets_the_config(monkeypatch):
    seen = {}
    monkeypatch.setattr(zero_stage, "main", lambda cfg, **kw: seen.setdefault("cfg", cfg) and {})
    assert cli(["zero", "--report-to", "tensorboard,wandb", "--set", "run.threads=1"]) == 0
    assert seen["cfg"].run.report_to == ["tensorboard", "wandb"]
    assert load_config(ZeroConfig).run.report_to == ["tensorboard"]  # the default


def test_unknown_writer_fails_before_a_run_folder(tiny_base, tmp_path, capsys):
    code = cli(["zero", "--report-to", "neptune", "--set", f"run.out_dir={tmp_path}",
                "--set", f"model.path={tiny_base}"])
    assert code == 2 and "unknown writer 'neptune'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_rl_and_sft_loops_write_tensorboard(tiny_base, tmp_path):
    sets = [f"model.path={tiny_base}", f"run.out_dir={tmp_path}", "run.name=rl", "rl.steps=2",
            "rl.prompts_per_step=2", "rl.group_size=2", "rl.micro_batch_size=4",
            "rollout.max_new_tokens=8", "eval.num_problems=2", "eval.k=2", "eval.every=0",
            "eval.max_new_tokens=8", "run.checkpoint_every=0", "data.train_size=32",
            "rl.dynamic_sampling=false"]
    zero_stage.main(load_config(ZeroConfig, None, sets))
    rows = [json.loads(x) for x in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    tb = _scalars(tmp_path / "rl" / "tb")
    for key in ("reward/total", "train/entropy", "train/reflection", "time/step"):
        assert tb[key] == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in rows], key
    assert [s for s, _ in tb["eval/pass@1"]] == [0, 2]  # base and final evaluations

    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Compute {i}+1", "completion":
                                        f"<think> {i}+1={i + 1} </think> <answer> {i + 1} "
                                        "</answer>"}) + "\n" for i in range(8)))
    sft_stage.main(load_config(SFTConfig, None, [
        f"model.path={tiny_base}", f"run.out_dir={tmp_path}", "run.name=sft",
        f"data.train_file={data}", "sft.epochs=1", "sft.batch_size=4", "sft.micro_batch_size=4",
        "eval.num_problems=0", "run.checkpoint_every=0"]))
    rows = [json.loads(x) for x in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert _scalars(tmp_path / "sft" / "tb")["train/loss"] == [
        (r["step"], pytest.approx(r["train/loss"], rel=1e-6)) for r in rows]


def test_wandb_runs_offline_without_an_api_key(tmp_path, monkeypatch, caplog):
    wandb = pytest.importorskip("wandb")
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.setenv(var, "")  # recorded, so the WANDB_MODE the tracker sets is undone
        monkeypatch.delenv(var)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    run = tmp_path / "run"
    run.mkdir()
    with caplog.at_level(logging.WARNING, logger="r1kit"):
        t = Tracker(run, ["wandb"], config={"rl": {"steps": 2}})
    assert any("offline" in r.message for r in caplog.records)
    assert os.environ["WANDB_MODE"] == "offline"
    t.log({"reward/total": 0.5}, 1)
    t.log({"reward/total": 0.7}, 2)
    t.close()
    assert wandb.run is None
    offline = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0
