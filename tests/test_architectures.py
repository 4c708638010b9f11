"""Hugging Face architectures beyond Llama/Qwen: sliding-window attention, ALiBi, functional
dropout, and models r1kit cannot sample (encoder-decoders, state-space models). Each is a tiny
random model built here from its config."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from r1kit import memory
from r1kit.errors import UserError
from r1kit.logprobs import _packable, completion_logprobs
from r1kit.models import load_model
from r1kit.rollout.hf import sample
from r1kit.trainable import disable_dropout

ASSETS = Path(__file__).resolve().parents[1] / "r1kit" / "assets" / "tiny-base"
SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
         "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0, "initializer_range": 0.2}
PROMPTS = ["7+8", "Compute 55-21+13-2 and then tell me, step by step, why it is so", "90-9+2 ="]


def _random(tmp_path: Path, model_type: str, attn: str = "sdpa", **config) -> str:
    """A random `model_type` model with the built-in tokenizer, saved under `tmp_path`."""
    out = tmp_path / model_type
    out.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ASSETS / name, out / name)
    vocab = len(AutoTokenizer.from_pretrained(out))
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(model_type, vocab_size=vocab, **{**SMALL, **config})
    cfg._attn_implementation = attn
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    return str(out)


def _load(path: str, attn: str = "sdpa"):
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn).eval()
    return model, AutoTokenizer.from_pretrained(path)


def test_sliding_window_models_sample_as_generate_past_their_window(tmp_path):
    """The window (8) is shorter than prompt + completion: the layers' caches keep only their
    window, so the 4D mask built for a full cache would not fit (it crashed)."""
    model, tok = _load(_random(tmp_path, "mistral", sliding_window=8))
    ro = sample(model, tok, PROMPTS, 2, max_new_tokens=12, temperature=0.0)
    for i, prompt in enumerate(PROMPTS):
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        want = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=0,
                              pad_token_id=0)[0, ids.shape[1]:]
        for row in (2 * i, 2 * i + 1):
            got = ro.completion_ids[row, : ro.num_tokens[row]]
            assert got.tolist() == want[: len(got)].tolist(), prompt


@pytest.mark.parametrize(("model_type", "attn", "config"), [
    ("mistral", "sdpa", {"sliding_window": 8}),  # the window is shorter than a packed row
    ("gemma3_text", "sdpa", {"sliding_window": 8, "head_dim": 16, "query_pre_attn_scalar": 16,
                             "layer_types": ["sliding_attention", "full_attention"]}),
    ("mpt", "eager", {"d_model": 64, "n_heads": 4, "n_layers": 2, "expansion_ratio": 2,
                      "max_seq_len": 256}),  # ALiBi: positions are not position_ids
])
def test_packing_is_left_to_architectures_it_reproduces(tmp_path, model_type, attn, config):
    """Under activation checkpointing a group is packed into one row only where that attends as
    separate rows do; here the plain path runs, and the log-probs equal the shared-prompt path's
    (they were off by 1-12 nats)."""
    model, tok = _load(_random(tmp_path, model_type, attn, **config), attn)
    ro = sample(model, tok, PROMPTS[:2], 2, max_new_tokens=10, temperature=1.0,
                generator=torch.Generator().manual_seed(0))
    args = ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask
    assert not _packable(model, ro.prompt_mask, ro.completion_mask, 2)
    with torch.no_grad():
        shared, _ = completion_logprobs(model, *args, group_size=2)
    model.train()
    memory.enable_gradient_checkpointing(model)
    one_forward, _ = completion_logprobs(model, *args, group_size=2)
    mask = ro.completion_mask.bool()
    torch.testing.assert_close(one_forward[mask], shared[mask], atol=2e-5, rtol=0)


def test_a_window_longer_than_the_packed_row_still_packs(tmp_path):
    model, tok = _load(_random(tmp_path, "mistral", sliding_window=4096))
    ro = sample(model, tok, PROMPTS[:2], 2, max_new_tokens=6, temperature=1.0,
                generator=torch.Generator().manual_seed(0))
    assert _packable(model, ro.prompt_mask, ro.completion_mask, 2)


@pytest.mark.parametrize(("model_type", "config"), [
    ("opt", {"ffn_dim": 128, "word_embed_proj_dim": 64, "dropout": 0.1,
             "attention_dropout": 0.1, "layerdrop": 0.5}),
    ("falcon", {"num_kv_heads": 1, "new_decoder_architecture": False, "multi_query": True,
                "alibi": False, "attention_dropout": 0.1, "hidden_dropout": 0.1}),
    ("mixtral", {"num_local_experts": 4, "num_experts_per_tok": 2, "router_jitter_noise": 0.1}),
])
def test_rl_turns_off_functional_dropout_and_layerdrop(tmp_path, model_type, config):
    """OPT applies its dropout as `F.dropout(p=self.dropout)` and skips layers by `layerdrop`,
    Falcon reads its config's dropout, Mixtral jitters its router's input: no `nn.Dropout`
    module holds them, yet RL needs training-mode logits equal to eval-mode's."""
    model, _ = _load(_random(tmp_path, model_type, **config))
    ids = torch.randint(1, 600, (2, 16))
    disable_dropout(model)
    with torch.no_grad():
        eval_logits = model.eval()(input_ids=ids).logits
        train_logits = model.train()(input_ids=ids).logits
    assert torch.equal(eval_logits, train_logits)


