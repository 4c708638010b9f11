"""The vLLM engine on CPU: argument and weight-name mapping (MoE checkpoint names included),
Rollouts from token ids, engine selection and its errors, and both engines' sample/sync against
a fake `vllm` module, a fake TRL client and a stub HTTP server. vLLM itself runs only in the
gpu-marked test, where vLLM and CUDA are."""

from __future__ import annotations

import contextlib
import http.server
import importlib.machinery
import importlib.util
import json
import logging
import math
import os
import shutil
import sys
import threading
import time
import types
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar, TypedDict

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import r1kit.rollout.vllm as rv
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
    engine = make_engine("vllm", BASE, vllm_gpu_memory_utilization=0.2, logprobs=True,
                         max_new_tokens=16, vllm_enforce_eager=True)  # a check: no compile
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


# ---------------------------------------------------------------------------------------------
# The engines themselves on CPU, against a fake `vllm` module and a stub HTTP server. The fakes
# hold vLLM's side of the contract as r1kit uses it (SamplingParams' argument names, outputs
# with token_ids / finish_reason / logprobs=[{token id: Logprob}], the in-process model's
# `load_weights`, `reset_prefix_cache`; the OpenAI server's /v1/models and /v1/completions), so
# these test r1kit's side: what it asks for and how it reads the answers.



class SamplingParams:  # vLLM's names: a misspelt argument is a TypeError, as there
    def __init__(self, *, n=1, max_tokens=16, temperature=1.0, top_p=1.0, top_k=0, min_p=0.0,
                 repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0, stop=None,
                 include_stop_str_in_output=False, skip_special_tokens=True, seed=None,
                 logprobs=None):
        self.__dict__.update({k: v for k, v in locals().items() if k != "self"})


class TokensPrompt(TypedDict):
    prompt_token_ids: list[int]


class Logprob:
    def __init__(self, logprob, rank=None, decoded_token=None):
        self.logprob, self.rank, self.decoded_token = logprob, rank, decoded_token


class FakeModel:
    def __init__(self):
        self.loads = []

    def load_weights(self, weights):
        lazy = iter(weights) is weights  # a generator, not a list of every weight at once
        self.loads.append((lazy, [(n, t.clone()) for n, t in weights]))


class FakeLLM:
    made: ClassVar[list] = []
    script = None  # (prompt ids, completion index, params) -> (token ids, finish_reason)

    def __init__(self, model, **kwargs):
        if not (Path(model) / "config.json").is_file():  # as vLLM fails on an adapter folder
            raise ValueError(f"{model}: no config.json")
        self.kwargs = {"model": model, **kwargs}
        self.model = FakeModel()
        worker = SimpleNamespace(model_runner=SimpleNamespace(model=self.model))
        executor = SimpleNamespace(driver_worker=SimpleNamespace(worker=worker))
        self.llm_engine = SimpleNamespace(model_executor=executor)
        self.resets, self.calls = 0, []
        FakeLLM.made.append(self)

    def generate(self, prompts, params, use_tqdm=True):
        self.calls.append((prompts, params))
        outs = []
        for p, sp in zip(prompts, params, strict=True):
            comps = []
            for j in range(sp.n):
                ids, reason = FakeLLM.script(p["prompt_token_ids"], j, sp)
                lps = None if sp.logprobs is None else [  # the sampled token and one other
                    {t: Logprob(-0.5 * (k + 1), rank=2), t + 1: Logprob(-0.1, rank=1)}
                    for k, t in enumerate(ids)]
                comps.append(SimpleNamespace(index=j, token_ids=tuple(ids), finish_reason=reason,
                                             logprobs=lps))
            outs.append(SimpleNamespace(prompt_token_ids=p["prompt_token_ids"], outputs=comps))
        return outs

    def reset_prefix_cache(self):
        self.resets += 1
        return True


def _module(name, **attrs):
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    mod.__dict__.update(attrs)
    return mod


