"""The vLLM engine's CPU-testable parts: argument and weight-name mapping, Rollouts from token
ids, engine selection and its errors. The engine itself runs only where vLLM and CUDA are."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from r1kit.errors import UserError
from r1kit.logprobs import completion_logprobs
from r1kit.rollout import HFEngine, check, make_engine
from r1kit.rollout.hf import sample
from r1kit.rollout.vllm import sampling_kwargs, to_rollouts, vllm_weight_names

BASE = str(Path(__file__).resolve().parents[1] / "r1kit" / "assets" / "tiny-base")
HAS_VLLM = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def test_sampling_kwargs_map_r1kit_settings():
    kw = sampling_kwargs(8, max_new_tokens=64, temperature=1.0, top_p=0.95, stop=["</answer>", ""],
                         seed=3)
    # every setting explicit, penalties off: a server fills unset ones from generation_config
    assert kw == {"n": 8, "max_tokens": 64, "temperature": 1.0, "top_p": 0.95, "top_k": -1,
                  "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0,
                  "frequency_penalty": 0.0, "stop": ["</answer>"],
                  "include_stop_str_in_output": True, "skip_special_tokens": True, "seed": 3}
    greedy = sampling_kwargs(1, max_new_tokens=4, temperature=0, top_p=0.5, stop=[])
    assert greedy["temperature"] == 0 and greedy["top_p"] == 1.0 and "seed" not in greedy


def test_lora_weights_are_merged_out_of_place_in_float32():
    peft = pytest.importorskip("peft")
    from r1kit.rollout.vllm import merged_weights

    base = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.bfloat16)
    policy = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8,
                                                       target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    for name, p in policy.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.02)  # a trained adapter (B starts at zero)
    before = {n: t.clone() for n, t in policy.state_dict().items()}
    sent = dict(vllm_weight_names(merged_weights(policy)))
    assert all(torch.equal(before[n], t) for n, t in policy.state_dict().items())  # untouched
    q = policy.base_model.model.model.layers[0].self_attn.q_proj
    expected = (q.base_layer.weight.float() + q.scaling["default"]
                * q.lora_B["default"].weight.float() @ q.lora_A["default"].weight.float())
    got = sent["model.layers.0.self_attn.q_proj.weight"]
    assert got.dtype == torch.bfloat16 and torch.equal(got, expected.to(torch.bfloat16))
    assert not torch.equal(got, q.base_layer.weight)  # the adapter is in it
    k = policy.base_model.model.model.layers[0].self_attn.k_proj  # no adapter there
    assert torch.equal(sent["model.layers.0.self_attn.k_proj.weight"], k.weight)


def test_colocated_vllm_is_refused_for_several_processes():
    with pytest.raises(UserError, match="vllm_mode=server"):
        check("vllm", "colocate", world=2)


def test_weight_names_drop_wrappers_and_adapters():
    w = torch.zeros(1)
    named = [("module.model.embed_tokens.weight", w),
             ("_orig_mod.model.norm.weight", w),
             ("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight", w),
             ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight", w),
             ("base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight", w),
             ("lm_head.weight", w)]
    assert [n for n, _ in vllm_weight_names(named)] == [
        "model.embed_tokens.weight", "model.norm.weight",
        "model.layers.0.self_attn.q_proj.weight", "lm_head.weight"]


def test_vllm_names_cover_every_hf_tensor():
    model = AutoModelForCausalLM.from_pretrained(BASE)
    names = {n for n, _ in vllm_weight_names(list(model.state_dict().items()))}
    assert names == set(model.state_dict())  # a plain HF model maps to itself


def test_rollouts_from_token_ids_match_the_hf_layout():
    tok = AutoTokenizer.from_pretrained(BASE)
    prompts = [[5, 6, 7], [8, 9]]
    comps = [[([10, 11, tok.eos_token_id], True), ([12], False)],
             [([13, 14], True), ([15, 16, 17, 18], False)]]
    ro = to_rollouts(prompts, comps, 2, pad_id=tok.pad_token_id, tokenizer=tok, stop=[])
    assert ro.prompt_ids[2].tolist() == [tok.pad_token_id, 8, 9]  # left-padded
    assert ro.prompt_mask[2].tolist() == [0, 1, 1]
    assert ro.completion_ids[1].tolist() == [12] + [tok.pad_token_id] * 3  # right-padded
    assert ro.completion_mask.sum(-1).tolist() == [3, 1, 2, 4] == ro.num_tokens
    assert ro.truncated == [False, True, False, True] and ro.group_size == 2
    with pytest.raises(ValueError):
        to_rollouts(prompts, [comps[0], comps[1][:1]], 2, pad_id=0, tokenizer=tok, stop=[])
    assert ro.logprobs is None  # none asked for

    # with the sampled tokens' log-probs (rl.rollout_correction): laid out like the tokens; one
    # the engine could not give is NaN (left uncorrected); a count that does not match is refused
    lps = [[[-0.5, -1.0, None], [-2.0]], [[-0.1, -0.2], [-1.0, -1.0, -1.0, float("nan")]]]
    ro = to_rollouts(prompts, comps, 2, pad_id=tok.pad_token_id, tokenizer=tok, stop=[],
                     logprobs=lps)
    assert ro.logprobs[0, :2].tolist() == [-0.5, -1.0] and math.isnan(ro.logprobs[0, 2])
    assert ro.logprobs[1].tolist() == [-2.0, 0.0, 0.0, 0.0]
    assert math.isnan(ro.logprobs[3, 3])
    lps[1][0] = [-0.1]
    with pytest.raises(UserError, match="1 log-probs for a completion of 2 tokens"):
        to_rollouts(prompts, comps, 2, pad_id=0, tokenizer=tok, stop=[], logprobs=lps)


def test_engine_selection_and_clear_errors():
    assert isinstance(make_engine("hf", BASE), HFEngine)
    with pytest.raises(UserError, match="unknown engine"):
        make_engine("sglang", BASE)
    if not HAS_VLLM:
        with pytest.raises(UserError, match="vllm"):
            make_engine("vllm", BASE)
    with pytest.raises(UserError, match="vllm_mode"):
        make_engine("vllm", BASE, vllm_mode="remote")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_VLLM, reason="needs vLLM and a CUDA GPU")
def test_vllm_greedy_equals_hf_and_weights_sync():
    model = AutoModelForCausalLM.from_pretrained(BASE).cuda().eval()
    tok = AutoTokenizer.from_pretrained(BASE)
    engine = make_engine("vllm", BASE, vllm_gpu_memory_utilization=0.2, logprobs=True)
    prompts = ["User: Compute 12+30. Assistant: <think>"]
    prompts = prompts + ["User: Compute 7+5. Assistant: <think>"]  # greedy: vLLM allows n = 1
    ours = engine.sample(model, tok, prompts, 1, max_new_tokens=16, temperature=0)
    ref = sample(model.float(), tok, prompts, 1, max_new_tokens=16, temperature=0)
    assert ours.num_tokens[0] > 0 and ours.completion_ids.shape[0] == 2
    # bf16 kernels may part ways late; the first tokens agree
    assert ours.completion_ids[0, :4].tolist() == ref.completion_ids[0, :4].tolist()
    # the sampled tokens' log-probs (rl.rollout_correction) are the policy's, up to bf16
    drawn = engine.sample(model, tok, prompts, 4, max_new_tokens=16, temperature=1.0,
                          generator=torch.Generator().manual_seed(0))
    mask = drawn.completion_mask.bool()
    with torch.no_grad():
        lp, _ = completion_logprobs(model, drawn.prompt_ids.cuda(), drawn.prompt_mask.cuda(),
                                    drawn.completion_ids.cuda(), drawn.completion_mask.cuda())
    assert (lp.cpu() - drawn.logprobs)[mask].abs().mean() < 0.05
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    engine.sync(model)  # all-zero weights: every logit equal, greedy picks token 0
    zero = engine.sample(model, tok, prompts, 1, max_new_tokens=3, temperature=0)
    assert zero.completion_ids[0, 0].item() == 0
