"""The update: micro-batch x accumulation invariance, non-finite steps, stuck-reward warnings."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from r1kit import grpo
from r1kit.config import RLConfig, RolloutConfig, ZeroConfig, load_config
from r1kit.errors import UserError
from r1kit.rewards import register
from r1kit.rollout.hf import sample
from r1kit.sft import cosine_lr
from r1kit.stages import zero
from r1kit.stages.zero import Timer, update_policy
from r1kit.templates import render_prompt


def _update_with(model, ro, advantages, micro_batch_size, aggregation, mu=1, metrics=None,
                 **rl_sets):
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rl = RLConfig(micro_batch_size=micro_batch_size, aggregation=aggregation, beta=0.0,
                  updates_per_rollout=mu, **rl_sets)
    rows = torch.arange(len(ro))
    m = update_policy(model, None, opt, ro, advantages, ro.completion_mask, rows, rl,
                      RolloutConfig(), 16, Timer())
    (metrics if metrics is not None else {}).update(m)
    return model


def test_micro_batching_does_not_change_the_update(tiny_base):
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    tok = AutoTokenizer.from_pretrained(tiny_base)
    prompts = [render_prompt(f"Compute {a}+3-2") for a in (11, 25, 40, 63)]
    ro = sample(model, tok, prompts, 4, max_new_tokens=16,
                generator=torch.Generator().manual_seed(0))
    rewards = torch.tensor([float(len(t) % 3) for t in ro.texts])  # (B*G,) arbitrary, varied
    advantages = grpo.group_advantages(rewards, 4)
    for aggregation in ("token_mean", "seq_mean_token_mean", "constant"):
        whole = _update_with(model, ro, advantages, 16, aggregation)
        split = _update_with(model, ro, advantages, 4, aggregation)  # 4 micro-batches of 1 group
        for a, b in zip(whole.parameters(), split.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
        moved = sum((a - b).abs().sum().item()
                    for a, b in zip(whole.parameters(), model.parameters()))
        assert moved > 0

    # the logged token means do not depend on the micro-batching either, even when short and long
    # completions land in different (length-sorted) micro-batches
    mask = ro.completion_mask.clone()
    mask[::2, 2:] = 0  # every other row: 2 tokens
    uneven = dataclasses.replace(ro, completion_mask=mask)
    logged = [{}, {}]
    for size, m in zip((16, 4), logged):
        _update_with(model, uneven, advantages, size, "token_mean", metrics=m)
    for key in ("train/entropy", "train/ratio_mean", "train/clip_frac"):
        assert logged[1][key] == pytest.approx(logged[0][key], rel=1e-5, abs=1e-7), key

    # mu above the number of groups: the extra minibatches are empty and change nothing, neither
    # the update nor the logged means (they once halved the loss and grad norm at mu = 2 x groups)
    logged = [{}, {}]
    for mu, m in zip((4, 8), logged):
        torch.manual_seed(0)  # the same group order
        _update_with(model, ro, advantages, 16, "token_mean", mu=mu, metrics=m)
    for key in ("train/loss", "train/pg_loss", "train/grad_norm", "train/entropy"):
        assert logged[1][key] == pytest.approx(logged[0][key], rel=1e-6), key


def test_rollout_correction_reweighs_the_sampler_samples(tiny_base):
    """rl.rollout_correction: the hf engine's float32 log-probs are the training forward's, so the
    correction changes nothing; log-probs from another sampler (as vLLM's, here shifted by hand)
    are capped or dropped, and a step whose every token is dropped moves nothing."""
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    tok = AutoTokenizer.from_pretrained(tiny_base)
    prompts = [render_prompt(f"Compute {a}+3-2") for a in (11, 25)]
    ro = sample(model, tok, prompts, 4, max_new_tokens=12,
                generator=torch.Generator().manual_seed(0))
    advantages = grpo.group_advantages(torch.tensor([float(len(t) % 3) for t in ro.texts]), 4)
    plain = _update_with(model, ro, advantages, 8, "token_mean", grad_clip=1e9)
    for mu in (1, 2):
        m = {}
        torch.manual_seed(0)
        want = _update_with(model, ro, advantages, 8, "token_mean", mu=mu)
        torch.manual_seed(0)
        got = _update_with(model, ro, advantages, 8, "token_mean", mu=mu, metrics=m,
                           rollout_correction="token_truncate")
        for a, b in zip(got.parameters(), want.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        assert m["train/rollout_logprob_gap"] < 1e-4
        assert m["train/rollout_is_weight"] == pytest.approx(1.0, abs=1e-4)
        assert m["train/rollout_is_changed"] == 0

    # a sampler that put 1 nat less on every token: pi_old / pi_sampler = e, capped at 2
    off = dataclasses.replace(ro, logprobs=ro.logprobs - 1.0)
    m = {}
    capped = _update_with(model, off, advantages, 8, "token_mean", metrics=m,
                          rollout_correction="token_truncate", grad_clip=1e9)
    assert m["train/rollout_is_weight"] == pytest.approx(2.0, rel=1e-4)
    assert m["train/rollout_is_changed"] == 1.0
    assert m["train/rollout_logprob_gap"] == pytest.approx(1.0, rel=1e-3)
    # at ratio 1 the surrogate's gradient is linear in the weights: twice the plain step (SGD,
    # no clipping)
    for a, b, c in zip(capped.parameters(), plain.parameters(), model.parameters()):
        torch.testing.assert_close(a - c, 2 * (b - c), rtol=1e-3, atol=1e-6)
    m = {}
    dropped = _update_with(model, off, advantages, 8, "token_mean", metrics=m,
                           rollout_correction="sequence_mask")
    assert m["train/rollout_is_weight"] == 0 and m["train/rollout_is_changed"] == 1.0
    for a, b in zip(dropped.parameters(), model.parameters()):
        assert torch.equal(a, b)

    # vLLM's log-probs are its kernels': never taken as pi_old, even in float32 with mu > 1
    vllm = dataclasses.replace(RolloutConfig(), engine="vllm")
    opt = torch.optim.SGD(copy.deepcopy(model).parameters(), lr=0.0)
    m = update_policy(copy.deepcopy(model), None, opt, off, advantages, off.completion_mask,
                      torch.arange(len(off)), RLConfig(updates_per_rollout=2), vllm, 16, Timer())
    assert m["train/ratio_mean"] == pytest.approx(1.0, abs=1e-4)  # not e: pi_old recomputed


def test_a_bad_later_minibatch_reports_the_ones_already_applied(tiny_base, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    tok = AutoTokenizer.from_pretrained(tiny_base)
    ro = sample(model, tok, [render_prompt(f"Compute {a}+3-2") for a in (11, 25)], 4,
                max_new_tokens=16, generator=torch.Generator().manual_seed(0))
    advantages = grpo.group_advantages(torch.tensor([float(len(t) % 3) for t in ro.texts]), 4)
    calls, real = {"n": 0}, grpo.policy_loss

    def nan_after_first(*args, **kwargs):
        calls["n"] += 1
        loss, m = real(*args, **kwargs)
        return (loss if calls["n"] == 1 else loss * float("nan")), m

    monkeypatch.setattr(grpo, "policy_loss", nan_after_first)
    m: dict = {}
    updated = _update_with(model, ro, advantages, 16, "token_mean", mu=2, metrics=m)
    assert (m["ok"], m["applied"], calls["n"]) == (False, 1, 2)
    assert any(not torch.equal(a, b) for a, b in zip(updated.parameters(), model.parameters()))


@register("test_varied")
def _varied(completion: str, problem) -> float:
    return float(len(completion) % 2)


@register("test_zero")
def _always_zero(completion: str, problem) -> float:
    return 0.0


@register("test_half_varied")
def _half_varied(completion: str, problem) -> float:
    """Equal rewards in every group of an odd answer: those groups carry no signal."""
    return float(len(completion) % 3) if int(problem.answer) % 2 == 0 else 1.0


@register("test_huge")
def _huge(completion: str, problem) -> float:
    return 1e39 if len(completion) % 2 else 0.0  # a finite float, inf in float32


def _cfg(tmp_path, model, name, **sets):
    base = [f"model.path={model}", f"run.out_dir={tmp_path}", f"run.name={name}",
            "rl.prompts_per_step=2", "rl.group_size=4", "rollout.max_new_tokens=8",
            "eval.num_problems=2", "eval.k=1", "eval.every=0", "eval.max_new_tokens=8",
            "data.train_size=16", "run.checkpoint_every=1"]
    return load_config(ZeroConfig, None, base + [f"{k}={v}" for k, v in sets.items()])


def test_non_finite_steps_stop_cleanly_keeping_last_checkpoint(tiny_base, tmp_path, monkeypatch,
                                                               caplog):
    calls = {"n": 0}
    real = grpo.policy_loss

    def flaky(*args, **kwargs):
        calls["n"] += 1
        loss, m = real(*args, **kwargs)
        return (loss * float("nan") if calls["n"] > 2 else loss), m  # NaN from step 3 on

    monkeypatch.setattr(grpo, "policy_loss", flaky)
    # every step updates (no group dropped for equal rewards), whatever the sampled completions
    cfg = _cfg(tmp_path, tiny_base, "nan", **{"rl.steps": 10, "rl.max_bad_steps": 3,
                                              "rl.dynamic_sampling": "false",
                                              "rewards.weights": "{test_varied: 1.0}"})
    with caplog.at_level(logging.WARNING, logger="r1kit"):
        summary = zero.main(cfg)
    run = tmp_path / "nan"
    assert "stopped" in summary and summary["steps"] == 4  # steps 3 and 4 ran but were skipped
    assert "non-finite" in caplog.text
    assert (run / "checkpoints" / "latest").read_text() == "step-000002"
    state = torch.load(run / "checkpoints" / "step-000002" / "trainer_state.pt",
                       weights_only=False)
    for p in state["optimizer"]["state"].values():
        assert torch.isfinite(p["exp_avg"]).all()
    assert json.loads((run / "summary.json").read_text())["stopped"].startswith("stopped after 3")


def test_rewards_beyond_float32_skip_the_update_as_non_finite(tiny_base, tmp_path, caplog):
    cfg = _cfg(tmp_path, tiny_base, "huge", **{"rl.steps": 4, "rl.max_bad_steps": 2,
                                               "rewards.weights": "{test_huge: 1.0}"})
    with caplog.at_level(logging.WARNING, logger="r1kit"):
        summary = zero.main(cfg)  # (the advantages used to raise: a traceback, exit 1)
    assert "non-finite rewards; update skipped" in caplog.text
    assert summary["stopped"].startswith("stopped after 2 consecutive non-finite steps")
    rows = [json.loads(line) for line in (tmp_path / "huge" / "metrics.jsonl").open()]
    assert len(rows) == 2 and not any("train/loss" in r for r in rows)  # nothing was updated


def test_stuck_rewards_warn_loudly(tiny_base, tmp_path, caplog):
    cfg = _cfg(tmp_path, tiny_base, "stuck", **{"rl.steps": 4, "rl.stuck_steps": 2,
                                                "rewards.weights": "{test_zero: 1.0}",
                                                "rl.lr_schedule": "cosine", "rl.warmup_steps": 1,
                                                "rl.lr": 1e-4, "rl.min_lr": 1e-5})
    with caplog.at_level(logging.WARNING, logger="r1kit"):
        zero.main(cfg)
    assert "every group has had equal rewards for 2 steps" in caplog.text
    assert "reward 'test_zero' returned 0.0 for every completion" in caplog.text
    # no step updated (every group dropped), yet the schedule follows the steps to min_lr
    rows = [json.loads(line) for line in (tmp_path / "stuck" / "metrics.jsonl").open()]
    assert [r["train/lr"] for r in rows] == pytest.approx(
        [cosine_lr(s, 4, 1, 1e-4, 1e-5) for s in range(4)])
    assert rows[-1]["train/lr"] == pytest.approx(1e-5)


def test_dynamic_sampling_refills_the_batch(tiny_base, tmp_path):
    """rl.dynamic_sampling_rounds > 1 (DAPO): more prompts are sampled until B groups with unequal
    rewards are kept; the update takes B of them."""
    def run(name, rounds):
        cfg = _cfg(tmp_path, tiny_base, name, **{
            "rl.steps": 4, "rl.prompts_per_step": 4, "rl.dynamic_sampling_rounds": rounds,
            "rewards.weights": "{test_half_varied: 1.0}", "run.checkpoint_every": 0})
        zero.main(cfg)
        return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").open()]

    refilled = run("refill", 6)
    assert all(r["train/groups_kept"] == 1.0 for r in refilled)  # every step: B groups
    assert max(r["train/sampling_rounds"] for r in refilled) > 1
    # without the refill, some steps train on fewer groups than B
    plain = run("plain", 1)
    assert "train/sampling_rounds" not in plain[0]
    assert min(1 - r["train/zero_adv_groups"] for r in plain) < 1

    # with the overlong filter, a group whose every completion was truncated updates nothing,
    # whatever its rewards: it does not count towards B
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])  # groups of 2: unequal, unequal, equal
    truncated = [True, True, True, False, False, False]
    for overlong, useful in ((False, [True, True, False]), (True, [False, True, False])):
        rl = RLConfig(overlong_filter=overlong)
        assert zero._useful_groups(rewards, truncated, 2, rl).tolist() == useful

    with pytest.raises(UserError, match="needs rl.dynamic_sampling=true"):
        _cfg(tmp_path, tiny_base, "x", **{"rl.dynamic_sampling_rounds": 2,
                                          "rl.dynamic_sampling": "false"})


def test_equal_rewards_have_exactly_zero_spread():
    from r1kit.rewards.scoring import Scores
    from r1kit.rollout.hf import Rollouts
    from r1kit.tasks.base import Problem

    n = 8
    ro = Rollouts(prompt_ids=torch.ones(n, 2), prompt_mask=torch.ones(n, 2),
                  completion_ids=torch.ones(n, 3), completion_mask=torch.ones(n, 3),
                  texts=["<think> 1+1=2 </think> <answer>2</answer>"] * n, num_tokens=[3] * n,
                  truncated=[False] * n, group_size=4)
    rewards = torch.full((n,), 0.1)  # float32's std of this is 8e-9, not 0
    m = zero._rollout_metrics(ro, Scores([0.1] * n, {}, {}), rewards,
                              torch.ones(2, dtype=torch.bool), [Problem("p", "Compute 1+1", "2")] * n)
    assert m["train/reward_std"] == 0 and m["train/zero_adv_groups"] == 1


def test_rl_turns_dropout_off_so_the_ratio_is_not_noise(tiny_base):
    from r1kit.trainable import disable_dropout

    model = AutoModelForCausalLM.from_pretrained(tiny_base, attention_dropout=0.5)
    model.train()
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    torch.manual_seed(0)
    noisy = [model(ids).logits for _ in range(2)]
    assert not torch.allclose(noisy[0], noisy[1])  # the check can fail: dropout was on
    disable_dropout(model)
    trained = model(ids).logits  # training mode, as in the update
    model.eval()  # as the sampler, pi_old and the reference
    assert torch.equal(trained, model(ids).logits)
