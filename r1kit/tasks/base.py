"""The record every task source produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One verifiable problem.

    `prompt` is the bare question (the stage wraps it in a template); `answer` is the reference
    final answer as a string (a number, a LaTeX expression, ...); `meta` carries whatever else the
    source had (e.g. test cases, the language), and rewards may read it.
    """

    id: str
    prompt: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)
