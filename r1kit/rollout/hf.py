"""Sampling with a plain transformers model and its KV cache: the default rollout engine.

`sample` is leaner than `model.generate` where it matters on a CPU (FEASIBILITY.md: generation
dominates the step; benchmarks/results/rollout_speed.md has the before/after profile):
- each distinct prompt is prefilled once and its cache repeated G times;
- the KV cache is preallocated for the whole completion and written in place (`_KVBuffer`): a
  decode step copies one token's keys instead of concatenating the whole cache (`DynamicCache`'s
  `torch.cat` was ~45% of the decode time);
- with SDPA the padding mask is built once as a 4D mask and sliced per step;
- sampling is inverse-CDF on one uniform per row (`torch.multinomial` draws an exponential for
  every vocabulary entry, ~15x slower here; same distribution);
- finished rows (EOS or a stop string) stop costing compute: they leave the batch as soon as they
  are an eighth of it (compacting the cache is a copy, so not at every finished row);
- the log-prob of each sampled token is kept (`Rollouts.logprobs`), so mu > 1 needs no pi_old pass.
The sampled distribution is that of `generate` with the same temperature and top-p (tests compare
greedy tokens exactly and sampled token frequencies statistically).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer

from r1kit.errors import UserError
from r1kit.logprobs import cache_kwarg


@dataclass
class Rollouts:
    """B*G sampled completions; row i belongs to prompt i // G."""

    prompt_ids: torch.Tensor  # (B*G, P) left-padded
    prompt_mask: torch.Tensor  # (B*G, P)
    completion_ids: torch.Tensor  # (B*G, T) right-padded with pad_id
    completion_mask: torch.Tensor  # (B*G, T) 1 on generated tokens, incl. the stop/EOS token
    texts: list[str]  # decoded completions, cut after the first stop string
    num_tokens: list[int]
    truncated: list[bool]  # hit max_new_tokens without EOS or a stop string
    group_size: int
    # (B*G, T) log-prob of each sampled token under the sampling policy at the sampling
    # temperature (T = 1 when greedy; full softmax, before top-p), 0 on padding; None if the
    # engine gives none
    logprobs: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.texts)

    @classmethod
    def concat(cls, parts: list[Rollouts], pad_id: int) -> Rollouts:
        """The rows of `parts` in order; prompts left-padded and completions right-padded (with
        `pad_id`, log-probs with 0) to the longest."""
        P = max(r.prompt_ids.shape[1] for r in parts)
        T = max(r.completion_ids.shape[1] for r in parts)

        def cat(name: str, width: int, left: bool, value) -> torch.Tensor:
            return torch.cat([F.pad(t, (width - t.shape[1], 0) if left else (0, width - t.shape[1]),
                                    value=value) for t in (getattr(r, name) for r in parts)])

        has_lp = all(r.logprobs is not None for r in parts)
        return cls(
            prompt_ids=cat("prompt_ids", P, True, pad_id), prompt_mask=cat("prompt_mask", P, True, 0),
            completion_ids=cat("completion_ids", T, False, pad_id),
            completion_mask=cat("completion_mask", T, False, 0),
            texts=[t for r in parts for t in r.texts],
            num_tokens=[n for r in parts for n in r.num_tokens],
            truncated=[t for r in parts for t in r.truncated], group_size=parts[0].group_size,
            logprobs=cat("logprobs", T, False, 0.0) if has_lp else None)


