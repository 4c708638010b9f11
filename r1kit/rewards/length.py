r"""DAPO's soft overlong punishment [R1-SPEC.md §1.4], added to the correctness reward:

    R_length(y) = 0                              if |y| <= L_max - L_cache
                = ((L_max - L_cache) - |y|) / L_cache   if L_max - L_cache < |y| <= L_max
                = -1                             if |y| > L_max

`|y|` is the completion's length in tokens and `L_max` the generation budget (`max_tokens`).
The penalty falls linearly from 0 to -1 over the last `L_cache` tokens of the budget. DAPO used
L_max = 20,480 and L_cache = 4,096 (a fifth); the default here is a quarter of `max_tokens`.

Length-aware rewards set `needs_length = True` and are called as
`fn(completion, problem, num_tokens=..., max_tokens=...)` (see `r1kit.rewards`).
"""

from __future__ import annotations

from collections.abc import Callable

from r1kit.rewards import register
from r1kit.tasks.base import Problem

DEFAULT_CACHE_FRACTION = 4
"""Without an explicit cache, L_cache = max_tokens // DEFAULT_CACHE_FRACTION."""


def overlong_penalty(num_tokens: int, max_tokens: int, cache_tokens: int) -> float:
    """The DAPO formula above.

    >>> [overlong_penalty(n, 100, 20) for n in (80, 90, 100, 101)]
    [0.0, -0.5, -1.0, -1.0]
    """
    if not 0 < cache_tokens <= max_tokens:
        raise ValueError(f"overlong cache must be in 1..{max_tokens} tokens, got {cache_tokens}")
    free = max_tokens - cache_tokens
    if num_tokens <= free:
        return 0.0
    if num_tokens <= max_tokens:
        return (free - num_tokens) / cache_tokens
    return -1.0


def make_overlong(cache_tokens: int | None = None) -> Callable[..., float]:
    """An overlong reward with L_cache = `cache_tokens` (None: max_tokens // 4).

    `problem.meta["overlong_cache"]`, when present, overrides it for that problem.

    >>> reward = make_overlong(cache_tokens=10)
    >>> reward("...", Problem("p", "?", "1"), num_tokens=95, max_tokens=100)
    -0.5
    """
    if cache_tokens is not None and cache_tokens <= 0:
        raise ValueError(f"cache_tokens must be positive, got {cache_tokens}")

    def overlong(completion: str, problem: Problem, *, num_tokens: int, max_tokens: int) -> float:
        cache = problem.meta.get("overlong_cache", cache_tokens)
        if cache is None:
            cache = max(1, max_tokens // DEFAULT_CACHE_FRACTION)
        return overlong_penalty(num_tokens, max_tokens, int(cache))

    overlong.needs_length = True  # type: ignore[attr-defined]
    return overlong


overlong = register("overlong")(make_overlong())
overlong.__doc__ = """DAPO soft overlong punishment with L_cache = max_tokens // 4 (see the module).

>>> overlong("...", Problem("p", "?", "1"), num_tokens=900, max_tokens=1000)
-0.6
"""
