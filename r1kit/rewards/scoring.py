"""Score completions with several weighted rewards, each call bounded in time [R1-SPEC.md §2.2].

R1 sums its rule-based rewards with equal weight (accuracy + format; plus language consistency in
R1) [R1-SPEC.md §2.2, §5]. `score` computes that weighted sum and keeps each reward's values
so each can be logged on its own.

A reward that raises, or runs longer than `timeout_s`, scores 0.0 for that completion, is counted
in `Scores.failures`, and is logged once per reward per call as a warning on the `r1kit` logger;
training goes on. A `UserError` is the exception: it says the data or configuration is wrong
(every completion would score 0 for it), so it stops the run with its message. `None` ("cannot
be scored") counts 0 in the total and is skipped in `means()`.

The time limit is a one-shot `SIGALRM` timer (`signal.setitimer(ITIMER_REAL)`), which exists only
on POSIX and only in the main thread of the main interpreter. Elsewhere rewards run without a
limit. The previous `SIGALRM` handler and any pending timer are restored afterwards. A limit cannot
interrupt C code that never returns to the interpreter (e.g. one huge big-integer power).
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from r1kit.errors import UserError
from r1kit.rewards import get_reward
from r1kit.tasks.base import Problem

logger = logging.getLogger("r1kit")


@dataclass
class RewardSpec:
    """One reward in the total: the registered name and its weight."""

    name: str
    weight: float


class Verdict(float):
    """A reward value with the reason for it (the code reward's "passed", "timeout", ...); `score`
    keeps the reasons in `Scores.reasons`, logged per completion and as shares in the metrics."""

    reason: str

    def __new__(cls, value: float, reason: str):
        obj = super().__new__(cls, value)
        obj.reason = reason
        return obj


@dataclass
class Scores:
    """Per-completion totals, each reward's values (None: not scorable), failures per reward, and
    the reasons of rewards that give them (`Verdict`)."""

    total: list[float]
    per_reward: dict[str, list[float | None]]
    failures: dict[str, int]
    reasons: dict[str, list[str | None]] = field(default_factory=dict)

    def row_reasons(self, i: int) -> dict[str, str]:
        """The reasons given for completion `i`, by reward name."""
        return {name: r[i] for name, r in self.reasons.items() if r[i] is not None}

    @classmethod
    def concat(cls, parts: list[Scores]) -> Scores:
        """The completions of `parts` in order (scored by the same rewards)."""
        return cls(
            total=[t for p in parts for t in p.total],
            per_reward={k: [v for p in parts for v in p.per_reward[k]] for k in parts[0].per_reward},
            failures={k: sum(p.failures.get(k, 0) for p in parts)
                      for k in {k for p in parts for k in p.failures}},
            reasons={k: [r for p in parts for r in p.reasons[k]] for k in parts[0].reasons})

    def means(self) -> dict[str, float]:
        """Flat metrics: `reward/total`, `reward/NAME` (None skipped; NaN if all None), and
        `reward/NAME_failures` (a count).

        >>> Scores([1.0, 0.0], {"accuracy": [1.0, None]}, {"accuracy": 0}).means()
        {'reward/total': 0.5, 'reward/accuracy': 1.0, 'reward/accuracy_failures': 0.0}
        """
        out = {"reward/total": _mean(self.total)}
        for name, values in self.per_reward.items():
            out[f"reward/{name}"] = _mean([v for v in values if v is not None])
            out[f"reward/{name}_failures"] = float(self.failures.get(name, 0))
        for name, reasons in self.reasons.items():  # e.g. reward/code/timeout: share of all
            for reason in sorted({r for r in reasons if r is not None}):
                out[f"reward/{name}/{reason}"] = reasons.count(reason) / len(reasons)
        return out


class _RewardTimeout(BaseException):
    """Raised by the SIGALRM handler. A BaseException so that a reward's own `except Exception`
    (math_verify has several) cannot swallow it."""


def score(
    completions: list[str],
    problems: list[Problem],
    specs: list[RewardSpec],
    num_tokens: list[int],
    max_tokens: int,
    timeout_s: float = 5.0,
) -> Scores:
    """Score each completion against its problem with every reward in `specs`.

    Total = sum over specs of weight * value, None counting as 0. Unknown reward names or a name
    listed twice raise `UserError`.

    >>> p = Problem("p", "1+1?", "2")
    >>> s = score(["<think>1+1</think><answer>2</answer>", "<answer>3</answer>"], [p, p],
    ...           [RewardSpec("accuracy", 1.0), RewardSpec("format", 0.5)], [9, 4], 100)
    >>> s.total, s.per_reward["format"], s.failures
    ([1.5, 0.0], [1.0, 0.0], {'accuracy': 0, 'format': 0})
    """
    n = len(completions)
    if len(problems) != n or len(num_tokens) != n:
        raise ValueError(
            f"score: {n} completions but {len(problems)} problems and {len(num_tokens)} lengths"
        )
    names = [spec.name for spec in specs]
    for name in names:
        if names.count(name) > 1:
            raise UserError(f"reward {name!r} is listed twice in the rewards")
    fns = {spec.name: get_reward(spec.name) for spec in specs}

    total = [0.0] * n
    per_reward: dict[str, list[float | None]] = {}
    failures: dict[str, int] = {}
    reasons: dict[str, list[str | None]] = {}
    with _alarm_handler() as time_limit:
        for spec in specs:
            fn = fns[spec.name]
            if hasattr(fn, "score_batch"):  # one call for all (a neural reward model); no timer
                values, count, first_error = _score_batch(fn, completions, problems)
            else:
                values, count, first_error = _score_each(
                    fn, completions, problems, num_tokens, max_tokens, time_limit, timeout_s)
            if count:
                logger.warning(
                    "reward %r failed on %d of %d completions, scored 0; first: %s",
                    spec.name,
                    count,
                    n,
                    first_error,
                )
            per_reward[spec.name] = values
            failures[spec.name] = count
            if any(isinstance(v, Verdict) for v in values):
                reasons[spec.name] = [getattr(v, "reason", None) for v in values]
            for i, value in enumerate(values):
                if value is not None:
                    total[i] += spec.weight * value
    return Scores(total=total, per_reward=per_reward, failures=failures, reasons=reasons)


def _score_each(fn, completions, problems, num_tokens, max_tokens, time_limit, timeout_s
                ) -> tuple[list[float | None], int, str]:
    """(values, failures, first error) of a per-completion reward, each call time-bounded."""
    needs_length = getattr(fn, "needs_length", False)
    values: list[float | None] = []
    first_error, count = "", 0
    for completion, problem, length in zip(completions, problems, num_tokens):
        kwargs = {"num_tokens": length, "max_tokens": max_tokens} if needs_length else {}
        try:
            with time_limit(timeout_s):
                value = fn(completion, problem, **kwargs)
            if value is not None:
                value = _as_value(value)
                if not math.isfinite(value):
                    raise ValueError(f"returned {value}")
        except _RewardTimeout:
            value, count = 0.0, count + 1
            first_error = first_error or f"timed out after {timeout_s:g}s on {problem.id}"
        except UserError:  # the data or config is wrong (a target language no word can have)
            raise
        except Exception as e:  # noqa: BLE001 -- a broken reward must not end the run
            value, count = 0.0, count + 1
            first_error = first_error or f"{type(e).__name__}: {e} (on {problem.id})"
        values.append(value)
    return values, count, first_error


def _score_batch(fn, completions: list[str], problems: list[Problem]
                 ) -> tuple[list[float | None], int, str]:
    """(values, failures, first error) of a batched reward; a raise fails the whole batch."""
    try:
        values = [None if v is None else _as_value(v) for v in fn.score_batch(completions, problems)]
        if len(values) != len(completions):
            raise ValueError(f"returned {len(values)} scores for {len(completions)} completions")
        bad = [i for i, v in enumerate(values) if v is not None and not math.isfinite(v)]
        for i in bad:
            values[i] = 0.0
        return values, len(bad), "returned a non-finite score" if bad else ""
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 -- a broken reward must not end the run
        return [0.0] * len(completions), len(completions), f"{type(e).__name__}: {e}"


def bounded(fn: Callable, items: list, timeout_s: float, fallback: Callable) -> list:
    """`[fn(x) for x in items]`, each call time-bounded as a reward call is; `fallback(x)` where
    a call raises or runs out of time (SymPy on `10^{10^{10}}`)."""
    out = []
    with _alarm_handler() as time_limit:
        for item in items:
            try:
                with time_limit(timeout_s):
                    value = fn(item)
            except (Exception, _RewardTimeout):  # noqa: BLE001 -- the fallback stands in for it
                value = fallback(item)
            out.append(value)
    return out


@contextmanager
def _alarm_handler() -> Iterator[Callable[[float], object]]:
    """Install a SIGALRM handler for the block, and yield `time_limit(seconds)`, a context manager
    that arms a one-shot timer (or does nothing where signals are unavailable)."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield _no_limit
        return

    def on_alarm(signum, frame):
        raise _RewardTimeout

    started = time.monotonic()
    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    previous_delay, previous_interval = signal.setitimer(signal.ITIMER_REAL, 0)
    try:
        yield _time_limit
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_delay > 0:  # someone else's timer was pending: re-arm what is left of it
            left = max(previous_delay - (time.monotonic() - started), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, left, previous_interval)


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


@contextmanager
def _no_limit(seconds: float) -> Iterator[None]:
    yield


def _as_value(v) -> float:
    """A reward's value as a float, keeping a `Verdict` (and its reason) as it is; a number only
    (`"0.75"` is a mistake, not a score: `float()` would take it)."""
    if isinstance(v, Verdict):
        return v
    if isinstance(v, (str, bytes)):
        raise TypeError(f"returned the text {v!r}, not a number")
    return float(v)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
