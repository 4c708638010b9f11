"""Rewards: answer extraction, accuracy via math_verify, format, overlong, and weighted scoring
with failures and time limits (R1-SPEC.md §1.4, §2.2)."""

from __future__ import annotations

import doctest
import logging
import signal
import sys
import time
from types import SimpleNamespace

import pytest
import torch

import r1kit.rewards
from r1kit.errors import UserError
from r1kit.rewards import (
    accuracy,
    available_rewards,
    extract,
    format,
    get_reward,
    length,
    register,
    scoring,
)
from r1kit.rewards.extract import extract_answer
from r1kit.rewards.scoring import RewardSpec, score
from r1kit.tasks.base import Problem


def problem(answer: str = "42", **meta) -> Problem:
    return Problem(id="p", prompt="question", answer=answer, meta=meta)


@pytest.mark.parametrize("module", [r1kit.rewards, extract, accuracy, format, length, scoring])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.failed == 0 and result.attempted > 0


# --- extraction ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<answer>42</answer>", "42"),
        ("<answer> 42 \n</answer>", "42"),
        ("<answer>1</answer> wait <answer>2</answer>", "2"),  # last answer tag wins
        ("<answer>a <answer>b</answer>", "b"),  # an unclosed tag does not swallow the next
        (r"so \boxed{42}.", "42"),
        (r"\boxed{1} no, \boxed{2}", "2"),  # last box wins
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),  # nested braces
        (r"\boxed {x^{2}+\{1\}}", r"x^{2}+\{1\}"),  # escaped braces are content
        (r"\boxed{1} then \boxed{x^{2}", "1"),  # a truncated box is skipped
        (r"<answer>7</answer> \boxed{8}", "7"),  # the answer tag beats a box
        ("no answer at all", None),
        ("<answer>unclosed", None),
    ],
)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


