"""Sampling with a plain transformers model and its KV cache: the default rollout engine.

`sample` is leaner than `model.generate` where it matters on a CPU (FEASIBILITY.md: generation
dominates the step):
- each distinct prompt is prefilled once and its cache repeated G times;
- rows that have finished (EOS or a stop string) leave the batch, so the decode cost follows the
  live rows instead of the slowest one;
- no logits processors beyond temperature and top-p.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from r1kit.logprobs import prefill_groups


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

    def __len__(self) -> int:
        return len(self.texts)


_ENDERS: dict[tuple, set[int]] = {}  # (tokenizer, stop chars) -> ids of tokens that may end a stop


class _StopChecker:
    """Does a token sequence end a stop string? Checked on text, not token ids: a model can spell
    `</answer>` with other tokens than the one it encodes to. Only tokens whose text holds the
    last character of some stop string trigger the (short) decode, so the check costs little."""

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer, self.stop = tokenizer, [s for s in stop if s]
        self.window = max((len(s) for s in self.stop), default=0)  # a token spells >= 1 char
        key = (id(tokenizer), len(tokenizer), "".join(sorted({s[-1] for s in self.stop})))
        if self.stop and key not in _ENDERS:
            texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
            last = {s[-1] for s in self.stop}
            _ENDERS[key] = {i for i, t in enumerate(texts) if any(c in t for c in last)}
        self.enders = _ENDERS.get(key, set())

    def __call__(self, seq: list[int]) -> bool:
        if not self.stop or seq[-1] not in self.enders:
            return False
        tail = self.tokenizer.decode(seq[-self.window :])
        return any(s in tail for s in self.stop)


def _sample_next(logits: torch.Tensor, temperature: float, top_p: float, gen) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (N, V)
    if top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest set reaching top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, idx, sorted_p)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


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
    """Sample `group_size` completions for each prompt (rows grouped contiguously)."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = set(_as_list(model.generation_config.eos_token_id) or [tokenizer.eos_token_id])
    hits_stop = _StopChecker(tokenizer, list(stop))

    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False,
                    padding_side="left")
    p_ids = enc["input_ids"].to(device)  # (B, P)
    p_mask = enc["attention_mask"].to(device)  # (B, P)
    cache, cache_kw, logits, next_pos, attn = prefill_groups(model, p_ids, p_mask, group_size)

    n = len(prompts) * group_size
    generated: list[list[int]] = [[] for _ in range(n)]
    finished = [False] * n
    live = torch.arange(n, device=device)  # rows still decoding, in cache order
    for step in range(max_new_tokens):
        tokens = _sample_next(logits, temperature, top_p, generator)  # (L,)
        keep = []
        for j, (row, tok) in enumerate(zip(live.tolist(), tokens.tolist())):
            generated[row].append(tok)
            seq = generated[row]
            if tok in eos_ids or hits_stop(seq):
                finished[row] = True
            else:
                keep.append(j)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(live):
            sel = torch.tensor(keep, device=device)
            cache.batch_select_indices(sel)
            live, tokens, attn, next_pos = live[sel], tokens[sel], attn[sel], next_pos[sel]
        attn = torch.cat([attn, attn.new_ones(len(live), 1)], dim=1)  # (L, P+t+1)
        out = model(input_ids=tokens[:, None], attention_mask=attn,
                    position_ids=next_pos[:, None], use_cache=True, **{cache_kw: cache})
        cache = out[cache_kw]
        logits = out.logits[:, -1]  # (L, V)
        next_pos = next_pos + 1

    width = max(len(g) for g in generated)
    c_ids = torch.full((n, width), pad_id, dtype=torch.long)  # (N, T)
    c_mask = torch.zeros((n, width), dtype=torch.long)  # (N, T)
    for i, g in enumerate(generated):
        c_ids[i, : len(g)] = torch.tensor(g, dtype=torch.long)
        c_mask[i, : len(g)] = 1
    texts = [_cut_at_stop(tokenizer.decode(g, skip_special_tokens=True), stop) for g in generated]
    return Rollouts(
        prompt_ids=p_ids.repeat_interleave(group_size, dim=0).cpu(),
        prompt_mask=p_mask.repeat_interleave(group_size, dim=0).cpu(),
        completion_ids=c_ids,
        completion_mask=c_mask,
        texts=texts,
        num_tokens=[len(g) for g in generated],
        truncated=[not f for f in finished],
        group_size=group_size,
    )


def _cut_at_stop(text: str, stop: list[str]) -> str:
    cut = len(text)
    for s in stop:
        i = text.find(s) if s else -1
        if i >= 0:
            cut = min(cut, i + len(s))
    return text[:cut]


def _as_list(x):
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]
