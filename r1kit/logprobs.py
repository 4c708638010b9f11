"""Per-token log-probabilities (and entropy) of completions under a model.

Prompts are left-padded and completions right-padded, so the T completion tokens are the last T
positions of `cat(prompt, completion)`: the model is asked for only T+1 positions of logits
(`logits_to_keep`), which keeps the vocabulary projection off the prompt.

With `group_size=G > 1` (rows come in groups of G that share one prompt, as GRPO rollouts do), or
`groups` (each row's prompt index, rows in any order), each distinct prompt is run once and its KV
cache repeated for its rows, so the gradients of all its completions meet there. Where a pass must
be one forward (DDP / FSDP, activation checkpointing: `one_forward`), a contiguous group whose
tokens fit in `PACK_MAX_WIDTH` is packed into one row instead,
`[prompt, completion 1, ..., completion G]`, with a 4D mask that keeps the completions apart (SDPA
or eager attention), and no padding token is computed; a dense mask makes its attention quadratic
in the packed width, which made it slower than the shared prompt beyond ~300 tokens on a CPU and
2.5x slower at 1,900 (benchmarks/results/scaling.md). Larger groups take the plain path. All three
are exact (tests compare them, gradients included).
"""

from __future__ import annotations

import inspect

import torch

from r1kit.models import hf_model

PACK_MAX_WIDTH = 1024  # tokens in a packed group row (prompt + its G completions)


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
    groups: torch.Tensor | None = None,  # (N,)
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs `(N, T)` of each completion token (and entropies `(N, T)` if asked).

    `group_size=G`: rows come in contiguous groups of G sharing a prompt; `groups`: rows in any
    order, those with equal values share a prompt. Where one forward is required, packing needs
    contiguous runs of equal length; other orders take the plain path there. Logits are divided
    by the sampling temperature, so the log-probs are those of the distribution the rollouts were
    sampled from (as TRL and verl do).
    """
    n = completion_ids.shape[0]
    if not temperature > 0:
        raise ValueError(f"temperature must be more than 0 (the logits are divided by it), got "
                         f"{temperature}")
    _check_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask)
    if groups is not None and group_size > 1:
        raise ValueError("pass group_size (contiguous groups) or groups, not both")
    if groups is None and group_size > 1:
        if n % group_size:
            raise ValueError(f"{n} rows are not whole groups of {group_size}")
        groups = torch.arange(n, device=completion_ids.device) // group_size
    if groups is not None:
        _check_groups_share_prompts(groups, prompt_ids, prompt_mask)
    one = one_forward(model)
    g = _run_length(groups) if one and groups is not None else 0
    if g > 1 and _packable(model, prompt_mask, completion_mask, g):
        logits = _packed_group_logits(model, prompt_ids, prompt_mask, completion_ids,
                                      completion_mask, g)  # (N, T, V)
    elif groups is not None and not one:
        logits = _shared_prompt_logits(model, prompt_ids, prompt_mask, completion_ids,
                                       completion_mask, groups)  # (N, T, V)
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


def _check_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask) -> None:
    """Shapes that agree, rows, and prompts padded on the left (as `sample` makes them): a
    right-padded prompt's first completion token would be predicted from a padding slot."""
    if prompt_ids.ndim != 2 or prompt_ids.shape != prompt_mask.shape:
        raise ValueError(f"prompt_ids {tuple(prompt_ids.shape)} and prompt_mask "
                         f"{tuple(prompt_mask.shape)} must share one (N, P) shape")
    if completion_ids.ndim != 2 or completion_ids.shape != completion_mask.shape:
        raise ValueError(f"completion_ids {tuple(completion_ids.shape)} and completion_mask "
                         f"{tuple(completion_mask.shape)} must share one (N, T) shape")
    if prompt_ids.shape[0] != completion_ids.shape[0] or not len(prompt_ids):
        raise ValueError(f"need as many prompt rows as completion rows, at least one; got "
                         f"{prompt_ids.shape[0]} and {completion_ids.shape[0]}")
    if not prompt_mask[:, -1].bool().all():
        raise ValueError("prompts must be padded on the left (tokenizer.padding_side = 'left'): "
                         "the last prompt position of every row must be a real token")


