"""GRPO: group-relative advantages and the clipped policy loss, as pure tensor functions.

The objective is R1-SPEC.md §1.1 (DeepSeekMath eq. 3-4: per-token ratio, k3 KL in the loss) and
§1.2 (the R1 report's notation), with the later corrections of §1.4 as switches: Dr. GRPO
(no std scaling, a constant denominator), DAPO (clip-higher, token-level mean) and GSPO (a
sequence-level ratio). Vocabulary: B prompts, G completions per prompt, T completion tokens;
per-token tensors are `(B*G, T)`, the G completions of one prompt are contiguous rows.

Deliberate departures from the papers, and choices where they are silent:

- The ratio is per token (DSMath), not over the whole output as the R1 report writes it;
  `ratio_level="sequence"` gives GSPO's length-normalised sequence ratio instead.
- The std is the unbiased sample std (`torch.std`, as TRL and verl compute it), with `eps`
  added outside it; R1 does not say which. A group whose rewards are all equal gets exactly
  zero advantage, not `0 / eps` rounding noise.
- Tokens are aggregated by a switch (`token_mean` DAPO, `seq_mean_token_mean` DSMath,
  `constant` Dr. GRPO) whose denominator can be passed in, so that micro-batches sum to the
  full-batch loss (the TRL #3021 bug class). Sequence counts include only rows with at least one
  valid token, so a fully masked (e.g. overlong-filtered) completion does not dilute the mean.
- Clipping is asymmetric (`eps_low`, `eps_high`, DAPO clip-higher); no dual clip, no entropy term.
- The k3 KL is per token, computed as `expm1(d) - d` (exact and never negative in floating
  point), aggregated exactly like the surrogate, and unclamped.
- The rollout correction (`rollout_weights`) is truncated or masked importance sampling of
  pi_old over the sampler's own log-probs (vLLM's kernels, bf16 decoding), with TRL's four modes;
  it multiplies the surrogate per token, as in TRL, not the KL term. With GSPO, a `token_*`
  weight scales its own token's gradient (TRL's sequence ratio spreads their mean over the row).
- The KL gradient is the plain k3 one: it is not multiplied by the ratio pi / pi_old (TRL's
  `use_bias_correction_kl`, on by default there; the two agree on-policy, at ratio 1).
- GSPO is implemented in its GSPO-token form (stop-gradient sequence ratio times
  `exp(lp - sg[lp])`), so it composes with every aggregation; with `seq_mean_token_mean` it is
  GSPO eq. 5 exactly. A KL term may be added, which GSPO itself does not do.
"""

from __future__ import annotations

