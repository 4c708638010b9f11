"""Configs (defaults <- YAML <- --set), --help, and clear errors for what a user can get wrong."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from r1kit.cli import main as cli
from r1kit.config import (
    BaseConfig,
    DistillConfig,
    PipelineConfig,
    RewardsConfig,
    RLConfig,
    RolloutConfig,
    RunConfig,
    SFTConfig,
    ZeroConfig,
    describe,
    load_config,
    to_dict,
)
from r1kit.errors import UserError
from r1kit.tasks.arithmetic import CorpusStyle


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("rl:\n  beta: 0.04\n  steps: 7\nrewards:\n  weights: {accuracy: 1.0}\n")
    cfg = load_config(ZeroConfig, f, ["rl.beta=0.001", "eval.k=16", "rollout.stop=[]"])
    assert cfg.rl.beta == 0.001 and cfg.rl.steps == 7 and cfg.eval.k == 16
    assert cfg.rewards.weights == {"accuracy": 1.0}
    assert cfg.rollout.stop == []
    assert cfg.rl.group_size == ZeroConfig().rl.group_size  # untouched default


def test_int_accepted_for_float_and_reward_weight_override():
    cfg = load_config(ZeroConfig, None, ["rl.lr=1", "rewards.weights.format=0.5"])
    assert cfg.rl.lr == 1.0 and isinstance(cfg.rl.lr, float)
    assert cfg.rewards.weights == {"accuracy": 1.0, "format": 0.5}


@pytest.mark.parametrize(
    "override, message",
    [
        ("rl.bta=0.1", "unknown config key 'rl.bta'"),
        ("nope.x=1", "unknown config key 'nope'"),
        ("rl.steps=ten", "config key 'rl.steps' must be an integer"),
        ("rl.dynamic_sampling=maybe", "config key 'rl.dynamic_sampling' must be true or false"),
        ("rl.beta", "must look like section.key=value"),
        ("rl=3", "config key 'rl' is a section"),
        ("eval.k=0", "config key 'eval.k' must be at least 1, got 0"),
        ("rl.group_size=1", "config key 'rl.group_size' must be at least 2"),
        ("rl.lr=-1", "config key 'rl.lr' must be more than 0"),
        ("rollout.top_p=1.5", "config key 'rollout.top_p' must be at most 1"),
        ("data.template=bogus", "config key 'data.template' must be one of r1_zero, plain, chat"),
        ("rl.aggregation=sum", "config key 'rl.aggregation' must be one of token_mean"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        load_config(ZeroConfig, None, [override])


def test_bad_yaml_file(tmp_path):
    with pytest.raises(UserError, match="no such config file"):
        load_config(ZeroConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rl: [1, 2\n")
    with pytest.raises(UserError, match=r"bad\.yaml:2:1: invalid YAML: expected"):
        load_config(ZeroConfig, bad)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n")
    with pytest.raises(UserError, match="top level must be a mapping"):
        load_config(ZeroConfig, top)


def test_recipes_load():
    cfg = load_config(ZeroConfig, "recipes/tiny/zero.yaml")
    assert cfg.rl.steps > 0


def test_help_documents_every_key(capsys):
    with pytest.raises(SystemExit) as e:
        cli(["zero", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for key, _, help in describe(ZeroConfig):
        assert key in out, key
        assert help, f"{key} has no help string"


@pytest.mark.parametrize("stage", ["zero", "rl", "eval", "sft", "sample", "distill", "pipeline"])
def test_every_stage_that_runs_code_takes_the_code_section_and_the_unsafe_flag(stage,
                                                                               monkeypatch):
    """Every stage that can run model-written code (a code reward, the `correct` filter or an
    evaluation of problems with tests) takes `code.*` and --unsafe-allow-unsandboxed."""
    import importlib

    seen = {}

    def stage_main(cfg, **kw) -> dict:  # the stage itself is not run: only its config is seen
        seen["cfg"] = cfg
        return {}

    module = {"rl": "zero", "eval": "evaluate"}.get(stage, stage)
    monkeypatch.setattr(importlib.import_module(f"r1kit.stages.{module}"), "main", stage_main)
    assert cli([stage, "--unsafe-allow-unsandboxed", "--set", "code.wall_s=7",
                "--set", "code.memory_mb=300"]) == 0
    code = seen["cfg"].code
    assert code.unsafe_allow_unsandboxed and code.wall_s == 7 and code.memory_mb == 300


def test_cli_errors_are_one_line_without_traceback(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "problems.jsonl"
    bad.write_text('{"prompt": "1+1", "answer": "2"}\n{"prompt": "2+2", "answer": \n')
    code = cli(["eval", "--model", "builtin", "--set", f"data.source={bad}",
                "--set", f"data.eval_source={bad}", "--set", f"run.out_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "problems.jsonl:2" in err and "Traceback" not in err

    code = cli(["zero", "--set", "rewards.weights={nonexistent: 1.0}",
                "--set", f"run.out_dir={tmp_path}", "--set", "model.path=builtin"])
    assert code == 2
    assert "unknown reward 'nonexistent'" in capsys.readouterr().err

    code = cli(["eval", "--model", str(tmp_path / "no-model"), "--set", f"run.out_dir={tmp_path}"])
    assert code == 2
    assert "no-model" in capsys.readouterr().err

    code = cli(["zero", "--set", "rewards.weights={accuracy: high}", "--set", "model.path=builtin",
                "--set", f"run.out_dir={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "config key 'rewards.weights.accuracy' must be a number, got 'high'" in err

    # a setting given with --resume would be ignored (the saved config.yaml rules): refused
    code = cli(["zero", "--resume", str(tmp_path / "some-run"), "--set", "rl.steps=600"])
    assert code == 2
    assert "edit " + str(tmp_path / "some-run" / "config.yaml") in capsys.readouterr().err

    code = cli(["zero", "--set", "eval.num_problems=0", "--set", "model.path=builtin",
                "--set", f"run.out_dir={tmp_path}"])
    assert code == 2 and "no held-out problems" in capsys.readouterr().err

    assert cli(["base", "--set", "num_heads=5", "--set", f"out={tmp_path / 'base'}"]) == 2
    assert "must divide by num_heads (5)" in capsys.readouterr().err
    assert cli(["zero", "--set", "run.device=gpu0", "--set", f"run.out_dir={tmp_path}"]) == 2
    assert "'gpu0' is not a device" in capsys.readouterr().err

    assert cli(["zero", "--nproc", "2", "--set", "rl.prompts_per_step=3"]) == 2
    assert "rl.prompts_per_step=3 must be divisible" in capsys.readouterr().err
    assert cli(["zero", "--set", "rl.lr=nan"]) == 2
    assert "'rl.lr' must be a finite number" in capsys.readouterr().err
    assert cli(["zero", "--set", "rollout.temperature=0", "--set", f"run.out_dir={tmp_path}"]) == 2
    assert "rollout.temperature must be more than 0 for GRPO" in capsys.readouterr().err

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "1+1", "completion": "2"}\n')
    for stage in ("zero", "sft"):  # float16 weights would turn to NaN under AdamW
        args = ["--set", "model.dtype=float16", "--set", f"run.out_dir={tmp_path}"]
        if stage == "sft":
            args += ["--set", f"data.train_file={pairs}"]
        assert cli([stage, *args]) == 2
        assert "model.dtype=float16 cannot be trained" in capsys.readouterr().err
    assert cli(["zero", "--set", "model.dtype=fp16"]) == 2
    assert "model.dtype" in capsys.readouterr().err

    fsdp_lora = ["--nproc", "2", "--set", "lora.r=4", "--set", "dist.strategy=fsdp",
                 "--set", f"run.out_dir={tmp_path}"]
    for argv in (["zero", *fsdp_lora], ["sft", *fsdp_lora, "--set", f"data.train_file={pairs}"]):
        assert cli(argv) == 2  # before torchrun is started
        assert "dist.strategy=fsdp with LoRA is not supported" in capsys.readouterr().err
    mods = tmp_path / "mods"  # a user's reward module that fails on import
    mods.mkdir()
    (mods / "clash_rewards.py").write_text("from r1kit.rewards import register\n"
                                           "@register('format')\ndef f(c, p):\n    return 0.0\n")
    monkeypatch.syspath_prepend(str(mods))
    assert cli(["zero", "--set", "rewards.modules=[clash_rewards]",
                "--set", f"run.out_dir={tmp_path}"]) == 2
    assert "importing 'clash_rewards' failed: ValueError" in capsys.readouterr().err
    shutil.rmtree(mods)
    assert cli(["chat", "builtin", "--temperature", "-1"]) == 2
    assert "--temperature must be >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # no abbreviations: `--npro 1` would reach torchrun
        cli(["zero", "--npro", "1"])
    for n in ("0", "-1"):  # before torchrun is started
        assert cli(["zero", "--nproc", n]) == 2
        assert f"--nproc must be at least 1, got {n}" in capsys.readouterr().err
    assert sorted(tmp_path.iterdir()) == [pairs, bad]  # no run folder was left by any of these


def test_eval_out_refuses_a_training_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    (run / "summary.json").write_text('{"steps": 1}\n')
    assert cli(["eval", "--model", "builtin", "--out", str(run),
                "--set", "eval.num_problems=2"]) == 2
    assert "a training run or pipeline folder (metrics.jsonl)" in capsys.readouterr().err
    assert (run / "summary.json").read_text() == '{"steps": 1}\n'


def test_eval_takes_run_folders_and_adapters_with_the_template_they_were_trained_with(
        tiny_base, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    run = tmp_path / "runs" / "x"  # a run trained with the plain template
    shutil.copytree(tiny_base, run / "final", ignore=shutil.ignore_patterns("r1kit_base.json"))
    (run / "config.yaml").write_text("data:\n  template: plain\n")
    (run / "metrics.jsonl").write_text("")
    adapter = tmp_path / "adapter"  # a LoRA run's final-adapter/, on the tiny base
    model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base),
                                peft.LoraConfig(r=2, target_modules=["q_proj"]))
    model.save_pretrained(adapter)
    shutil.copy(Path(tiny_base) / "tokenizer.json", adapter)
    shutil.copy(Path(tiny_base) / "tokenizer_config.json", adapter)
    small = ["--set", "eval.num_problems=2", "--set", "eval.k=1", "--set", "eval.max_new_tokens=4"]

    def summary(*args):
        out = tmp_path / f"o{len(list(tmp_path.glob('o*')))}"
        assert cli(["eval", *args, *small, "--out", str(out)]) == 0
        return json.loads((out / "summary.json").read_text())

    assert summary("--model", str(run))["template"] == "plain"
    assert summary("--model", str(run), "--set", "data.template=r1_zero")["template"] == "r1_zero"
    assert summary("--model", str(adapter))["num_problems"] == 2
    moved = tmp_path / "moved"  # an adapter whose base is named relative to its own folder
    shutil.copytree(adapter, moved / "adapter")
    shutil.copytree(tiny_base, moved / "base")
    config = json.loads((moved / "adapter" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "../base"
    (moved / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    assert summary("--model", str(moved / "adapter"))["num_problems"] == 2
    out = tmp_path / "cmp"
    assert cli(["eval", str(run), str(adapter), *small, "--out", str(out)]) == 0
    rows = json.loads((out / "comparison.json").read_text())["rows"]
    assert [r["template"] for r in rows] == ["plain", "r1_zero"]


def test_eval_stage_on_jsonl(tiny_base, tmp_path, capsys):
    probs = tmp_path / "heldout.jsonl"
    probs.write_text("".join(
        json.dumps({"prompt": f"Compute {a}+2", "answer": str(a + 2)}) + "\n" for a in range(10, 16)
    ))
    code = cli(["eval", "--model", tiny_base, "--set", f"data.eval_source={probs}",
                "--set", f"data.source={probs}", "--set", "eval.k=2",
                "--set", "eval.max_new_tokens=8", "--set", f"run.out_dir={tmp_path}",
                "--set", "run.name=ev"])
    assert code == 0
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["num_problems"] == 6
    assert 0.0 <= summary["eval/pass@1"] <= 1.0
    assert "pass@1" in capsys.readouterr().out

    # --out: one model's results go there too; a model both ways, a typo'd path, a file: errors
    code = cli(["eval", "--model", tiny_base, "--problems", str(probs), "--set", "eval.k=1",
                "--set", "eval.max_new_tokens=8", "--out", str(tmp_path / "one")])
    assert code == 0
    assert json.loads((tmp_path / "one" / "summary.json").read_text())["num_problems"] == 6
    assert len((tmp_path / "one" / "samples.jsonl").read_text().splitlines()) == 6
    capsys.readouterr()
    for args, message in [
        (["--model", tiny_base, "builtin"], "not both"),
        ([tiny_base, str(tmp_path / "runs" / "x" / "finall")], "finall: no such folder"),
        (["--model", tiny_base, "--out", str(probs)], "a file, not a folder"),
    ]:
        assert cli(["eval", *args, "--problems", str(probs)]) == 2, args
        assert message in capsys.readouterr().err, args


def test_set_keeps_text_values_as_typed(tmp_path):
    for text in ("exp #1", "0123", "12:30", "2025-01-31", "yes", "null"):
        assert load_config(ZeroConfig, None, [f"run.name={text}"]).run.name == text
    assert load_config(ZeroConfig, None, ["rollout.stop=[a, b]"]).rollout.stop == ["a", "b"]
    with pytest.raises(UserError, match=r"rollout.stop=\[a, b: invalid value"):
        load_config(ZeroConfig, None, ["rollout.stop=[a, b"])
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("run: {name: caf\xe9}\n".encode("latin-1"))
    with pytest.raises(UserError, match="latin.yaml: not UTF-8"):
        load_config(ZeroConfig, latin)


@pytest.mark.parametrize("override, message", [
    ("rollout.stop=[1,2]", "config key 'rollout.stop' item 1 must be a string, got 1"),
    ("rollout.stop=[a, [b]]", "config key 'rollout.stop' item 2 must be a string"),
    ("run.report_to=[tensorboard, 3]", "config key 'run.report_to' item 2 must be a string"),
    ("lora.target_modules=[1]", "config key 'lora.target_modules' item 1 must be a string"),
    ("rewards.modules=[{a: 1}]", "config key 'rewards.modules' item 1 must be a string"),
    ("rewards.weights={accuracy: [1]}", "config key 'rewards.weights.accuracy' must be a number"),
    ("rewards.weights={1: 1.0}", "config key 'rewards.weights' key 1 must be a string"),
    ("rewards.active_last={format: 2.5}",
     "config key 'rewards.active_last.format' must be an integer"),
])
def test_list_and_mapping_items_are_type_checked(override, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[")):
        load_config(ZeroConfig, None, [override])


def test_a_bad_list_item_fails_before_a_run_folder_is_made(tmp_path, capsys):
    small = ["--set", f"run.out_dir={tmp_path}", "--set", "rl.steps=1", "--set", "eval.k=1"]
    assert cli(["zero", *small, "--set", "rollout.stop=[1,2]"]) == 2
    assert "config key 'rollout.stop' item 1 must be a string" in capsys.readouterr().err
    assert cli(["zero", *small, "--lora", "r=4,target_modules=[1]"]) == 2
    assert "'lora.target_modules' item 1 must be a string" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_item_values_keep_their_yaml_leniency():
    cfg = load_config(ZeroConfig, None, ["rewards.weights={accuracy: 1, format: 1e-3}",
                                         "rewards.active_last={format: 3}"])
    assert cfg.rewards.weights == {"accuracy": 1.0, "format": 0.001}
    assert all(isinstance(w, float) for w in cfg.rewards.weights.values())
    assert cfg.rewards.active_last == {"format": 3}
    assert load_config(ZeroConfig, None, ["rollout.stop=</answer>"]).rollout.stop == ["</answer>"]


@pytest.mark.parametrize("make, message", [
    (lambda: RLConfig(steps="3"), "config key 'RLConfig.steps' must be an integer, got '3'"),
    (lambda: RLConfig(steps=3.5), "config key 'RLConfig.steps' must be an integer"),
    (lambda: RLConfig(steps=True), "config key 'RLConfig.steps' must be an integer"),
    (lambda: RLConfig(lr="1e-4"), "config key 'RLConfig.lr' must be a number"),
    (lambda: RLConfig(scale_by_std="no"), "config key 'RLConfig.scale_by_std' must be true or"),
    (lambda: RLConfig(scale_by_std=0), "config key 'RLConfig.scale_by_std' must be true or"),
    (lambda: RunConfig(report_to=3), "config key 'RunConfig.report_to' must be a list"),
    (lambda: RunConfig(name=3), "config key 'RunConfig.name' must be a string"),
    (lambda: RolloutConfig(stop=["a", 1]), "config key 'RolloutConfig.stop' item 2 must be a str"),
    (lambda: RewardsConfig(weights=[1]), "config key 'RewardsConfig.weights' must be a mapping"),
    (lambda: RewardsConfig(weights={"a": "x"}), "config key 'RewardsConfig.weights.a' must be a n"),
    (lambda: ZeroConfig(rl={"steps": 3}), "config key 'ZeroConfig.rl' must be a RLConfig section"),
    (lambda: ZeroConfig(rl=RunConfig()), "config key 'ZeroConfig.rl' must be a RLConfig section"),
    (lambda: BaseConfig(corpus=CorpusStyle(slip="x")),
     "config key 'BaseConfig.corpus.slip' must be a number"),
])
def test_python_built_configs_are_type_checked(make, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        make()


def test_config_errors_survive_pickling():  # as torchrun's ranks pass them on
    import pickle

    with pytest.raises(UserError) as e:
        RLConfig(steps="3")
    again = pickle.loads(pickle.dumps(e.value))
    assert (str(again), again.key) == (str(e.value), "RLConfig.steps")


def test_python_built_configs_take_what_they_should():
    assert RLConfig(lr=1, steps=3, scale_by_std=False).lr == 1  # an int is a number
    assert RewardsConfig(weights={"a": 2}).weights == {"a": 2}
    assert ZeroConfig(rl=RLConfig(steps=3)).rl.steps == 3
    # Python's own spellings: a tuple for a list, a path for a path-valued string
    assert RolloutConfig(stop=("</answer>", "\n\n")).stop == ["</answer>", "\n\n"]
    assert RolloutConfig(stop="</answer>").stop == ["</answer>"]  # as --set takes it
    assert RewardsConfig(modules=(Path("my") / "rewards",)).modules == [
        os.path.join("my", "rewards")]
    out = RunConfig(out_dir=Path("runs") / "exp")
    assert out.out_dir == os.path.join("runs", "exp") and type(out.out_dir) is str
    import yaml  # and the run's config.yaml can be written from it

    assert yaml.safe_load(yaml.safe_dump(to_dict(ZeroConfig(run=out))))["run"]["out_dir"] == (
        out.out_dir)


def test_load_config_refuses_one_string_of_overrides():
    with pytest.raises(UserError, match="a list of 'key=value' strings, not one string"):
        load_config(ZeroConfig, None, "rl.steps=3")


@pytest.mark.parametrize("overrides, message", [
    (["rl.min_lr=1e-3"], "config keys 'rl.min_lr' and 'rl.lr': need rl.min_lr <= rl.lr"),
    (["rl.lr=1e-5", "rl.min_lr=2e-5", "rl.lr_schedule=cosine"], "need rl.min_lr <= rl.lr"),
])
def test_rl_min_lr_above_lr_is_refused(overrides, message):
    with pytest.raises(UserError, match=message):
        load_config(ZeroConfig, None, overrides)
    assert load_config(ZeroConfig, None, ["rl.min_lr=1e-4"]).rl.min_lr == 1e-4  # = lr: fine


def test_sft_min_lr_above_lr_is_refused_with_the_config():
    for cls in (SFTConfig, DistillConfig, PipelineConfig):  # before any stage (or sample) runs
        with pytest.raises(UserError, match="config keys 'sft.min_lr' and 'sft.lr': need "
                                            "sft.min_lr <= sft.lr"):
            load_config(cls, None, ["sft.lr=1e-6"])


def test_lora_settings_without_r_are_refused(tmp_path, capsys):
    with pytest.raises(UserError, match=r"config key 'lora.r' must be > 0 to train adapters "
                                        r"\(lora.alpha, lora.dropout given\); without it the "
                                        "whole model trains"):
        load_config(ZeroConfig, None, ["lora.alpha=16", "lora.dropout=0.1"])
    assert cli(["zero", "--lora", "alpha=16,dropout=0.1", "--set", f"run.out_dir={tmp_path}"]) == 2
    assert "config key 'lora.r' must be > 0" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    # r given elsewhere, or LoRA off with its defaults (as a run's saved config.yaml has them)
    cfg = load_config(SFTConfig, None, ["lora.alpha=16", "lora.r=8"])
    assert (cfg.lora.r, cfg.lora.alpha) == (8, 16.0)
    assert load_config(ZeroConfig, None, ["lora.r=0", "lora.alpha=32"]).lora.r == 0


def test_lora_dropout_help_says_it_is_for_sft_only():
    help = {k: h for k, _, h in describe(ZeroConfig)}["lora.dropout"]
    assert "SFT only" in help and "RL" in help


def test_empty_model_path_is_refused():
    for path in ("", "  "):
        with pytest.raises(UserError, match="config key 'model.path' is empty"):
            load_config(ZeroConfig, None, [f"model.path={path}"])


def test_yaml_errors_name_the_file_and_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("rl:\n  steps: 3\n  bta: 0.1\n")
    with pytest.raises(UserError, match=r"^.*c\.yaml:3: unknown config key 'rl\.bta'"):
        load_config(ZeroConfig, f)
    f.write_text("rl:\n  steps: ten\n")
    with pytest.raises(UserError, match=r"c\.yaml:2: config key 'rl\.steps' must be an integer"):
        load_config(ZeroConfig, f)
    f.write_text("rollout:\n  stop:\n    - a\n    - 1\n")
    with pytest.raises(UserError, match=r"c\.yaml:2: config key 'rollout\.stop' item 2"):
        load_config(ZeroConfig, f)
    f.write_text("rewards:\n  weights:\n    accuracy: 1\n    format: high\n")
    with pytest.raises(UserError, match=r"c\.yaml:4: config key 'rewards\.weights\.format'"):
        load_config(ZeroConfig, f)
    f.write_text("eval: 3\n")
    with pytest.raises(UserError, match=r"c\.yaml:1: config key 'eval' is a section"):
        load_config(ZeroConfig, f)
    f.write_text("rl:\n  steps: 3\n  min_lr: 0.5\n")  # a check across keys: the section's line
    with pytest.raises(UserError, match=r"c\.yaml:1: config keys 'rl\.min_lr' and 'rl\.lr'"):
        load_config(ZeroConfig, f)
    with pytest.raises(UserError, match=r"c\.yaml:1 and --set: config keys 'rl\.min_lr'"):
        load_config(ZeroConfig, f, ["rl.lr=0.1"])
    # a key --set gives is not the file's: no file named
    with pytest.raises(UserError, match=r"^config key 'rl\.steps' must be an integer"):
        load_config(ZeroConfig, f, ["rl.steps=ten"])
    with pytest.raises(UserError, match=r"^config key 'rewards\.weights\.format' must be a"):
        load_config(ZeroConfig, f, ["rl.min_lr=0", "rewards.weights.format=x"])


def test_yaml_duplicate_keys_are_refused(tmp_path):
    f = tmp_path / "dup.yaml"
    f.write_text("rl:\n  steps: 3\neval:\n  k: 2\nrl:\n  beta: 0.1\n")
    with pytest.raises(UserError, match=r"dup\.yaml:5:1: invalid YAML: duplicate key 'rl' "
                                        r"\(first on line 1\)"):
        load_config(ZeroConfig, f)
    f.write_text("rl: {steps: 3, steps: 4}\n")
    with pytest.raises(UserError, match=r"dup\.yaml:1:16: invalid YAML: duplicate key 'steps'"):
        load_config(ZeroConfig, f)
    with pytest.raises(UserError, match=r"invalid value \(duplicate key 'a'"):
        load_config(ZeroConfig, None, ["rewards.weights={a: 1, a: 2}"])


def test_yaml_syntax_errors_are_one_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("rl:\n  steps: 3\n  beta: [1, 2\n")
    with pytest.raises(UserError) as e:
        load_config(ZeroConfig, f)
    assert "\n" not in str(e.value)
    assert str(e.value).startswith(f"{f}:4:1: invalid YAML: expected ',' or ']'")
    f.write_text("rl:\n  steps: 3\n bad: 1\n")
    with pytest.raises(UserError, match=r"bad\.yaml:3:2: invalid YAML: [^\n]+$") as e:
        load_config(ZeroConfig, f)
    f.write_text("rl:\n  steps: \x00\n")
    with pytest.raises(UserError, match=r"bad\.yaml:2: invalid YAML: character #x0000 is not"):
        load_config(ZeroConfig, f)
    with pytest.raises(UserError, match=r"invalid value \(unacceptable character #x0000"):
        load_config(ZeroConfig, None, ["rollout.stop=[\x00]"])


def test_reward_weights_in_a_file_replace_the_mapping_and_set_merges(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("rewards:\n  weights: {accuracy: 2.0}\n")
    assert load_config(ZeroConfig, f).rewards.weights == {"accuracy": 2.0}
    cfg = load_config(ZeroConfig, f, ["rewards.weights.format=0.5"])
    assert cfg.rewards.weights == {"accuracy": 2.0, "format": 0.5}
    help = {k: h for k, _, h in describe(ZeroConfig)}["rewards.weights"]
    assert "replaces" in help and "rewards.weights.NAME" in help


def test_an_empty_model_path_is_refused_everywhere():
    from r1kit.models import load_model
    from r1kit.stages.export import resolve_source

    for call in (lambda: load_model(" "), lambda: resolve_source("")):
        with pytest.raises(UserError, match="model path is empty"):
            call()