def pad_id(tokenizer) -> int:
    """The id rollouts are padded with: the tokenizer's pad token, else its EOS."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


_ENDERS: dict[tuple, torch.Tensor] = {}  # (tokenizer, stop chars) -> which tokens may end a stop


class _StopChecker:
    """Does a token sequence end a stop string? Checked on text, not token ids: a model can spell
    `</answer>` with other tokens than the one it encodes to. Only tokens whose text holds the
    last character of some stop string, or, for non-ASCII stop strings, part of a character (a
    byte token of `答` or `ё` decodes to U+FFFD alone), trigger the short decode (`enders`, a
    bool table over the vocabulary), so the check costs little."""

    def __init__(self, tokenizer, stop: list[str], vocab: int):
        self.tokenizer, self.stop = tokenizer, [s for s in stop if s]
        # tokens to decode: each spells at least one UTF-8 byte (+4: a last token that goes on
        # past the stop string, or starts inside a character)
        self.window = max((len(s.encode()) + 4 for s in self.stop), default=0)
        last = {s[-1] for s in self.stop}
        if not all(s.isascii() for s in self.stop):  # a character may span byte tokens
            last.add("\ufffd")
        key = (id(tokenizer), len(tokenizer), vocab, "".join(sorted(last)))
        if self.stop and key not in _ENDERS:
            texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
            table = torch.zeros(max(vocab, len(texts)), dtype=torch.bool)
            table[[i for i, t in enumerate(texts) if any(c in t for c in last)]] = True
            _ENDERS[key] = table
        self.enders = _ENDERS.get(key)

    def __call__(self, seq: list[int]) -> bool:
        tail = self.tokenizer.decode(seq[-self.window :])
        return any(s in tail for s in self.stop)


class _KVBuffer(DynamicLayer):
    """A `DynamicLayer` whose keys/values live in a buffer with room for the whole completion:
    `update` writes the new token in place and returns views, so nothing is concatenated.
    Everything else (mask sizes, sequence length) behaves as `DynamicLayer`."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, repeats: int, capacity: int):
        super().__init__()
        b, h, p, _ = keys.shape
        self.k_buf = keys.new_empty(b * repeats, h, capacity, keys.shape[-1])
        self.v_buf = values.new_empty(b * repeats, h, capacity, values.shape[-1])
        self.k_buf.view(b, repeats, h, capacity, -1)[:, :, :, :p] = keys[:, None]
        self.v_buf.view(b, repeats, h, capacity, -1)[:, :, :, :p] = values[:, None]
        self.length, self.device, self.is_initialized = p, keys.device, True
        self._views()

    def _views(self) -> None:
        self.keys = self.k_buf[:, :, : self.length]
        self.values = self.v_buf[:, :, : self.length]

    def update(self, key_states, value_states, *args, **kwargs):
        t = key_states.shape[-2]
        self.k_buf[:, :, self.length : self.length + t] = key_states
        self.v_buf[:, :, self.length : self.length + t] = value_states
        self.length += t
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.k_buf, self.v_buf = self.k_buf[indices], self.v_buf[indices]
        self._views()


def _inverse_cdf(probs: torch.Tensor, gen) -> torch.Tensor:
    """One draw per row from `probs` (N, V): the first index whose cumulative sum exceeds
    u ~ U[0, total). Exactly the categorical distribution (zero-probability entries are never
    picked: their cumulative sum equals the previous one); float64 keeps rounding negligible."""
    cdf = probs.double().cumsum(-1)  # (N, V)
    u = torch.rand(probs.shape[0], 1, generator=gen, device=probs.device,
                   dtype=torch.float64) * cdf[:, -1:]  # (N, 1)
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def _sample_next(logits: torch.Tensor, temperature: float, top_p: float, gen):
    """(tokens (N,), their log-probs (N,) under softmax(logits / T), before top-p)."""
    if temperature <= 0:
        tokens = logits.argmax(-1)
        return tokens, torch.log_softmax(logits.float(), -1).gather(-1, tokens[:, None])[:, 0]
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (N, V)
    if top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p  # keep the smallest set reaching top_p
        drop[:, 0] = False  # (and the most likely token, whatever top_p)
        choice = _inverse_cdf(sorted_p.masked_fill(drop, 0.0), gen)  # (N,)
        tokens = idx.gather(-1, choice[:, None])[:, 0]
    else:
        tokens = _inverse_cdf(probs, gen)
    # a drawn token has p > 0, so its log is finite (and cheaper than a logsumexp)
    return tokens, probs.gather(-1, tokens[:, None])[:, 0].log()


