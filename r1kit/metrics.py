r"""Evaluation statistics: pass@k, majority vote (cons@k), bootstrap intervals and the reflection
rate [R1-SPEC.md §4.4, §6] (language consistency and mixing: `r1kit.language`).

R1 reports pass@1 as the mean correctness over k samples per question (T = 0.6, top-p 0.95) and
cons@64 as the majority vote over 64 samples [R1-SPEC.md §4.4]. For pass@k with k > 1 we use the
unbiased estimator of the Codex paper (Chen et al. 2021), which at k = 1 is that same mean c/n.
"""

from __future__ import annotations

import re
from collections import Counter
from statistics import NormalDist

import numpy as np

REFLECTION_WORDS = (
    "wait",
    "mistake",
    "however",
    "but",
    "retry",
    "error",
    "verify",
    "wrong",
    "evaluate",
    "check",
    "подожди",
)
"""The reflective words whose frequency R1 tracks [R1-SPEC.md §6], plus Russian "wait"."""

_REFLECTION_RE = re.compile(r"\b(?:" + "|".join(REFLECTION_WORDS) + r")\b", re.IGNORECASE)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n, of which c
    are correct, is correct: 1 - C(n-c, k) / C(n, k), computed as a product to stay stable.

    >>> pass_at_k(n=4, c=1, k=1)
    0.25
    >>> round(pass_at_k(n=4, c=1, k=2), 4)
    0.5
    >>> pass_at_k(n=4, c=3, k=2)
    1.0
    """
    if not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in (n, c, k)):
        raise ValueError(f"pass_at_k needs whole numbers, got n={n!r}, c={c!r}, k={k!r}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def majority_vote(keys: list) -> object:
    """The most common key, ignoring None; ties go to the one seen first. cons@k votes with it
    over answers already keyed so that equal ones coincide (r1kit/evaluation.py).

    >>> majority_vote(["3", None, "4", "4", "3", None, None])
    '3'
    >>> majority_vote([None, None]) is None
    True
    """
    counts = Counter(k for k in keys if k is not None)  # first-occurrence order among ties
    return max(counts, key=counts.__getitem__) if counts else None


def bootstrap_ci(
    per_problem_values: list[float], n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of the mean, resampling problems with
    replacement. Deterministic for a given seed. Where every problem scored 0, or every one 1,
    resampling has nothing to vary: the Wilson score interval of that proportion is given
    instead (n problems all right do not make the rate certainly 1). With few problems (under
    about 30) the bootstrap interval is too narrow.

    >>> [round(x, 3) for x in bootstrap_ci([1.0] * 10)]
    [0.722, 1.0]
    """
    values = np.asarray(per_problem_values, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("bootstrap_ci needs a non-empty list of per-problem values")
    if n_boot < 1 or not 0 < alpha < 1:
        raise ValueError(f"bootstrap_ci needs n_boot >= 1 and 0 < alpha < 1, got {n_boot}, {alpha}")
    if (values == 0).all() or (values == 1).all():
        z2, n = NormalDist().inv_cdf(1 - alpha / 2) ** 2, values.size
        bound = z2 / (n + z2)  # Wilson at p = 0 (mirrored at p = 1)
        return (0.0, bound) if values[0] == 0 else (1.0 - bound, 1.0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.size, size=(n_boot, values.size))
    means = values[idx].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def reflection_rate(texts: list[str]) -> float:
    """Share of texts with at least one reflective word (whole word, any case); 0.0 for none.

    >>> reflection_rate(["Wait, 7+5=12.", "7+5=12.", "but then", "no waiting, no checking"])
    0.5
    """
    if not texts:
        return 0.0
    return sum(1 for t in texts if _REFLECTION_RE.search(t)) / len(texts)
