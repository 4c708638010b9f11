"""Filters for rejection sampling and cold-start data, and the cold-start rewrite [R1-SPEC.md §5].

R1 builds two SFT sets from its own samples:
- cold start: R1-Zero samples at T = 1.0, kept "only correct and readable", readability judged by
  "repetition detection and a language-mixing filter", then rewritten into a readable pattern,
  reasoning then summary [R1-SPEC.md §5, R1v2 B.3.2];
- rejection sampling: several samples per prompt from the RL checkpoint, "retain only the correct
  ones", and filter out "chain-of-thought with mixed languages, long paragraphs, and code blocks"
  [R1-SPEC.md §5, R1v1 §2.3.3].

Each filter here is a pure function `(Candidate) -> (kept, reason)`; `reason` says why a candidate
was rejected ("" when kept). `FilterChain` applies named filters in order; a rejected candidate is
counted once, under the first filter it fails.

Choices the papers leave open:
- `correct` and `well_formed` are the `accuracy` and `format` rewards equal to 1 (a reference that
  does not parse rejects); for a problem with tests, `correct` is the `code` reward equal to 1:
  the program passes every test in the sandbox. Readability has no rule in the paper; the rules
  here are `single_language` (the reasoning's target-language share, `r1kit.language`, at least
  1 - a tolerance; reasoning without words passes, nothing in it is mixed), `no_repetition`, and
  `short_paragraphs` (blank-line separated, at most N characters each).
- `think_format` keeps reasoning closed by `</think>` and followed by a final answer
  (`<answer>` or `\\boxed{}`): the format of R1's released models and distilled students, whose
  answers have no `<answer>` tags; `any_format` and `well_formed` reject all of those.
- `no_repetition` counts n-grams of whitespace-separated tokens of the whole completion,
  lower-cased, punctuation stripped at their ends; numbers and expressions count, so a loop
  `55-9=46, 55-9=46, …` is caught even without words. The defaults (no 4-gram more than 3 times)
  suit the short traces of the built-in task; long CoT repeats phrases legitimately ("let me
  check the" 7 times in 3,000 tokens), so raise both for it (recipes/distill: no 12-gram more than
  10 times, which a loop still exceeds and ordinary reasoning does not reach).
- the cold-start rewrite is deterministic, with no LLM to refine it (R1 used DeepSeek-V3 and
  humans): the reasoning is kept as written, or put in the task's readable form when the task has
  one (`READABLE`; the built-in arithmetic adds `so the total is 46` to its steps, so the reasoning
  has words whose language can be measured and rewarded), and a one-line summary carries the
  answer,
  `<think> reasoning </think> The answer is <answer> 46 </answer>`. It ends at `</answer>` so the
  default stop string still ends generation, the `accuracy` reward reads it, and the
  `summary_format` reward checks it (the R1-Zero `format` reward rejects text between `</think>`
  and `<answer>`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from r1kit.errors import UserError
from r1kit.language import (
    check_targets,
    checked_problem_language,
    language_consistency,
    reasoning_part,
    script_labels,
)
from r1kit.rewards import code as code_reward
from r1kit.rewards import get_reward
from r1kit.rewards.extract import extract_answer
from r1kit.tasks.arithmetic import readable_reasoning
from r1kit.tasks.base import Problem

Verdict = tuple[bool, str]  # (kept, why it was rejected; "" when kept)


@dataclass
class Candidate:
    """One sampled completion and what the filters may need to know about it.

    `scores` may hold precomputed reward values by name (the sample stage fills them from
    `scoring.score`, which bounds each reward call in time); filters compute what is missing.
    """

    text: str
    problem: Problem
    num_tokens: int = 0
    truncated: bool = False
    scores: dict[str, float | None] = field(default_factory=dict)


def _reward(c: Candidate, name: str) -> float | None:
    return c.scores[name] if name in c.scores else get_reward(name)(c.text, c.problem)


def not_truncated(c: Candidate) -> Verdict:
    """Rejects a completion that hit the token budget before it ended."""
    return (False, f"truncated at {c.num_tokens} tokens") if c.truncated else (True, "")


def correct(c: Candidate) -> Verdict:
    """Keeps a completion whose `accuracy` reward is 1; for a problem with tests (code), whose
    program passed: every test, and it finished (the `code` reward's reason, as `r1kit eval`
    counts; a program killed after its last test scores under 1 and is dropped).

    >>> correct(Candidate("<think>6*7</think> <answer>42</answer>", Problem("p", "6*7?", "42")))
    (True, '')
    """
    if code_reward.has_tests(c.problem):
        value = _reward(c, "code")
        if value == 1.0 and getattr(value, "reason", "passed") == "passed":
            return True, ""
        return False, f"tests fail ({getattr(value, 'reason', 'no verdict')})"
    value = _reward(c, "accuracy")
    if value is None:
        return False, f"reference answer {c.problem.answer!r} does not parse"
    return (True, "") if value == 1.0 else (False, "wrong or missing answer")


def well_formed(c: Candidate) -> Verdict:
    """Keeps a completion whose R1-Zero `format` reward is 1."""
    if _reward(c, "format") == 1.0:
        return True, ""
    return False, "not <think>…</think> <answer>…</answer>"


def any_format(c: Candidate) -> Verdict:
    """Keeps a completion in the R1-Zero format or the cold-start summary format (a teacher may
    write either: R1-Zero the first, a pipeline's R1 the second); distillation's default."""
    if _reward(c, "format") == 1.0 or _reward(c, "summary_format") == 1.0:
        return True, ""
    return False, "neither <think>…</think> <answer>…</answer> nor the summary format"


def think_format(c: Candidate) -> Verdict:
    r"""Keeps reasoning closed by `</think>` and followed by a final answer, the format of R1's
    released models and its distilled students (`<think> … </think>` then a summary ending in
    `\boxed{}`, no `<answer>` tags): the `think_format` reward is 1 (`<think>` opened, by the
    completion or a prefilling prompt, and closed, once each) and the text after `</think>` gives
    an answer (`<answer>…</answer>` or `\boxed{}`; for a problem with tests, any text). It also
    keeps R1-Zero's format and the summary format; unclosed reasoning fails it.

    >>> p = Problem("p", "Compute 6*7", "42", {"prefilled_think": True})
    >>> think_format(Candidate("6*7=42\n</think>\n\nSo the product is $\\boxed{42}$.", p))
    (True, '')
    >>> think_format(Candidate("6*7=42, so \\boxed{42}", p))
    (False, 'reasoning not closed by </think>, or <think> opened twice')
    >>> think_format(Candidate("6*7=42 </think> I am done.", p))
    (False, 'no final answer after </think>')
    """
    if _reward(c, "think_format") != 1.0:
        return False, "reasoning not closed by </think>, or <think> opened twice"
    after = c.text[c.text.rfind("</think>") + len("</think>"):]
    if not after.strip() or not (code_reward.has_tests(c.problem) or extract_answer(after)):
        return False, "no final answer after </think>"
    return True, ""


def single_language(c: Candidate, tolerance: float = 0.0) -> Verdict:
    """Keeps a completion whose reasoning has at least a 1 - `tolerance` share of words in the
    problem's target language, or no words at all (words as in `r1kit.language`: math and
    single-letter variables are not words; a coding problem's `meta["language"]`, "python", is
    not its target).

    >>> p = Problem("p", "Compute 47+8", "55")
    >>> single_language(Candidate("<think> 47 плюс 8 равно 55 </think>", p))
    (False, "0% of the reasoning's words are in 'en'")
    >>> single_language(Candidate("<think> 47+8=55 </think>", p))
    (True, '')
    """
    target = checked_problem_language(c.problem)
    share = language_consistency(reasoning_part(c.text), target)
    if share is None or share >= 1.0 - tolerance:
        return True, ""
    return False, f"{share:.0%} of the reasoning's words are in {target!r}"


def check_filter_targets(problems, names, key: str = "sample.filters", context: str = "") -> None:
    """Every `target_language` of `problems` is one `single_language` (when among `names`) can
    label words with: the script labeler's en, ru, zh, ko, ja; else a `UserError` (`check_targets`)."""
    if "single_language" in names:
        check_targets(problems, script_labels.languages, "the single_language filter",
                      f"remove single_language from {key} (it labels words by their script "
                      "only), or remove the target_language of such problems", context)


