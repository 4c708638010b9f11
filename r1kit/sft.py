"""Completion-only supervised fine-tuning: the data, the batches and the loss (R1-SPEC §3.2, §3.5).

R1 fine-tunes on (prompt, long-CoT completion) pairs three times: the cold start before reasoning
RL ("thousands" of samples, §5), the ~800k rejection-sampled and non-reasoning samples before the
last RL stage, and the distillation of small students (§3.5). All three are the same operation:
next-token cross-entropy on the completion tokens only, given the prompt in the stage's template;
2-3 epochs with a cosine learning rate decaying to a tenth (5e-5 -> 5e-6 for the cold start).

Choices the papers leave open, and departures:
- Prompt and completion are tokenized separately and concatenated, so the prompt tokens are exactly
  those the model is given when it samples from the same prompt (no BPE merge across the border).
- Every completion ends in EOS, which is a target: the model learns where to stop.
- A completion is the model's whole turn, reasoning opened by `<think>`; where the stage's template
  prefills `<think>` (DeepSeek-R1-Distill's, Qwen3's), that opening tag is the prompt's, and the
  completion's own is dropped (`after_prompt`): the tag is never opened twice; a completion with
  no reasoning (a general row) then starts by closing an empty block, `</think>`.
- The loss is the token mean over all completion tokens of an optimizer step (not a mean of
  per-example means), with the step's token count passed in as the denominator, so micro-batches
  with gradient accumulation give exactly the full-batch gradient (the TRL #3021 bug class).
- Examples longer than `max_len` are cut from the right (the completion loses its end and its EOS)
  and counted; R1 trained with a 32k context and does not say what it did with longer samples.
- Batches group examples of similar length (less padding); the grouping is reshuffled each epoch.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from r1kit.errors import UserError
from r1kit.tasks.files import _type_name, jsonl_records
from r1kit.templates import prefills_think, render_prompt

IGNORE = -100  # the label of a position that is not a target (prompt, padding)


@dataclass(frozen=True)
class SFTExample:
    """One training pair: the bare question (the stage applies the template) and its target."""

    prompt: str
    completion: str


def load_sft_jsonl(path: str | Path) -> list[SFTExample]:
    """One `{"prompt": str, "completion": str}` object per line, the completion not empty; other
    fields are ignored.

    Whitespace-only lines are skipped. Every mistake is a `UserError` naming the file and line.
    """
    path = Path(path)
    examples = []
    for where, _, record in jsonl_records(path):
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected a JSON object, got {_type_name(record)}")
        for key in ("prompt", "completion"):
            if key not in record:
                raise UserError(f"{where}: missing field {key!r}")
            if not isinstance(record[key], str):
                raise UserError(
                    f"{where}: field {key!r} must be a string, got {_type_name(record[key])}"
                )
        if not record["completion"].strip():  # nothing to learn but to stop at once
            raise UserError(f"{where}: field 'completion' is empty")
        examples.append(SFTExample(record["prompt"], record["completion"]))
    if not examples:
        raise UserError(f"{path}: file is empty (no examples)")
    return examples


def encode(
    examples: list[SFTExample], tokenizer, template: str
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids + EOS) of each example, tokenized separately, untruncated."""
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no EOS token to end completions with; set eos_token "
                        "in its tokenizer_config.json")
    if not examples:
        return []
    prompts = [render_prompt(e.prompt, template, tokenizer) for e in examples]
    completions = [after_prompt(e.completion, prompt) for e, prompt in zip(examples, prompts)]
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
    return [(list(p), list(c) + [tokenizer.eos_token_id]) for p, c in zip(p_ids, c_ids)]


