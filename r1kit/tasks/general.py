"""Non-reasoning SFT data: queries answered directly, without a `<think>` block (R1-SPEC §3.2).

R1's SFT before its last RL stage mixes ~600k reasoning samples with ~200k non-reasoning ones
(writing, factual QA, translation); "for simpler queries, such as 'hello', we do not provide a CoT
in response". A user brings such data as a JSONL file of `{"prompt", "completion"}` objects. The
built-in default is what fits a tiny arithmetic model: greetings and one-step questions about
numbers (which is larger, what comes next, repeat this), each answered in one short sentence.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from r1kit.errors import UserError
from r1kit.sft import load_sft_jsonl
from r1kit.tasks.base import draw_distinct

log = logging.getLogger("r1kit")

GREETINGS = ("hello", "hi", "hey", "good morning", "good evening", "thanks", "thank you")


def builtin_general(n: int, seed: int) -> list[dict]:
    """`n` distinct non-reasoning (prompt, completion) records, deterministic for `seed`.

    >>> rows = builtin_general(3, seed=0)
    >>> len(rows), all("<think>" not in r["completion"] for r in rows)
    (3, True)
    """
    rng = random.Random(f"general-{seed}")
    pairs = draw_distinct(n, lambda: _query(rng), lambda pair: pair[0], 100 * n + 1000,
                          "built-in general queries")
    return [{"prompt": prompt, "completion": completion, "id": f"general-{i}", "kind": "general"}
            for i, (prompt, completion) in enumerate(pairs)]


def _query(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(4)
    a, b = rng.sample(range(10, 100), 2)
    if kind == 0:
        greeting = rng.choice(GREETINGS)
        reply = "You are welcome." if greeting.startswith("thank") else "Hello! Ask me to compute."
        return greeting.capitalize(), reply
    if kind == 1:
        return f"Which is larger, {a} or {b}", f"{max(a, b)} is larger."
    if kind == 2:
        return f"What number comes after {a}", f"{a + 1} comes after {a}."
    return f"Repeat {a}", f"{a}"


def load_general(source: str, n: int, seed: int) -> list[dict]:
    """The non-reasoning records of `sample.general_data`: "builtin" (n generated queries) or a
    JSONL file of {prompt, completion} (its first n records; all of them when n is 0)."""
    if source == "builtin":
        if n < 1:
            raise UserError("sample.general_samples must be at least 1 with general_data=builtin")
        return builtin_general(n, seed)
    path = Path(source)
    examples = load_sft_jsonl(path)  # UserError naming the file and line on bad records
    if n > len(examples):
        log.warning(f"sample.general_samples={n}, but {path} holds {len(examples)} records: all of "
                    "them are used")
    if n:
        examples = examples[:n]
    return [{"prompt": e.prompt, "completion": e.completion, "id": f"{path.stem}-{i}",
             "kind": "general"} for i, e in enumerate(examples)]
