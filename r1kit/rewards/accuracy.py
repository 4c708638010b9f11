r"""The accuracy reward: 1 if the final answer matches the reference, else 0 [R1-SPEC.md §2.2].

The paper grades math by parsing the final answer and comparing with SymPy; we use `math_verify`
(the open-r1 choice), which does exactly that and knows the equivalences that matter (`0.5`,
`1/2`, `\frac{1}{2}`; `x=3` vs `3`; sets in any order; `2^{10}` vs `1024`).

Departures and details:
- The answer is what `extract_answer` finds (last `<answer>` block, else last `\boxed{}`); a
  completion with neither scores 0. open-r1 parses the whole completion instead, which rewards a
  right number anywhere in the text.
- A reference that `math_verify` cannot turn into a SymPy object gives `None` (not scorable,
  skipped in means), as in open-r1.
- Plain integers on both sides are compared exactly without SymPy: the built-in task's answers
  are integers and this reward runs on every completion of every RL step.
- A bare answer is wrapped in `$…$` before parsing unless it reads as prose (a run of 3+ letters
  outside LaTeX commands), because `math_verify` parses bare LaTeX badly (`2\sqrt{3}` → 2,
  `2^{10}` → 2) and `$…$` well; prose is parsed as is, so `math_verify` picks the math out of it.
- Normalised first, on both sides: escaped dollars (`\$18.50`, money in MATH and GSM8K) are
  dropped, as `math_verify` reads `\$` as a math delimiter and parses nothing; digits grouped in
  threes by `\,` or thin spaces are joined wherever they stand (`$1\,000$`), and by plain spaces
  when they are the whole answer (`1 000`; `100 200` inside a list stays two numbers), as
  `math_verify` would read them as a product (`1*000 = 0`).
- A reference written as words (`Paris`, `yes`, `no`) is compared as words, case and spaces
  aside: `math_verify` reads `$Paris$` as the product `a*i*p*r*s`, so any anagram scored 1 and
  `Yes` differed from `yes` (`Y*e*s` against `E*s*y`). Words it knows as math stay math
  (`infinity` is `oo`), and so does anything in `$…$`: a product of variables written `abc` is
  read as a word, `$abc$` as the product.
- A reference that is one option letter (`B`, `(B)`, `\text{(B)}`) is compared with the option
  letter of the answer: `(B) 5`, `\textbf{(B)}\ 5` (AMC), `The answer is B.`, `Option B`.
- A number in scientific notation (`1e9`, `6.02e23`) is read as `6.02\times10^{23}`.
- An answer more than 1,000 characters long (and four times the reference) scores 0 without
  parsing: `math_verify`'s parser is superlinear (10k characters took 1-2 s, 200k 284 s), and no
  real final answer is that long.
- A reference that cannot be parsed is logged (the first few problems), as its `None` would
  otherwise pass unnoticed: skipped in RL means, wrong in evaluation.
- `math_verify`'s own time limits use `signal.alarm`, which would cancel the limit that
  `scoring.score` sets and fails outside the main thread; they are turned off
  (`parsing_timeout=None`, `timeout_seconds=None`) and `scoring.score` bounds the whole call.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache

from math_verify import parse, verify
from sympy import Basic, Eq, MatrixBase, N, Symbol, srepr

from r1kit.rewards import register
from r1kit.rewards.extract import extract_answer, last_boxed
from r1kit.tasks.base import Problem

# Up to 18 digits: int() refuses very long digit strings, and such answers go through SymPy anyway.
_INT_RE = re.compile(r"[+-]?\d{1,18}")
_LATEX_COMMAND_RE = re.compile(r"\\[A-Za-z]+")
_PROSE_RE = re.compile(r"[A-Za-z]{3,}")
# words that are LaTeX, not prose: environments (`\begin{pmatrix}`) and units (`\text{ meters}`)
_LATEX_WORDS_RE = re.compile(
    r"\\(?:begin|end)\{[^{}]*\}|\\(?:text|textbf|textit|mathrm|mbox|operatorname)\s*\{[^{}]*\}")
# thousands separators: LaTeX `\,` and thin spaces anywhere (they mean nothing else between
# digits); a plain space only when the whole answer is such a number ("100 200" in a list is two)
_THIN_GROUPED_RE = re.compile(r"(?<![\d.])\d{1,3}(?:(?:\\,|[\u2009\u202f])\d{3})+(?!\d)")
_GROUPED_RE = re.compile(r"[+-]?\d{1,3}(?:(?:\\,|\\ |[ \u2009\u202f])\d{3})+(?:\.\d+)?")
_SEPARATOR_RE = re.compile(r"\\,|\\ |[ \u2009\u202f]")
_unparsed: set[str] = set()  # problems whose reference could not be parsed, already logged
log = logging.getLogger("r1kit")


class _DropDisabledTimeoutWarning(logging.Filter):
    """math_verify warns once that its timeout is off; here that is on purpose (see above)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropDisabledTimeoutWarning())


