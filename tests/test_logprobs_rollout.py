"""Log-probs and sampling: shared-prompt path equals the plain one; sampling matches HF generate."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from r1kit.logprobs import completion_logprobs
from r1kit.rollout.hf import sample
from r1kit.templates import render_prompt


def _load(path):
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_shared_prompt_logprobs_equal_plain_path_with_gradients(tiny_base):
    """Plain rows, contiguous groups (`group_size`), and rows in any order (`groups`, as the
    length-sorted micro-batches of the GRPO update have them) give the same log-probs, entropies
    and gradients."""
    model, tok = _load(tiny_base)
    prompts = [render_prompt("Compute 12+3-4+5"), render_prompt("Compute 90-9")]
    ro = sample(model, tok, prompts, 3, max_new_tokens=10, temperature=1.0,
                generator=torch.Generator().manual_seed(0))
    perm = torch.tensor([4, 0, 5, 2, 1, 3])  # mixes the two prompts' rows
    inv = torch.argsort(perm)
    mask = ro.completion_mask.clone()
    mask[1, 6:] = mask[4, 3:] = mask[5, 8:] = 0  # uneven lengths: padding is in play
    grads = []
    outs = []
    for mode in ("plain", "contiguous", "any order"):
        model.zero_grad()
        rows = perm if mode == "any order" else torch.arange(6)
        args = (ro.prompt_ids[rows], ro.prompt_mask[rows], ro.completion_ids[rows], mask[rows])
        kw = {"plain": {}, "contiguous": {"group_size": 3}, "any order": {"groups": perm // 3}}
        lp, ent = completion_logprobs(model, *args, temperature=0.7, with_entropy=True,
                                      **kw[mode])
        if mode == "any order":
            lp, ent = lp[inv], ent[inv]
        (lp * mask).sum().backward()
        outs.append((lp * mask, ent * mask))
        grads.append([p.grad.clone() for p in model.parameters()])
    for out, grad in zip(outs[1:], grads[1:]):
        torch.testing.assert_close(outs[0][0], out[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(outs[0][1], out[1], rtol=1e-5, atol=1e-5)
        for a, b in zip(grads[0], grad):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_greedy_sampling_matches_hf_generate(tiny_base):
    model, tok = _load(tiny_base)
    prompts = [render_prompt("Compute 12+3-4+5"), render_prompt("Compute 90-9+2")]
    ro = sample(model, tok, prompts, 2, max_new_tokens=12, temperature=0)
    for i, prompt in enumerate(prompts):
        enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
        ref = model.generate(**enc, max_new_tokens=12, do_sample=False)[0, enc.input_ids.shape[1]:]
        ref = ref.tolist()
        if tok.eos_token_id in ref:
            ref = ref[: ref.index(tok.eos_token_id) + 1]
        for row in (2 * i, 2 * i + 1):  # both copies of the prompt decode the same greedy path
            n = ro.num_tokens[row]
            assert ro.completion_ids[row, :n].tolist() == ref
            assert ro.completion_mask[row].sum().item() == n


def test_stop_string_ends_a_row_and_cuts_text(tiny_base):
    model, tok = _load(tiny_base)
    ro = sample(model, tok, [render_prompt("Compute 12+3")], 8, max_new_tokens=20,
                temperature=1.0, stop=["</think>"], generator=torch.Generator().manual_seed(1))
    for row, (text, n, trunc) in enumerate(zip(ro.texts, ro.num_tokens, ro.truncated)):
        last = ro.completion_ids[row, n - 1].item()
        if "</think>" in text:
            assert text.endswith("</think>") and not trunc
        elif last == tok.eos_token_id:  # ended by EOS
            assert not trunc
        else:
            assert n == 20 and trunc


class _Scripted(torch.nn.Module):
    """A model that always predicts the next token of `script` (by completion position)."""

    def __init__(self, inner, script: list[int], prompt_len: int):
        super().__init__()
        self.inner, self.script, self.p0 = inner, script, prompt_len
        self.config, self.generation_config = inner.config, inner.generation_config

    def forward(self, input_ids=None, position_ids=None, **kw):
        out = self.inner(input_ids=input_ids, position_ids=position_ids, **kw)
        k = (position_ids[:, -out.logits.shape[1]:] + 1 - self.p0).clamp(0, len(self.script) - 1)
        target = torch.tensor(self.script)[k]
        out.logits = torch.full_like(out.logits, -30.0).scatter_(-1, target[..., None], 30.0)
        return out


@pytest.mark.parametrize("stop", ["答案", "ё", "</answer>"])
def test_a_stop_string_of_byte_tokens_or_split_characters_ends_the_row(tiny_base, stop):
    """`答案` and `ё` are spelled by several byte tokens, each decoding to U+FFFD alone;
    `</answer>` is spelled here one character at a time, not as its own token."""
    model, tok = _load(tiny_base)
    enc = lambda text: tok.encode(text, add_special_tokens=False)
    stop_ids = [i for c in stop for i in enc(c)] if stop.startswith("<") else enc(stop)
    script = enc("<answer> 55 ") + stop_ids + enc(" and more text after it")
    prompt = "Compute 47+8"
    ro = sample(_Scripted(model, script, len(enc(prompt))), tok, [prompt], 1,
                max_new_tokens=len(script) + 2, stop=[stop],
                generator=torch.Generator().manual_seed(0))
    n = len(enc("<answer> 55 ")) + len(stop_ids)
    assert ro.texts == [f"<answer> 55 {stop}"] and ro.num_tokens == [n]
    assert ro.truncated == [False] and ro.completion_mask.sum().item() == n


def test_degenerate_inputs_are_clear_errors_and_a_tokenizer_without_pad_works(tiny_base):
    from r1kit.logprobs import completion_logprobs
    from r1kit.rollout.hf import _sample_next

    model, tok = _load(tiny_base)
    for prompts, g, message in (([], 2, "at least one prompt"), (["1+1"], 0, "group_size >= 1"),
                                (["1+1", ""], 2, "prompt 1 has no tokens")):
        with pytest.raises(ValueError, match=message):
            sample(model, tok, prompts, g, max_new_tokens=4)
    tok.pad_token = None  # left-padding is done by `sample` itself
    ro = sample(model, tok, ["Compute 1+2", "Compute 47+8-9"], 2, max_new_tokens=4,
                generator=torch.Generator().manual_seed(0))
    assert ro.prompt_mask[:2, 0].tolist() == [0, 0] and ro.prompt_mask[2:].all()
    with pytest.raises(ValueError, match="temperature must be more than 0"):
        completion_logprobs(model, ro.prompt_ids, ro.prompt_mask, ro.completion_ids,
                            ro.completion_mask, temperature=0.0)
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1"):
        sample(model, tok, ["1+1"], 2, max_new_tokens=0)
    args = ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask
    # rows in the wrong places would be scored against another prompt, silently
    right = ro.prompt_mask.flip(-1), ro.prompt_ids.flip(-1)  # as a right-padding tokenizer gives
    with pytest.raises(ValueError, match="padded on the left"):
        completion_logprobs(model, right[1], right[0], *args[2:])
    with pytest.raises(ValueError, match="row 2 has another prompt than row 0 of its group"):
        completion_logprobs(model, *args, group_size=4)  # two groups of 2, not one of 4
    with pytest.raises(ValueError, match="row 2 has another prompt than row 0"):
        completion_logprobs(model, *args, groups=torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="at least one"):
        completion_logprobs(model, *(a[:0] for a in args))
    with pytest.raises(ValueError, match="completion_mask"):
        completion_logprobs(model, *args[:3], ro.completion_mask[:, :-1])
    # one string is one prompt, one stop string: not a list of characters (`<` would stop)
    one = sample(model, tok, "Compute 1+2", 3, max_new_tokens=6, stop="</answer>",
                 generator=torch.Generator().manual_seed(0))
    listed = sample(model, tok, ["Compute 1+2"], 3, max_new_tokens=6, stop=["</answer>"],
                    generator=torch.Generator().manual_seed(0))
    assert one.texts == listed.texts and len(one.texts) == 3
    assert not one.logprobs.requires_grad  # sampling keeps no autograd graph (its memory)
    # top-p keeps the smallest set reaching top_p, as transformers' TopPLogitsWarper does
    logits = torch.tensor([[0.5, 0.25, 0.25]]).log().repeat(2000, 1)
    for top_p, kept in ((0.5, 1), (0.75, 2), (0.76, 3)):  # 0.5 reached by the first token
        tokens, _ = _sample_next(logits, 1.0, top_p, torch.Generator().manual_seed(0))
        assert len(set(tokens.tolist())) == kept, top_p


def test_rollouts_concat_pads_prompts_left_and_completions_right(tiny_base):
    from r1kit.rewards.scoring import Scores
    from r1kit.rollout.hf import Rollouts

    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    tok = AutoTokenizer.from_pretrained(tiny_base)
    gen = torch.Generator().manual_seed(0)
    a = sample(model, tok, [render_prompt("Compute 1+2")], 2, max_new_tokens=4, generator=gen)
    b = sample(model, tok, [render_prompt("Compute 10+20-3*4+55")], 2, max_new_tokens=9,
               generator=gen)
    both = Rollouts.concat([a, b], pad_id=tok.pad_token_id)
    assert both.texts == a.texts + b.texts and both.num_tokens == a.num_tokens + b.num_tokens
    P, T = b.prompt_ids.shape[1], b.completion_ids.shape[1]
    assert a.prompt_ids.shape[1] < P and a.completion_ids.shape[1] < T
    assert both.prompt_ids.shape == (4, P) and both.completion_ids.shape == (4, T)
    # the same log-probs from the padded rows as from the rows alone
    lp_both, _ = completion_logprobs(model, both.prompt_ids, both.prompt_mask,
                                     both.completion_ids, both.completion_mask)
    for part, rows in ((a, slice(0, 2)), (b, slice(2, 4))):
        lp, _ = completion_logprobs(model, part.prompt_ids, part.prompt_mask,
                                    part.completion_ids, part.completion_mask)
        t = part.completion_ids.shape[1]
        torch.testing.assert_close(lp_both[rows, :t], lp, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(both.logprobs[rows, :t], part.logprobs)
    assert (both.logprobs[:2, a.completion_ids.shape[1]:] == 0).all()

    s = Scores.concat([Scores([1.0], {"code": [1.0]}, {"code": 0}, {"code": ["passed"]}),
                       Scores([0.0], {"code": [None]}, {"code": 1}, {"code": ["timeout"]})])
    assert (s.total, s.per_reward, s.failures, s.reasons) == (
        [1.0, 0.0], {"code": [1.0, None]}, {"code": 1}, {"code": ["passed", "timeout"]})
