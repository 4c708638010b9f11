"""LoRA through peft: adapters train, the reference is the base with adapters off, checkpoints hold
the adapter and resume, final/ is a plain merged Hugging Face folder; memory controls keep the
update exact."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from r1kit import grpo, lora
from r1kit.config import LoraConfig, RLConfig, RolloutConfig, ZeroConfig, load_config
from r1kit.logprobs import completion_logprobs
from r1kit.memory import enable_gradient_checkpointing
from r1kit.rollout.hf import sample
from r1kit.stages import zero
from r1kit.stages.zero import Timer, update_policy
from r1kit.templates import render_prompt
from tests.tiny_models import build

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    return build(tmp_path_factory.mktemp("lora") / "llama", "llama", hidden=32, layers=2)


def _rollouts(folder: str):
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    prompts = [render_prompt(f"Compute {a}+3") for a in (11, 25, 40, 63)]
    ro = sample(model, tok, prompts, 2, max_new_tokens=12, generator=torch.Generator().manual_seed(0))
    adv = grpo.group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.0, 1.0, 0.2]), 2)
    return model, ro, adv


def test_reference_is_the_base_with_adapters_off(tiny_llama):
    base, ro, _ = _rollouts(tiny_llama)
    policy = lora.apply(copy.deepcopy(base), LoraConfig(r=4, alpha=8.0))
    for name, p in policy.named_parameters():
        if "lora_B" in name:  # peft starts B at zero (a no-op adapter); make it do something
            torch.nn.init.normal_(p, std=0.5)
    policy.eval()
    args = (ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask)
    with torch.no_grad():
        want = completion_logprobs(base, *args, group_size=2)[0]
        with lora.reference(policy, None) as ref:
            got = completion_logprobs(ref, *args, group_size=2)[0]
        adapted = completion_logprobs(policy, *args, group_size=2)[0]
    mask = ro.completion_mask.bool()
    torch.testing.assert_close(got[mask], want[mask])
    assert (adapted[mask] - want[mask]).abs().max() > 1e-3
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in base.parameters()) / 4


def _update(model, ro, adv, **rl):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    update_policy(model, None, opt, ro, adv, ro.completion_mask, torch.arange(len(ro)),
                  RLConfig(beta=0.0, **rl), RolloutConfig(), 16, Timer())
    return model


def test_checkpointing_and_token_budget_keep_the_update_exact(tiny_llama):
    base, ro, adv = _rollouts(tiny_llama)
    plain = _update(copy.deepcopy(base), ro, adv, micro_batch_size=8)
    ckpt_model = copy.deepcopy(base)
    enable_gradient_checkpointing(ckpt_model)
    # A budget of 2 rows' worth of tokens: 4 micro-batches of one group each.
    budget = 2 * (ro.prompt_ids.shape[1] + ro.completion_ids.shape[1])
    split = _update(ckpt_model, ro, adv, micro_batch_size=8, max_tokens_per_micro_batch=budget)
    moved = 0.0
    for (name, a), b, c in zip(plain.named_parameters(), split.parameters(), base.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        moved += (a - c).abs().sum().item()
    assert moved > 1e-3


def _zero_overrides(tmp_path: Path, model: str, name: str, steps: int) -> list[str]:
    return [
        f"model.path={model}", f"run.out_dir={tmp_path}", f"run.name={name}", "run.report_to=[]",
        f"rl.steps={steps}", "rl.prompts_per_step=2", "rl.group_size=4", "rl.lr=0.05",
        "rl.warmup_steps=1", "rl.beta=0.05", "rollout.max_new_tokens=8", "eval.num_problems=2",
        "eval.k=1", "eval.every=0", "eval.max_new_tokens=8", "run.checkpoint_every=1",
        "data.train_size=32", "lora.r=4", "lora.alpha=8", "lora.target_modules=[q_proj,v_proj]",
        "rewards.weights={test_lora_len: 1.0}", "rl.dynamic_sampling=false",
    ]


from r1kit.rewards import register


@register("test_lora_len")
def _length(completion: str, problem) -> float:
    return min(1.0, len(completion) / 40)


def test_lora_rl_saves_adapter_and_merged_model_and_resumes(tiny_llama, tmp_path):
    zero.main(load_config(ZeroConfig, None, _zero_overrides(tmp_path, tiny_llama, "lora", 2)))
    run = tmp_path / "lora"
    ckpt = run / "checkpoints" / "step-000002"
    assert (ckpt / "adapter_config.json").is_file() and not (ckpt / "model.safetensors").exists()
    adapter = load_file(str(ckpt / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # B left zero
    # final/ is a plain HF folder with the adapters merged into q_proj and v_proj only.
    assert not (run / "final" / "adapter_config.json").exists()
    assert (run / "final-adapter" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(run / "final").state_dict()
    base = AutoModelForCausalLM.from_pretrained(tiny_llama).state_dict()
    assert set(merged) == set(base)
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed)

    # Resume (as after a kill) with one more step: adapter from the checkpoint, base from
    # model.path, optimizer and sampler state from trainer_state.pt.
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["rl"]["steps"] = 3
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    cfg = load_config(ZeroConfig, None, _zero_overrides(tmp_path, tiny_llama, "lora", 3))
    zero.main(cfg, resume=str(run))
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert (run / "checkpoints" / "step-000003" / "adapter_config.json").is_file()



def test_lora_with_reference_reset_is_refused(tiny_llama, tmp_path):
    from r1kit.errors import UserError

    over = _zero_overrides(tmp_path, tiny_llama, "refreset", 1) + ["rl.ref_reset_every=5"]
    with pytest.raises(UserError, match="ref_reset_every"):
        zero.main(load_config(ZeroConfig, None, over))


def test_lora_sft_trains_adapters_and_saves_merged(tiny_llama, tmp_path):
    from r1kit.config import SFTConfig
    from r1kit.stages import sft

    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{a}+1?", "completion": f"<think> {a}+1 is "
                                        f"{a + 1} </think> <answer> {a + 1} </answer>"}) + "\n"
                            for a in range(8)))
    summary = sft.main(load_config(SFTConfig, None, [
        f"model.path={tiny_llama}", f"run.out_dir={tmp_path}", "run.name=sft", "run.report_to=[]",
        f"data.train_file={data}", "sft.epochs=3", "sft.batch_size=4", "sft.lr=0.01",
        "sft.min_lr=0.01", "sft.warmup_steps=0", "eval.num_problems=0", "lora.r=8",
        "lora.alpha=16", "model.gradient_checkpointing=true"]))
    assert summary["last_loss"] < summary["first_loss"]
    run = tmp_path / "sft"
    assert (run / "final-adapter" / "adapter_config.json").is_file()
    base = AutoModelForCausalLM.from_pretrained(tiny_llama).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(run / "final").state_dict()
    assert set(base) == set(merged)
    changed = [k for k in base if not torch.equal(base[k], merged[k])]
    assert changed and all("proj" in k for k in changed)  # only adapted linear layers moved


def test_a_relative_model_path_is_recorded_absolute(tiny_llama, tmp_path, monkeypatch):
    """What a LoRA adapter records as its base must load from any directory."""
    from r1kit.models import load_model

    monkeypatch.chdir(Path(tiny_llama).parent)
    model, _ = load_model(Path(tiny_llama).name)
    assert Path(model.name_or_path).is_absolute() and Path(model.name_or_path) == Path(tiny_llama)


def test_rl_turns_a_lora_dropout_off_with_a_warning(tiny_llama, caplog):
    from r1kit.trainable import disable_dropout

    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    policy = lora.apply(copy.deepcopy(base), LoraConfig(r=4, dropout=0.1))
    dropouts = [m for n, m in policy.named_modules() if isinstance(m, torch.nn.Dropout)
                and "lora_dropout" in n]
    assert dropouts and all(m.p == 0.1 for m in dropouts)
    with caplog.at_level("WARNING", logger="r1kit.trainable"):
        disable_dropout(policy)
    assert all(m.p == 0.0 for m in dropouts)
    assert "lora.dropout=0.1 is turned off" in caplog.text
    assert "applies to SFT only" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="r1kit.trainable"):  # no LoRA dropout: nothing to say
        disable_dropout(lora.apply(base, LoraConfig(r=4)))
    assert "lora.dropout" not in caplog.text