@pytest.fixture
def fake_vllm(monkeypatch):
    inputs = _module("vllm.inputs", TokensPrompt=TokensPrompt)
    mod = _module("vllm", LLM=FakeLLM, SamplingParams=SamplingParams, inputs=inputs)
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    monkeypatch.setattr(FakeLLM, "made", [])
    return mod


def _script(tok):
    """Completion 0 ends at a stop string (inside the last token's text: cut there), 1 at EOS,
    2 runs out of budget."""
    def script(prompt, j, sp):
        if j % 3 == 0:
            return tok(" 4</answer> and more", add_special_tokens=False)["input_ids"], "stop"
        if j % 3 == 1:
            return tok(" 7", add_special_tokens=False)["input_ids"] + [tok.eos_token_id], "stop"
        return (tok(" 1 2 3 4 5 6 7 8 9", add_special_tokens=False)["input_ids"]
                [: sp.max_tokens], "length")
    return script


def test_colocated_sample_maps_vllm_outputs_to_rollouts(fake_vllm, monkeypatch):
    tok = AutoTokenizer.from_pretrained(BASE)
    monkeypatch.setattr(FakeLLM, "script", staticmethod(_script(tok)))
    engine = make_engine("vllm", BASE, logprobs=True, seed=5)
    llm = FakeLLM.made[0]
    assert llm.kwargs["dtype"] == "bfloat16" and llm.kwargs["logprobs_mode"] == "processed_logprobs"
    assert llm.kwargs["seed"] == 5 and llm.kwargs["enable_prefix_caching"]
    assert "enforce_eager" not in llm.kwargs and "tokenizer" not in llm.kwargs
    prompts = ["User: 2+2? Assistant:", "User: 3+4?"]
    ro = engine.sample(None, tok, prompts, 3, max_new_tokens=6, temperature=0.7, top_p=0.9,
                       stop="</answer>", generator=torch.Generator().manual_seed(0))
    sent, params = llm.calls[0]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    assert [p["prompt_token_ids"] for p in sent] == ids  # token ids in, no re-tokenizing
    # one seed per prompt, G apart (vLLM seeds completion j with seed + j)
    assert params[1].seed - params[0].seed == 3
    assert all(p.n == 3 and p.max_tokens == 6 and p.temperature == 0.7 and p.top_p == 0.9
               and p.top_k == -1 and p.stop == ["</answer>"] and p.include_stop_str_in_output
               and p.logprobs == 0 for p in params)
    assert ro.texts[0] == " 4</answer>" and ro.texts[1] == " 7"  # cut at the stop string
    assert ro.truncated == [False, False, True] * 2  # only "length" is truncated
    comps = [_script(tok)(None, j, SimpleNamespace(max_tokens=6))[0] for j in range(3)]
    assert ro.num_tokens == [len(c) for c in comps] * 2
    assert ro.completion_mask.sum(-1).tolist() == ro.num_tokens
    assert ro.completion_ids[1, : len(comps[1])].tolist() == comps[1]  # EOS kept, as HF does
    assert ro.prompt_ids[3, -len(ids[1]):].tolist() == ids[1]  # left-padded prompts
    assert ro.prompt_mask[3].sum() == len(ids[1])
    # the sampled token's log-prob, not the likelier alternative vLLM also listed
    assert ro.logprobs[0, :3].tolist() == [-0.5, -1.0, -1.5]
    assert ro.logprobs[2, len(comps[2]):].abs().sum() == 0  # 0 on padding
    # no generator: no seed; no correction: no log-probs asked for
    plain = make_engine("vllm", BASE)
    ro = plain.sample(None, tok, "User: 1+1?", 2, max_new_tokens=4)
    _, params = FakeLLM.made[1].calls[0]
    assert params[0].seed is None and params[0].logprobs is None and ro.logprobs is None