@register("accuracy")
def accuracy(completion: str, problem: Problem) -> float | None:
    r"""1.0 if the extracted answer equals `problem.answer` mathematically, 0.0 if not, None if
    the reference cannot be parsed.

    >>> p = Problem("p1", "What is 1/2 as a decimal?", r"\frac{1}{2}")
    >>> accuracy("<think>half</think><answer>0.5</answer>", p)
    1.0
    >>> accuracy(r"... so the answer is \boxed{1/3}", p)
    0.0
    >>> accuracy("<answer>1</answer>", Problem("p2", "?", r"\frac{1}{")) is None
    True
    """
    if "reasoning_gym" in problem.meta:  # the task's own scorer (r1kit/tasks/reasoning_gym.py)
        from r1kit.tasks import reasoning_gym

        return reasoning_gym.score(extract_answer(completion), problem)
    gold_text = _normalize(problem.answer)
    pred_text = extract_answer(completion)
    if pred_text is not None:
        pred_text = _normalize(last_boxed(pred_text) or pred_text)  # "<answer>\boxed{4}</answer>"
    if pred_text is not None and len(pred_text) > max(_MAX_ANSWER, 4 * len(gold_text)):
        return 0.0  # a loop, not an answer (and minutes of parsing)
    gold_option = _option(gold_text, whole=True)
    if gold_option is not None:
        return 1.0 if pred_text is not None and _option(pred_text) == gold_option else 0.0
    gold_words = _words(gold_text)
    if gold_words is not None:
        return 1.0 if pred_text is not None and _words(pred_text) == gold_words else 0.0
    if _INT_RE.fullmatch(gold_text):
        if pred_text is None:
            return 0.0
        if _INT_RE.fullmatch(pred_text):
            return 1.0 if int(pred_text) == int(gold_text) else 0.0
    gold = _parse(gold_text)
    if not any(isinstance(g, (Basic, MatrixBase)) for g in gold):
        if len(_unparsed) < 5 and problem.id not in _unparsed:
            _unparsed.add(problem.id)
            log.warning(f"problem {problem.id}: math_verify cannot parse its reference answer "
                        f"{problem.answer!r}; the accuracy reward is None for it (left out of RL "
                        "means, wrong in evaluation)")
        return None
    if not pred_text:
        return 0.0
    pred = _parse(pred_text)
    if not pred:
        return 0.0
    return 1.0 if verify(list(gold), list(pred), timeout_seconds=None) else 0.0


def _normalize(text: str) -> str:
    r"""The answer without escaped dollars, and a number grouped in threes joined.

    >>> _normalize(r"\$1\,000.50"), _normalize("12 345"), _normalize("3 5")
    ('1000.50', '12345', '3 5')
    >>> _normalize(r"$(1\,000, 2\,500)$"), _normalize("(100 200, 3)")
    ('$(1000, 2500)$', '(100 200, 3)')
    """
    text = text.replace("\\$", "").strip()
    if _SCIENTIFIC_RE.fullmatch(text):  # 6.02e23: math_verify reads e as Euler's number
        mantissa, _, exponent = text.lower().partition("e")
        return f"{mantissa}\\times10^{{{int(exponent)}}}"
    text = _THIN_GROUPED_RE.sub(lambda m: _SEPARATOR_RE.sub("", m.group()), text)
    return _SEPARATOR_RE.sub("", text) if _GROUPED_RE.fullmatch(text) else text


