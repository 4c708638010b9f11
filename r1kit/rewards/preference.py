"""A neural preference reward: `reward_model:PATH` (R1-SPEC §3.2, the final RL stage).

R1's last RL stage adds model-based rewards for helpfulness and harmlessness to the rule-based
ones; for helpfulness "we focus exclusively on the final summary", and the preference reward is
switched on only for the last 400 of 1,700 steps, because a longer use invites reward hacking
[R1-SPEC.md §3.2]. Here:
- `PATH` is any Hugging Face sequence-classification model (a folder or a hub name) with one
  output (a scalar score) or two (label 1 = preferred);
- it reads the prompt and the summary only: the text after the last `</think>` (the whole
  completion when there is none);
- its score is squashed into [0, 1] (the sigmoid of the scalar, or the probability of label 1), so
  it adds to the rule-based rewards on their scale; group normalisation makes only the ordering
  within a group matter anyway;
- the model is loaded once per process and scores a whole batch in one forward pass
  (`score_batch`); `rewards.active_last` limits it to the last N steps of a run.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import torch

from r1kit.errors import UserError
from r1kit.tasks.base import Problem

log = logging.getLogger("r1kit")

PREFIX = "reward_model:"


def summary_part(completion: str) -> str:
    """The text after the last `</think>`, stripped; the whole completion when there is none.

    >>> summary_part("<think> 47+8=55 </think> The answer is <answer> 55 </answer>")
    'The answer is <answer> 55 </answer>'
    >>> summary_part("55")
    '55'
    """
    end = completion.rfind("</think>")
    return (completion if end < 0 else completion[end + len("</think>") :]).strip()


@lru_cache(maxsize=4)
def _load(path: str):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(f"reward_model:{path}: cannot load a sequence-classification model "
                        f"({str(e).splitlines()[0]})") from None
    # "prompt\nsummary" past max_length loses the start of the prompt, never the summary scored
    tokenizer.truncation_side = "left"
    if model.config.num_labels not in (1, 2):
        raise UserError(f"reward_model:{path}: expected 1 or 2 output labels, got "
                        f"{model.config.num_labels}")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:  # the classifier reads the last non-pad token
        model.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.padding_side = "right"
    model.eval().requires_grad_(False)
    log.info(f"loaded preference reward model {path} ({model.config.model_type})")
    return model, tokenizer


class PreferenceReward:
    """The reward `reward_model:PATH`: callable per completion, and `score_batch` for many."""

    def __init__(self, path: str, max_length: int = 512, batch_size: int = 64):
        self.path, self.max_length, self.batch_size = path, max_length, batch_size
        _load(path)  # fail at start-up, not at the first scored step

    def texts(self, completions: list[str], problems: list[Problem]) -> list[str]:
        return [f"{p.prompt}\n{summary_part(c)}" for c, p in zip(completions, problems)]

    @torch.no_grad()
    def score_batch(self, completions: list[str], problems: list[Problem]) -> list[float]:
        model, tokenizer = _load(self.path)
        device = next(model.parameters()).device
        texts = self.texts(completions, problems)
        out: list[float] = []
        for i in range(0, len(texts), self.batch_size):
            enc = tokenizer(texts[i : i + self.batch_size], return_tensors="pt", padding=True,
                            truncation=True, max_length=self.max_length).to(device)
            logits = model(**enc).logits.float()
            probs = logits[:, 0].sigmoid() if logits.shape[-1] == 1 else logits.softmax(-1)[:, 1]
            out += probs.tolist()
        return out

    def __call__(self, completion: str, problem: Problem) -> float:
        return self.score_batch([completion], [problem])[0]


def make_preference_reward(name: str) -> PreferenceReward:
    path = name[len(PREFIX) :]
    if not path:
        raise UserError("reward 'reward_model:' needs a model path: reward_model:PATH")
    return PreferenceReward(path)