import torch
from torch import Tensor

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "constant")
RATIO_LEVELS = ("token", "sequence")
CORRECTIONS = ("off", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def group_advantages(
    rewards: Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-6
) -> Tensor:
    """Outcome advantage of each completion relative to its group (R1-SPEC §1.1, §1.2).

    `(r - group mean) / (group std + eps)`, or `r - group mean` when `scale_by_std` is False
    (Dr. GRPO, §1.4). Groups are `group_size` contiguous entries of `rewards`.

    >>> group_advantages(torch.tensor([1.0, 0.0, 2.0, 2.0]), group_size=2, scale_by_std=False)
    tensor([ 0.5000, -0.5000,  0.0000,  0.0000])
    """
    rewards = torch.as_tensor(rewards)
    if group_size < 1 or rewards.ndim != 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"rewards must be a flat (B*G,) tensor whose length is a multiple of group_size; "
            f"got shape {tuple(rewards.shape)} with group_size={group_size}"
        )
    if not rewards.is_floating_point():
        rewards = rewards.float()
    if not torch.isfinite(rewards).all():  # one NaN would spread over its whole group
        raise ValueError(f"rewards must be finite; got {rewards.tolist()}")
    grouped = rewards.view(-1, group_size)  # (B, G)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)  # (B, G)
    if scale_by_std and group_size > 1:
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + eps)  # (B, G)
    # The mean of equal floats can round away from them (and 0/0 with eps=0 is NaN): such a
    # group carries no signal, so its advantage is set to exactly zero.
    all_equal = (grouped == grouped[:, :1]).all(dim=1, keepdim=True)  # (B, 1)
    advantages = torch.where(all_equal, torch.zeros_like(advantages), advantages)  # (B, G)
    return advantages.reshape(-1)  # (B*G,)


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(pi_theta || pi_ref) (DSMath eq. 4, R1-SPEC §1.1).

    `exp(ref - lp) - (ref - lp) - 1`, unbiased and non-negative; zero where the two agree.
    """
    log_ref_ratio = ref_logprobs - logprobs  # (B*G, T)
    return torch.expm1(log_ref_ratio) - log_ref_ratio  # (B*G, T)


def rollout_weights(old_logprobs: Tensor, sampler_logprobs: Tensor, completion_mask: Tensor,
                    mode: str, c_max: float, c_min: float = 0.0) -> Tensor:
    """Importance weights `pi_old / pi_sampler` of each sampled token, `(B*G, T)`, no gradient.

    The completions were drawn by the rollout engine, whose log-probs differ from the training
    forward's (vLLM's kernels, bf16 decoding), so the surrogate's samples are off-policy even
    when mu = 1. `token_*` weighs each token by its own ratio, `sequence_*` every token of a row by
    the row's ratio (the product over its valid tokens). `*_truncate` clamps the weight to
    `[c_min, c_max]` (truncated IS); `*_mask` sets weights outside it to 0 (masked IS).
    Padding, and a token whose sampler log-prob is NaN (an engine could not give it), get
    weight 1 (the loss masks padding anyway).

    >>> old = torch.tensor([[0.0, -1.0]]); sampler = torch.tensor([[-1.0, -1.0]])
    >>> rollout_weights(old, sampler, torch.ones(1, 2), "token_truncate", c_max=2.0)
    tensor([[2., 1.]])
    >>> rollout_weights(old, sampler, torch.ones(1, 2), "sequence_mask", c_max=2.0)
    tensor([[0., 0.]])
    """
    _check_choice("rollout correction", mode, CORRECTIONS[1:])
    if not 0 <= c_min < c_max:
        raise ValueError(f"the correction's bounds need 0 <= c_min < c_max; got {c_min}, {c_max}")
    if old_logprobs.shape != sampler_logprobs.shape or old_logprobs.shape != completion_mask.shape:
        raise ValueError(f"old_logprobs {tuple(old_logprobs.shape)}, sampler_logprobs "
                         f"{tuple(sampler_logprobs.shape)} and completion_mask "
                         f"{tuple(completion_mask.shape)} must share one (B*G, T) shape")
    mask = completion_mask.bool()  # (B*G, T)
    known = mask & ~sampler_logprobs.isnan()  # (B*G, T)
    diff = torch.where(known, old_logprobs.detach() - sampler_logprobs, 0.0)  # (B*G, T)
    if mode.startswith("sequence"):
        diff = diff.sum(dim=1, keepdim=True).expand_as(diff)  # (B*G, T): the row's log-ratio
    ratio = torch.exp(diff)  # (B*G, T); inf where the log-ratio overflows: capped or masked below
    if mode.endswith("truncate"):
        ratio = ratio.clamp(min=c_min, max=c_max)
    else:
        ratio = torch.where((ratio >= c_min) & (ratio <= c_max), ratio, 0.0)
    if mode.startswith("token"):
        ratio = torch.where(known, ratio, 1.0)
    return torch.where(mask, ratio, 1.0)  # (B*G, T)


def loss_denominator(completion_mask: Tensor, aggregation: str) -> float:
    """The denominator `aggregation` divides the summed loss by, for this whole batch.

    Compute it once on the full batch and pass it to `policy_loss` for every micro-batch: the
    micro-batch losses then sum to the full-batch loss. Total valid tokens for `token_mean`;
    the number of sequences with any valid token for `seq_mean_token_mean` and `constant`.
    Never less than 1, so an all-masked batch gives a zero loss rather than NaN.
    """
    _check_choice("aggregation", aggregation, AGGREGATIONS)
    return _batch_denominator(completion_mask, aggregation)


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    completion_mask: Tensor,
    *,
    ref_logprobs: Tensor | None = None,
    beta: float = 0.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    aggregation: str = "token_mean",
    max_tokens: int | None = None,
    ratio_level: str = "token",
    loss_denominator: float | None = None,
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped GRPO surrogate plus `beta` times the k3 KL, to minimise (R1-SPEC §1.1, §1.4).

    Per token: `-min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A) + beta * k3`.
    `logprobs`, `old_logprobs`, `ref_logprobs` and `completion_mask` are `(B*G, T)`,
    `advantages` is `(B*G,)`. Padded positions must hold finite values; the mask zeroes them.
    `old_logprobs` and `ref_logprobs` are constants here (detached): only `logprobs` is trained.

    `aggregation`: `token_mean` sums all valid tokens and divides by their count (DAPO);
    `seq_mean_token_mean` averages each sequence's tokens, then the sequences (DSMath);
    `constant` sums each sequence's tokens, divides by `max_tokens`, then averages the
    sequences (Dr. GRPO). `loss_denominator` replaces the batch's own count (see
    `loss_denominator()`); pass the full batch's when this call sees one micro-batch of it.

    `ratio_level="sequence"` (GSPO) uses `s_i = exp(mean of valid log-ratios of row i)` for
    every token of the row and clips it per sequence.

    `is_weights` (`(B*G, T)`, from `rollout_weights()`) multiply the surrogate per token.

    Returns `(loss, metrics)`. `metrics["pg_loss"]` is the surrogate part of `loss`, with the
    same denominator, so both sum over micro-batches; `clip_frac` (share of valid tokens whose
    clipped branch was taken), `ratio_mean` and `kl` (mean k3, only when `ref_logprobs` is
    given) are means over this call's valid tokens.
    """
    _check_choice("aggregation", aggregation, AGGREGATIONS)
    _check_choice("ratio_level", ratio_level, RATIO_LEVELS)
    if aggregation == "constant" and (max_tokens is None or max_tokens <= 0):
        raise ValueError(f"aggregation='constant' needs max_tokens > 0; got {max_tokens}")
    if beta < 0 or eps_low < 0 or eps_high < 0 or eps_low > 1:
        raise ValueError(f"need beta >= 0, 0 <= eps_low <= 1 and eps_high >= 0; got {beta}, "
                         f"{eps_low}, {eps_high}")
    if logprobs.ndim != 2 or not logprobs.is_floating_point():
        raise ValueError(f"logprobs must be a (B*G, T) float tensor; got {logprobs.dtype} of "
                         f"shape {tuple(logprobs.shape)}")
    if beta > 0 and ref_logprobs is None:
        raise ValueError(f"beta={beta} > 0 needs ref_logprobs for the KL term")
    if loss_denominator is not None and loss_denominator <= 0:
        raise ValueError(f"loss_denominator must be positive; got {loss_denominator}")
    if logprobs.shape != old_logprobs.shape or logprobs.shape != completion_mask.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)} and "
            f"completion_mask {tuple(completion_mask.shape)} must share one (B*G, T) shape"
        )
    if ref_logprobs is not None and ref_logprobs.shape != logprobs.shape:
        raise ValueError(f"ref_logprobs {tuple(ref_logprobs.shape)} must have the shape of "
                         f"logprobs {tuple(logprobs.shape)}")
    if is_weights is not None and is_weights.shape != logprobs.shape:
        raise ValueError(f"is_weights {tuple(is_weights.shape)} must have the shape of "
                         f"logprobs {tuple(logprobs.shape)}")
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(
            f"advantages must be ({logprobs.shape[0]},), one per row; got {tuple(advantages.shape)}"
        )

    if not ((completion_mask == 0) | (completion_mask == 1)).all():
        raise ValueError("completion_mask must hold 0 and 1 only (or be bool)")
    # pi_old and the reference are constants: a caller's `lp` passed as its own pi_old (mu = 1)
    # would otherwise cancel the ratio's gradient to exactly 0
    old_logprobs = old_logprobs.detach()
    ref_logprobs = None if ref_logprobs is None else ref_logprobs.detach()
    mask = completion_mask.to(logprobs.dtype)  # (B*G, T)
    log_ratio = logprobs - old_logprobs  # (B*G, T)
    if ratio_level == "token":
        ratio = torch.exp(log_ratio)  # (B*G, T)
    else:
        seq_log_ratio = _row_means(log_ratio, mask)  # (B*G,)
        # GSPO-token: the value is s_i on every token, the gradient is s_i * grad(lp_t).
        ratio = torch.exp(seq_log_ratio.detach())[:, None] * torch.exp(
            logprobs - logprobs.detach()
        )  # (B*G, T)

    adv = advantages.to(logprobs.dtype)[:, None]  # (B*G, 1)
    unclipped = -adv * ratio  # (B*G, T)
    clipped = -adv * torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)  # (B*G, T)
    pg_per_token = torch.maximum(unclipped, clipped)  # (B*G, T)
    if is_weights is not None:  # the sampler's samples, reweighted to pi_old's
        pg_per_token = pg_per_token * is_weights.detach().to(pg_per_token.dtype)

    denominator = loss_denominator
    if denominator is None:
        denominator = _batch_denominator(completion_mask, aggregation)
    pg_loss = _aggregate(pg_per_token, mask, aggregation, denominator, max_tokens)
    loss = pg_loss

    metrics = {
        "pg_loss": pg_loss.item(),
        "clip_frac": _masked_mean((clipped > unclipped).to(mask.dtype), mask).item(),
        "ratio_mean": _masked_mean(ratio.detach(), mask).item(),
    }
    if ref_logprobs is not None:
        kl = kl_k3(logprobs, ref_logprobs)  # (B*G, T)
        metrics["kl"] = _masked_mean(kl.detach(), mask).item()
        if beta > 0:
            loss = loss + beta * _aggregate(kl, mask, aggregation, denominator, max_tokens)
    return loss, metrics


def _batch_denominator(completion_mask: Tensor, aggregation: str) -> float:
    if aggregation == "token_mean":
        count = completion_mask.sum()
    else:
        count = (completion_mask.sum(dim=1) > 0).sum()
    return max(float(count), 1.0)


def _aggregate(
    per_token: Tensor, mask: Tensor, aggregation: str, denominator: float, max_tokens: int | None
) -> Tensor:
    """Reduce a `(B*G, T)` per-token loss to a scalar: a sum over the batch / `denominator`."""
    masked = per_token * mask  # (B*G, T)
    if aggregation == "token_mean":
        return masked.sum() / denominator
    if aggregation == "seq_mean_token_mean":
        per_seq = _row_means(per_token, mask)  # (B*G,)
    else:
        per_seq = masked.sum(dim=1) / max_tokens  # (B*G,)
    return per_seq.sum() / denominator


def _row_means(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of each row's valid entries, `(B*G, T) -> (B*G,)`; 0 for a row with none."""
    return (values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of all valid entries of a `(B*G, T)` tensor; 0 when there are none."""
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
