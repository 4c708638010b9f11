"""The built-in task: multi-step arithmetic chains, and the worked solutions the base model learns.

A problem is a chain such as `Compute 47+8-9+6`: a two-digit start and single-digit steps, the
running total kept within 0..99. Its verifiable answer is the final total (52).

Train and held-out problems are disjoint by construction: a fixed hash bucket of the expression
(1 in 10) is held out, never used in pretraining nor in RL.

Worked solutions (`worked_solution`) are written the way a sloppy student writes them, so the
pretrained base is imperfect in the ways R1-Zero RL is meant to fix (FEASIBILITY.md lessons):
- a step that needs a carry or a borrow forgets it with probability `carry_slip`: the tens digit is
  left unchanged (47+8=45, 52-9=53); the chain then continues from the wrong value, so one slip
  ruins the answer while each step is still right most of the time;
- any step slips by one with probability `slip`;
- after a slip, with probability `recheck`, the student writes `wait, 47+8=55` and continues from
  the corrected value: reflection exists in the base, and pays off;
- a share `second_language` of traces spell the operations in Russian (`47 плюс 8 равно 55`), so
  language mixing can be measured and rewarded later;
- a share `no_tags` ends without `<answer>` tags, so the format is usual but not universal.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field

from r1kit.tasks.base import Problem, draw_distinct

RU_OPS = {"+": "плюс", "-": "минус"}
RU_EQUALS = "равно"
RU_WAIT = "подожди"


def _share(default: float, help: str):
    """A probability field of `CorpusStyle`, documented and range-checked like r1kit/config.py's."""
    return field(default=default, metadata={"help": help, "low": 0.0, "high": 1.0})


@dataclass(frozen=True)
class CorpusStyle:
    """How sloppy the worked solutions of the pretraining corpus are (see the module docstring)."""

    carry_slip: float = _share(0.5, "chance that a step needing a carry or borrow forgets it")
    slip: float = _share(0.03, "chance that another step is off by one")
    recheck: float = _share(0.3, "chance that a wrong step is caught with `wait, ...` and redone")
    second_language: float = _share(0.15, "share of traces written with Russian operation words")
    no_tags: float = _share(0.04, "share of traces that end without the answer tags")


def is_heldout(expression: str) -> bool:
    """The fixed 1-in-10 hash bucket that is never trained on."""
    return int(hashlib.sha1(expression.encode()).hexdigest(), 16) % 10 == 0


def _random_chain(rng: random.Random, min_terms: int, max_terms: int, carry_only: bool = False
                  ) -> tuple[int, list[tuple[str, int]]]:
    start = rng.randint(10, 99)
    steps, total = [], start

    def digits(op: str) -> list[int]:
        ok = [d for d in range(2, 10) if 0 <= (total + d if op == "+" else total - d) <= 99]
        carry = [d for d in ok if _needs_carry(total, op, d)]
        return carry if carry_only and carry else ok

    for _ in range(rng.randint(min_terms, max_terms) - 1):
        op = rng.choice("+-")
        flip = "-" if op == "+" else "+"
        choices, other = digits(op), digits(flip)
        if not choices or (carry_only and not _needs_carry(total, op, choices[0])
                           and other and _needs_carry(total, flip, other[0])):
            op, choices = flip, other  # near a bound, or no carry this way
        d = rng.choice(choices)
        total = total + d if op == "+" else total - d
        steps.append((op, d))
    return start, steps


def chain_problem(start: int, steps: list[tuple[str, int]]) -> Problem:
    expression = f"{start}" + "".join(f"{op}{d}" for op, d in steps)
    total = start
    for op, d in steps:
        total = total + d if op == "+" else total - d
    return Problem(
        id=expression,
        prompt=f"Compute {expression}",
        answer=str(total),
        meta={"start": start, "steps": [list(s) for s in steps], "task": "arithmetic"},
    )