def answer_key(answer: str) -> tuple:
    r"""A key under which answers that this reward would judge equal mostly coincide: for the
    majority vote of cons@k. Numbers by their value to 12 digits (`0.5`, `1/2`, `\frac{1}{2}`),
    other SymPy objects by their canonical form (`x+1`, `1+x`), words as words, anything else by
    its text without spaces; `x=3` by its value, as this reward reads it.

    >>> answer_key("1/2") == answer_key(r"\frac{1}{2}") == answer_key(" 0.5 ")
    True
    >>> answer_key("Paris") == answer_key("paris") != answer_key("Sirap")
    True
    """
    text = _normalize(last_boxed(answer) or answer)
    if len(text) > _MAX_ANSWER:  # as `accuracy`: not parsed
        return ("text", "".join(text.split()))
    words = _words(text)
    if words is not None:
        return ("words", words)
    expr = next((p for p in _parse(text) if isinstance(p, (Basic, MatrixBase))), None)
    if expr is None:
        return ("text", "".join(text.split()))
    if isinstance(expr, Eq) and isinstance(expr.lhs, Symbol):  # `x=4` is 4, as accuracy reads it
        expr = expr.rhs
    if getattr(expr, "is_number", False) and expr.is_finite:
        return ("number", str(N(expr, 12)))
    return ("expr", srepr(expr))


_MAX_ANSWER = 1000  # characters of an extracted answer worth parsing
_SCIENTIFIC_RE = re.compile(r"[+-]?\d+(?:\.\d+)?[eE][+-]?\d+")
_OPTION_ALONE_RE = re.compile(r"\(?([A-J])\)?[.:]?")
# `(B)` not after a letter (`P(B)`, `f(B)`), or a capital after "answer (is)", "option", "choice"
_OPTION_IN_RE = re.compile(
    r"(?<![A-Za-z])\(([A-J])\)|\b(?i:answer|option|choice)(?:\s+(?i:is))?\s*:?\s*\(?([A-J])\b")


def _option(text: str, whole: bool = False) -> str | None:
    """The option letter `text` gives (`B`, `(B) 5`, `\textbf{(B)}`, `the answer is B`); with
    `whole`, only when that letter is all of it (a reference)."""
    text = _TEXT_WRAP_RE.sub(r"\1", text).replace("$", "").replace("\\ ", " ").strip()
    alone = _OPTION_ALONE_RE.fullmatch(text)
    if alone or whole:
        return alone.group(1) if alone else None
    found = [a or b for a, b in _OPTION_IN_RE.findall(text)]
    return found[-1] if found else None


_WORDS_RE = re.compile(r"[^\W\d_]+(?:[\s'\-]+[^\W\d_]+)*[.!]?")
_TEXT_WRAP_RE = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox)\{([^{}]*)\}")


def _words(text: str) -> str | None:
    """The answer as lowercase words when it is words (`Paris`, `\text{Yes}.`, `no`), else None:
    numbers, formulas, single letters and words `math_verify` knows as math (`infinity`)."""
    text = _TEXT_WRAP_RE.sub(r"\1", text).strip()
    if not _WORDS_RE.fullmatch(text):  # `$abc$` (math) or `1 cm`: not words
        return None
    words = text.rstrip(".!").lower().split()
    if not any(len(w) >= 3 for w in words) and words != ["no"]:
        return None  # `x`, `ab`: variables
    if any(isinstance(p, Basic) and p.is_number for p in _parse(text)):
        return None  # `infinity`
    return " ".join(words)


@lru_cache(maxsize=2048)
def _parse(text: str) -> tuple:
    """`math_verify.parse` of a bare answer (cached: the G answers of a group often repeat)."""
    if "$" in text or "\\boxed" in text or "\\(" in text or "\\[" in text:
        candidates = [text]
    elif _PROSE_RE.search(_LATEX_COMMAND_RE.sub("", _LATEX_WORDS_RE.sub("", text))):
        candidates = [text, f"${text}$"]
    else:
        candidates = [f"${text}$", text]
    fallback: tuple = ()
    for candidate in candidates:
        parsed = tuple(parse(candidate, parsing_timeout=None))
        if any(isinstance(p, (Basic, MatrixBase)) for p in parsed):
            return parsed
        fallback = fallback or parsed  # only strings: math_verify compares those verbatim
    return fallback
