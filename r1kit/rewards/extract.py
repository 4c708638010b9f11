"""Find the final answer in a completion: the last `<answer>` block, else the last `\\boxed{}`.

R1-Zero puts the answer in `<answer>…</answer>` [R1-SPEC.md §2.1]; R1 and its distilled students
put it in `\\boxed{…}` [R1-SPEC.md §2.2, §4.4]. Both are accepted, `<answer>` first. The *last*
one wins, because models restate or correct earlier attempts ("wait, …").
"""

from __future__ import annotations

import re

# An <answer> block that does not contain another <answer>: "<answer>a <answer>b</answer>" is "b".
_ANSWER_RE = re.compile(r"<answer>((?:(?!<answer>).)*?)</answer>", re.DOTALL)
_BOXED_RE = re.compile(r"\\boxed\s*\{")


def extract_answer(completion: str) -> str | None:
    """The stripped content of the last `<answer>` block, else of the last `\\boxed{}`, else None;
    looked for after the last `</think>` first, so that tags the reasoning mentions ("the answer
    goes in <answer> </answer> tags") do not outrank the answer given after it.

    >>> extract_answer("<answer>1</answer> wait, no: <answer> 2 </answer>")
    '2'
    >>> extract_answer(r"so $\\boxed{\\frac{1}{2}}$.")
    '\\\\frac{1}{2}'
    >>> extract_answer(r"<think>use <answer> </answer> tags</think> so \\boxed{42}")
    '42'
    >>> extract_answer("no answer here") is None
    True
    """
    end = completion.rfind("</think>")
    if end >= 0:
        found = _last_answer(completion[end:])
        if found is not None:
            return found
    return _last_answer(completion)


def _last_answer(text: str) -> str | None:
    blocks = _ANSWER_RE.findall(text)
    if blocks:
        return blocks[-1].strip()
    return last_boxed(text)


def last_boxed(text: str) -> str | None:
    """The stripped content of the last complete `\\boxed{…}` (braces balanced), else None.

    A `\\boxed{` left open (a truncated completion) is skipped in favour of an earlier complete one.

    >>> last_boxed(r"\\boxed{1} then \\boxed{\\{1, 2\\}}")
    '\\\\{1, 2\\\\}'
    >>> last_boxed(r"\\boxed{x^{2}") is None
    True
    """
    matches = list(_BOXED_RE.finditer(text))
    if not matches:
        return None
    closing = _closing_braces(text, matches[0].end())
    for match in reversed(matches):
        end = closing.get(match.end())
        if end is not None:
            return text[match.end() : end].strip()
    return None


def _closing_braces(text: str, start: int) -> dict[int, int]:
    """For each `{` from `start - 1` on: the position after it -> the position of its closing
    brace (unclosed ones are missing). One pass, so a text of many unclosed `\\boxed{` (a model
    stuck in a loop) costs linear time. Escaped braces `\\{` `\\}` (LaTeX set braces) are
    content, not grouping."""
    opened: list[int] = []
    closing: dict[int, int] = {}
    i = start - 1
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            opened.append(i + 1)
        elif ch == "}" and opened:
            closing[opened.pop()] = i
        i += 1
    return closing