# --- accuracy --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gold", "completion", "expected"),
    [
        ("42", "<think>6*7</think><answer>42</answer>", 1.0),
        ("42", "<answer>43</answer>", 0.0),
        ("42", "<answer>+042</answer>", 1.0),  # integer fast path
        ("42", "<answer>42.0</answer>", 1.0),  # falls through to math_verify
        ("42", r"the answer is \boxed{42}", 1.0),
        ("42", r"<answer>\boxed{42}</answer>", 1.0),
        ("42", "<answer>The answer is 42</answer>", 1.0),
        ("42", "<think>42</think> no tags", 0.0),  # nothing extracted
        ("42", "<answer></answer>", 0.0),
        ("42", "<answer>banana</answer>", 0.0),
        (r"\frac{1}{2}", "<answer>0.5</answer>", 1.0),
        ("0.5", r"<answer>\frac{1}{2}</answer>", 1.0),
        ("1/2", "<answer>0.5</answer>", 1.0),
        (r"\frac12", "<answer>1/2</answer>", 1.0),
        (r"\frac{1}{2}", "<answer>0.25</answer>", 0.0),
        (r"\sqrt{2}", r"<answer>2^{1/2}</answer>", 1.0),
        (r"2\sqrt{3}", r"<answer>\sqrt{12}</answer>", 1.0),
        (r"2\sqrt{3}", "<answer>2</answer>", 0.0),  # a bare parse would read the gold as 2
        ("1024", r"<answer>2^{10}</answer>", 1.0),
        (r"\{1, 2\}", r"<answer>\{2, 1\}</answer>", 1.0),
        ("x=3", "<answer>3</answer>", 1.0),
        ("3", "<answer>x = 3</answer>", 1.0),
        (r"(-\infty, 3]", r"<answer>(-\infty, 3]</answer>", 1.0),
        (r"(-\infty, 3]", r"<answer>(-\infty, 3)</answer>", 0.0),
        (r"\pi", r"\boxed{\pi}", 1.0),
        ("18.50", r"Total: \boxed{\$18.50}", 1.0),  # escaped dollars (money)
        (r"\$1.17", "<answer>1.17</answer>", 1.0),
        ("1000", r"<answer>1\,000</answer>", 1.0),  # grouped in threes, not a product
        ("1000", "<answer>1 000</answer>", 1.0),
        ("0", "<answer>1 000</answer>", 0.0),
        ("1000", r"<answer>$1\,000$</answer>", 1.0),  # inside math too
        ("0", r"<answer>$1\,000$</answer>", 0.0),
        (r"(1000, 2500)", r"<answer>(1\,000, 2\,500)</answer>", 1.0),
        ("Paris", "<answer>Sirap</answer>", 0.0),  # words as words, not a product of letters
        ("Paris", r"<answer>\text{paris}.</answer>", 1.0),
        ("listen", "<answer>silent</answer>", 0.0),
        ("no", "<answer>on</answer>", 0.0),
        ("yes", "<answer>Yes</answer>", 1.0),
        ("New York", "<answer>new  york</answer>", 1.0),
        ("infinity", r"<answer>\infty</answer>", 1.0),  # a word math_verify knows stays math
        ("x", "<answer>x</answer>", 1.0),
        ("2x", "<answer>x*2</answer>", 1.0),
        # LaTeX environments and units are not prose: the answer is still parsed as math
        (r"\begin{pmatrix} 2 \\ 4 \\ 6 \end{pmatrix}",
         r"\boxed{\begin{pmatrix} 9 \\ 9 \\ 6 \end{pmatrix}}", 0.0),
        (r"\begin{pmatrix} 2 \\ 4 \\ 6 \end{pmatrix}", "<answer>6</answer>", 0.0),
        (r"\begin{pmatrix} 2 \\ 4 \\ 6 \end{pmatrix}",
         r"\boxed{\begin{pmatrix}2\\4\\6\end{pmatrix}}", 1.0),
        ("3", r"\boxed{3\sqrt{2}\text{ meters}}", 0.0),
        (r"2\sqrt{3}", r"\boxed{2\sqrt{3} \text{ units}}", 1.0),
        ("1024", r"\boxed{2^{10}\text{ ways}}", 1.0),
        # an option letter against the answer's option letter
        ("B", r"\boxed{\textbf{(B)}\ 5}", 1.0),
        ("B", "<answer>(B) 5</answer>", 1.0),
        ("(B)", "<answer>The answer is B.</answer>", 1.0),
        ("C", "<answer>Option C</answer>", 1.0),
        ("B", "<answer>(C) 5</answer>", 0.0),
        ("B", "<answer>5</answer>", 0.0),
        ("A", "<answer>the answer is a multiple of 3</answer>", 0.0),  # prose, not option A
        ("B", "<answer>P(B) = 0.3</answer>", 0.0),  # notation, not option B
        ("B", "<answer>f(a) = 3, so (b)</answer>", 0.0),
        ("D", r"<answer>\mathbf{D}</answer>", 1.0),
        ("$abc$", "<answer>cba</answer>", 1.0),  # in $...$: the product of variables
        ("1000000000", "<answer>1e9</answer>", 1.0),  # scientific notation
        ("0.001", "<answer>1e-3</answer>", 1.0),
        (r"6.02\times10^{23}", "<answer>6.02e23</answer>", 1.0),
        ("42", "<think>use <answer> </answer> tags; 6*7=42</think> so \\boxed{42}", 1.0),
        ("1", "<answer>" + "1 " * 5000 + "</answer>", 0.0),  # a loop: not parsed
    ],
)
def test_accuracy(gold, completion, expected):
    assert accuracy.accuracy(completion, problem(gold)) == expected


@pytest.mark.parametrize("gold", ["", "   ", r"\frac{1}{", "}{", "???"])
def test_accuracy_unparseable_gold_is_none(gold):
    assert accuracy.accuracy("<answer>1</answer>", problem(gold)) is None


