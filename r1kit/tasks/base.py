"""The record every task source produces."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


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


def draw_distinct(n: int, draw: Callable[[], T | None], key: Callable[[T], Hashable],
                  limit: int, what: str) -> list[T]:
    """`n` items with distinct keys from at most `limit` calls of `draw` (None = rejected),
    first drawn first kept; a ValueError naming `what` if fewer turn up."""
    items: dict[Hashable, T] = {}
    for _ in range(limit):
        if len(items) >= n:
            break
        item = draw()
        if item is not None:
            items.setdefault(key(item), item)
    if len(items) < n:
        raise ValueError(f"could not draw {n} distinct {what}; ask for fewer")
    return list(items.values())
