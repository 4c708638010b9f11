"""Completion-only SFT: masking, the loss by hand, exact gradient accumulation, data errors, and a
tiny `r1kit sft` run that trains, logs, saves and resumes."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from r1kit.cli import UNUSED
from r1kit.cli import main as cli
from r1kit.config import SFTConfig, describe, load_config
from r1kit.errors import UserError
from r1kit.sft import (
    IGNORE,
    SFTExample,
    collate,
    cosine_lr,
    length_grouped_batches,
    load_sft_jsonl,
    sft_loss,
    target_count,
)
from r1kit.stages import sft as sft_stage
from r1kit.tasks.arithmetic import correct_solution, sample_problems
from r1kit.templates import render_prompt

# ------------------------------------------------------------------------------------ pieces


def _toy_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(config).eval()


def _batch(rows: list[tuple[list[int], list[int]]], pad: int = 0) -> dict:
    """A right-padded batch from (prompt ids, completion ids incl. EOS), built by hand."""
    width = max(len(p) + len(c) for p, c in rows)
    ids, mask, labels = [], [], []
    for p, c in rows:
        n = len(p) + len(c)
        ids.append(p + c + [pad] * (width - n))
        mask.append([1] * n + [0] * (width - n))
        labels.append([IGNORE] * len(p) + c + [IGNORE] * (width - n))
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask),
            "labels": torch.tensor(labels)}


def test_collate_masks_prompt_and_padding_and_truncates(tiny_base):
    tok = AutoTokenizer.from_pretrained(tiny_base)
    examples = [SFTExample("Compute 12+3", "<think> 12+3=15 </think> <answer> 15 </answer>"),
                SFTExample("Compute 40-2", "<answer> 38 </answer>")]
    batch = collate(examples, tok, "r1_zero", max_len=256)
    width = batch["input_ids"].shape[1]
    encoded = []
    for i, ex in enumerate(examples):
        p = tok(render_prompt(ex.prompt), add_special_tokens=False)["input_ids"]
        c = tok(ex.completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        encoded.append((p, c))
        n = len(p) + len(c)
        assert batch["input_ids"][i, :n].tolist() == p + c
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (width - n)
        # -100 exactly on the prompt and the padding; the completion and its EOS are targets.
        assert batch["labels"][i].tolist() == [IGNORE] * len(p) + c + [IGNORE] * (width - n)
    assert width == max(len(p) + len(c) for p, c in encoded)  # right padding to the longest
    assert batch["truncated"] == 0
    assert target_count(batch) == sum(len(c) for _, c in encoded)

    p0, c0 = encoded[0]
    short = collate(examples, tok, "r1_zero", max_len=len(p0) + 2)
    assert short["truncated"] == 2 and short["input_ids"].shape[1] == len(p0) + 2
    assert short["labels"][0].tolist() == [IGNORE] * len(p0) + c0[:2]  # cut from the right: no EOS


def test_loss_is_token_mean_over_completion_tokens_by_hand():
    model = _toy_model()
    # row 0: prompt [1, 2], completion [3, 4] + EOS 5; row 1: prompt [1, 6], completion [7] + EOS 5,
    # then one pad (0).
    batch = _batch([([1, 2], [3, 4, 5]), ([1, 6], [7, 5])])
    assert batch["labels"].tolist() == [[IGNORE, IGNORE, 3, 4, 5], [IGNORE, IGNORE, 7, 5, IGNORE]]
    with torch.no_grad():
        loss, n_tokens = sft_loss(model, batch)
        logp = torch.log_softmax(model(**{k: batch[k] for k in ("input_ids", "attention_mask")})
                                 .logits.float(), dim=-1)  # (N, L, V)
        # Position t predicts token t+1: (row, position, target) for each completion token.
        targets = [(0, 1, 3), (0, 2, 4), (0, 3, 5), (1, 1, 7), (1, 2, 5)]
        expected = -sum(logp[r, t, tok] for r, t, tok in targets) / 5
    assert n_tokens == 5
    torch.testing.assert_close(loss, expected)
    with torch.no_grad():
        halved, _ = sft_loss(model, batch, denominator=10)
    torch.testing.assert_close(halved, expected / 2)
    with pytest.raises(ValueError, match="denominator must be positive"):
        sft_loss(model, batch, denominator=0)


def test_micro_batches_accumulate_to_the_full_batch_gradient():
    rows = [([1, 2], [3, 4, 5, 6, 7, 5]), ([1, 6], [7, 5]), ([2, 3, 4], [8, 9, 5]),
            ([1], [10, 11, 5])]

    def grads_of(batches: list[dict], denominator: int | None) -> tuple[float, list]:
        model = _toy_model()
        total = 0.0
        for b in batches:
            loss, _ = sft_loss(model, b, denominator=denominator)
            loss.backward()
            total += loss.item()
        return total, [p.grad.clone() for p in model.parameters()]

    full_loss, full = grads_of([_batch(rows)], None)
    micro = [_batch(rows[:2]), _batch(rows[2:])]  # each padded only to its own longest row
    n = sum(target_count(b) for b in micro)
    acc_loss, acc = grads_of(micro, n)
    assert abs(acc_loss - full_loss) < 1e-5
    for g_full, g_acc in zip(full, acc):
        torch.testing.assert_close(g_acc, g_full, rtol=1e-4, atol=1e-6)
    # The bug this guards against: a mean per micro-batch, averaged, weights tokens unequally.
    # (8 and 6 completion tokens: a mean of per-micro-batch means is not the token mean.)
    _, naive = grads_of(micro, None)
    assert not all(torch.allclose(g / 2, f, rtol=1e-3, atol=1e-6) for g, f in zip(naive, full))


def test_length_grouped_batches():
    lengths = [(i * 37) % 101 for i in range(100)]
    batches = length_grouped_batches(lengths, 8, seed="0-0")
    assert sorted(i for b in batches for i in b) == list(range(100))
    assert sorted(len(b) for b in batches) == [4] + [8] * 12
    assert batches == length_grouped_batches(lengths, 8, seed="0-0")
    assert batches != length_grouped_batches(lengths, 8, seed="0-1")
    # Grouped: a batch spans far less of the length range than a random batch would.
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    assert spread / len(batches) < 20


def test_cosine_lr_warms_up_then_decays_to_min():
    lrs = [cosine_lr(s, 20, 4, 5e-5, 5e-6) for s in range(20)]
    assert lrs[0] == pytest.approx(5e-5 / 4) and lrs[3] == pytest.approx(5e-5)
    assert lrs[4] == pytest.approx(5e-5) and lrs[-1] == pytest.approx(5e-6)
    assert all(a >= b for a, b in itertools.pairwise(lrs[3:]))


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"prompt": "a", "completion": "b"}\n{"prompt": "a", \n', "data.jsonl:2: invalid JSON"),
        ('\n{"prompt": "a"}\n', "data.jsonl:2: missing field 'completion'"),
        ('{"prompt": 3, "completion": "b"}\n', "data.jsonl:1: field 'prompt' must be a st"),
        ('{"prompt": "a", "completion": null}\n', "jsonl:1: field 'completion' .* got null"),
        ('["a", "b"]\n', "data.jsonl:1: expected a JSON object, got list"),
        ('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": ""}\n',
         "data.jsonl:2: field 'completion' is empty"),
        ("\n  \n", "data.jsonl: file is empty"),
    ],
)
def test_load_sft_jsonl_errors_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "data.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_sft_jsonl(path)


def test_load_sft_jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "q", "completion": "c", "id": 4}\n\n{"prompt": "", '
                    '"completion": "d"}\n')
    assert load_sft_jsonl(path) == [SFTExample("q", "c"), SFTExample("", "d")]
    with pytest.raises(UserError, match="missing.jsonl: no such file"):
        load_sft_jsonl(tmp_path / "missing.jsonl")


# ------------------------------------------------------------------------------------ CLI


def test_cli_errors_fail_before_a_run_folder_is_made(tmp_path, capsys):
    code = cli(["sft", "--set", f"run.out_dir={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "data.train_file is required" in err and "Traceback" not in err

    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"prompt": "q", "completion": "c"}\n{"prompt": "q"}\n')
    code = cli(["sft", "--set", f"data.train_file={bad}", "--set", f"run.out_dir={tmp_path}"])
    assert code == 2
    assert "pairs.jsonl:2: missing field 'completion'" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["pairs.jsonl"]  # no run folder left behind


def test_code_eval_without_a_sandbox_stops_before_a_run_folder(tmp_path, capsys, no_bwrap):
    """Held-out problems with tests are graded in the sandbox: without bubblewrap `r1kit sft`
    stops before making a run folder or loading a model, with advice that sft accepts."""
    sets = _sets(tmp_path, "no/such-model", "code", "data.eval_source=builtin:code")
    assert cli(["sft", *sets]) == 2
    err = capsys.readouterr().err
    assert "bubblewrap" in err and "--unsafe-allow-unsandboxed" in err and "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["cold_start.jsonl"]  # no run folder

    from r1kit.rewards import code as code_reward

    overrides = [s for s in sets if s != "--set"] + ["code.unsafe_allow_unsandboxed=true",
                                                     "code.wall_s=7"]
    _, eval_set = sft_stage._inputs(load_config(SFTConfig, None, overrides))
    assert len(eval_set) == 4 and all(code_reward.has_tests(p) for p in eval_set)
    sandbox = code_reward._state["sandbox"]  # the evaluation's: the user's limits, unconfined
    assert not sandbox.sandboxed and sandbox.limits.wall_s == 7


def test_help_documents_every_key(capsys):
    with pytest.raises(SystemExit) as e:
        cli(["sft", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for key, _, help in describe(SFTConfig):
        assert (key in out) != (key in UNUSED["sft"]), key  # the keys it reads, only
        assert help, f"{key} has no help string"


# ------------------------------------------------------------------------------------ end to end


def _train_file(tmp_path: Path) -> Path:
    problems = sample_problems(32, "train", seed=1)
    path = tmp_path / "cold_start.jsonl"
    path.write_text("".join(
        json.dumps({"prompt": p.prompt, "completion": correct_solution(p)}) + "\n"
        for p in problems
    ))
    return path


def _sets(tmp_path: Path, model: str, name: str, *extra: str) -> list[str]:
    sets = [
        f"model.path={model}", f"data.train_file={_train_file(tmp_path)}",
        f"run.out_dir={tmp_path}", f"run.name={name}", "sft.epochs=2", "sft.batch_size=8",
        "sft.micro_batch_size=4", "sft.lr=3e-3", "sft.min_lr=3e-4", "sft.warmup_steps=1",
        "eval.num_problems=4", "eval.k=2", "eval.max_new_tokens=16", "eval.every=0",
        "run.checkpoint_every=2", *extra,
    ]
    return [arg for s in sets for arg in ("--set", s)]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_sft_run_trains_logs_and_saves(tiny_base, tmp_path):
    assert cli(["sft", *_sets(tmp_path, tiny_base, "cold")]) == 0
    run = tmp_path / "cold"

    before, after = _weights(Path(tiny_base)), _weights(run / "final")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before), f"unchanged parameters: {set(before) - set(changed)}"

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))  # 32 examples / 8 x 2 epochs
    assert [r["epoch"] for r in rows] == [1] * 4 + [2] * 4
    for key in ("train/loss", "train/lr", "train/grad_norm", "train/tokens", "time/step"):
        assert key in rows[-1], key
    assert rows[-1]["train/loss"] < rows[0]["train/loss"], [r["train/loss"] for r in rows]
    assert rows[-1]["train/lr"] == pytest.approx(3e-4)

    summary = json.loads((run / "summary.json").read_text())
    for key in ("base_pass@1", "final_pass@1", "wall_seconds"):
        assert key in summary, key
    assert summary["steps"] == 8 and summary["examples"] == 32 and summary["truncated"] == 0
    evals = [json.loads(line)["tag"] for line in (run / "eval.jsonl").read_text().splitlines()]
    assert evals == ["base", "final"]
    assert (run / "config.yaml").is_file() and (run / "final" / "config.json").is_file()


def test_resume_continues_from_checkpoint(tiny_base, tmp_path, monkeypatch):
    no_eval = "eval.num_problems=0"
    assert cli(["sft", *_sets(tmp_path, tiny_base, "full", no_eval)]) == 0

    calls = {"n": 0}
    real_loss = sft_stage.sft_loss

    def killed_in_step_3(model, batch, denominator=None):
        calls["n"] += 1
        if calls["n"] == 2 * 2 + 1:  # two micro-batches per step: the first one of step 3
            raise KeyboardInterrupt
        return real_loss(model, batch, denominator)

    monkeypatch.setattr(sft_stage, "sft_loss", killed_in_step_3)
    args = _sets(tmp_path, tiny_base, "killed", no_eval)
    cfg = load_config(SFTConfig, None, [a for a in args if a != "--set"])
    with pytest.raises(KeyboardInterrupt):
        sft_stage.main(cfg)
    run = tmp_path / "killed"
    assert (run / "checkpoints" / "latest").read_text() == "step-000002"
    assert not (run / "summary.json").exists()

    monkeypatch.setattr(sft_stage, "sft_loss", real_loss)
    assert cli(["sft", "--resume", str(run)]) == 0
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))
    full, resumed = _weights(tmp_path / "full" / "final"), _weights(run / "final")
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=1e-5, atol=1e-6)


def test_held_out_file_leaves_out_the_training_prompts(tmp_path):
    problems = tmp_path / "probs.jsonl"
    problems.write_text("".join(json.dumps({"prompt": f"Compute {a}+1", "answer": str(a + 1)})
                                + "\n" for a in range(5)))
    pairs = tmp_path / "pairs.jsonl"  # sampled from the same file: prompts 0-2
    pairs.write_text("".join(json.dumps({"prompt": f"Compute {a}+1", "completion": "x"}) + "\n"
                             for a in range(3)))
    cfg = load_config(SFTConfig, None, [f"data.train_file={pairs}",
                                        f"data.eval_source={problems}", "eval.num_problems=10"])
    _, held = sft_stage._inputs(cfg)
    assert [p.prompt for p in held] == ["Compute 3+1", "Compute 4+1"]
    pairs.write_text("".join(json.dumps({"prompt": f"Compute {a}+1", "completion": "x"}) + "\n"
                             for a in range(5)))  # now every problem is trained on
    with pytest.raises(UserError, match="every problem is a training prompt"):
        sft_stage._inputs(cfg)
