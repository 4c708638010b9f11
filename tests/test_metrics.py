"""Evaluation statistics: pass@k against brute force, majority vote, bootstrap CI, reflection rate
(R1-SPEC.md §4.4, §6)."""

from __future__ import annotations

import doctest
import itertools
import statistics

import pytest

from r1kit import metrics
from r1kit.metrics import (
    bootstrap_ci,
    majority_vote,
    pass_at_k,
    reflection_rate,
)


def test_docstring_examples():
    result = doctest.testmod(metrics)
    assert result.failed == 0 and result.attempted > 0


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Share of all k-subsets of n samples (the first c correct) containing a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_1_is_the_mean_and_large_n_is_stable():
    assert pass_at_k(64, 16, 1) == pytest.approx(16 / 64)
    value = pass_at_k(10_000, 3, 5_000)  # the binomials would overflow a float
    assert 0.0 < value < 1.0
    assert value == pytest.approx(1 - 0.5**3, abs=1e-3)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 5, 1), (4, -1, 1), (4, 1, 0), (4, 1, 5),
                                          (4.5, 1, 1), (4, True, 1)])
def test_pass_at_k_validates(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (["3", "4", "4"], "4"),
        (["3", "4", "4", "3"], "3"),  # tie: first seen
        ([None, None, "5", None], "5"),  # None never wins
        ([None, None], None),
        ([], None),
    ],
)
def test_majority_vote(keys, expected):
    assert majority_vote(keys) == expected


def _evaluate(monkeypatch, gold: str, texts: list[str]):
    """cons@k and pass@k of one problem whose k completions are `texts` (sampling stubbed)."""
    from types import SimpleNamespace

    import torch

    from r1kit import evaluation
    from r1kit.config import EvalConfig
    from r1kit.tasks.base import Problem

    monkeypatch.setattr(evaluation, "sample", lambda *a, **kw: SimpleNamespace(
        texts=texts, num_tokens=[5] * len(texts), truncated=[False] * len(texts)))
    model = SimpleNamespace(parameters=lambda: iter([torch.zeros(1)]), eval=lambda: None)
    res = evaluation.evaluate(model, None, [Problem("p", "q", gold)],
                              EvalConfig(k=len(texts), batch_size=len(texts)), template="plain")
    return res.cons_k, res.pass_k


@pytest.mark.parametrize(
    ("gold", "answers", "cons"),
    [
        ("46", ["4 6"] * 4, 0.0),  # every sample wrong: the vote cannot be right
        ("1020", ["10 20", "10 20", "1020"], 0.0),
        ("1/2", ["3", "0.5", "1/2", r"\frac{1}{2}"], 1.0),  # one right answer, however spelt
        ("7", ["0.4", "2/5", r"\frac{2}{5}", "7", "7"], 0.0),  # so are wrong ones: 3 against 2
        ("7", ["0.4", "1/3", "7", "7"], 1.0),
        ("Paris", ["Sirap", "Sirap", "paris"], 0.0),
        ("5", ["", "   ", "5"], 1.0),  # empty answers do not vote
        ("3", ["3", "x=4", "4"], 0.0),  # x=4 is 4, as accuracy reads x=3 as 3
    ],
)
def test_cons_at_k_counts_equal_answers_together_and_never_beats_pass_at_k(
        monkeypatch, gold, answers, cons):
    got, pass_k = _evaluate(monkeypatch, gold, [f"<answer>{a}</answer>" for a in answers])
    assert got == cons and got <= pass_k


def test_bootstrap_ci_contains_mean_and_shrinks_with_more_problems():
    small = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    large = small * 50
    low_s, high_s = bootstrap_ci(small, n_boot=500)
    low_l, high_l = bootstrap_ci(large, n_boot=500)
    mean = statistics.fmean(small)
    assert low_s <= mean <= high_s
    assert low_l <= mean <= high_l
    assert high_l - low_l < (high_s - low_s) / 3
    assert bootstrap_ci(small, n_boot=500) == (low_s, high_s)  # deterministic for a seed
    assert bootstrap_ci([0.25]) == (0.25, 0.25)


