"""The built-in coding task: write a one-line Python function from two of its values.

A problem gives `f(0)` and `f(1)` of a linear function and asks for `f`; its tests are asserts the
generator knows, at the two given points and three hidden ones:

    Write f with f(0)=7, f(1)=45
    tests: assert f(0) == 7, assert f(1) == 45, assert f(2) == 83, assert f(5) == 197, ...

Two families, with a one-digit constant k and a slope a in 2..90: `x*a+k` (a = f(1)-f(0)) and
`x*a-k` (f(0) = -k, a = f(1)+k). Finding the slope is then one step of the arithmetic task (a
two-digit number plus or minus a digit, with its carries and borrows), a skill the code base also
learns from its arithmetic half: the base is often right, and RL sharpens it (FEASIBILITY.md's
lesson; a first version asked for two-digit minus two-digit, which the base never learned, and RL
could not raise it). A worked solution does the step in `<think>` and puts the program in a fenced
block inside `<answer>`: `<think> 45-7=38, so f(x)=x*38+7 </think> <answer> ```python ... ```
</answer>`. The pretraining corpus is sloppy like the arithmetic one (`CodeStyle`): a forgotten
carry or borrow, an off-by-one slip, sometimes caught with `wait, ...`; a `+` for the `*`; a
missing colon (a syntax error); an answer without a code block. RL has those to fix.

Train and held-out problems are disjoint: the same 1-in-10 hash bucket as arithmetic, on the id.
"""

from __future__ import annotations

import random
import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass

from r1kit.tasks.arithmetic import is_heldout
from r1kit.tasks.base import Problem

TEST_POINTS = (0, 1, 2, 5, 10)  # the first two are given in the prompt

# A fence of 3+ backticks or tildes, its info string, its code up to the same fence again.
_FENCE_RE = re.compile(r"(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)\n(?P<code>.*?)(?P=fence)",
                       re.DOTALL)
_PYTHON_TAGS = ("python", "py", "python3", "py3")
_ANSWER_RE = re.compile(r"<answer>((?:(?!<answer>).)*?)</answer>", re.DOTALL)


@dataclass(frozen=True)
class CodeStyle:
    """How sloppy the worked programs of the pretraining corpus are."""

    carry_slip: float = 0.7
    slip: float = 0.05
    recheck: float = 0.2
    wrong_op: float = 0.12
    syntax_slip: float = 0.05
    no_fence: float = 0.05


def all_problems() -> list[Problem]:
    """Every problem of the task, in a fixed order."""
    out = []
    for a in range(2, 91):
        for k in range(1, 10):
            if a + k <= 99:
                out.append(_problem("plus", a, k))
            if a - k >= 1:
                out.append(_problem("minus", a, k))
    return out


def _problem(family: str, a: int, k: int) -> Problem:
    fn = (lambda x: x * a + k) if family == "plus" else (lambda x: x * a - k)
    values = {x: fn(x) for x in TEST_POINTS}
    pid = f"code-{family}-{a}-{k}"
    return Problem(
        id=pid,
        prompt=f"Write f with f(0)={values[0]}, f(1)={values[1]}",
        answer=reference_program({"family": family, "a": a, "k": k}),
        meta={"tests": [f"assert f({x}) == {values[x]}" for x in TEST_POINTS],
              # "language" is the programming language; the reasoning's is the prompt's (English)
              "entry_point": "f", "language": "python", "task": "code",
              "family": family, "a": a, "k": k},
    )


def sample_problems(n: int, split: str, seed: int) -> list[Problem]:
    """Up to `n` distinct problems of one split ("train" or "heldout"), in a seeded order."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    pool = [p for p in all_problems() if is_heldout(p.id) == (split == "heldout")]
    random.Random(f"code-{split}-{seed}").shuffle(pool)
    return pool[:n]


def reference_program(meta: dict) -> str:
    a, k = meta["a"], meta["k"]
    return f"def f(x): return x*{a}{'+' if meta['family'] == 'plus' else '-'}{k}"


def _slipped(x: int, y: int, op: str, rng: random.Random, style: CodeStyle) -> int:
    """x op y as a sloppy student writes it: a forgotten carry/borrow, or off by one."""
    right = x - y if op == "-" else x + y
    carry = (x % 10 < y % 10) if op == "-" else (x % 10 + y % 10 >= 10)
    if carry and rng.random() < style.carry_slip:
        return right + 10 if op == "-" else right - 10
    if rng.random() < style.slip:
        return right + rng.choice((-1, 1))
    return right


def worked_solution(problem: Problem, rng: random.Random, style: CodeStyle) -> str:
    """A completion for `problem` written with the slips of `style`."""
    m = problem.meta
    plus, k = m["family"] == "plus", m["k"]
    f1 = m["a"] + k if plus else m["a"] - k
    parts = []

    def step(x: int, op: str, y: int) -> int:
        right = x - y if op == "-" else x + y
        got = _slipped(x, y, op, rng, style)
        parts.append(f"{x}{op}{y}={got}")
        if got != right and rng.random() < style.recheck:
            parts.append(f"wait, {x}{op}{y}={right}")
            got = right
        return got

    a = step(f1, "-", k) if plus else step(f1, "+", k)
    op = "+" if rng.random() < style.wrong_op else "*"
    body = f"x{op}{a}{'+' if plus else '-'}{k}"
    colon = "" if rng.random() < style.syntax_slip else ":"
    program = f"def f(x){colon} return {body}"
    answer = program if rng.random() < style.no_fence else f"```python\n{program}\n```"
    return f"<think> {', '.join(parts)}, so f(x)={body} </think> <answer> {answer} </answer>"


def correct_solution(problem: Problem) -> str:
    """The clean worked solution: a reference and a test oracle."""
    return worked_solution(problem, random.Random(0), CodeStyle(0, 0, 0, 0, 0, 0))


def extract_program(completion: str) -> str | None:
    """The last fenced code block inside the last `<answer>` block; without answer tags, the last
    fenced block of the completion; None if there is none (an unclosed fence does not count).
    Empty blocks do not count, and blocks tagged python (py, python3, py3) come first: a
    program's sample output, in an untagged block after it, is not the program (a corrected
    program in an untagged block after a tagged draft loses to the draft: models tag code).
    Fences are ``` or ~~~; the language is the first word of the info string (```python
    title=sol.py); a block indented as a whole (a fence inside a list item) is dedented.

    >>> extract_program("<think> x </think> <answer> ```python\\ndef f(x): return x\\n``` </answer>")
    'def f(x): return x'
    >>> extract_program("<answer> def f(x): return x </answer>") is None
    True
    """
    answers = _ANSWER_RE.findall(completion)
    blocks = [(lang, textwrap.dedent(code).strip("\r\n"))
              for lang, code in _fenced_blocks(answers[-1] if answers else completion)
              if code.strip()]
    python = [code for lang, code in blocks if lang.lower() in _PYTHON_TAGS]
    return (python or [code for _, code in blocks] or [None])[-1]


def _fenced_blocks(text: str) -> Iterator[tuple[str, str]]:
    """(language, code) of each fenced block. A fence opens mid-line (`<answer> ```python`) only
    with one word after it: prose that mentions ``` with more words is no block."""
    pos = 0
    while match := _FENCE_RE.search(text, pos):
        info = match["info"].split()
        line_start = text.rfind("\n", 0, match.start()) + 1
        if len(info) > 1 and text[line_start:match.start()].strip():
            pos = match.start() + len(match["fence"])
            continue
        yield (info[0] if info else ""), match["code"]
        pos = match.end()
