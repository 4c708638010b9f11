"""The code reward: run the program in the completion against the problem's tests, in the sandbox
[R1-SPEC.md §2.2: "a compiler can be used to evaluate the responses … against a suite of
predefined test cases"].

The program is the last fenced code block inside the answer (`r1kit.tasks.code.extract_program`).
The reward is the share of tests passed, or 1/0 for all-or-nothing (`code.all_or_nothing`); a
program that did not finish (killed at the wall or CPU limit or the output cap, or exited before
its last test) counts one more failed test, passed/(total+1), so only reason `passed` scores 1
(`TestOutcome.fraction`). The problem must carry `meta["tests"]` (a list of `assert` strings),
else the reward is `None` (not scorable).
Each value carries its reason (passed, wrong_answer, runtime_error, timeout, memory_limit,
output_limit, syntax_error, no_code), which the run logs per completion and as shares in metrics.

A whole batch is scored in one call (`score_batch`), on a pool of worker processes; one hung
program costs at most the wall-clock limit and never holds up training beyond it. Model-written
code runs only inside `r1kit.sandbox.Sandbox`; `configure` sets its limits and whether running
without bubblewrap is allowed (the `code` config section, `--unsafe-allow-unsandboxed`).
"""

from __future__ import annotations

import threading

from r1kit.rewards import register
from r1kit.rewards.scoring import Verdict
from r1kit.sandbox import Limits, Sandbox
from r1kit.tasks.base import Problem
from r1kit.tasks.code import extract_program

_state: dict = {"options": None, "sandbox": None}
_lock = threading.Lock()


def configure(options=None) -> Sandbox:
    """Set the sandbox options (a `CodeConfig`, or None for the defaults) and start the sandbox
    now, so that a missing bubblewrap stops a run before it starts (a `UserError`)."""
    with _lock:
        _state["options"], _state["sandbox"] = options, None
    return _sandbox()


def configure_for(problems, options=None, *, needed: bool = False) -> None:
    """`configure(options)` when any of `problems` has tests (or `needed`): a stage calls it before
    it makes a folder or loads a model, so that a missing bubblewrap stops it at once (unless
    explicitly unsafe)."""
    if needed or any_tests(problems):
        configure(options)


def any_tests(problems) -> bool:
    """Whether any of `problems` has tests. A generated problem set (reasoning-gym's) says so
    itself (`has_tests`), without generating every problem to look."""
    known = getattr(problems, "has_tests", None)
    return known if known is not None else any(has_tests(p) for p in problems)


def _sandbox() -> Sandbox:
    with _lock:
        if _state["sandbox"] is None:
            o = _state["options"]
            if o is None:
                _state["sandbox"] = Sandbox()
            else:
                limits = Limits(wall_s=o.wall_s, cpu_s=o.cpu_s, memory_mb=o.memory_mb)
                _state["sandbox"] = Sandbox(limits, workers=o.workers,
                                            allow_unsandboxed=o.unsafe_allow_unsandboxed)
        return _state["sandbox"]


def has_tests(problem: Problem) -> bool:
    return bool(problem.meta.get("tests"))


def run_tests(completions: list[str], problems: list[Problem]) -> list[Verdict | None]:
    """Per completion: the share of its problem's tests passed (all-or-nothing if configured),
    with the reason; None for a problem without tests."""
    options = _state["options"]
    all_or_nothing = bool(options and options.all_or_nothing)
    programs = [extract_program(c) for c in completions]
    jobs = [(prog, list(p.meta["tests"])) for prog, p in zip(programs, problems)
            if prog is not None and has_tests(p)]
    outcomes = iter(_sandbox().run_many(jobs) if jobs else [])
    out: list[Verdict | None] = []
    for prog, p in zip(programs, problems):
        if not has_tests(p):
            out.append(None)
        elif prog is None:
            out.append(Verdict(0.0, "no_code"))
        else:
            o = next(outcomes)
            value = float(o.reason == "passed") if all_or_nothing else o.fraction
            out.append(Verdict(value, o.reason))
    return out


class _CodeReward:
    """`code`: callable on one completion (the reward contract), or on a batch."""

    def __call__(self, completion: str, problem: Problem) -> Verdict | None:
        """
        >>> from r1kit.tasks.code import sample_problems, correct_solution
        >>> p = sample_problems(1, "train", seed=0)[0]
        >>> v = code_reward(correct_solution(p), p)
        >>> float(v), v.reason
        (1.0, 'passed')
        >>> code_reward("<answer> no code here </answer>", p).reason
        'no_code'
        """
        return run_tests([completion], [problem])[0]

    def score_batch(self, completions: list[str], problems: list[Problem]):
        return run_tests(completions, problems)


code_reward = register("code")(_CodeReward())
