"""The lean decode loop (r1kit/rollout/hf.py) samples what `generate` samples.

Greedy tokens must equal `generate`'s exactly (through row dropping and both mask paths); sampled
first tokens must follow the model's own distribution, as `generate`'s do, by a chi-square test
(seeded, so deterministic); the kept sampling log-probs must equal a fresh forward's.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from r1kit.logprobs import completion_logprobs
from r1kit.rollout.hf import sample
from r1kit.templates import render_prompt

SHIPPED_BASE = str(Path(__file__).resolve().parents[1] / "r1kit" / "assets" / "tiny-base")
PROMPTS = [render_prompt(q) for q in ("Compute 12+3-4+5", "Compute 90-9+2", "Compute 7+8",
                                      "Compute 55-21+13-2")]


def _load(path, attn="sdpa"):
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn).eval()
    return model, AutoTokenizer.from_pretrained(path)


def _chi2_critical(df: int, z: float = 3.72) -> float:
    """Upper chi-square quantile (Wilson-Hilferty); z=3.72 is a 1e-4 tail."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _chi2(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Goodness of fit of `counts` (V,) to `probs` (V,); cells expected < 5 are pooled."""
    n = counts.sum().item()
    expected = probs.double() * n
    big = expected >= 5
    obs = torch.cat([counts[big].double(), counts[~big].double().sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = exp > 0
    stat = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum().item()
    return stat, int(keep.sum()) - 1


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_greedy_tokens_equal_generate_through_row_dropping(attn):
    model, tok = _load(SHIPPED_BASE, attn)  # it ends its answers with EOS, at different lengths
    ro = sample(model, tok, PROMPTS, 3, max_new_tokens=40, temperature=0)
    assert len(set(ro.num_tokens)) > 1  # rows ended at different steps: the batch was compacted
    for i, prompt in enumerate(PROMPTS):
        enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
        ref = model.generate(**enc, max_new_tokens=40, do_sample=False)[0, enc.input_ids.shape[1]:]
        ref = ref.tolist()
        if tok.eos_token_id in ref:
            ref = ref[: ref.index(tok.eos_token_id) + 1]
        for row in range(3 * i, 3 * i + 3):
            assert ro.completion_ids[row, : ro.num_tokens[row]].tolist() == ref


def test_sampling_ends_at_the_tokenizers_eos_when_the_generation_config_names_another():
    """A model fine-tuned to a chat format whose tokenizer's EOS (what SFT ends completions
    with) is not in its generation config: sampling stops at both, as the export does."""
    model, tok = _load(SHIPPED_BASE)
    greedy = sample(model, tok, PROMPTS[:1], 1, max_new_tokens=8, temperature=0)
    third = greedy.completion_ids[0, 2].item()  # the token greedy decoding writes third
    assert third not in (model.generation_config.eos_token_id, tok.eos_token_id)
    tok.eos_token = tok.convert_ids_to_tokens(third)
    ro = sample(model, tok, PROMPTS[:1], 1, max_new_tokens=8, temperature=0)
    assert ro.num_tokens == [3] and not ro.truncated[0]


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_sampled_first_tokens_follow_the_model_like_generate(tiny_base, temperature, top_p):
    model, tok = _load(tiny_base)
    prompt = PROMPTS[0]
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        probs = torch.softmax(model(**enc).logits[0, -1] / temperature, -1)  # (V,)
    if top_p < 1.0:  # the nucleus, renormalised: what both samplers should draw from
        sorted_p, idx = probs.sort(descending=True)
        sorted_p[sorted_p.cumsum(0) - sorted_p > top_p] = 0
        probs = torch.zeros_like(probs).scatter(0, idx, sorted_p)
        probs /= probs.sum()
    n, v = 3000, probs.numel()
    ro = sample(model, tok, [prompt], n, max_new_tokens=1, temperature=temperature, top_p=top_p,
                generator=torch.Generator().manual_seed(0))
    ours = torch.bincount(ro.completion_ids[:, 0], minlength=v)
    torch.manual_seed(0)
    out = model.generate(**enc, do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                         max_new_tokens=1, num_return_sequences=n)
    theirs = torch.bincount(out[:, -1], minlength=v)
    for counts in (ours, theirs):
        stat, df = _chi2(counts, probs)
        assert stat < _chi2_critical(df), (stat, df)
    assert (ours[probs == 0] == 0).all()  # never a token outside the nucleus


def test_sampling_logprobs_equal_a_fresh_forward(tiny_base):
    model, tok = _load(tiny_base)
    ro = sample(model, tok, PROMPTS[:2], 4, max_new_tokens=24, temperature=0.7, top_p=0.95,
                stop=["</answer>"], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        lp, _ = completion_logprobs(model, ro.prompt_ids, ro.prompt_mask, ro.completion_ids,
                                    ro.completion_mask, temperature=0.7)
    torch.testing.assert_close(ro.logprobs, lp * ro.completion_mask, rtol=1e-4, atol=1e-4)
    assert (ro.logprobs[ro.completion_mask == 0] == 0).all()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_groups_equal_plain_rows_with_gradients(tiny_base, attn, monkeypatch):
    """Completions of different lengths (one fully masked, as the overlong filter does) packed one
    group per row give the plain path's log-probs, entropies and gradients."""
    from r1kit import logprobs

    packed = []
    real = logprobs._packed_group_logits
    monkeypatch.setattr(logprobs, "one_forward", lambda model: True)  # as under DDP
    monkeypatch.setattr(logprobs, "_packed_group_logits",
                        lambda *a: packed.append(1) or real(*a))
    model, tok = _load(tiny_base, attn)
    ro = sample(model, tok, PROMPTS[:2], 3, max_new_tokens=12,
                generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([12, 3, 7, 1, 0, 9])
    mask = (torch.arange(ro.completion_ids.shape[1]) < lengths[:, None]).long()  # (6, T)
    outs, grads = [], []
    for g in (1, 3):
        model.zero_grad()
        lp, ent = completion_logprobs(model, ro.prompt_ids, ro.prompt_mask, ro.completion_ids,
                                      mask, temperature=0.8, with_entropy=True, group_size=g)
        (lp * mask).sum().backward()
        outs.append((lp * mask, ent * mask))
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert packed == [1]  # the group-of-3 pass was packed
    monkeypatch.setattr(logprobs, "PACK_MAX_WIDTH", 8)  # wider groups take the plain path
    completion_logprobs(model, ro.prompt_ids, ro.prompt_mask, ro.completion_ids, mask,
                        group_size=3)
    assert packed == [1]
