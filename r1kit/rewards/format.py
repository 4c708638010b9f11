r"""Format rewards: the R1-Zero structure `<think> … </think> <answer> … </answer>` [R1-SPEC.md §2.2].

The paper rewards "putting the reasoning between `<think>` and `</think>`"; its template also asks
for `<answer>` tags [R1-SPEC.md §2.1], and whether those are checked is unverified. So there are
three rewards, 1.0 or 0.0 each:
- `format`: the whole completion is `<think>reasoning</think>` then `<answer>answer</answer>` and
  nothing after, whitespace allowed between and around, each of the four tags exactly once, the
  answer not blank (the reasoning may be empty, as R1 itself sometimes emits);
- `think_format`: the completion opens with `<think>`, closes it once, and says anything after;
- `summary_format`: the readable format of R1's cold-start data, reasoning then a summary
  [R1-SPEC.md §5]: `<think>reasoning</think> summary <answer>answer</answer>` and nothing after,
  the summary and the answer not blank. This is what `filters.to_cold_start` writes; a model
  fine-tuned on it fails `format`, which allows nothing between `</think>` and `<answer>`.

Prefilled `<think>`: a prompt may end with `Assistant: <think>` (R1-SPEC.md §4.4 advises forcing
the output to start with it), and then the completion starts directly with the reasoning. Set
`problem.meta["prefilled_think"] = True` for such prompts and the opening tag is taken to be in
the prompt; a completion that opens another `<think>` then has a duplicated tag and scores 0.
Without the flag such a completion scores 0. Rewards that ignore the prefill score every
completion 0 and silently kill the format signal (TRL #6966, open-r1 #560; PEERS.md).
"""

from __future__ import annotations

import re

from r1kit.rewards import register
from r1kit.tasks.base import Problem

_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_R1_ZERO_RE = re.compile(r"\s*<think>.*?</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)
_THINK_RE = re.compile(r"\s*<think>.*?</think>.*", re.DOTALL)
_SUMMARY_RE = re.compile(r"\s*<think>.*?</think>(.*?)<answer>(.*?)</answer>\s*", re.DOTALL)


@register("format")
def format_reward(completion: str, problem: Problem) -> float:
    """1.0 for `<think>…</think><answer>…</answer>` and nothing else, else 0.0.

    >>> p = Problem("p", "1+1?", "2")
    >>> format_reward("<think>1+1=2</think>\\n<answer>2</answer>\\n", p)
    1.0
    >>> format_reward("<think>1+1=2</think><answer>2</answer> Done!", p)
    0.0
    >>> format_reward("1+1=2</think><answer>2</answer>", p)
    0.0
    >>> format_reward("1+1=2</think><answer>2</answer>", Problem("p", "1+1?", "2",
    ...                                                         {"prefilled_think": True}))
    1.0
    """
    text = _with_prefill(completion, problem)
    if any(text.count(tag) != 1 for tag in _TAGS):
        return 0.0
    match = _R1_ZERO_RE.fullmatch(text)
    return 1.0 if match is not None and match.group(1).strip() else 0.0


@register("think_format")
def think_format_reward(completion: str, problem: Problem) -> float:
    """1.0 if the completion opens with `<think>` and closes it exactly once, else 0.0.

    >>> p = Problem("p", "1+1?", "2")
    >>> think_format_reward("<think>1+1=2</think> The answer is 2.", p)
    1.0
    >>> think_format_reward("<think>1+1=2</think> <think>again</think> 2", p)
    0.0
    """
    text = _with_prefill(completion, problem)
    if text.count("<think>") != 1 or text.count("</think>") != 1:
        return 0.0
    return 1.0 if _THINK_RE.fullmatch(text) else 0.0


@register("summary_format")
def summary_format_reward(completion: str, problem: Problem) -> float:
    """1.0 for `<think>…</think> summary <answer>…</answer>` and nothing after, else 0.0.

    >>> p = Problem("p", "1+1?", "2")
    >>> summary_format_reward("<think> 1+1=2 </think> The answer is <answer> 2 </answer>", p)
    1.0
    >>> summary_format_reward("<think> 1+1=2 </think> <answer> 2 </answer>", p)  # no summary
    0.0
    """
    text = _with_prefill(completion, problem)
    if any(text.count(tag) != 1 for tag in _TAGS):
        return 0.0
    match = _SUMMARY_RE.fullmatch(text)
    if match is None:
        return 0.0
    return 1.0 if match.group(1).strip() and match.group(2).strip() else 0.0


def _with_prefill(completion: str, problem: Problem) -> str:
    """The completion as the model's whole turn: with the `<think>` the prompt supplied, if any."""
    return "<think>" + completion if problem.meta.get("prefilled_think") else completion