def sample_problems(
    n: int, split: str, seed: int, min_terms: int = 4, max_terms: int = 5, carry_only: bool = False
) -> list[Problem]:
    """`n` distinct problems of one split ("train" or "heldout"), deterministic for `seed`.
    `carry_only` draws the harder tier (`builtin:carry`): every step needs a carry or a borrow
    wherever the 0..99 range allows one, so the base slips often and only re-checks save it."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    rng = random.Random(f"arithmetic-{split}-{seed}" + ("-carry" if carry_only else ""))

    def draw() -> Problem | None:
        p = chain_problem(*_random_chain(rng, min_terms, max_terms, carry_only))
        return p if is_heldout(p.id) == (split == "heldout") else None

    return draw_distinct(n, draw, lambda p: p.id, 200 * n + 10_000, f"{split} problems")


def _needs_carry(total: int, op: str, d: int) -> bool:
    return total % 10 + d >= 10 if op == "+" else total % 10 < d


def worked_solution(problem: Problem, rng: random.Random, style: CorpusStyle) -> str:
    """A completion for `problem` written with the slips, re-checks and languages of `style`."""
    russian = rng.random() < style.second_language

    def step(a: int, op: str, d: int, result: int) -> str:
        if russian:
            return f"{a} {RU_OPS[op]} {d} {RU_EQUALS} {result}"
        return f"{a}{op}{d}={result}"

    parts, total = [], problem.meta["start"]
    for op, d in problem.meta["steps"]:
        correct = total + d if op == "+" else total - d
        written = correct
        if _needs_carry(total, op, d) and rng.random() < style.carry_slip:
            written = correct - 10 if op == "+" else correct + 10
        elif rng.random() < style.slip:
            written = correct + rng.choice((-1, 1))
        parts.append(step(total, op, d, written))
        if written != correct and rng.random() < style.recheck:
            parts.append(f"{RU_WAIT if russian else 'wait'}, {step(total, op, d, correct)}")
            written = correct
        total = written
    reasoning = ", ".join(parts)
    if rng.random() < style.no_tags:
        return f"<think> {reasoning} </think> The answer is {total}."
    return f"<think> {reasoning} </think> <answer> {total} </answer>"


def correct_solution(problem: Problem) -> str:
    """The clean worked solution (no slips, English): a reference and a test oracle."""
    return worked_solution(problem, random.Random(0), CorpusStyle(0, 0, 0, 0, 0))


_TOTAL_RE = re.compile(r"(-?\d+)\s*$")


def readable_reasoning(reasoning: str, answer: str | None = None) -> str:
    """The cold-start rewrite of a worked solution into a readable English pattern (R1-SPEC §5:
    R1's cold-start data uses "a readable pattern"): the steps as written, then the result in
    words, `so the total is 46`, so the reasoning has words whose language can be measured and
    rewarded (symbols alone have none). The steps themselves are left alone: the tiny model reads
    each next operand off the prompt by the steps' layout, and words between the steps broke that
    (pipeline runs that wrote `47+8 is 55` or `then 55-9=46` fell from 0.90 to 0.04 and 0.10
    pass@1 at Dev1, their steps right but their operands misread). Reasoning that does not end in
    a number (or is already rewritten), or whose last number is not the `answer` given (the total
    would contradict it), is returned as it is.

    >>> readable_reasoning("47+8=45, wait, 47+8=55, 55-9=46")
    '47+8=45, wait, 47+8=55, 55-9=46, so the total is 46'
    >>> readable_reasoning("47 плюс 8 равно 55")
    '47 плюс 8 равно 55, so the total is 55'
    >>> readable_reasoning("47+8=55, so the total is 55")
    '47+8=55, so the total is 55'
    >>> readable_reasoning("4+2=6", answer="7")  # the sample answered 7: no false "total is 6"
    '4+2=6'
    """
    m = _TOTAL_RE.search(reasoning)
    if not m or reasoning.rstrip().endswith(f"the total is {m.group(1)}"):
        return reasoning
    if answer is not None and m.group(1) != answer.strip():
        return reasoning
    return f"{reasoning.rstrip()}, so the total is {m.group(1)}"
