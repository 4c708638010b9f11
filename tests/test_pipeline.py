"""End-to-end `r1kit pipeline` on a toy base model: every stage folder, the manifest, the table,
and a resume after an interruption between stages that redoes no finished work."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from r1kit.cli import main as cli
from r1kit.config import PipelineConfig, ZeroConfig, describe, load_config
from r1kit.errors import UserError
from r1kit.stages import pipeline
from r1kit.stages import sample as sample_stage
from r1kit.stages import sft as sft_stage
from r1kit.stages import zero as zero_stage


def _tiny(tmp_path, model: str, name: str) -> list[str]:
    """Every stage a couple of steps on a few prompts. The toy model is rarely correct, so the
    sampling stages keep every sample (no filters) and skip the cold-start rewrite, which needs
    the `correct` filter."""
    sets = [
        f"model.path={model}", f"run.out_dir={tmp_path}", f"run.name={name}",
        "run.checkpoint_every=1", "data.train_size=64",
        "rl.prompts_per_step=2", "rl.group_size=2", "rl.micro_batch_size=4",
        "rollout.max_new_tokens=12",
        "eval.num_problems=3", "eval.k=2", "eval.every=0", "eval.max_new_tokens=12",
        "sft.epochs=1", "sft.batch_size=4", "sft.micro_batch_size=4", "sft.warmup_steps=1",
        "sample.filters=[]", "sample.batch_size=4",
        "pipeline.zero_steps=2", "pipeline.reasoning_rl_steps=2", "pipeline.final_rl_steps=2",
        "pipeline.cold_start_prompts=3", "pipeline.cold_start_samples=2",
        "pipeline.rejection_prompts=3", "pipeline.rejection_samples=2",
        "sample.cold_start_format=false",
    ]
    return [arg for s in sets for arg in ("--set", s)]


def test_pipeline_runs_every_stage_and_resumes_after_interruptions(
    tiny_base, tmp_path, monkeypatch, capsys, caplog
):
    calls = {"rl": 0, "sft": 0, "sample": 0}
    resumed = []  # stage folders continued with their own --resume

    def counted(kind, fn, interrupt_first=False):
        def wrapper(*args, **kwargs):
            calls[kind] += 1
            if kwargs.get("resume"):
                resumed.append(Path(kwargs["resume"]).name)
            if interrupt_first and calls[kind] == 1:
                raise KeyboardInterrupt  # killed between 02-cold-start and 03-dev1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(zero_stage, "main", counted("rl", zero_stage.main))
    monkeypatch.setattr(sample_stage, "main", counted("sample", sample_stage.main))
    monkeypatch.setattr(sft_stage, "main", counted("sft", sft_stage.main, interrupt_first=True))

    assert cli(["pipeline", *_tiny(tmp_path, tiny_base, "pipe")]) == 130
    root = tmp_path / "pipe"
    manifest = json.loads((root / "manifest.json").read_text())
    assert list(manifest["stages"]) == ["01-zero", "02-cold-start"]
    zero_summary = root / "01-zero" / "summary.json"
    zero_mtime = zero_summary.stat().st_mtime_ns
    assert calls == {"rl": 1, "sft": 1, "sample": 1}

    # Killed again, this time inside 04-dev2 just after its step-1 checkpoint.
    save = zero_stage._save

    def save_then_kill(run, state, *args):
        save(run, state, *args)
        if run.path.name == "04-dev2" and state["step"] == 1 and not calls.get("killed"):
            calls["killed"] = 1
            raise KeyboardInterrupt

    monkeypatch.setattr(zero_stage, "_save", save_then_kill)
    assert cli(["pipeline", "--resume", str(root)]) == 130
    assert list(json.loads((root / "manifest.json").read_text())["stages"]) == [
        "01-zero", "02-cold-start", "03-dev1"]
    capsys.readouterr()

    assert cli(["pipeline", "--resume", str(root)]) == 0
    out = capsys.readouterr().out
    assert "01-zero: finished earlier, skipped" in out
    # Zero and the cold-start sample were not run again; Dev2 was continued from its checkpoint.
    calls.pop("killed")
    assert calls == {"rl": 4, "sft": 3, "sample": 2}
    assert zero_summary.stat().st_mtime_ns == zero_mtime
    dev2_steps = [json.loads(line)["step"]
                  for line in (root / "04-dev2" / "metrics.jsonl").read_text().splitlines()]
    assert dev2_steps == [1, 2] and resumed == ["04-dev2"]

    for stage in pipeline.STAGES:
        assert (root / stage / "config.yaml").is_file(), stage
    for stage in ("01-zero", "03-dev1", "04-dev2", "06-dev3", "07-r1"):
        assert (root / stage / "final" / "model.safetensors").is_file(), stage
        assert (root / stage / "summary.json").is_file(), stage
    for stage in ("02-cold-start", "05-rejection"):
        assert (root / stage / "sft.jsonl").read_text().strip(), stage
        assert json.loads((root / stage / "counts.json").read_text())["kept"] > 0
    # The derived configs: Dev1 and Dev3 fine-tune the base; R1 samples at T = 0.7 with the
    # language reward; Dev2 starts from Dev1.
    dev3 = (root / "06-dev3" / "config.yaml").read_text()
    assert f"path: {tiny_base}" in dev3 and "05-rejection/sft.jsonl" in dev3
    r1 = load_config(ZeroConfig, root / "07-r1" / "config.yaml")
    assert r1.rollout.temperature == 0.7 and "language" in r1.rewards.weights
    assert r1.model.path.endswith("06-dev3/final")
    dev2 = load_config(ZeroConfig, root / "04-dev2" / "config.yaml")
    assert dev2.model.path.endswith("03-dev1/final") and "summary_format" in dev2.rewards.weights

    manifest = json.loads((root / "manifest.json").read_text())
    assert list(manifest["stages"]) == list(pipeline.STAGES)
    result = json.loads((root / "pipeline.json").read_text())
    rows = result["rows"]
    assert [r["model"] for r in rows] == ["Base", "Zero", "Dev1", "Dev2", "Dev3", "R1"]
    for r in rows:
        for key in ("pass@1", "cons@k", "format_rate", "format", "summary_format", "tokens",
                    "reflection"):
            assert 0.0 <= r[key] <= (64 if key == "tokens" else 1.0), (r["model"], key)
        assert r["language"] is None or 0.0 <= r["language"] <= 1.0
    md = (root / "pipeline.md").read_text()
    for label in ("| Base |", "| Zero |", "| Dev1 |", "| Dev2 |", "| Dev3 |", "| R1 |"):
        assert label in md and label in out

    # Dev2's time counts both of its invocations, the one Ctrl-C stopped too.
    assert set(manifest["seconds_spent"]) == set(pipeline.STAGES)
    assert result["stage_seconds"] == {n: manifest["seconds_spent"][n] for n in pipeline.STAGES}

    # A finished pipeline resumed again redoes nothing; an edit of its settings that would have
    # changed a stage is said to miss it, naming the pipeline's key.
    saved = yaml.safe_load((root / "config.yaml").read_text())
    saved["pipeline"]["zero_steps"] = 3
    (root / "config.yaml").write_text(yaml.safe_dump(saved))
    with caplog.at_level(logging.WARNING, logger="r1kit"):
        assert cli(["pipeline", "--resume", str(root)]) == 0
    missed = [r.getMessage() for r in caplog.records if "do not reach" in r.getMessage()]
    assert [m.split(",")[0] for m in missed] == ["01-zero started before pipeline.zero_steps 2 -> 3"]
    assert calls == {"rl": 4, "sft": 3, "sample": 2}
    assert "evaluated again" not in caplog.text  # the table's evaluations are reused

    # Other evaluation settings: the table is made again, every row with them, not mixed.
    saved["eval"]["temperature"] = 1.0
    (root / "config.yaml").write_text(yaml.safe_dump(saved))
    stamp = (root / "eval" / "Base.jsonl").stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="r1kit"):
        assert cli(["pipeline", "--resume", str(root)]) == 0
    assert "(eval.temperature 0.6 -> 1.0): every checkpoint is evaluated again" in caplog.text
    assert "zero_steps" not in caplog.text  # said once, on the resume after that edit
    [missed] = [r.getMessage() for r in caplog.records if "do not reach" in r.getMessage()]
    assert missed.startswith(  # (the sampling stages do not evaluate)
        "01-zero, 03-dev1, 04-dev2, 06-dev3, 07-r1 started before eval.temperature 0.6 -> 1.0")
    assert (root / "eval" / "Base.jsonl").stat().st_mtime_ns != stamp
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["eval_settings"]["eval"]["temperature"] == 1.0
    assert "T = 1.0" in (root / "pipeline.md").read_text()


def test_empty_sampled_dataset_is_a_clear_error(tmp_path):
    folder = tmp_path / "02-cold-start"
    folder.mkdir()
    (folder / "counts.json").write_text(json.dumps(
        {"generated": 12, "kept": 0, "rejected": {"not_truncated": 2, "correct": 10}}))
    with pytest.raises(UserError, match=r"kept 0 of 12 samples \(rejected: not_truncated 2, "
                                        r"correct 10\)"):
        pipeline.require_sft_data(folder, "03-dev1")
    with pytest.raises(UserError, match="did not finish"):
        pipeline.require_sft_data(tmp_path / "missing", "03-dev1")


def test_bad_pipeline_settings_fail_before_a_folder_is_made(tmp_path, capsys):
    assert cli(["pipeline", "--set", f"run.out_dir={tmp_path}", "--set", "pipeline.distill=true",
                "--set", "pipeline.students=[tiny-gpt]"]) == 2
    assert "unknown student 'tiny-gpt'" in capsys.readouterr().err
    assert cli(["pipeline", "--set", f"run.out_dir={tmp_path}",
                "--set", "sample.filters=[not_truncated]"]) == 2
    assert "needs the 'correct' filter" in capsys.readouterr().err
    # settings that only 05-rejection would use, hours in
    for setting, message in (("sample.filters=[correct, bogus]", "unknown filter 'bogus'"),
                             (f"sample.general_data={tmp_path / 'none.jsonl'}", "none.jsonl"),
                             ("pipeline.general_samples=0", None)):
        extra = ["--set", "sample.general_data=builtin"] if message is None else []
        assert cli(["pipeline", "--set", f"run.out_dir={tmp_path}", "--set", setting,
                    *extra]) == 2, setting
        assert (message or "general_samples must be at least 1") in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
    assert cli(["pipeline", "--resume", str(tmp_path)]) == 2
    assert "not a pipeline folder" in capsys.readouterr().err


def test_stage_configs_follow_the_recipe():
    cfg = load_config(PipelineConfig)
    stages = pipeline.stage_configs(cfg, Path("/p"))
    assert list(stages) == list(pipeline.STAGES)
    assert stages["01-zero"][1].rl.steps == 300
    assert stages["02-cold-start"][1].sample.cold_start_format
    assert "well_formed" in stages["02-cold-start"][1].sample.filters
    assert "well_formed" not in stages["05-rejection"][1].sample.filters
    assert "no_code_blocks" in stages["05-rejection"][1].sample.filters  # R1-SPEC §5
    assert stages["03-dev1"][1].model.path == "builtin"
    assert stages["07-r1"][1].rollout.temperature == 0.7
    assert stages["04-dev2"][1].rewards.weights == {
        "accuracy": 1.0, "summary_format": 0.1, "language": 0.2}
    # problems with tests: programs are graded by running them, in every RL stage
    coded = pipeline.stage_configs(cfg, Path("/p"), programs=True)
    assert coded["01-zero"][1].rewards.weights == {"code": 1.0, "format": 0.1}
    for name in ("04-dev2", "07-r1"):
        assert "code" in coded[name][1].rewards.weights
        assert "accuracy" not in coded[name][1].rewards.weights


def test_every_stage_gets_the_pipelines_code_section():
    """The user's sandbox limits and the unsafe flag reach each stage the pipeline builds."""
    cfg = load_config(PipelineConfig, None, ["code.wall_s=7", "code.unsafe_allow_unsandboxed=true",
                                             "pipeline.distill=true"])
    assert cfg.code.wall_s == 7 and cfg.code.unsafe_allow_unsandboxed
    stages = {**pipeline.stage_configs(cfg, Path("/p")),
              **pipeline.distill_stage_config(cfg, Path("/p"))}
    assert list(stages) == [*pipeline.STAGES, "08-distill"]
    for name, (_, stage_cfg) in stages.items():
        assert stage_cfg.code == cfg.code, name