def test_accuracy_integer_fast_path_skips_sympy(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("math_verify called for integer answers")

    monkeypatch.setattr(accuracy, "parse", fail)
    monkeypatch.setattr(accuracy, "verify", fail)
    assert accuracy.accuracy("<answer>12</answer>", problem("12")) == 1.0
    assert accuracy.accuracy("<answer>-12</answer>", problem("12")) == 0.0
    assert accuracy.accuracy("no answer", problem("12")) == 0.0


# --- format ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "prefilled", "fmt", "think"),
    [
        ("<think>1+1=2</think><answer>2</answer>", False, 1.0, 1.0),
        ("  <think>\n1+1=2\n</think>\n<answer>\n2\n</answer>\n\n", False, 1.0, 1.0),
        ("<think></think><answer>2</answer>", False, 1.0, 1.0),  # empty reasoning is allowed
        ("<think>1+1=2</think><answer> </answer>", False, 0.0, 1.0),  # blank answer
        ("<think>1+1=2</think><answer>2</answer> Done.", False, 0.0, 1.0),  # text after
        ("<think>1+1=2</think> so <answer>2</answer>", False, 0.0, 1.0),  # text between
        ("Sure! <think>1+1=2</think><answer>2</answer>", False, 0.0, 0.0),  # text before
        ("<think>a</think><think>b</think><answer>2</answer>", False, 0.0, 0.0),  # two thinks
        ("<think>a</think><answer>1</answer><answer>2</answer>", False, 0.0, 1.0),  # two answers
        ("<think>a <answer>1</answer></think><answer>2</answer>", False, 0.0, 1.0),
        ("<answer>2</answer><think>a</think>", False, 0.0, 0.0),  # wrong order
        ("<think>1+1=2<answer>2</answer>", False, 0.0, 0.0),  # think never closed
        ("<think>1+1=2</think>", False, 0.0, 1.0),  # no answer
        ("2", False, 0.0, 0.0),
        # The prompt ended with "<think>": the completion starts with the reasoning.
        ("1+1=2</think><answer>2</answer>", False, 0.0, 0.0),
        ("1+1=2</think><answer>2</answer>", True, 1.0, 1.0),
        ("\n1+1=2\n</think>\n<answer>2</answer>", True, 1.0, 1.0),
        ("<think>1+1=2</think><answer>2</answer>", True, 0.0, 0.0),  # a second <think>
    ],
)
def test_format_rewards(completion, prefilled, fmt, think):
    p = problem("2", prefilled_think=True) if prefilled else problem("2")
    assert format.format_reward(completion, p) == fmt
    assert format.think_format_reward(completion, p) == think


# --- overlong (DAPO) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_tokens", "expected"),
    [
        (0, 0.0),
        (80, 0.0),  # |y| = L_max - L_cache: last token without penalty
        (81, -0.05),  # (80 - 81) / 20
        (90, -0.5),
        (100, -1.0),  # |y| = L_max: (80 - 100) / 20
        (101, -1.0),  # beyond the budget
    ],
)
def test_overlong_regimes(num_tokens, expected):
    reward = length.make_overlong(cache_tokens=20)
    value = reward("x", problem(), num_tokens=num_tokens, max_tokens=100)
    assert value == pytest.approx(expected)


def test_overlong_default_cache_and_meta_override():
    assert length.overlong.needs_length is True
    # default cache: 100 // 4 = 25 -> free up to 75 tokens
    assert length.overlong("x", problem(), num_tokens=75, max_tokens=100) == 0.0
    assert length.overlong("x", problem(), num_tokens=80, max_tokens=100) == pytest.approx(-0.2)
    meta = problem(overlong_cache=10)
    assert length.overlong("x", meta, num_tokens=80, max_tokens=100) == 0.0
    assert length.overlong("x", meta, num_tokens=95, max_tokens=100) == pytest.approx(-0.5)
    with pytest.raises(ValueError):
        length.make_overlong(0)


# --- registry --------------------------------------------------------------------------------


def test_registry():
    assert {"accuracy", "format", "think_format", "overlong"} <= set(available_rewards())
    assert get_reward("format") is format.format_reward
    with pytest.raises(UserError, match=r"unknown reward 'acuracy'.*accuracy, code, format"):
        get_reward("acuracy")
    with pytest.raises(ValueError, match="already registered"):
        register("accuracy")(lambda completion, problem: 0.0)


def test_a_reward_defined_again_replaces_itself(monkeypatch, tmp_path):
    """A module reloaded (or a notebook cell run twice) defines the same function again: no
    error, the new one wins."""
    import importlib

    monkeypatch.setattr(r1kit.rewards, "_REGISTRY", dict(r1kit.rewards._REGISTRY))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # no stale .pyc within one second
    module = tmp_path / "short_again_rewards.py"
    source = ("from r1kit.rewards import register\n\n\n@register('short_again')\n"
              "def short(completion, problem):\n    return {}\n")
    module.write_text(source.format(0.0))
    mod = importlib.import_module("short_again_rewards")
    module.write_text(source.format(1.0))
    importlib.reload(mod)
    monkeypatch.delitem(sys.modules, "short_again_rewards")
    assert get_reward("short_again")("x", problem()) == 1.0