def after_prompt(completion: str, prompt: str) -> str:
    """The part of `completion` (a model's whole turn, as `r1kit sample` writes it: reasoning
    opened by `<think>`) that the model writes after `prompt`: without the opening `<think>` when
    the prompt's template prefills it (DeepSeek-R1-Distill's, Qwen3's), so that it is not opened
    twice; the whitespace the prompt ends with is not repeated either.

    >>> after_prompt("<think>\\n1+1=2 </think> 2", "<|im_start|>assistant\\n<think>\\n")
    '1+1=2 </think> 2'
    >>> after_prompt("<think> 1+1=2 </think> 2", "Assistant: <think>")
    ' 1+1=2 </think> 2'
    >>> after_prompt("<think> 1+1=2 </think> 2", "Assistant:")
    '<think> 1+1=2 </think> 2'
    >>> after_prompt("<think>\\n подожди", "<think>\\n")  # the sampled space stays
    ' подожди'

    A completion without reasoning (a general, non-reasoning row) after a prompt that opened it
    gets an empty reasoning block closed first, as R1's chat template writes one, rather than
    teaching an opened block that never closes:

    >>> after_prompt("Hello!", "<|im_start|>assistant\\n<think>\\n")
    '</think>\\n\\nHello!'
    """
    if not prefills_think(prompt):
        return completion
    if "<think>" not in completion and "</think>" not in completion:  # no reasoning at all
        return "</think>\n\n" + completion.lstrip()
    if not completion.lstrip().startswith("<think>"):
        return completion
    rest = completion.lstrip()[len("<think>"):]
    given = prompt[prompt.rfind("<think>") + len("<think>"):]  # what the prompt put after it
    if rest.startswith(given):  # the opening as the prompt supplies it: what follows was sampled
        return rest[len(given):]
    if given and rest.startswith(" "):  # the cold-start form's "<think> reasoning"
        return rest[1:]
    return rest


def collate(examples: list[SFTExample], tokenizer, template: str, max_len: int) -> dict:
    """A right-padded batch: `input_ids`, `attention_mask`, `labels` `(N, L)` and `truncated`.

    `labels` hold the token ids of the completion and its closing EOS, and -100 on the rendered
    prompt and the padding (the model shifts them: position i is predicted from positions < i).
    Rows longer than `max_len` keep their first `max_len` tokens; `truncated` counts them.

    Prompt `Q:` -> [7, 8], completion ` 5` -> [9], EOS 0, pad 0, max_len 8:
        input_ids      [7, 8, 9, 0]
        attention_mask [1, 1, 1, 1]
        labels         [-100, -100, 9, 0]
    """
    pairs = encode(examples, tokenizer, template)
    if not pairs:
        raise ValueError("collate needs at least one example")
    rows, truncated = [], 0
    for p, c in pairs:
        truncated += len(p) + len(c) > max_len
        rows.append(((p + c)[:max_len], ([IGNORE] * len(p) + c)[:max_len]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)  # (N, L)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (N, L)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)  # (N, L)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        labels[i, : len(lab)] = torch.tensor(lab)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "truncated": truncated}


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int | str) -> list[list[int]]:
    """Batches of indices into `lengths`, of similar length, in a shuffled order.

    The indices are shuffled, cut into mega-batches of 16 batches, each mega-batch sorted by length
    and cut into batches; then the batches are shuffled. Sorting within a mega-batch rather than
    globally (as HF's LengthGroupedSampler does) lets batches differ from epoch to epoch. Every
    index appears once; at most one batch is short. Deterministic for `seed` (pass a new seed per
    epoch).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = 16 * batch_size
    batches = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def cosine_lr(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float) -> float:
    """Learning rate of optimizer step `step` (from 0): linear warm-up to `lr`, then a cosine decay
    that reaches `min_lr` on the last step (R1-SPEC §3.2: 5e-5 -> 5e-6)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps - 1))
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def target_count(batch: dict) -> int:
    """The number of completion tokens `batch` trains on (its loss's own denominator)."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def sft_loss(model, batch: dict, denominator: float | None = None) -> tuple[Tensor, int]:
    """(summed cross-entropy of the completion tokens / `denominator`, completion tokens).

    `denominator` defaults to this batch's own token count (a token mean). When `batch` is one
    micro-batch of an optimizer step, pass the step's count (`target_count` summed over its
    micro-batches): the micro-batch losses then sum to the full-batch loss, and their gradients
    to its gradient.
    """
    if denominator is not None and denominator <= 0:
        raise ValueError(f"denominator must be positive; got {denominator}")
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   use_cache=False).logits[:, :-1]  # (N, L-1, V): position i predicts i+1
    targets = batch["labels"][:, 1:]  # (N, L-1)
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                          reduction="sum")
    n_tokens = target_count(batch)
    denominator = denominator if denominator is not None else max(n_tokens, 1)
    return nll / denominator, n_tokens