_STRIP = ".,;:!?()[]{}\"'`"


def repeated_ngram(text: str, n: int = 4) -> tuple[tuple[str, ...], int]:
    """The most repeated n-gram of whitespace-separated tokens and its count (see the module).

    >>> repeated_ngram("55-9=46, 55-9=46, 55-9=46, 55-9=46, 55-9=46", n=2)
    (('55-9=46', '55-9=46'), 4)
    >>> repeated_ngram("too short", n=4)
    ((), 0)
    """
    tokens = [t for t in (t.strip(_STRIP) for t in text.lower().split()) if t]
    grams = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    if not grams:
        return (), 0
    gram = max(grams, key=grams.__getitem__)
    return gram, grams[gram]


def no_repetition(c: Candidate, n: int = 4, max_repeats: int = 3) -> Verdict:
    """Rejects a completion in which some n-gram occurs more than `max_repeats` times.

    >>> p = Problem("p", "?", "1")
    >>> no_repetition(Candidate("so " * 5 + "done", p), n=1, max_repeats=3)
    (False, "'so' occurs 5 times")
    """
    gram, count = repeated_ngram(c.text, n)
    if count > max_repeats:
        return False, f"{' '.join(gram)!r} occurs {count} times"
    return True, ""


def short_paragraphs(c: Candidate, max_chars: int = 1000) -> Verdict:
    """Rejects reasoning with a paragraph (text between blank lines) over `max_chars` characters."""
    longest = max(len(p.strip()) for p in re.split(r"\n\s*\n", reasoning_part(c.text)))
    if longest > max_chars:
        return False, f"a paragraph of {longest} characters"
    return True, ""