def test_code_problems_without_a_sandbox_stop_before_a_folder(tmp_path, capsys, no_bwrap):
    args = ["pipeline", "--set", f"run.out_dir={tmp_path}", "--set", "data.source=builtin:code"]
    assert cli(args) == 2
    assert "--unsafe-allow-unsandboxed" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_non_reasoning_data_of_the_rejection_stage():
    def general(*sets):
        cfg = load_config(PipelineConfig, None, list(sets))
        sample = pipeline.stage_configs(cfg, Path("/p"))["05-rejection"][1].sample
        assert pipeline.stage_configs(cfg, Path("/p"))["02-cold-start"][1].sample.general_data == ""
        return sample.general_data, sample.general_samples

    assert general() == ("builtin", 100)
    assert general("sample.general_samples=50") == ("builtin", 50)  # was silently none
    assert general("pipeline.general_samples=0") == ("", 0)
    assert general("sample.general_data=mine.jsonl") == ("mine.jsonl", 0)


def test_table_format_column_follows_what_each_checkpoint_was_trained_towards():
    default = load_config(PipelineConfig)
    plain = load_config(PipelineConfig, None, ["sample.cold_start_format=false"])
    summary = {label: pipeline.trained_on_summary(label, default) for label, _ in
               pipeline.CHECKPOINTS}
    assert summary == {"Base": False, "Zero": False, "Dev1": True, "Dev2": True, "Dev3": True,
                       "R1": True}
    # cold-start data left in R1-Zero's format: Dev1 is judged by R1-Zero's format
    assert not pipeline.trained_on_summary("Dev1", plain)
    assert pipeline.trained_on_summary("Dev2", plain)
    assert pipeline.trained_on_summary(f"{pipeline.DISTILLED} s", plain)