def test_models_that_cannot_be_sampled_say_why(tmp_path):
    t5 = tmp_path / "t5"
    t5.mkdir()
    shutil.copy(ASSETS / "tokenizer.json", t5)
    shutil.copy(ASSETS / "tokenizer_config.json", t5)
    from transformers import T5Config, T5ForConditionalGeneration

    T5ForConditionalGeneration(T5Config(vocab_size=700, d_model=32, d_ff=64, num_layers=1,
                                        num_heads=2, decoder_start_token_id=0)).save_pretrained(t5)
    with pytest.raises(UserError, match="a 't5' model is not a causal"):
        load_model(str(t5))
    mamba, tok = _load(_random(tmp_path, "mamba", "eager", state_size=8, expand=2), "eager")
    with pytest.raises(UserError, match="needs an attention KV cache in every layer"):
        sample(mamba, tok, PROMPTS[:1], 2, max_new_tokens=4)


def test_the_attention_implementation_is_a_setting(tiny_base, tmp_path):
    from r1kit.cli import main as cli

    model, _ = load_model(tiny_base, attn="eager")
    assert model.config._attn_implementation == "eager"
    assert load_model(tiny_base)[0].config._attn_implementation == "sdpa"  # auto
    with pytest.raises(UserError, match="FlashAttention2"):  # no flash-attn here: one line
        load_model(tiny_base, attn="flash_attention_2")
    assert cli(["eval", "--model", tiny_base, "--set", "model.attn_implementation=eager",
                "--set", "eval.num_problems=2", "--set", "eval.k=1",
                "--set", "eval.max_new_tokens=4", "--out", str(tmp_path / "ev")]) == 0
    assert cli(["zero", "--set", "model.attn_implementation=flash", "--set",
                f"run.out_dir={tmp_path}"]) == 2


def test_bfloat16_training_keeps_float32_master_weights(tiny_base):
    """AdamW on bfloat16 weights loses every update below bfloat16's resolution (~1/256 of a
    weight): at lr 1e-5 nearly nothing moves. With master weights (the default) the weights and
    optimizer state stay float32, the forward computes in bfloat16, and the update lands."""
    from r1kit.config import LoraConfig, ModelConfig
    from r1kit.models import compute_dtype
    from r1kit.trainable import load_trainable

    ids = torch.randint(1, 600, (4, 24))
    moved = {}
    for master in (True, False):
        cfg = ModelConfig(path=tiny_base, dtype="bfloat16", master_weights=master)
        model, _ = load_trainable(cfg, LoraConfig(), None, "cpu")
        assert compute_dtype(model) == torch.bfloat16
        weights = model.model.layers[0].mlp.down_proj.weight
        assert weights.dtype == (torch.float32 if master else torch.bfloat16)
        start = weights.detach().clone()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        for _ in range(3):
            logits = model(input_ids=ids).logits
            assert logits.dtype == torch.bfloat16  # the matrix products ran in bfloat16
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                                     ids[:, 1:].flatten())
            loss.backward()
            opt.step()
            opt.zero_grad()
        moved[master] = (weights.detach() != start).float().mean().item()
    assert moved[True] > 0.99 and moved[False] < 0.2, moved


def test_mixed_precision_leaves_no_autocast_behind_an_interrupted_forward(tiny_base):
    from r1kit.config import LoraConfig, ModelConfig
    from r1kit.trainable import load_trainable

    model, _ = load_trainable(ModelConfig(path=tiny_base, dtype="bfloat16"), LoraConfig(), None,
                              "cpu")
    ids = torch.randint(1, 600, (1, 8))
    layer = model.model.layers[0]
    real = layer.forward

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    layer.forward = interrupted
    with pytest.raises(KeyboardInterrupt):  # (forward hooks run on Exception only)
        model(input_ids=ids)
    layer.forward = real
    assert model(input_ids=ids).logits.dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")  # the next forward closed the one left open