def no_code_blocks(c: Candidate) -> Verdict:
    """Rejects reasoning that contains a fenced code block (R1 filtered those out of its CoT)."""
    if "```" in reasoning_part(c.text):
        return False, "a code block in the reasoning"
    return True, ""


FILTER_NAMES = ("not_truncated", "correct", "well_formed", "any_format", "think_format",
                "single_language", "no_repetition", "short_paragraphs", "no_code_blocks")


def build_filters(
    names: list[str], *, language_tolerance: float = 0.0, repeat_ngram: int = 4,
    max_repeats: int = 3, max_paragraph_chars: int = 1000,
) -> FilterChain:
    """A `FilterChain` of the named filters, in the given order, with their settings."""
    known: dict[str, Callable[[Candidate], Verdict]] = {
        "not_truncated": not_truncated,
        "correct": correct,
        "well_formed": well_formed,
        "any_format": any_format,
        "think_format": think_format,
        "single_language": partial(single_language, tolerance=language_tolerance),
        "no_repetition": partial(no_repetition, n=repeat_ngram, max_repeats=max_repeats),
        "short_paragraphs": partial(short_paragraphs, max_chars=max_paragraph_chars),
        "no_code_blocks": no_code_blocks,
    }
    for name in names:
        if name not in known:
            raise UserError(f"unknown filter {name!r}; known filters: {', '.join(FILTER_NAMES)}")
        if names.count(name) > 1:
            raise UserError(f"filter {name!r} is listed twice")
    return FilterChain([(name, known[name]) for name in names])


@dataclass
class FilterChain:
    """Named filters applied in order; a candidate is rejected by the first one it fails."""

    filters: list[tuple[str, Callable[[Candidate], Verdict]]]

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.filters]

    def first_failure(self, c: Candidate) -> tuple[str, str] | None:
        """(filter name, reason) of the first filter that rejects `c`; None if all keep it."""
        for name, fn in self.filters:
            kept, reason = fn(c)
            if not kept:
                return name, reason
        return None

    def apply(self, candidates: list[Candidate]) -> tuple[list[Candidate], dict[str, int]]:
        """(kept candidates in order, rejections per filter in chain order).

        >>> p = Problem("p", "Compute 1+1", "2")
        >>> chain = build_filters(["not_truncated", "correct"])
        >>> kept, rejected = chain.apply([
        ...     Candidate("<think> 1+1=2 </think> <answer> 2 </answer>", p),
        ...     Candidate("<think> 1+1=3 </think> <answer> 3 </answer>", p),
        ...     Candidate("<think> 1+1=", p, truncated=True)])
        >>> len(kept), rejected
        (1, {'not_truncated': 1, 'correct': 1})
        """
        rejected = dict.fromkeys(self.names, 0)
        kept = []
        for c in candidates:
            failure = self.first_failure(c)
            if failure is None:
                kept.append(c)
            else:
                rejected[failure[0]] += 1
        return kept, rejected


READABLE: dict[str, Callable[..., str]] = {"arithmetic": readable_reasoning}  # (reasoning, answer)
"""Readable rewrites of the reasoning, by `Problem.meta["task"]` (the cold start's "readable
pattern", R1-SPEC §5); tasks without one keep their reasoning as written."""


def to_cold_start(completion: str, answer: str, task: str | None = None) -> str:
    """Rewrite a kept completion into the readable cold-start format: its reasoning (in the
    readable form of `task`, when `READABLE` has one), then a one-line summary with the answer.
    The rewrite is the model's whole turn, `<think>` opened even when the sampling prompt had
    prefilled it: SFT drops that tag where its own template prefills one (`sft.after_prompt`).

    >>> to_cold_start("<think>47+8=55, 55-9=46</think>\\n<answer>46</answer>", "46")
    '<think> 47+8=55, 55-9=46 </think> The answer is <answer> 46 </answer>'
    >>> to_cold_start("<think>47+8=55, 55-9=46</think> <answer>46</answer>", "46", "arithmetic")
    '<think> 47+8=55, 55-9=46, so the total is 46 </think> The answer is <answer> 46 </answer>'
    """
    reasoning = reasoning_part(completion).strip()
    if task in READABLE:
        reasoning = READABLE[task](reasoning, answer)
    return f"<think> {reasoning} </think> The answer is <answer> {answer.strip()} </answer>"