def _prefill(model, p_ids, p_mask, g: int, capacity: int):
    """Run the B distinct prompts once; return (cache for B*G rows, its kwarg, first logits (N, V),
    position of the first completion token (N,), whether the cache is all `_KVBuffer`s)."""
    pos = (p_mask.cumsum(-1) - 1).clamp(min=0)  # (B, P)
    out = model(input_ids=p_ids, attention_mask=p_mask, position_ids=pos, use_cache=True,
                logits_to_keep=1)
    kw = cache_kwarg(model)
    cache = out.get(kw)
    layers = getattr(cache, "layers", None)
    if layers is None or not all(isinstance(layer, DynamicLayer) for layer in layers):
        kinds = sorted({type(la).__name__ for la in layers or ()} - {"DynamicLayer"}) or ["none"]
        raise UserError(  # (a state-space or recurrent model: Mamba, RecurrentGemma)
            f"model type {model.config.model_type!r}: the hf rollout engine needs an attention KV "
            f"cache in every layer (transformers' DynamicLayer); this model's cache has "
            f"{', '.join(kinds)}")
    own = all(type(layer) is DynamicLayer for layer in layers)
    if own:
        cache.layers = [_KVBuffer(la.keys, la.values, g, capacity) for la in layers]
    else:  # sliding-window layers keep only their window: transformers' own cache and masks
        cache.batch_repeat_interleave(g)
    logits = out.logits[:, -1].repeat_interleave(g, dim=0)  # (N, V)
    return cache, kw, logits, pos[:, -1].repeat_interleave(g) + 1, own


def as_strings(value, name: str) -> list[str]:
    """`value` as a list of strings: one string is a list of one (HF's `stop_strings` takes
    either; `list("</answer>")` would stop at every `<`)."""
    items = [value] if isinstance(value, str) else list(value)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"{name}[{i}] must be a string; got {type(item).__name__}")
    return items