def _check_groups_share_prompts(groups, prompt_ids, prompt_mask) -> None:
    """Rows of one group must hold one prompt: its KV cache (or packed row) serves them all."""
    _, inverse = torch.unique(groups, return_inverse=True)  # (N,) group index of each row
    rows = torch.arange(len(groups), device=groups.device)
    first = torch.full((int(inverse.max()) + 1,), len(groups), device=groups.device)
    first = first.scatter_reduce(0, inverse, rows, "amin")[inverse]  # (N,) its group's first row
    same = (prompt_ids == prompt_ids[first]) & (prompt_mask == prompt_mask[first])  # (N, P)
    if not same.all():
        bad = int((~same.all(-1)).nonzero()[0])
        raise ValueError(f"row {bad} has another prompt than row {int(first[bad])} of its group "
                         "(group_size/groups must group rows of one prompt)")


def _packed_group_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask, g):
    """Logits (N, T, V) predicting each completion token, from one row per group:
    `[prompt, completion 1, ..., completion G]` with no padding token inside, where a 4D mask lets
    each completion see the prompt and its own earlier tokens only, and its positions restart
    after the prompt. The same attention as N separate rows, with the prompt run once and no
    compute on padding. Entries past a completion's length are arbitrary (masked by callers)."""
    n, t = completion_ids.shape
    b, dev = n // g, completion_ids.device
    c_len = completion_mask.sum(-1)  # (N,)
    p_rows = prompt_mask[::g].bool()  # (B, P)
    p_len = p_rows.sum(-1)  # (B,)
    width = int((p_len + c_len.view(b, g).sum(-1)).max())
    ids = completion_ids.new_zeros(b, width)  # (B, L)
    pos = torch.zeros(b, width, dtype=torch.long, device=dev)  # (B, L)
    seg = torch.full((b, width), -1, dtype=torch.long, device=dev)  # (B, L): 0 prompt, j+1 row j
    src = torch.zeros(n, t, dtype=torch.long, device=dev)  # (N, T) packed index of the logits
    ar = torch.arange(max(width, t), device=dev)
    lens, plens = c_len.tolist(), p_len.tolist()
    for i in range(b):
        p = plens[i]
        ids[i, :p] = prompt_ids[i * g][p_rows[i]]
        pos[i, :p], seg[i, :p] = ar[:p], 0
        at = p
        for j in range(g):
            r = i * g + j
            k = lens[r]
            if k == 0:
                continue
            ids[i, at : at + k] = completion_ids[r, :k]
            pos[i, at : at + k], seg[i, at : at + k] = p + ar[:k], j + 1
            src[r, 0], src[r, 1:k] = p - 1, at + ar[: k - 1]
            at += k
    key_seg = seg[:, None, :]  # (B, 1, L)
    allowed = ((ar[:width, None] >= ar[None, :width])  # causal in packed order (query, key)
               & ((key_seg == 0) | (key_seg == seg[:, :, None])) & (key_seg >= 0))  # (B, L, L)
    allowed |= torch.eye(width, dtype=torch.bool, device=dev)  # padding sees itself: no NaN
    mask = allowed[:, None]  # (B, 1, L, L)
    if hf_model(model).config._attn_implementation != "sdpa":  # eager adds the mask to the scores
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=dev).masked_fill_(
            ~mask, torch.finfo(dtype).min)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos,
                   use_cache=False).logits  # (B, L, V)
    flat = src + (torch.arange(n, device=dev) // g * width)[:, None]  # (N, T)
    return logits.reshape(b * width, -1)[flat]  # (N, T, V)


def _run_length(groups: torch.Tensor) -> int:
    """G if `groups` is consecutive runs of G equal values (rows in contiguous groups, as
    packing needs), else 0."""
    runs = torch.unique_consecutive(groups)
    g = len(groups) // len(runs)
    return g if torch.equal(groups, runs.repeat_interleave(g)) else 0


def _packable(model, prompt_mask: torch.Tensor, completion_mask: torch.Tensor, g: int) -> bool:
    """Packing needs a 4D-mask attention (SDPA or eager), right-padded completions, and groups
    that fit in PACK_MAX_WIDTH tokens."""
    n, t = completion_mask.shape
    if n % g:
        raise ValueError(f"{n} rows are not whole groups of {g}")
    c_len = completion_mask.sum(-1, keepdim=True)  # (N, 1)
    prefix = torch.arange(t, device=completion_mask.device) < c_len
    width = int((prompt_mask[::g].sum(-1) + c_len.view(-1, g).sum(-1)).max())
    config = hf_model(model).config
    return (config._attn_implementation in ("sdpa", "eager") and width <= PACK_MAX_WIDTH
            and _packs_exactly(config, width)
            and bool((completion_mask.bool() == prefix).all()))


PACKABLE_MODEL_TYPES = frozenset({
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2",
    "gemma3_text", "phi", "phi3", "olmo", "olmo2", "olmo3", "gpt2", "gpt_neox", "gptj", "codegen",
    "stablelm", "starcoder2", "cohere", "cohere2", "granite", "smollm3", "gpt_oss", "falcon",
    "opt", "gpt_bigcode", "xglm", "biogpt"})
"""Architectures whose attention packing reproduces exactly (checked against separate rows):
positions come from `position_ids` and the only mask is the one passed in. Others take the
plain path: ALiBi models (Bloom, MPT) ignore `position_ids`, GPT-Neo's local layers and
chunked attention (Llama 4) mask on their own."""


def _packs_exactly(config, width: int) -> bool:
    """Whether a packed row of `width` tokens attends as the separate rows would: a known
    architecture, no ALiBi, and no sliding window shorter than the row (the window is counted in
    packed positions, which span several completions)."""
    if config.model_type not in PACKABLE_MODEL_TYPES or getattr(config, "alibi", False):
        return False
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    windowed = (any(t != "full_attention" for t in types) if types
                else window is not None and getattr(config, "use_sliding_window", True))
    return not windowed or (window is not None and width <= window)


def prefill_groups(model, p_ids: torch.Tensor, p_mask: torch.Tensor, groups: torch.Tensor):
    """Run each distinct prompt of N left-padded rows once (rows with equal `groups` values share
    it) and give every row a copy of its prompt's KV cache.

    Returns `(cache, kwarg, logits, next_pos)`: the cache for the N rows and the keyword that
    passes it back to the model, the logits `(N, V)` of the first completion token, and the
    position `(N,)` of that token.
    """
    _, inverse = torch.unique(groups.to(p_ids.device), return_inverse=True)  # (N,) row -> prompt
    first = torch.zeros(int(inverse.max()) + 1, dtype=torch.long, device=p_ids.device)
    first[inverse] = torch.arange(len(groups), device=p_ids.device)  # a row of each prompt
    p_ids, p_mask = p_ids[first], p_mask[first]  # (U, P)
    pos = (p_mask.cumsum(-1) - 1).clamp(min=0)  # (U, P)
    out = model(input_ids=p_ids, attention_mask=p_mask, position_ids=pos, use_cache=True,
                logits_to_keep=1)
    kw = cache_kwarg(model)
    cache = out[kw]
    cache.batch_select_indices(inverse)
    return cache, kw, out.logits[:, -1][inverse], pos[:, -1][inverse] + 1


def _shared_prompt_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask, groups):
    t = completion_ids.shape[1]
    cache, kw, first, next_pos = prefill_groups(model, prompt_ids, prompt_mask, groups)
    c_pos = next_pos[:, None] + torch.arange(t, device=completion_ids.device)  # (N, T)
    mask = torch.cat([prompt_mask, completion_mask], dim=1)  # (N, P+T)
    rest = model(input_ids=completion_ids, attention_mask=mask, position_ids=c_pos,
                 use_cache=True, **{kw: cache}).logits  # (N, T, V)
    return torch.cat([first[:, None], rest[:, :-1]], dim=1)  # (N, T, V): first predicts token 0


def cache_kwarg(model) -> str:
    """transformers 5 renamed `past_key_values` to `cache`; support both. Wrappers (DDP, PEFT)
    take **kwargs, so the name is read from the Hugging Face model inside."""
    forward = hf_model(model).forward
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def one_forward(model) -> bool:
    """Must this gradient pass be one forward? transformers drops the KV cache of activation-
    checkpointed layers (r1kit/memory.py), and DDP / FSDP expect one forward per backward
    (r1kit/distributed.py), so the shared-prompt path would be wrong there: run the plain one."""
    wrapped = hasattr(model, "no_sync") or type(model).__name__.startswith("FSDP")
    return torch.is_grad_enabled() and model.training and (wrapped or any(
        getattr(m, "gradient_checkpointing", False) for m in model.modules()))