def test_pipeline_help_shows_its_own_defaults():
    rows = {key: (default, help) for key, default, help in describe(PipelineConfig)}
    assert all(help for _, help in rows.values())
    assert rows["rl.beta"][0] == "0.001" and rows["sample.cold_start_format"][0] == "True"
    assert rows["pipeline.final_temperature"][0] == "0.7"


def test_rl_is_the_grpo_stage_under_its_own_name(capsys):
    with pytest.raises(SystemExit) as e:
        cli(["rl", "--help"])
    assert e.value.code == 0
    assert "--resume" in capsys.readouterr().out


def test_an_edit_that_cannot_reach_a_started_stage_is_said(tmp_path, monkeypatch, caplog):
    """The pipeline's config.yaml edited on resume (to train Dev2 longer): a stage started before
    goes on with its own config.yaml, so the edit is said to miss it, naming the pipeline's key
    that was edited, and what it would have changed. Edits that do not touch the stage, and the
    stage's own config.yaml edited as the warning advises, are not reported."""
    import logging

    from r1kit.config import to_dict

    monkeypatch.chdir(tmp_path)
    cfg = load_config(PipelineConfig, None, ["pipeline.reasoning_rl_steps=100"])
    started_with = to_dict(cfg)
    root = Path("p")

    def missed(edits: list[str]) -> list[str]:
        edited = load_config(PipelineConfig, None, ["pipeline.reasoning_rl_steps=100", *edits])
        return pipeline.missed_edits("04-dev2", edited, started_with, root, False)

    assert missed([]) == []
    assert missed(["pipeline.final_rl_steps=20", "pipeline.zero_steps=7"]) == []  # other stages'
    assert missed(["pipeline.reasoning_rl_steps=200", "pipeline.final_rl_steps=20"]) == [
        "pipeline.reasoning_rl_steps 100 -> 200"]
    assert missed(["rl.lr=5e-5"]) == ["rl.lr 0.0001 -> 5e-05"]  # a setting every RL stage takes
    # two edits valid only together: each is reported, neither alone is built (it was an error)
    assert missed(["rl.lr=5e-6", "rl.min_lr=1e-6"]) == ["rl.lr 0.0001 -> 5e-06",
                                                        "rl.min_lr 0.0 -> 1e-06"]
    # a pipeline folder of an earlier r1kit (nothing recorded): nothing to compare with
    edited = load_config(PipelineConfig, None, ["pipeline.reasoning_rl_steps=200"])
    assert pipeline.missed_edits("04-dev2", edited, None, root, False) == []
    # one warning for the stages the same edits miss
    with caplog.at_level(logging.WARNING, logger="r1kit"):
        pipeline.warn_missed({"01-zero": ["rl.lr 1 -> 2"], "04-dev2": ["rl.lr 1 -> 2"]}, root)
    [message] = [r.getMessage() for r in caplog.records]
    assert message.startswith("01-zero, 04-dev2 started before rl.lr 1 -> 2, which do not reach "
                              "them: a started stage goes on with their own config.yaml "
                              f"({root / '01-zero' / 'config.yaml'}, ")