def _lora_policy():
    peft = pytest.importorskip("peft")
    base = AutoModelForCausalLM.from_pretrained(BASE)
    policy = peft.get_peft_model(base, peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "embed_tokens"]))
    torch.manual_seed(0)
    for name, p in policy.named_parameters():
        if "lora_B" in name or "lora_embedding_A" in name:
            p.data.normal_(0, 0.02)  # a trained adapter (B, and an embedding's A, start at 0)
    return policy


def test_colocated_sync_loads_every_merged_weight_one_at_a_time(fake_vllm):
    policy = _lora_policy()
    engine = make_engine("vllm", BASE)
    llm = FakeLLM.made[0]
    engine.sync(policy)
    (lazy, sent), = llm.model.loads
    assert lazy  # a generator: never every merged weight in memory at once
    names = [n for n, _ in sent]
    plain = AutoModelForCausalLM.from_pretrained(BASE).state_dict()
    assert sorted(names) == sorted(plain)  # every tensor, under the checkpoint's names
    sent = dict(sent)
    merged = policy.merge_and_unload().state_dict()  # peft's own merge, for reference
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight"):
        assert not torch.equal(sent[name], plain[name])  # the adapter is in it
        torch.testing.assert_close(sent[name], merged[name])
    assert torch.equal(sent["model.layers.0.self_attn.k_proj.weight"],
                       plain["model.layers.0.self_attn.k_proj.weight"])
    assert llm.resets == 1  # the prefix cache holds KV of the old weights


def _tiny_moe(arch, out):
    from transformers import MixtralConfig, MixtralForCausalLM, Qwen2MoeConfig, Qwen2MoeForCausalLM

    common = {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64}
    if arch == "mixtral":
        model = MixtralForCausalLM(MixtralConfig(num_local_experts=3, num_experts_per_tok=2,
                                                 **common))
    else:
        model = Qwen2MoeForCausalLM(Qwen2MoeConfig(
            num_experts=3, num_experts_per_tok=2, moe_intermediate_size=16,
            shared_expert_intermediate_size=16, **common))
    model.save_pretrained(out)
    return model, load_file(str(Path(out) / "model.safetensors"))


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe"])
def test_moe_weights_go_under_checkpoint_names(arch, tmp_path):
    """transformers 5 fuses each layer's experts in memory (`mlp.experts.gate_up_proj`, 3-D);
    vLLM's load_weights takes the checkpoint's per-expert names, as save_pretrained writes."""
    from r1kit.rollout.vllm import merged_weights

    torch.manual_seed(0)
    model, saved = _tiny_moe(arch, tmp_path)
    assert any("gate_up_proj" in n for n in model.state_dict())  # fused in memory
    for m in (model, AutoModelForCausalLM.from_pretrained(tmp_path)):  # built, and loaded
        sent = dict(merged_weights(m))
        assert sorted(sent) == sorted(saved)
        assert all(torch.equal(sent[k], saved[k]) for k in saved)
    peft = pytest.importorskip("peft")  # LoRA beside the experts: merged, names unchanged
    policy = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(tmp_path),
                                 peft.LoraConfig(r=2, target_modules=["q_proj"]))
    for name, p in policy.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.1)
    sent = dict(merged_weights(policy))
    assert sorted(sent) == sorted(saved)
    changed = sorted(k for k in saved if not torch.equal(sent[k], saved[k]))
    assert changed == [f"model.layers.{i}.self_attn.q_proj.weight" for i in range(2)]