def test_all_right_or_all_wrong_problems_get_the_wilson_interval_not_a_point():
    # 10 of 10 right: the rate is not certainly 1 (the bootstrap said [1, 1])
    low, high = bootstrap_ci([1.0] * 10)
    assert high == 1.0 and low == pytest.approx(10 / (10 + 1.959964**2), abs=1e-6)
    low, high = bootstrap_ci([0.0] * 200)
    assert low == 0.0 and high == pytest.approx(1.959964**2 / (200 + 1.959964**2), abs=1e-6)
    assert bootstrap_ci([1.0])[0] < 0.3  # one problem says little


@pytest.mark.parametrize("kwargs", [{"n_boot": 0}, {"alpha": 0.0}, {"alpha": 1.0}])
def test_bootstrap_ci_validates(kwargs):
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, 0.0], **kwargs)
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_reflection_rate():
    texts = [
        "Wait, 47+8=55.",
        "47+8=55",
        "Let me CHECK: ok",
        "47 плюс 8 равно 45, подожди, 55",
        "no waiting, no checking, a butterfly, errors",  # inflections are other words
        "however it is",
    ]
    assert reflection_rate(texts) == pytest.approx(4 / 6)
    assert reflection_rate([]) == 0.0
    for word in metrics.REFLECTION_WORDS:
        assert reflection_rate([f"x {word.upper()}."]) == 1.0


def test_programs_vote_by_their_text_with_indentation_kept():
    from r1kit.evaluation import _RIGHT, _program_key

    good = "def f(x):\n  if x:\n    return 2\n  return 0"
    bad = "def f(x):\n  if x:\n    return 2\n    return 0"
    assert _program_key(good, False) != _program_key(bad, False)
    assert _program_key(good + "   \n\n", False) == _program_key(good, False)
    assert _program_key(good, True) == _program_key(bad + "\n", True) == _RIGHT
    assert _program_key(None, False) is None and _program_key("  \n", False) is None


def test_a_long_wrong_answer_is_keyed_by_its_text_without_parsing():
    from r1kit.rewards.accuracy import answer_key

    assert answer_key("1, " * 2000)[0] == "text"  # as accuracy: over 1,000 characters


def test_comparison_labels_name_the_run_and_list_differing_templates(tmp_path):
    from r1kit.comparison import write_comparison
    from r1kit.config import EvalConfig
    from r1kit.stages.evaluate import _labels

    assert _labels(["runs/a/final", "runs/b/final-adapter", "runs/c/checkpoints/step-000002",
                    "models/m"]) == ["a/final", "b/final-adapter", "c/step-000002", "m"]
    row = {"pass@1": 0.5, "pass@1_ci": [0.0, 1.0], "pass@k": 0.5, "cons@k": 0.5, "format": 1.0,
           "tokens": 3.0, "reflection": 0.0, "arch": "llama", "params": 1}
    rows = [{**row, "model": "a", "template": "r1_zero"}, {**row, "model": "b", "template": "chat"}]
    write_comparison(tmp_path, "c", "T", rows, EvalConfig(), 2)
    assert "Prompt templates: a: r1_zero, b: chat." in (tmp_path / "c.md").read_text()



def test_an_evaluations_samples_hold_every_completion_so_its_rates_can_be_recomputed(tiny_base):
    import numpy as np

    from r1kit.config import EvalConfig
    from r1kit.evaluation import evaluate
    from r1kit.models import load_model
    from r1kit.tasks.arithmetic import sample_problems

    model, tok = load_model(tiny_base)
    res = evaluate(model, tok, sample_problems(6, "heldout", 0),
                   EvalConfig(k=3, max_new_tokens=24, temperature=1.0), seed=1)
    assert len(res.samples) == 6
    each = np.array([s["correct_each"] for s in res.samples], dtype=float)  # (problems, k)
    assert each.shape == (6, 3) and all(len(s["completions"]) == 3 for s in res.samples)
    assert each.mean() == pytest.approx(res.pass1)
    assert each.max(axis=1).mean() == pytest.approx(res.pass_k)
    assert np.mean([s["voted"] for s in res.samples]) == pytest.approx(res.cons_k)
    assert all(s["completion"] == s["completions"][0] for s in res.samples)