def test_register_checks_its_name_and_function_and_never_replaces_a_different_one(monkeypatch):
    monkeypatch.setattr(r1kit.rewards, "_REGISTRY", dict(r1kit.rewards._REGISTRY))
    for name in (3, "", "reward_model:x", "a b", "w=1", "reward/x", "total", "accuracy_failures"):
        with pytest.raises(ValueError, match="reward name"):
            register(name)
    with pytest.raises(TypeError, match="not a function"):
        register("five")(5)
    register("lam")(lambda completion, problem: 0.0)
    with pytest.raises(ValueError, match="already registered"):  # two lambdas, one name
        register("lam")(lambda completion, problem: 1.0)
    for value in (0.0, 1.0):  # closures from one factory are different rewards
        def made(completion, problem, value=value):
            return value
        if value:
            with pytest.raises(ValueError, match="already registered"):
                register("made")(made)
        else:
            register("made")(made)
    assert available_rewards()  # still sortable: only string names got in


# --- scoring ---------------------------------------------------------------------------------


@pytest.fixture
def misbehaving():
    """Temporarily registered rewards that misbehave."""
    calls = {"n": 0}

    def raises(completion, problem):
        raise RuntimeError("boom")

    def sleeps(completion, problem):
        calls["n"] += 1
        if completion == "slow":
            time.sleep(10)
        return 1.0

    def none_for_b(completion, problem):
        return None if completion == "b" else 2.0

    def text(completion, problem):
        return "0.75"  # float() would take it

    added = {"test_raises": raises, "test_sleeps": sleeps, "test_none": none_for_b,
             "test_text": text}
    for name, fn in added.items():
        register(name)(fn)
    yield calls
    for name in added:
        del r1kit.rewards._REGISTRY[name]


def test_score_weights_and_breakdown():
    p = problem("2")
    completions = ["<think>1+1</think><answer>2</answer>", "<answer>2</answer>", "3"]
    specs = [RewardSpec("accuracy", 1.0), RewardSpec("format", 0.5), RewardSpec("overlong", 2.0)]
    s = score(completions, [p] * 3, specs, num_tokens=[10, 10, 90], max_tokens=100)
    assert s.per_reward["accuracy"] == [1.0, 1.0, 0.0]
    assert s.per_reward["format"] == [1.0, 0.0, 0.0]
    assert s.per_reward["overlong"] == [0.0, 0.0, pytest.approx(-0.6)]  # (75 - 90) / 25
    assert s.total == [1.5, 1.0, pytest.approx(-1.2)]
    assert s.failures == {"accuracy": 0, "format": 0, "overlong": 0}


def test_score_none_counts_zero_in_total_and_is_skipped_in_means(misbehaving):
    s = score(["a", "b"], [problem()] * 2, [RewardSpec("test_none", 0.5)], [1, 1], 10)
    assert s.per_reward["test_none"] == [2.0, None]
    assert s.total == [1.0, 0.0]
    assert s.means()["reward/test_none"] == 2.0


def test_a_reward_returning_text_fails_even_when_it_reads_as_a_number(misbehaving, caplog):
    with caplog.at_level(logging.WARNING, logger="r1kit"):
        s = score(["a"], [problem()], [RewardSpec("test_text", 1.0)], [1], 10)
    assert s.per_reward["test_text"] == [0.0] and s.failures == {"test_text": 1}
    assert "returned the text '0.75', not a number" in caplog.text


