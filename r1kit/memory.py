"""Memory controls for real models: activation checkpointing, token-budget micro-batches, and a
reference model kept in CPU memory between its passes on a GPU."""

from __future__ import annotations

import contextlib
import copy
import logging

import torch

from r1kit.distributed import unwrap

log = logging.getLogger("r1kit")


def enable_gradient_checkpointing(model) -> None:
    """Recompute activations in backward (transformers' per-layer checkpointing).

    Non-reentrant, so it works under DDP and with frozen inputs (LoRA). Cached passes are not
    checkpointed by transformers, so `completion_logprobs` runs a gradient pass without the shared
    prompt cache when this is on.
    """
    model = unwrap(model)
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 names it so
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if hasattr(model, "enable_input_require_grads"):  # LoRA: embeddings are frozen
        model.enable_input_require_grads()


def micro_batch_rows(group_size: int, micro_batch_size: int, max_tokens: int, seq_len: int) -> int:
    """Completions per forward/backward: `micro_batch_size`, lowered so that a micro-batch holds
    at most `max_tokens` (prompt + completion) tokens when that budget is set (> 0), and always
    whole groups (at least one), so each prompt runs once per micro-batch.

    >>> micro_batch_rows(8, 64, 0, 300), micro_batch_rows(8, 64, 4096, 300)
    (64, 8)
    >>> micro_batch_rows(4, 64, 4096, 300)  # 13 rows fit; whole groups of 4 -> 12
    12
    """
    rows = micro_batch_size
    if max_tokens > 0:
        rows = min(rows, max_tokens // max(1, seq_len))
        if rows < group_size and not _warned:
            _warned.append(True)
            log.warning(f"rl.max_tokens_per_micro_batch={max_tokens} holds {rows} rows of "
                        f"{seq_len} tokens, less than one group of {group_size}: micro-batches "
                        "stay one group each and exceed the budget")
    return max(group_size, rows // group_size * group_size)


_warned: list = []  # warn once per process


def make_reference(policy, beta: float, lora: bool, offload: bool):
    """A frozen copy of the policy for the KL term, or None (no KL, or LoRA: the base is the
    reference). With `offload` on a GPU the copy lives in CPU memory (see `reference_on`)."""
    if beta <= 0 or lora:
        return None
    model = unwrap(policy)
    device = next(model.parameters()).device
    if offload and device.type == "cuda":  # copied in CPU memory: no second copy on the GPU
        ref = copy.deepcopy(model.to("cpu"))
        model.to(device)
    else:
        ref = copy.deepcopy(model)
    return ref.eval().requires_grad_(False)


@contextlib.contextmanager
def reference_on(ref, device: torch.device):
    """`ref` on `device` for the block, back in CPU memory after it if it came from there."""
    if ref is None:
        yield None
        return
    home = next(ref.parameters()).device
    if home == device:
        yield ref
        return
    ref.to(device)
    try:
        yield ref
    finally:
        ref.to(home)
        if device.type == "cuda":
            torch.cuda.empty_cache()
