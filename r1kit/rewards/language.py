r"""The language-consistency reward of R1 [R1-SPEC.md §5, Nature eq. 7]:

    Reward_language = Num(Words_target) / Num(Words)

over the words of the chain of thought. R1 sums it with the accuracy reward in its reasoning RL
stage, at "a slight degradation in the model's performance" for readable, single-language output.

Two forms, both computed on the reasoning part of the completion (`reasoning_part`), in the
problem's target language (`meta["target_language"]`, else the prompt's majority language;
never `meta["language"]`, which is a coding problem's programming language):
- `language`: the paper's proportion, in [0, 1];
- `language_threshold`: 1.0 when that proportion is at least a threshold (0.95), else 0.0; a
  binary signal that ignores a stray foreign word (`make_language_threshold` sets another).

Reasoning without words (`47+8=55, 55-9=46`) mixes no language: both give it 1.0, as for
reasoning all in the target language. (Scored None, which counts 0 in the total, any word at all,
a filler `wait` included, would have earned the reward.) Both return None only when there is no
reasoning at all. Math (`$x$`, `\cdot`; but not the prose of a `\text{...}` in it), code,
URLs and single-letter variables are not words. Words,
scripts and the target language are defined in `r1kit.language`; a library detector plugs in as
the `labeler` of `make_language` / `make_language_threshold`. A `meta["target_language"]` the
labeler cannot produce (`fr` for the script labeler) is a `UserError`, not a reward of 0.
"""

from __future__ import annotations

from collections.abc import Callable

from r1kit.errors import UserError
from r1kit.language import (
    LINGUA_LANGUAGES,
    Labeler,
    check_targets,
    checked_problem_language,
    language_consistency,
    lingua_labeler,
    reasoning_part,
    script_labels,
)
from r1kit.rewards import get_reward, register
from r1kit.tasks.base import Problem

DEFAULT_THRESHOLD = 0.95


def make_language(labeler: Labeler = script_labels) -> Callable[[str, Problem], float | None]:
    """The proportion form, with words labelled by `labeler`."""

    def language(completion: str, problem: Problem) -> float | None:
        target = checked_problem_language(problem, labeler)
        reasoning = reasoning_part(completion)
        share = language_consistency(reasoning, target, labeler)
        if share is None:  # no words, so none in another language; no reasoning: not scorable
            return 1.0 if reasoning.strip() else None
        return share

    language.labeler = labeler  # for `check_reward_targets`
    return language


def make_language_threshold(
    threshold: float = DEFAULT_THRESHOLD, labeler: Labeler = script_labels
) -> Callable[[str, Problem], float | None]:
    """The threshold form: 1.0 if the proportion is >= `threshold`, 0.0 if below, None if there
    is no reasoning.

    >>> strict = make_language_threshold(1.0)
    >>> p = Problem("p", "Compute 47+8", "55")
    >>> strict("<think> 47 plus 8 </think>", p), strict("<think> 47 плюс 8 </think>", p)
    (1.0, 0.0)
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"the language threshold must be in [0, 1], got {threshold}")
    proportion = make_language(labeler)

    def language_threshold(completion: str, problem: Problem) -> float | None:
        share = proportion(completion, problem)
        return None if share is None else float(share >= threshold)

    language_threshold.labeler = labeler
    return language_threshold


language = register("language")(make_language())
language.__doc__ = """Share of target-language words in the reasoning (1.0 if it has no words);
None if there is no reasoning.

>>> p = Problem("p", "Compute 47+8-9", "46")
>>> language("<think> 47 plus 8 is 55, wait, 55 минус 9 равно 46 </think> <answer>46</answer>", p)
0.6
>>> language("<think> 47+8=55, 55-9=46 </think> <answer>46</answer>", p)
1.0
>>> language("<think> </think> <answer>46</answer>", p) is None
True
>>> language("<think> сорок семь </think>", Problem("p", "?", "47", {"target_language": "ru"}))
1.0
"""

language_threshold = register("language_threshold")(make_language_threshold())
language_threshold.__doc__ = """1.0 if at least 95% of the reasoning's words are in the target
language (or it has no words), 0.0 if fewer, None if there is no reasoning.

>>> p = Problem("p", "Compute 47+8-9", "46")
>>> language_threshold("<think> 47 plus 8 is 55, wait, 55 минус 9 равно 46 </think>", p)
0.0
>>> language_threshold("<think> " + "so " * 19 + "итак </think>", p)
1.0
"""


def make_language_reward(name: str):
    """`language:lingua` and `language_threshold:lingua`: the two forms with `lingua_labeler`."""
    form, _, detector = name.partition(":")
    if detector != "lingua":
        raise UserError(f"reward {name!r}: the only language detector besides the built-in "
                        "script one is 'lingua' (language:lingua)")
    labeler = lingua_labeler()
    return make_language(labeler) if form == "language" else make_language_threshold(
        labeler=labeler)


def check_reward_targets(problems, names, key: str = "rewards.weights", context: str = "") -> None:
    """Every `target_language` of `problems` is one the language rewards among `names` (those
    with a `labeler`) can label words with, else a `UserError` saying what to change (`key`: the
    setting that names the reward); for a stage to call before it makes a folder or loads a
    model (`check_targets`)."""
    for name in names:
        languages = getattr(getattr(get_reward(name), "labeler", None), "languages", None)
        if languages is None:
            continue
        form, _, detector = name.partition(":")
        lingua = f"{form}:lingua"
        fix = "remove the target_language of such problems"
        if not detector and form in ("language", "language_threshold"):
            fix = (f"use {lingua!r} instead of {name!r} in {key} (the lingua detector also "
                   f"labels {', '.join(LINGUA_LANGUAGES)}: pip install 'r1kit[lingua]'), or {fix}")
        check_targets(problems, languages, f"the {name!r} reward", fix, context)
