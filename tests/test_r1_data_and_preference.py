"""The R1 recipe's extra data and rewards: the readable cold-start rewrite, non-reasoning SFT data
mixed into rejection sampling, and the neural preference reward switched on for the last N steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

from r1kit.cli import main as cli
from r1kit.config import PipelineConfig, ZeroConfig, load_config
from r1kit.errors import UserError
from r1kit.filters import to_cold_start
from r1kit.language import language_consistency, reasoning_part
from r1kit.rewards import get_reward
from r1kit.rewards.preference import summary_part
from r1kit.rewards.scoring import RewardSpec, score
from r1kit.stages import pipeline
from r1kit.stages import zero as zero_stage
from r1kit.tasks.base import Problem
from r1kit.tasks.general import builtin_general, load_general

P = Problem("47+8-9", "Compute 47+8-9", "46", {"task": "arithmetic"})


# ------------------------------------------------------------------ readable cold start


def test_readable_rewrite_gives_the_reasoning_measurable_words():
    raw = "<think> 47+8=45, wait, 47+8=55, 55-9=46 </think> <answer> 46 </answer>"
    readable = to_cold_start(raw, "46", task="arithmetic")
    bare = to_cold_start("<think> 47+8=55, 55-9=46 </think> <answer> 46 </answer>", "46")
    assert language_consistency(reasoning_part(bare), "en") is None  # symbols only: no words
    assert reasoning_part(readable).strip() == "47+8=45, wait, 47+8=55, 55-9=46, so the total is 46"
    assert language_consistency(reasoning_part(readable), "en") == 1.0
    mixed = to_cold_start("<think> 47+8=55, 55-9=46, 46 минус 2 равно 44 </think>", "44",
                          "arithmetic")
    assert language_consistency(reasoning_part(mixed), "en") == pytest.approx(4 / 6)  # + минус равно
    assert get_reward("summary_format")(readable, P) == 1.0
    assert get_reward("accuracy")(readable, P) == 1.0


# ------------------------------------------------------------------ non-reasoning data


def test_builtin_general_queries_are_distinct_direct_answers():
    rows = builtin_general(40, seed=3)
    assert rows == builtin_general(40, seed=3)
    assert len({r["prompt"] for r in rows}) == 40
    assert all("<think>" not in r["completion"] and r["kind"] == "general" for r in rows)
    larger = [r for r in rows if r["prompt"].startswith("Which is larger")]
    for r in larger:
        a, b = (int(x) for x in r["prompt"].removeprefix("Which is larger, ").split(" or "))
        assert r["completion"] == f"{max(a, b)} is larger."


def test_general_data_from_a_file(tmp_path):
    f = tmp_path / "chat.jsonl"
    f.write_text('{"prompt": "hi", "completion": "Hello."}\n{"prompt": "bye", "completion": "Bye."}\n')
    assert [r["completion"] for r in load_general(str(f), 0, seed=0)] == ["Hello.", "Bye."]
    assert len(load_general(str(f), 1, seed=0)) == 1
    f.write_text('{"prompt": "hi"}\n')
    with pytest.raises(UserError, match=r"chat.jsonl:1: missing field 'completion'"):
        load_general(str(f), 0, seed=0)


def _sample_sets(tmp_path, model, name, *extra):
    sets = [f"model.path={model}", f"run.out_dir={tmp_path}", f"run.name={name}",
            "data.train_size=200", "sample.num_prompts=4", "sample.samples_per_prompt=2",
            "sample.batch_size=2", "rollout.max_new_tokens=12", "sample.filters=[]", *extra]
    return [arg for s in sets for arg in ("--set", s)]


def test_sample_stage_mixes_in_general_data_once(tiny_base, tmp_path):
    sets = _sample_sets(tmp_path, tiny_base, "mix", "sample.general_data=builtin",
                        "sample.general_samples=5")
    assert cli(["sample", *sets]) == 0
    run = tmp_path / "mix"
    rows = [json.loads(line) for line in (run / "sft.jsonl").read_text().splitlines()]
    counts = json.loads((run / "counts.json").read_text())
    assert counts["general"] == 5 and counts["kept"] == 4  # max_per_prompt 1 of 4 prompts
    assert [r.get("kind") for r in rows] == [None] * 4 + ["general"] * 5
    # A resume of the finished run rewrites nothing twice.
    assert cli(["sample", "--resume", str(run)]) == 0
    assert len((run / "sft.jsonl").read_text().splitlines()) == 9


def test_sample_stage_rejects_a_bad_general_file_before_making_a_folder(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    code = cli(["sample", *_sample_sets(tmp_path, "builtin", "x", f"sample.general_data={bad}")])
    assert code == 2 and "bad.jsonl:1: invalid JSON" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------ preference reward


GOOD = "<think> {t} </think> The answer is <answer> 46 </answer>"
BAD = "<think> {t} </think> dunno"


@pytest.fixture(scope="module")
def preference_model(tiny_base, tmp_path_factory) -> str:
    """A tiny Llama classifier trained (Bradley-Terry) to prefer a stated answer to 'dunno'."""
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_base)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         num_labels=1, pad_token_id=tok.pad_token_id or tok.eos_token_id)
    model = LlamaForSequenceClassification(config)
    tok.pad_token = tok.pad_token or tok.eos_token
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    prompts = [f"Compute {a}+{b}" for a in range(20, 30) for b in range(2, 5)]
    good = [f"{p}\nThe answer is <answer> {a} </answer>" for p, a in zip(prompts, range(30, 60))]
    bad = [f"{p}\ndunno" for p in prompts]
    def enc(texts):
        return tok(texts, return_tensors="pt", padding=True)

    for _ in range(40):
        margin = model(**enc(good)).logits[:, 0] - model(**enc(bad)).logits[:, 0]
        loss = -torch.nn.functional.logsigmoid(margin).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = tmp_path_factory.mktemp("rm") / "classifier"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def test_preference_reward_scores_the_summary_only(preference_model):
    reward = get_reward(f"reward_model:{preference_model}")
    assert reward is get_reward(f"reward_model:{preference_model}")  # loaded once
    good, bad = reward(GOOD.format(t="47+8=55"), P), reward(BAD.format(t="47+8=55"), P)
    assert 0.0 <= bad < good <= 1.0
    # The reasoning is not read: any thinking with the same summary scores the same.
    assert reward(GOOD.format(t="a long and different 1+1=2 trace"), P) == pytest.approx(good)
    assert summary_part(GOOD.format(t="x")) == "The answer is <answer> 46 </answer>"
    # a prompt past the model's 512 tokens loses its start, not the summary being scored
    long = Problem(P.id, "Compute 47+8-9 " * 400, P.answer)
    assert reward(BAD.format(t="x"), long) < reward(GOOD.format(t="x"), long)


def test_preference_reward_in_score_is_batched_and_weighted(preference_model):
    name = f"reward_model:{preference_model}"
    texts = [GOOD.format(t="a"), BAD.format(t="a")]
    s = score(texts, [P, P], [RewardSpec(name, 2.0), RewardSpec("accuracy", 1.0)], [5, 5], 16)
    rm = s.per_reward[name]
    assert s.failures[name] == 0 and rm[0] > rm[1]
    assert s.total == pytest.approx([2 * rm[0] + 1.0, 2 * rm[1]])


def test_a_bad_reward_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="reward_model:.*cannot load"):
        get_reward(f"reward_model:{tmp_path / 'missing'}")
    with pytest.raises(UserError, match="needs a model path"):
        get_reward("reward_model:")


def test_preference_reward_counts_only_in_the_last_steps(tiny_base, preference_model, tmp_path):
    name = f"reward_model:{preference_model}"
    sets = [f"model.path={tiny_base}", f"run.out_dir={tmp_path}", "run.name=late", "rl.steps=3",
            "rl.prompts_per_step=2", "rl.group_size=2", "rl.micro_batch_size=4",
            "rollout.max_new_tokens=12", "eval.num_problems=2", "eval.k=1", "eval.every=0",
            "eval.max_new_tokens=8", "data.train_size=32",
            f"rewards.weights={{accuracy: 1.0, '{name}': 1.0}}",
            f"rewards.active_last={{'{name}': 1}}"]
    zero_stage.main(load_config(ZeroConfig, None, sets))
    rows = [json.loads(line) for line in (tmp_path / "late/metrics.jsonl").read_text().splitlines()]
    assert [f"reward/{name}" in r for r in rows] == [False, False, True]
    assert all("reward/accuracy" in r for r in rows)


def test_active_last_must_name_a_weighted_reward(tmp_path):
    cfg = load_config(ZeroConfig, None, [f"run.out_dir={tmp_path}",
                                         "rewards.active_last={language: 5}"])
    with pytest.raises(UserError, match="'language' is not in rewards.weights"):
        zero_stage.main(cfg)


def test_pipeline_puts_preference_and_general_data_in_their_stages(preference_model, tmp_path):
    cfg = load_config(PipelineConfig, None, [
        f"pipeline.preference_model={preference_model}", "pipeline.preference_steps=40",
        "pipeline.language_form=language_threshold", "pipeline.general_samples=7"])
    stages = pipeline.stage_configs(cfg, Path(tmp_path))
    r1 = stages["07-r1"][1].rewards
    name = f"reward_model:{preference_model}"
    assert r1.weights[name] == 1.0 and r1.active_last == {name: 40}
    assert "language_threshold" in r1.weights and "language" not in r1.weights
    assert name not in stages["04-dev2"][1].rewards.weights
    assert stages["05-rejection"][1].sample.general_data == "builtin"
    assert stages["05-rejection"][1].sample.general_samples == 7
    assert stages["02-cold-start"][1].sample.general_data == ""

    # sample.general_data=builtin takes its size from pipeline.general_samples too; 08-distill
    # keeps the user's filter thresholds and lists any_format once
    cfg = load_config(PipelineConfig, None, [
        "sample.general_data=builtin", "pipeline.general_samples=7", "pipeline.distill=true",
        "sample.filters=[correct, well_formed, any_format]", "sample.max_paragraph_chars=200"])
    rejection = pipeline.stage_configs(cfg, Path(tmp_path))["05-rejection"][1].sample
    assert rejection.general_samples == 7
    distill = pipeline.distill_stage_config(cfg, Path(tmp_path))["08-distill"][1].sample
    assert distill.filters == ["correct", "any_format"] and distill.max_paragraph_chars == 200
    assert distill.general_data == "" and not distill.cold_start_format