def test_score_failures_are_counted_logged_and_scored_zero(misbehaving, caplog):
    specs = [RewardSpec("test_raises", 1.0), RewardSpec("test_sleeps", 1.0)]
    completions = ["fast", "slow", "fast"]
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="r1kit"):
        s = score(completions, [problem()] * 3, specs, [1, 1, 1], 10, timeout_s=0.2)
    assert time.monotonic() - started < 5
    assert s.failures == {"test_raises": 3, "test_sleeps": 1}
    assert s.per_reward["test_raises"] == [0.0, 0.0, 0.0]
    assert s.per_reward["test_sleeps"] == [1.0, 0.0, 1.0]
    assert s.total == [1.0, 0.0, 1.0]
    assert misbehaving["n"] == 3  # the run went on after the timeout
    messages = [r.getMessage() for r in caplog.records if r.name == "r1kit"]
    assert len(messages) == 2  # once per failing reward, not once per completion
    assert "test_raises" in messages[0] and "RuntimeError: boom" in messages[0]
    assert "test_sleeps" in messages[1] and "timed out" in messages[1]


def test_score_times_out_inside_math_verify(monkeypatch):
    """math_verify catches every Exception while parsing; the time limit must still get out."""
    import math_verify.parser

    def slow_extract(*args, **kwargs):
        time.sleep(10)

    monkeypatch.setattr(math_verify.parser, "extract_target_from_pred", slow_extract)
    accuracy._parse.cache_clear()
    started = time.monotonic()
    s = score(
        ["<answer>0.123</answer>"],
        [problem("0.5")],
        [RewardSpec("accuracy", 1.0)],
        [1],
        10,
        timeout_s=0.2,
    )
    assert time.monotonic() - started < 5
    assert s.failures == {"accuracy": 1}
    accuracy._parse.cache_clear()


def test_evaluation_bounds_each_reward_call_in_time(monkeypatch):
    import math_verify.parser

    from r1kit import evaluation
    from r1kit.config import EvalConfig

    def slow_extract(*args, **kwargs):
        time.sleep(10)

    monkeypatch.setattr(math_verify.parser, "extract_target_from_pred", slow_extract)
    monkeypatch.setattr(evaluation, "REWARD_TIMEOUT_S", 0.2)
    monkeypatch.setattr(evaluation, "sample", lambda *a, **kw: SimpleNamespace(
        texts=["<answer>0.123</answer>"] * 2, num_tokens=[5, 5], truncated=[False, False]))
    model = SimpleNamespace(parameters=lambda: iter([torch.zeros(1)]), eval=lambda: None)
    accuracy._parse.cache_clear()
    started = time.monotonic()
    res = evaluation.evaluate(model, None, [problem("0.5")], EvalConfig(k=2, batch_size=2),
                              template="plain")
    assert time.monotonic() - started < 5
    assert res.pass1 == 0.0 and res.cons_k == 0.0
    accuracy._parse.cache_clear()


def test_score_restores_previous_alarm_handler(misbehaving):
    def previous(signum, frame):
        pass

    old = signal.signal(signal.SIGALRM, previous)
    try:
        score(["slow"], [problem()], [RewardSpec("test_sleeps", 1.0)], [1], 10, timeout_s=0.05)
        assert signal.getsignal(signal.SIGALRM) is previous
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    finally:
        signal.signal(signal.SIGALRM, old)


def test_score_rejects_bad_specs():
    with pytest.raises(UserError, match="unknown reward 'nope'"):
        score(["a"], [problem()], [RewardSpec("nope", 1.0)], [1], 10)
    with pytest.raises(UserError, match="listed twice"):
        score(["a"], [problem()], [RewardSpec("format", 1.0), RewardSpec("format", 2.0)], [1], 10)


def test_rewards_modules_are_imported_from_the_current_directory(tmp_path, monkeypatch):
    from r1kit.rewards import import_reward_modules

    (tmp_path / "my_r1kit_rewards.py").write_text(
        "from r1kit.rewards import register\n\n"
        "@register('short_for_test')\n"
        "def short(completion, problem):\n"
        "    return 1.0 if len(completion) < 20 else 0.0\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.setattr(r1kit.rewards, "_REGISTRY", dict(r1kit.rewards._REGISTRY))  # undone after
    with pytest.raises(UserError, match="unknown reward 'short_for_test'"):
        get_reward("short_for_test")
    import_reward_modules(["my_r1kit_rewards"])
    assert get_reward("short_for_test")("<answer>1</answer>", Problem("p", "?", "1")) == 1.0
    with pytest.raises(UserError, match="rewards.modules: cannot import 'no_such_module'"):
        import_reward_modules(["no_such_module"])
