"""Per-token log-probabilities (and entropy) of completions under a model.

Prompts are left-padded and completions right-padded, so the T completion tokens are the last T
positions of `cat(prompt, completion)`: the model is asked for only T+1 positions of logits
(`logits_to_keep`), which keeps the vocabulary projection off the prompt.

With `group_size=G > 1` (rows come in groups of G that share one prompt, as GRPO rollouts do), each
prompt is run once and its KV cache repeated G times before the completions are run on top; the
gradient flows back through the shared cache. This is exact (tests compare it with the plain
path) and saves (G-1)/G of the prompt compute, which is most of a step when prompts are long.
"""

from __future__ import annotations

import inspect

import torch


def completion_logprobs(
    model,
    prompt_ids: torch.Tensor,  # (N, P)
    prompt_mask: torch.Tensor,  # (N, P)
    completion_ids: torch.Tensor,  # (N, T)
    completion_mask: torch.Tensor,  # (N, T)
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    group_size: int = 1,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs `(N, T)` of each completion token (and entropies `(N, T)` if asked).

    Logits are divided by the sampling temperature, so the log-probs are those of the
    distribution the rollouts were sampled from (as TRL and verl do).
    """
    if group_size > 1:
        logits = _shared_prompt_logits(model, prompt_ids, prompt_mask, completion_ids,
                                       completion_mask, group_size)  # (N, T, V)
    else:
        t = completion_ids.shape[1]
        ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (N, P+T)
        mask = torch.cat([prompt_mask, completion_mask], dim=1)  # (N, P+T)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (N, P+T)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                       logits_to_keep=t + 1, use_cache=False).logits[:, :-1]  # (N, T, V)
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)  # (N, T, V)
    logprobs = logp_all.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)  # (N, T)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = -(logp_all.exp() * logp_all).sum(-1)  # (N, T)
    return logprobs, entropy


def prefill_groups(model, p_ids: torch.Tensor, p_mask: torch.Tensor, g: int):
    """Run B distinct left-padded prompts once and repeat their KV cache G times.

    Returns `(cache, kwarg, logits, next_pos, mask)`: the cache for N = B*G rows and the keyword
    that passes it back to the model, the logits `(N, V)` of the first completion token, the
    position `(N,)` of that token, and the prompt attention mask `(N, P)`.
    """
    pos = (p_mask.cumsum(-1) - 1).clamp(min=0)  # (B, P)
    out = model(input_ids=p_ids, attention_mask=p_mask, position_ids=pos, use_cache=True,
                logits_to_keep=1)
    kw = cache_kwarg(model)
    cache = out[kw]
    cache.batch_repeat_interleave(g)
    logits = out.logits[:, -1].repeat_interleave(g, dim=0)  # (N, V)
    next_pos = pos[:, -1].repeat_interleave(g) + 1  # (N,)
    return cache, kw, logits, next_pos, p_mask.repeat_interleave(g, dim=0)


def _shared_prompt_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask, g):
    n, t = completion_ids.shape
    if n % g:
        raise ValueError(f"{n} rows are not whole groups of {g}")
    cache, kw, first, next_pos, p_mask = prefill_groups(model, prompt_ids[::g],
                                                        prompt_mask[::g], g)
    c_pos = next_pos[:, None] + torch.arange(t, device=completion_ids.device)  # (N, T)
    mask = torch.cat([p_mask, completion_mask], dim=1)  # (N, P+T)
    rest = model(input_ids=completion_ids, attention_mask=mask, position_ids=c_pos,
                 use_cache=True, **{kw: cache}).logits  # (N, T, V)
    return torch.cat([first[:, None], rest[:, :-1]], dim=1)  # (N, T, V): first predicts token 0


def cache_kwarg(model) -> str:
    """transformers 5 renamed `past_key_values` to `cache`; support both."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
