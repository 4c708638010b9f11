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


@pytest.mark.parametrize(("n", "c", "k"), [(4, 5, 1), (4, -1, 1), (4, 1, 0), (4, 1, 5)])
def test_pass_at_k_validates(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        (["3", "4", "4"], "4"),
        (["3", "4", "4", "3"], "3"),  # tie: first seen
        ([None, None, "5", None], "5"),  # None never wins
        ([None, None], None),
        ([], None),
        (["", "  ", "2"], "2"),  # empty answers count as none
        (["$1/2$", " 1 / 2 ", "0.5", "0.5"], "1/2"),  # normalised before counting
        ([r"\dfrac{1}{2}", r"\frac{1}{2}.", "7"], r"\frac{1}{2}"),
    ],
)
def test_majority_vote(answers, expected):
    assert majority_vote(answers) == expected


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
