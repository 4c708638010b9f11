"""Per-token log-probabilities (and entropy) of completions under a model.

Prompts are left-padded and completions right-padded, so the T completion tokens are the last T
positions of `cat(prompt, completion)`: the model is asked for only T+1 positions of logits
(`logits_to_keep`), which keeps the vocabulary projection off the prompt.
"""

from __future__ import annotations

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
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs `(N, T)` of each completion token (and entropies `(N, T)` if asked).

    Logits are divided by the sampling temperature, so the log-probs are those of the
    distribution the rollouts were sampled from (as TRL and verl do).
    """
    t = completion_ids.shape[1]
    ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (N, P+T)
    mask = torch.cat([prompt_mask, completion_mask], dim=1)  # (N, P+T)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (N, P+T)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                   logits_to_keep=t + 1, use_cache=False).logits  # (N, T+1, V)
    logits = logits[:, :-1].float() / temperature  # (N, T, V): position t predicts token t
    logp_all = torch.log_softmax(logits, dim=-1)  # (N, T, V)
    logprobs = logp_all.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)  # (N, T)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = -(logp_all.exp() * logp_all).sum(-1)  # (N, T)
    return logprobs, entropy