def test_colocated_engine_settings_and_errors(fake_vllm, monkeypatch, tmp_path, caplog):
    # bf16 only where the GPU has it natively: torch's default counts emulation (pre-Ampere),
    # where vLLM refuses bf16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation)
    make_engine("vllm", BASE)
    assert FakeLLM.made[-1].kwargs["dtype"] == "float16"
    # the engine core must be in this process for sync: a user's 1 is overridden, said once
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    with caplog.at_level(logging.WARNING, "r1kit"):
        make_engine("vllm", BASE)
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert "VLLM_ENABLE_V1_MULTIPROCESSING=1" in caplog.text
    # the KV cache sized for the rollouts, not the model's whole context (256 here)
    assert FakeLLM.made[-1].kwargs["max_model_len"] is None  # budget not given: vLLM's default
    engine = make_engine("vllm", BASE, max_new_tokens=64, max_prompt_tokens=32)
    assert FakeLLM.made[-1].kwargs["max_model_len"] == 96
    make_engine("vllm", BASE, max_new_tokens=64)
    assert FakeLLM.made[-1].kwargs["max_model_len"] == 256  # allowance capped at the context
    make_engine("vllm", BASE, vllm_max_model_len=200, max_new_tokens=64)
    assert FakeLLM.made[-1].kwargs["max_model_len"] == 200  # the setting wins
    tok = AutoTokenizer.from_pretrained(BASE)
    with pytest.raises(UserError, match="raise rollout.vllm_max_model_len"):
        engine.sample(None, tok, "word " * 40, 2, max_new_tokens=64)
    # vLLM on cuda:0 only (its in-process worker's local rank): another GPU is refused
    with pytest.raises(UserError, match="CUDA_VISIBLE_DEVICES=1"):
        make_engine("vllm", BASE, device="cuda:1")
    with pytest.raises(UserError, match="cuda:1"):
        rv._check_device(torch.device("cuda", 1))
    # an engine core in another process (no model_executor here) is one line at the first sync
    del engine.llm.llm_engine.model_executor
    with pytest.raises(UserError, match="VLLM_ENABLE_V1_MULTIPROCESSING=0"):
        engine.sync(AutoModelForCausalLM.from_pretrained(BASE))


