"""The built-in task (disjoint splits, verifiable answers, a sloppy corpus) and the base build."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from r1kit.rewards import get_reward
from r1kit.tasks.arithmetic import (
    CorpusStyle,
    correct_solution,
    is_heldout,
    sample_problems,
    worked_solution,
)
from r1kit.templates import R1_ZERO_TEMPLATE, render_prompt


def test_splits_are_disjoint_deterministic_and_verifiable():
    train = sample_problems(2000, "train", seed=0)
    held = sample_problems(300, "heldout", seed=0)
    assert {p.id for p in train}.isdisjoint({p.id for p in held})
    assert all(is_heldout(p.id) for p in held) and not any(is_heldout(p.id) for p in train)
    assert [p.id for p in sample_problems(50, "train", seed=0)] == [p.id for p in train[:50]]
    accuracy = get_reward("accuracy")
    for p in train[:200]:
        total = p.meta["start"]
        for op, d in p.meta["steps"]:
            total = total + d if op == "+" else total - d
            assert 0 <= total <= 99
        assert str(total) == p.answer
        assert accuracy(correct_solution(p), p) == 1.0


def test_corpus_has_slips_rechecks_and_second_language_at_the_configured_rates():
    problems = sample_problems(4000, "train", seed=1)
    rng = random.Random(0)
    style = CorpusStyle()
    texts = [worked_solution(p, rng, style) for p in problems]
    accuracy, fmt = get_reward("accuracy"), get_reward("format")
    correct = sum(accuracy(t, p) == 1.0 for t, p in zip(texts, problems)) / len(texts)
    formatted = sum(fmt(t, p) == 1.0 for t, p in zip(texts, problems)) / len(texts)
    russian = sum("плюс" in t or "минус" in t for t in texts) / len(texts)
    rechecks = sum(bool(re.search(r"\b(wait|подожди),", t)) for t in texts) / len(texts)
    assert 0.15 < correct < 0.6  # imperfect, as a base model should be
    assert abs(formatted - (1 - style.no_tags)) < 0.02
    assert abs(russian - style.second_language) < 0.03
    assert 0.05 < rechecks < 0.4
    clean = [worked_solution(p, rng, CorpusStyle(0, 0, 0, 0, 0)) for p in problems[:200]]
    assert all(accuracy(t, p) == 1.0 for t, p in zip(clean, problems))


def test_prompt_is_the_r1_zero_template():
    assert render_prompt("Compute 1+2") == R1_ZERO_TEMPLATE.format(prompt="Compute 1+2")
    assert render_prompt("Compute 1+2").endswith("User: Compute 1+2. Assistant:")
    with pytest.raises(ValueError, match="unknown template"):
        render_prompt("x", "nope")


def test_base_folder_loads_with_auto_classes_and_tokenizes_as_trained(tiny_base):
    folder = Path(tiny_base)
    record = json.loads((folder / "r1kit_base.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert model.config.model_type == "llama"
    assert sum(p.numel() for p in model.parameters()) == record["params"]
    ids = tok(render_prompt("Compute 47+8-9+6"), add_special_tokens=False)["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    assert "47" in pieces  # numbers are whole tokens
    assert len(ids) < 60  # the fixed template compresses
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        assert len(tok(tag, add_special_tokens=False)["input_ids"]) == 1
    text = "<think> 47+8=55 </think> <answer> 55 </answer>"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_base_build_is_deterministic(tiny_base_config, tmp_path):
    from safetensors.torch import load_file

    from r1kit.stages.base import main as build

    a, b = tmp_path / "a", tmp_path / "b"
    build(tiny_base_config, out=a, log=lambda *_: None)
    build(tiny_base_config, out=b, log=lambda *_: None)
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert all((wa[k] == wb[k]).all() for k in wa)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()


def test_carry_tier_makes_most_steps_carry_and_keeps_the_default_task():
    from r1kit.config import DataConfig
    from r1kit.runs import load_problems
    from r1kit.tasks.arithmetic import _needs_carry, sample_problems

    def carry_share(problems):
        n = c = 0
        for p in problems:
            total = p.meta["start"]
            for op, d in p.meta["steps"]:
                n, c = n + 1, c + _needs_carry(total, op, d)
                total = total + d if op == "+" else total - d
        return c / n

    easy = sample_problems(500, "train", seed=0)
    hard = sample_problems(500, "train", seed=0, carry_only=True)
    assert carry_share(easy) < 0.6 and carry_share(hard) > 0.8
    train, heldout = load_problems(DataConfig(source="builtin:carry", train_size=300), 50)
    assert {p.id for p in train}.isdisjoint(p.id for p in heldout)
    assert carry_share(heldout) > 0.8
    # every step carries or borrows wherever the 0..99 range allows one, either way
    for p in hard:
        total = p.meta["start"]
        for op, d in p.meta["steps"]:
            possible = any(_needs_carry(total, o, e) for o in "+-" for e in range(2, 10)
                           if 0 <= (total + e if o == "+" else total - e) <= 99)
            assert _needs_carry(total, op, d) or not possible, (p.id, total, op, d)
            total = total + d if op == "+" else total - d
    for p in hard[:50]:  # answers are still the true totals
        assert str(eval(p.id)) == p.answer  # our own generated expression
