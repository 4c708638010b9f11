"""End-to-end `r1kit zero` on a toy base model: it trains, logs, checkpoints and resumes."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from r1kit.cli import main as cli
from r1kit.config import ZeroConfig, load_config
from r1kit.rewards import register
from r1kit.stages import zero

CALLS = {"n": 0, "interrupt_at": None}


@register("test_length")
def _length_reward(completion: str, problem) -> float:
    """A reward with variance even for an untrained model: longer text scores higher."""
    CALLS["n"] += 1
    if CALLS["interrupt_at"] is not None and CALLS["n"] >= CALLS["interrupt_at"]:
        raise KeyboardInterrupt  # simulates the run being killed mid-step
    return min(1.0, len(completion) / 80)


def _overrides(tmp_path: Path, model: str, name: str, steps: int = 4) -> list[str]:
    return [
        f"model.path={model}", f"run.out_dir={tmp_path}", f"run.name={name}",
        f"rl.steps={steps}", "rl.prompts_per_step=4", "rl.group_size=4", "rl.micro_batch_size=8",
        "rl.lr=0.01", "rl.warmup_steps=1", "rl.beta=0.01", "rl.ref_reset_every=3",
        "rollout.max_new_tokens=16", "eval.num_problems=4", "eval.k=2", "eval.every=2",
        "eval.max_new_tokens=16", "run.checkpoint_every=2", "data.train_size=64",
        "rewards.weights={test_length: 1.0, accuracy: 1.0, format: 0.1}",
    ]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_zero_trains_logs_and_saves(tiny_base, tmp_path):
    CALLS.update(n=0, interrupt_at=None)
    cfg = load_config(ZeroConfig, None, _overrides(tmp_path, tiny_base, "e2e"))
    summary = zero.main(cfg)
    run = tmp_path / "e2e"

    before, after = _weights(Path(tiny_base)), _weights(run / "final")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before), f"unchanged parameters: {set(before) - set(changed)}"

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("reward/total", "reward/accuracy", "reward/format", "reward/test_length",
                "train/kl", "train/entropy", "train/clip_frac", "train/grad_norm",
                "train/zero_adv_groups", "train/completion_tokens", "train/truncated",
                "time/generate", "time/score", "time/logprobs", "time/update", "time/step"):
        assert key in rows[-1], key
    for key in ("base_pass@1", "final_pass@1", "base_cons@k", "final_cons@k", "steps",
                "wall_seconds"):
        assert key in summary
    assert summary["steps"] == 4
    assert json.loads((run / "summary.json").read_text()) == summary
    evals = [json.loads(line)["tag"] for line in (run / "eval.jsonl").read_text().splitlines()]
    assert evals == ["base", "step2", "final"]
    assert (run / "config.yaml").is_file() and (run / "completions.jsonl").is_file()
    # each logged completion: its total and each reward's value, the total their weighted sum
    weights = cfg.rewards.weights
    for row in map(json.loads, (run / "completions.jsonl").read_text().splitlines()):
        assert set(row["rewards"]) == set(weights)
        assert row["reward"] == pytest.approx(
            sum(weights[k] * (v or 0.0) for k, v in row["rewards"].items()))
    assert (run / "checkpoints" / "latest").read_text() == "step-000004"
    # The reference is reset to the policy after step 3, so step 4's rollouts (sampled by that
    # very policy) have zero KL to it, while steps 2-3 had drifted from the base model.
    kls = [r["train/kl"] for r in rows]
    assert kls[1] > 1e-6 and kls[2] > 1e-6 and kls[3] < 1e-6, kls


def test_several_updates_per_rollout_use_the_clipped_ratio(tiny_base, tmp_path):
    CALLS.update(n=0, interrupt_at=None)
    sets = _overrides(tmp_path, tiny_base, "mu2", steps=2) + [
        "rl.updates_per_rollout=2", "rl.eps_low=0.01", "rl.eps_high=0.01", "eval.every=0"]
    zero.main(load_config(ZeroConfig, None, sets))
    rows = [json.loads(x) for x in (tmp_path / "mu2" / "metrics.jsonl").read_text().splitlines()]
    # The second minibatch is taken after the first update: ratios move off 1 and, with a
    # narrow clip range, some tokens are clipped.
    assert any(abs(r["train/ratio_mean"] - 1.0) > 1e-6 for r in rows)
    assert any(r["train/clip_frac"] > 0 for r in rows)


def test_mu_above_one_takes_pi_old_from_the_sampler(tiny_base, tmp_path, monkeypatch):
    """With the hf engine's kept log-probs, mu = 2 and beta = 0 need no no-grad pass at all;
    with rl.reuse_sampling_logprobs=false, pi_old is recomputed."""
    passes = []
    real = zero.completion_logprobs

    def counting(*a, **kw):
        passes.append(torch.is_grad_enabled())
        return real(*a, **kw)

    monkeypatch.setattr(zero, "completion_logprobs", counting)
    CALLS.update(n=0, interrupt_at=None)
    base = _overrides(tmp_path, tiny_base, "reuse", steps=2) + [
        "rl.updates_per_rollout=2", "rl.beta=0", "rl.ref_reset_every=0", "eval.every=0"]
    zero.main(load_config(ZeroConfig, None, base))
    assert passes and all(passes), "a no-grad pi_old pass ran although the sampler kept them"
    passes.clear()
    zero.main(load_config(ZeroConfig, None, [s.replace("run.name=reuse", "run.name=recompute")
                                              for s in base] + ["rl.reuse_sampling_logprobs=false"]))
    assert passes.count(False) >= 2  # one pi_old pass per step
    passes.clear()  # bf16: the sampler's rounding is not the training forward's, recomputed
    zero.main(load_config(ZeroConfig, None, [s.replace("run.name=reuse", "run.name=bf16")
                                              for s in base] + ["model.dtype=bfloat16"]))
    assert passes.count(False) >= 2


class _SpyEngine:
    """The hf engine, recording every weight sync (what the vLLM engines receive)."""

    needs_sync = True

    def __init__(self):
        from r1kit.rollout import HFEngine

        self.hf, self.synced = HFEngine(), []

    def sample(self, *a, **kw):
        return self.hf.sample(*a, **kw)

    def sync(self, policy):
        self.synced.append({k: v.detach().clone() for k, v in policy.state_dict().items()})


def test_the_engine_gets_the_weights_after_every_update(tiny_base, tmp_path, monkeypatch):
    spy = _SpyEngine()
    made = {}

    def fake_make_engine(engine, model_path, **kw):
        made.update(engine=engine, **kw)
        return spy

    monkeypatch.setattr(zero, "make_engine", fake_make_engine)
    CALLS.update(n=0, interrupt_at=None)
    sets = _overrides(tmp_path, tiny_base, "spy", steps=3) + [
        "eval.every=0", "rollout.vllm_gpu_memory_utilization=0.5",
        "rollout.vllm_max_model_len=2048"]
    zero.main(load_config(ZeroConfig, None, sets))
    assert made["engine"] == "hf" and made["vllm_gpu_memory_utilization"] == 0.5
    assert made["vllm_max_model_len"] == 2048
    assert len(spy.synced) == 4  # once at the start, then after each of the 3 updates
    final = _weights(tmp_path / "spy" / "final")
    assert all(torch.equal(spy.synced[-1][k], final[k]) for k in final)  # the trained weights
    first, second = spy.synced[0], spy.synced[1]
    assert any(not torch.equal(first[k], second[k]) for k in first)


def test_lr_schedule_warms_up_then_decays_to_min_lr():
    from r1kit.config import RLConfig

    rl = RLConfig(steps=100, lr=1e-3, warmup_steps=4, lr_schedule="cosine", min_lr=1e-4)
    lrs = [zero._lr_factor(s, rl) * rl.lr for s in range(100)]
    assert lrs[0] == pytest.approx(2.5e-4) and lrs[4] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(lrs[4:])) and lrs[-1] == pytest.approx(1e-4)
    flat = RLConfig(steps=100, warmup_steps=4)
    assert [zero._lr_factor(s, flat) for s in (0, 3, 50, 99)] == [0.25, 1.0, 1.0, 1.0]


def test_bad_settings_fail_before_a_run_folder(tiny_base, tmp_path):
    for bad, msg in (("rl.lr_schedule=linear", "lr_schedule"),
                     ("rollout.engine=sglang", "unknown engine"),
                     ("rollout.vllm_mode=remote", "vllm_mode"),
                     ("rollout.vllm_mode=server", "fsdp")):
        sets = _overrides(tmp_path, tiny_base, "bad") + [bad]
        if "server" in bad:
            sets += ["rollout.engine=vllm", "dist.strategy=fsdp"]
        elif "remote" in bad:
            sets += ["rollout.engine=vllm"]
        with pytest.raises(Exception, match=msg):
            zero.main(load_config(ZeroConfig, None, sets))
    assert not (tmp_path / "bad").exists()


def test_resume_continues_from_checkpoint(tiny_base, tmp_path):
    # Reference: an uninterrupted 4-step run.
    CALLS.update(n=0, interrupt_at=None)
    zero.main(load_config(ZeroConfig, None, _overrides(tmp_path, tiny_base, "full")))

    # Killed during step 4 (after the step-2 checkpoint and step 3's log rows): 16 reward calls
    # per step; a torn last line, as a kill during a write leaves one.
    CALLS.update(n=0, interrupt_at=3 * 16 + 5)
    with pytest.raises(KeyboardInterrupt):
        zero.main(load_config(ZeroConfig, None, _overrides(tmp_path, tiny_base, "killed")))
    run = tmp_path / "killed"
    assert (run / "checkpoints" / "latest").read_text() == "step-000002"
    assert not (run / "summary.json").exists()
    logged = lambda name: [json.loads(x) for x in (run / name).read_text().splitlines()]
    assert [r["step"] for r in logged("metrics.jsonl")] == [1, 2, 3]
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "train/lo')
    torn = run / "checkpoints" / ".step-000004.tmp-x1"  # a checkpoint write cut off by a kill
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"partial")

    CALLS.update(n=0, interrupt_at=None)
    assert cli(["zero", "--resume", str(run)]) == 0
    assert not torn.exists()  # cleared by the next checkpoint write
    # the rows after the checkpoint were written again, not twice
    assert [r["step"] for r in logged("metrics.jsonl")] == [1, 2, 3, 4]
    assert sorted({r["step"] for r in logged("completions.jsonl")}) == [1, 2, 3, 4]
    assert len(logged("completions.jsonl")) == 4 * len(
        [r for r in logged("completions.jsonl") if r["step"] == 1])
    assert [r["tag"] for r in logged("eval.jsonl")] == ["base", "step2", "final"]
    # resuming the finished run evaluates it again: one final row still
    assert cli(["zero", "--resume", str(run)]) == 0
    assert [r["tag"] for r in logged("eval.jsonl")] == ["base", "step2", "final"]
    # Same data order, RNG streams and optimizer state: the resumed run ends where the
    # uninterrupted one did.
    full, resumed = _weights(tmp_path / "full" / "final"), _weights(run / "final")
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=1e-5, atol=1e-6)


def test_a_run_killed_before_its_first_checkpoint_starts_over_on_resume(tiny_base, tmp_path,
                                                                        caplog):
    CALLS.update(n=0, interrupt_at=5)  # during step 1; the first checkpoint is at step 2
    with pytest.raises(KeyboardInterrupt):
        zero.main(load_config(ZeroConfig, None, _overrides(tmp_path, tiny_base, "early", 2)))
    run = tmp_path / "early"
    assert not (run / "checkpoints").exists() and (run / "eval.jsonl").is_file()
    CALLS.update(n=0, interrupt_at=None)
    assert cli(["zero", "--resume", str(run)]) == 0
    said = [r.getMessage() for r in caplog.records if "no checkpoint yet" in r.getMessage()]
    assert len(said) == 1  # said once, not by each place that opened the folder
    logged = lambda name: [json.loads(x) for x in (run / name).read_text().splitlines()]
    assert [r["step"] for r in logged("metrics.jsonl")] == [1, 2]
    assert [r["tag"] for r in logged("eval.jsonl")] == ["base", "final"]


def test_the_last_step_is_checkpointed_once(tiny_base, tmp_path, monkeypatch):
    """The last step, due for a checkpoint, was saved again after the loop: the second save
    replaced the folder, and a kill in the middle of that left `latest` naming no folder."""
    saved, real = [], zero._save

    def save(run, state, *args):
        saved.append(state["step"])
        real(run, state, *args)

    monkeypatch.setattr(zero, "_save", save)
    CALLS.update(n=0, interrupt_at=None)
    zero.main(load_config(ZeroConfig, None, _overrides(tmp_path, tiny_base, "once", 2)))
    assert saved == [2]
    assert cli(["zero", "--resume", str(tmp_path / "once")]) == 0  # finished: nothing to save
    assert saved == [2]
    zero.main(load_config(ZeroConfig, None, _overrides(tmp_path, tiny_base, "odd", 3)))
    assert saved == [2, 2, 3]  # a last step off the schedule is saved after the loop


def test_a_model_that_does_not_load_leaves_no_run_folder(tmp_path, capsys):
    code = cli(["zero", "--set", f"model.path={tmp_path / 'no-model'}", "--set",
                f"run.out_dir={tmp_path}", "--set", "run.name=nomodel"])
    assert code == 2 and "no-model" in capsys.readouterr().err
    assert not (tmp_path / "nomodel").exists()


def test_existing_run_folder_is_not_overwritten(tiny_base, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "config.yaml").write_text("run: {}\n")
    code = cli(["zero", "--set", f"run.out_dir={tmp_path}", "--set", "run.name=taken",
                "--set", f"model.path={tiny_base}"])
    assert code == 2
    assert "already exists" in capsys.readouterr().err