def test_colocated_engine_loads_an_adapter_folders_base(fake_vllm, tmp_path):
    policy = _lora_policy()
    adapter = tmp_path / "final-adapter"
    policy.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(BASE).save_pretrained(adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "../base"  # relative to the adapter, as r1kit resolves it
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    shutil.copytree(BASE, tmp_path / "base")
    engine = make_engine("vllm", str(adapter))
    kw = FakeLLM.made[-1].kwargs
    assert Path(kw["model"]).resolve() == (tmp_path / "base").resolve()
    assert kw["tokenizer"] == str(adapter)  # the adapter's tokenizer
    engine.sync(policy)  # and the first sync brings the merged weights
    assert len(FakeLLM.made[-1].model.loads) == 1


# --- server mode ------------------------------------------------------------------------------

class _Stub(http.server.BaseHTTPRequestHandler):
    """`vllm serve`'s /v1/models and /v1/completions as r1kit reads them: choices prompt-major,
    `n` per prompt, given back out of order here (the code sorts by index)."""

    def log_message(self, *a):
        pass

    def _json(self, code, obj):
        out = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def do_GET(self):
        self.server.seen.append((self.path, None))
        self._json(200, {"data": [{"id": "served-name"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append((self.path, body))
        time.sleep(self.server.delay)
        if body["max_tokens"] > 100:
            return self._json(400, {"error": "max_tokens is too large"})
        choices = []
        for i, prompt in enumerate(body["prompt"]):
            for j in range(body["n"]):
                ids = [prompt[-1] + j + 1] * (j + 1)
                lp = {"token_logprobs": [-0.25] * len(ids)} if "logprobs" in body else None
                choices.append({"index": i * body["n"] + j, "token_ids": ids, "logprobs": lp,
                                "finish_reason": "stop" if j == 0 else "length"})
        self._json(200, {"choices": choices[::-1]})


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # a client that timed out and left
        pass


@pytest.fixture
def stub_server():
    server = _QuietServer(("127.0.0.1", 0), _Stub)
    server.seen, server.delay = [], 0.0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def no_server_check(monkeypatch):  # TRL / vLLM on the trainer: tested on their own below
    monkeypatch.setattr(rv, "require_server_client", lambda: None)


def test_server_sample_reads_completions(stub_server, no_server_check, caplog):
    tok = AutoTokenizer.from_pretrained(BASE)
    url = f"http://127.0.0.1:{stub_server.server_port}"
    engine = make_engine("vllm", BASE, vllm_mode="server", vllm_server_url=url, logprobs=True)
    prompts = ["User: 2+2?", "User: 3+4? Assistant:"]
    with caplog.at_level(logging.WARNING, "r1kit"):
        ro = engine.sample(None, tok, prompts, 2, max_new_tokens=8, temperature=0.6, top_p=1.0,
                           stop=["</answer>"])
    assert "--logprobs-mode processed_logprobs" in caplog.text  # at temperature != 1
    (path0, _), (path1, body) = stub_server.seen
    assert path0 == "/v1/models" and path1 == "/v1/completions"
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    assert body["model"] == "served-name" and body["prompt"] == ids and body["n"] == 2
    assert body["top_k"] == 0 and body["logprobs"] == 0 and body["return_token_ids"]
    assert body["repetition_penalty"] == 1.0 and body["temperature"] == 0.6
    assert ro.completion_ids[0, :1].tolist() == [ids[0][-1] + 1]  # prompt 0, completion 0
    assert ro.completion_ids[3, :2].tolist() == [ids[1][-1] + 2] * 2  # prompt 1, completion 1
    assert ro.num_tokens == [1, 2, 1, 2] and ro.truncated == [False, True, False, True]
    assert ro.logprobs[1].tolist() == [-0.25, -0.25] and ro.logprobs[0, 1] == 0
    caplog.clear()
    with caplog.at_level(logging.WARNING, "r1kit"):
        engine.sample(None, tok, prompts, 2, max_new_tokens=8, temperature=0.6)
    assert "processed_logprobs" not in caplog.text  # said once
    plain = make_engine("vllm", BASE, vllm_mode="server", vllm_server_url=url, logprobs=True)
    with caplog.at_level(logging.WARNING, "r1kit"):
        plain.sample(None, tok, prompts, 2, max_new_tokens=8)  # T = 1, top_p = 1: raw = processed
    assert "processed_logprobs" not in caplog.text


def test_server_errors_are_one_line(stub_server, no_server_check, monkeypatch):
    tok = AutoTokenizer.from_pretrained(BASE)
    url = f"http://127.0.0.1:{stub_server.server_port}"
    engine = make_engine("vllm", BASE, vllm_mode="server", vllm_server_url=url)
    with pytest.raises(UserError, match="HTTP 400: .*max_tokens is too large"):
        engine.sample(None, tok, "hi", 2, max_new_tokens=101)
    stub_server.delay = 1.0  # reached, but slow: a timeout, not "cannot reach"
    monkeypatch.setattr(rv, "COMPLETIONS_TIMEOUT_S", 0.2)
    with pytest.raises(UserError, match="no answer within") as e:
        engine.sample(None, tok, "hi", 2, max_new_tokens=4)
    assert "cannot reach" not in str(e.value)
    stub_server.delay = 0.0
    stub_server.shutdown()
    stub_server.server_close()
    down = make_engine("vllm", BASE, vllm_mode="server", vllm_server_url=url)
    with pytest.raises(UserError, match="cannot reach it .*VLLM_SERVER_DEV_MODE=1 vllm serve"):
        down.sample(None, tok, "hi", 2, max_new_tokens=4)


class FakeClient:
    """TRL's VLLMClient (>= 1.11) as r1kit uses it."""
    made: ClassVar[list] = []
    fail: Exception | None = None
    fail_init: Exception | None = None

    def __init__(self, base_url):
        if FakeClient.fail is not None:
            raise FakeClient.fail
        self.base_url, self.device, self.updates, self.in_update, self.resets = (
            base_url, None, [], False, 0)
        FakeClient.made.append(self)

    def init_communicator(self, device=0):
        if FakeClient.fail_init is not None:
            raise FakeClient.fail_init
        self.device = device

    @contextlib.contextmanager
    def weight_update(self):
        self.in_update = True
        yield
        self.in_update = False

    def update_named_param(self, name, weights):
        assert self.in_update  # one weight update, not one per tensor
        self.updates.append((name, weights.clone()))

    def reset_prefix_cache(self):
        self.resets += 1


@pytest.fixture
def fake_trl(monkeypatch, fake_vllm):
    client_mod = _module("trl.generation.vllm_client", VLLMClient=FakeClient)
    generation = _module("trl.generation", vllm_client=client_mod)
    trl = _module("trl", generation=generation, __version__="1.11.0")
    for name, mod in (("trl", trl), ("trl.generation", generation),
                      ("trl.generation.vllm_client", client_mod)):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(FakeClient, "made", [])
    monkeypatch.setattr(FakeClient, "fail", None)
    monkeypatch.setattr(FakeClient, "fail_init", None)
    monkeypatch.setattr(rv, "_device_of", lambda policy: torch.device("cuda", 0))  # CPU here
    return trl


def test_server_sync_sends_every_merged_weight(fake_trl):
    policy = _lora_policy()
    engine = make_engine("vllm", BASE, vllm_mode="server", vllm_server_url="http://h:1")
    engine.sync(policy)
    engine.sync(policy)
    client, = FakeClient.made  # connected once
    assert client.base_url == "http://h:1" and client.device == torch.device("cuda", 0)
    plain = AutoModelForCausalLM.from_pretrained(BASE).state_dict()
    names = [n for n, _ in client.updates]
    assert sorted(names[: len(names) // 2]) == sorted(plain) and client.resets == 2
    sent = dict(client.updates)
    merged = policy.merge_and_unload().state_dict()
    torch.testing.assert_close(sent["model.layers.1.self_attn.v_proj.weight"],
                               merged["model.layers.1.self_attn.v_proj.weight"])


def test_server_setup_errors_say_what_to_install_or_start(fake_trl, monkeypatch):
    policy = AutoModelForCausalLM.from_pretrained(BASE)

    def sync_error(match):
        engine = rv.VLLMServer("http://h:1", BASE)
        with pytest.raises(UserError, match=match):
            engine.sync(policy)

    FakeClient.fail = ImportError("vLLM is not installed. Please install it with `pip install "
                                  "trl[vllm]`.")
    sync_error("vLLM is not installed.*pip install 'trl>=1.11.0' 'r1kit\\[vllm\\]'")
    # (requests' ConnectionError, which TRL raises, is an OSError like this one)
    FakeClient.fail = ConnectionError("The vLLM server can't be reached at http://h:1")
    sync_error("cannot reach it .*VLLM_SERVER_DEV_MODE=1 vllm serve MODEL")
    FakeClient.fail, FakeClient.fail_init = None, Exception("Request failed: 404, Not Found")
    sync_error("weight-transfer setup failed .*404.*--weight-transfer-config")
    # what check() (run before any model is loaded) says about the trainer's packages
    monkeypatch.setattr(fake_trl, "__version__", "1.10.0")
    with pytest.raises(UserError, match="TRL >= 1.11.0.*TRL 1.10.0"):
        check("vllm", "server")
    monkeypatch.setattr(fake_trl, "__version__", "1.11.0")
    check("vllm", "server")
    monkeypatch.delitem(sys.modules, "vllm")
    monkeypatch.delitem(sys.modules, "vllm.inputs")
    with pytest.raises(UserError, match="vLLM is needed on the trainer too"):
        check("vllm", "server")
    monkeypatch.delitem(sys.modules, "trl")
    with pytest.raises(UserError, match="pip install 'trl>=1.11.0'"):
        check("vllm", "server")
