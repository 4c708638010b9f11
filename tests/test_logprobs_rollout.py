"""Log-probs and sampling: shared-prompt path equals the plain one; sampling matches HF generate."""

from __future__ import annotations

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