@torch.no_grad()
def sample(
    model,
    tokenizer,
    prompts: list[str],
    group_size: int,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    stop: list[str] = (),
    generator: torch.Generator | None = None,
) -> Rollouts:
    """Sample `group_size` completions for each prompt (rows grouped contiguously). `prompts`
    and `stop` are lists of strings; one string is taken as a list of one, not of characters."""
    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    prompts, stop = as_strings(prompts, "prompts"), as_strings(stop, "stop")
    if not prompts or group_size < 1:
        raise ValueError(f"need at least one prompt and group_size >= 1; got {len(prompts)} "
                         f"prompts, group_size={group_size}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1; got {max_new_tokens}")
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    if not all(ids):
        raise ValueError(f"prompt {[len(i) for i in ids].index(0)} has no tokens")
    P = max(map(len, ids))  # left-padded here, so a tokenizer without a pad token works too
    p_ids = torch.tensor([[pad] * (P - len(i)) + i for i in ids], device=device)  # (B, P)
    p_mask = torch.tensor([[0] * (P - len(i)) + [1] * len(i) for i in ids], device=device)
    T = max_new_tokens
    cache, cache_kw, logits, pos, own_cache = _prefill(model, p_ids, p_mask, group_size, P + T)

    n, vocab = len(prompts) * group_size, logits.shape[-1]
    eos = torch.zeros(max(vocab, len(tokenizer)), dtype=torch.bool, device=device)  # (V,)
    eos[end_ids(model, tokenizer)] = True
    hits_stop = _StopChecker(tokenizer, stop, vocab)
    enders = hits_stop.enders.to(device) if hits_stop.enders is not None else None
    if model.config._attn_implementation == "sdpa" and own_cache:  # a ready 4D mask skips
        # mask building (a sliding-window layer's cache is shorter than the mask: a 2D one then)
        attn = torch.ones(n, 1, 1, P + T, dtype=torch.bool, device=device)  # (N, 1, 1, P+T)
        attn[:, 0, 0, :P] = p_mask.bool().repeat_interleave(group_size, dim=0)
    else:  # e.g. eager or flash attention: a 2D padding mask, preallocated, sliced per step
        attn = torch.ones(n, P + T, dtype=p_mask.dtype, device=device)  # (N, P+T)
        attn[:, :P] = p_mask.repeat_interleave(group_size, dim=0)

    out_ids = torch.full((n, T), pad, dtype=torch.long, device=device)  # (N, T)
    out_lp = torch.zeros((n, T), dtype=torch.float32, device=device)  # (N, T)
    lengths = torch.full((n,), T, dtype=torch.long, device=device)  # (N,)
    rows = torch.arange(n, device=device)  # batch slot -> row
    alive = torch.ones(n, dtype=torch.bool, device=device)  # per slot: still decoding
    finished = torch.zeros(n, dtype=torch.bool, device=device)  # per row: ended by EOS/stop
    for step in range(T):
        tokens, logp = _sample_next(logits, temperature, top_p, generator)  # (L,), (L,)
        # written for every slot, no boolean indexing: on a GPU each mask index is a host sync;
        # finished slots write padding over padding
        out_ids[rows, step] = torch.where(alive, tokens, pad)
        out_lp[rows, step] = torch.where(alive, logp, 0.0)
        ends = eos[tokens] & alive  # (L,)
        if enders is None:
            n_alive = int((alive & ~ends).sum())  # the step's one host sync
        else:
            may_stop = enders[tokens] & alive & ~ends  # (L,)
            n_alive, n_may = torch.stack([(alive & ~ends).sum(), may_stop.sum()]).tolist()
            if n_may:  # rare: only tokens that hold a stop string's last character
                for slot in may_stop.nonzero().flatten().tolist():
                    r = int(rows[slot])
                    ends[slot] = hits_stop(
                        out_ids[r, max(0, step + 1 - hits_stop.window) : step + 1].tolist())
                n_alive = int((alive & ~ends).sum())
        lengths[rows] = torch.where(ends, step + 1, lengths[rows])
        finished[rows] |= ends
        alive &= ~ends
        if n_alive == 0 or step == T - 1:
            break
        if len(alive) - n_alive >= max(1, len(alive) // 8):  # drop finished rows from the batch
            keep = alive.nonzero().flatten()
            cache.batch_select_indices(keep)
            rows, tokens, attn, pos, alive = rows[keep], tokens[keep], attn[keep], pos[keep], alive[keep]
        kv = P + step + 1  # cache length once this token is in
        out = model(input_ids=tokens[:, None], attention_mask=attn[..., :kv],
                    position_ids=(pos + step)[:, None], use_cache=True, **{cache_kw: cache})
        cache = out[cache_kw]
        logits = out.logits[:, -1]  # (L, V)

    width = int(lengths.max())
    c_mask = (torch.arange(width, device=device) < lengths[:, None]).long()  # (N, T')
    num_tokens = lengths.tolist()
    ids = out_ids[:, :width].cpu()
    texts = [_cut_at_stop(tokenizer.decode(ids[i, : num_tokens[i]], skip_special_tokens=True), stop)
             for i in range(n)]
    return Rollouts(
        prompt_ids=p_ids.repeat_interleave(group_size, dim=0).cpu(),
        prompt_mask=p_mask.repeat_interleave(group_size, dim=0).cpu(),
        completion_ids=ids,
        completion_mask=c_mask.cpu(),
        texts=texts,
        num_tokens=num_tokens,
        truncated=(~finished).tolist(),
        group_size=group_size,
        logprobs=(out_lp[:, :width] * c_mask).cpu(),
    )


def _cut_at_stop(text: str, stop: list[str]) -> str:
    cut = len(text)
    for s in stop:
        i = text.find(s) if s else -1
        if i >= 0:
            cut = min(cut, i + len(s))
    return text[:cut]


def end_ids(model, tokenizer) -> list[int]:
    """The token ids a completion ends at: the generation config's EOS ids (Qwen's chat models:
    `<|im_end|>` and `<|endoftext|>`) and the tokenizer's EOS, which SFT ends every completion
    with (they can differ in a model fine-tuned to a chat format)."""
    ends = [e for e in _as_list(getattr(model.generation_config, "eos_token_id", None))
            if e is not None]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ends:
        ends.append(tokenizer.eos_token_id)
    return ends


def _as_list(x):
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]
