"""Held-out evaluation as in R1-SPEC.md §4.4: k samples per problem at T=0.6, top-p 0.95.

pass@1 is the mean accuracy over the k samples of each problem, averaged over problems; pass@k
uses the unbiased estimator; cons@k is the majority vote over the extracted answers. Each comes
with a 95% bootstrap confidence interval over problems. A problem with tests (code) is solved
when its program passes every test in the sandbox (r1kit/rewards/code.py), and cons@k votes over
the programs.

The vote counts equal answers together, and its verdict is that of the answers that won it, so
cons@k never exceeds pass@k: every right answer equals the reference and so each other (one
class, however spelt: `0.5`, `1/2`); wrong ones are grouped by `accuracy.answer_key` (by value,
canonical form or words); programs that pass every test form one class and failing ones are
grouped by their text, trailing spaces aside. lighteval's maj@k groups normalised strings instead,
which splits `0.5` and `1/2`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from r1kit.config import EvalConfig
from r1kit.metrics import bootstrap_ci, majority_vote, pass_at_k, reflection_rate
from r1kit.rewards import code as code_reward
from r1kit.rewards.accuracy import answer_key
from r1kit.rewards.extract import extract_answer
from r1kit.rewards.scoring import RewardSpec, bounded, score
from r1kit.rollout.hf import as_strings, sample
from r1kit.tasks.base import Problem
from r1kit.tasks.code import extract_program
from r1kit.templates import mark_prefill, render_prompt


@dataclass
class EvalResult:
    pass1: float
    pass1_ci: tuple[float, float]
    pass_k: float
    cons_k: float
    cons_k_ci: tuple[float, float]
    format_rate: float
    mean_tokens: float
    truncated: float
    reflection: float
    k: int
    num_problems: int
    summary_format_rate: float = 0.0  # in R1's cold-start form, `<think>…</think> summary <answer>`
    samples: list[dict] = field(default_factory=list, repr=False)
    completions: list[str] = field(default_factory=list, repr=False)
    """Every completion, k per problem in problem order (row i*k + j: problem i, sample j)."""

    def metrics(self, prefix: str = "eval/") -> dict[str, float]:
        return {
            f"{prefix}pass@1": self.pass1,
            f"{prefix}pass@1_lo": self.pass1_ci[0],
            f"{prefix}pass@1_hi": self.pass1_ci[1],
            f"{prefix}pass@{self.k}": self.pass_k,
            f"{prefix}cons@{self.k}": self.cons_k,
            f"{prefix}cons@{self.k}_lo": self.cons_k_ci[0],
            f"{prefix}cons@{self.k}_hi": self.cons_k_ci[1],
            f"{prefix}format": self.format_rate,
            f"{prefix}summary_format": self.summary_format_rate,
            f"{prefix}tokens": self.mean_tokens,
            f"{prefix}truncated": self.truncated,
            f"{prefix}reflection": self.reflection,
        }


def evaluate(
    model, tokenizer, problems: list[Problem], cfg: EvalConfig, *, template: str = "r1_zero",
    stop: list[str] = ("</answer>",), seed: int = 0, part: tuple[int, int] = (0, 1),
    gather=None,
) -> EvalResult:
    """Sample `cfg.k` completions per problem of `problems` (all of them: `cfg.num_problems` is
    for the callers that choose them) and score them.

    Over several processes, `part=(rank, world)` makes this one sample batches rank, rank +
    world, ... (as many batches as one process makes, rounded up to a multiple of `world` and
    evened out; its generator seeded `seed + 1_000_003 * rank`, so one process is `seed`), and
    `gather` (every rank's list, in rank order, on every rank) brings their per-problem records
    together: every rank returns the whole result.
    """
    if not problems:
        raise ValueError("no problems to evaluate")
    rank, world = part
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(
        seed + 1_000_003 * rank)
    per_batch = max(1, cfg.batch_size // cfg.k)
    if world > 1:  # as many batches as before, rounded up to a multiple of world, evened out
        n_batches = math.ceil(math.ceil(len(problems) / per_batch) / world) * world
        per_batch = math.ceil(len(problems) / n_batches)
    starts = list(range(0, len(problems), per_batch))[rank::world]
    model.eval()
    mine = [rec for start in starts for rec in _score_batch(
        model, tokenizer, problems, start, per_batch, cfg, template, stop, gen)]
    records = sorted((r for rs in (gather(mine) if gather else [mine]) for r in rs),
                     key=lambda r: r["index"])
    if len(records) != len(problems):
        raise RuntimeError(f"evaluation gathered {len(records)} problems of {len(problems)}")
    return _summarize(records, cfg.k)


def _score_batch(model, tokenizer, problems, start, per_batch, cfg, template, stop, gen):
    """One record per problem of `problems[start : start + per_batch]`: its k completions and
    how they scored."""
    chunk = problems[start : start + per_batch]
    prompts = [render_prompt(p.prompt, template, tokenizer) for p in chunk]
    chunk = [mark_prefill(p, text) for p, text in zip(chunk, prompts)]  # `<think>` in prompt
    ro = sample(model, tokenizer, prompts, cfg.k, max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature, top_p=cfg.top_p, stop=as_strings(stop, "stop"),
                generator=gen)
    per_row = [p for p in chunk for _ in range(cfg.k)]
    passed = _code_passes(ro.texts, per_row)
    answered = [r for r, p in enumerate(per_row) if not code_reward.has_tests(p)]
    right = dict(zip(answered, _time_bounded("accuracy", [ro.texts[r] for r in answered],
                                             [per_row[r] for r in answered])))
    formats = _time_bounded("format", ro.texts, per_row)
    summaries = _time_bounded("summary_format", ro.texts, per_row)
    records = []
    for i, p in enumerate(chunk):
        rows = range(i * cfg.k, (i + 1) * cfg.k)
        if code_reward.has_tests(p):  # all tests pass; the vote is over the programs
            hits = [passed[r] for r in rows]
            keys = [_program_key(extract_program(ro.texts[r]), passed[r]) for r in rows]
        else:
            hits = [right[r] for r in rows]
            answers = [extract_answer(ro.texts[r]) for r in rows]
            wrong = [a for a, hit in zip(answers, hits) if a and a.strip() and not hit]
            wrong_keys = iter(bounded(answer_key, wrong, REWARD_TIMEOUT_S,
                                      fallback=lambda a: ("text", "".join(a.split()))))
            keys = [None if not (a and a.strip()) else _RIGHT if hit else next(wrong_keys)
                    for a, hit in zip(answers, hits)]
        voted = majority_vote(keys) == _RIGHT
        records.append({
            "index": start + i, "correct": sum(hits), "voted": voted,
            "formats": [formats[r] for r in rows],
            "summary_formats": [summaries[r] for r in rows],
            "tokens": [ro.num_tokens[r] for r in rows],
            "truncated": [ro.truncated[r] for r in rows],
            "texts": [ro.texts[r] for r in rows],
            # the first completion (what reports show), then all k, so that pass@1, pass@k and
            # cons@k can be recomputed from the file
            "sample": {"id": p.id, "answer": p.answer, "completion": ro.texts[i * cfg.k],
                       "correct": hits[0], "completions": [ro.texts[r] for r in rows],
                       "correct_each": [bool(h) for h in hits], "voted": voted},
        })
    return records


_RIGHT = ("right",)  # the vote key of every right answer and of every passing program


def _program_key(program: str | None, passed: bool) -> tuple | None:
    """A program's vote key: one class for all that pass; a failing one by its text, trailing
    spaces aside (indentation is meaning in Python)."""
    if program is None or not program.strip():
        return None
    if passed:
        return _RIGHT
    return ("program", "\n".join(line.rstrip() for line in program.strip("\n").splitlines()))


def _summarize(records: list[dict], k: int) -> EvalResult:
    """The `EvalResult` of per-problem records in problem order."""
    def flat(key: str) -> list:
        return [x for r in records for x in r[key]]

    correct, voted = [r["correct"] for r in records], [r["voted"] for r in records]
    formats, tokens, truncs, texts = flat("formats"), flat("tokens"), flat("truncated"), flat("texts")
    per_problem = [c / k for c in correct]
    return EvalResult(
        pass1=sum(per_problem) / len(per_problem),
        pass1_ci=bootstrap_ci(per_problem),
        pass_k=sum(pass_at_k(k, c, k) for c in correct) / len(correct),
        cons_k=sum(voted) / len(voted),
        cons_k_ci=bootstrap_ci([float(v) for v in voted]),
        format_rate=sum(formats) / len(formats),
        summary_format_rate=sum(flat("summary_formats")) / len(formats),
        mean_tokens=sum(tokens) / len(tokens),
        truncated=sum(truncs) / len(truncs),
        reflection=reflection_rate(texts),
        k=k,
        num_problems=len(records),
        samples=[r["sample"] for r in records],
        completions=texts,
    )


REWARD_TIMEOUT_S = 5.0  # per completion and reward, as `rewards.timeout_s` in RL


def _time_bounded(reward: str, texts: list[str], problems: list[Problem]) -> list[bool]:
    """Per text: does `reward` give it 1? Each call is time-bounded as in RL (`scoring.score`), so
    a pathological answer (`10^{10^{10}}` for SymPy) counts as wrong instead of hanging."""
    if not texts:
        return []
    s = score(texts, problems, [RewardSpec(reward, 1.0)], [0] * len(texts), 1,
              timeout_s=REWARD_TIMEOUT_S)
    return [v == 1.0 for v in s.per_reward[reward]]


def _code_passes(texts: list[str], problems: list[Problem]) -> list[bool]:
    """Per completion: whether its program passes every test of its problem (in the sandbox, one
    batch); False for problems without tests (they are graded by accuracy)."""
    rows = [i for i, p in enumerate(problems) if code_reward.has_tests(p)]
    out = [False] * len(texts)
    if rows:
        verdicts = code_reward.run_tests([texts[i] for i in rows], [problems[i] for i in rows])
        for i, v in zip(rows, verdicts):
            out[i] = v is not None and v.reason == "passed"
    return out
