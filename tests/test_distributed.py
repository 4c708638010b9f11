"""Several processes (torch.distributed, gloo on CPU): 2 ranks make the same update as 1 rank on
the same global batch, whatever the ranks' token counts; a 2-rank run checkpoints and resumes."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from r1kit import distributed, grpo
from r1kit.config import RLConfig, RolloutConfig, ZeroConfig, load_config
from r1kit.errors import UserError
from r1kit.rollout.hf import Rollouts, sample
from r1kit.stages import zero
from r1kit.stages.zero import Timer, update_policy
from r1kit.templates import render_prompt
from tests.tiny_models import ASSETS, build

B, G = 4, 2  # 2 prompts per rank


def _rows(ro: Rollouts, rows: torch.Tensor) -> Rollouts:
    pick = lambda xs: [xs[i] for i in rows.tolist()]
    return dataclasses.replace(
        ro, prompt_ids=ro.prompt_ids[rows], prompt_mask=ro.prompt_mask[rows],
        completion_ids=ro.completion_ids[rows], completion_mask=ro.completion_mask[rows],
        texts=pick(ro.texts), num_tokens=pick(ro.num_tokens), truncated=pick(ro.truncated))


def _update(model, ro, adv, keep, d, aggregation, beta, mu=1, lr=0.5, metrics=None):
    """One optimizer step (SGD: a wrong gradient scale shows, unlike with Adam's normalisation);
    `metrics`, a dict, receives update_policy's."""
    ref = None
    if beta > 0:
        ref = AutoModelForCausalLM.from_pretrained(model.name_or_path).eval()
    model = distributed.wrap(model, d)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    rl = RLConfig(micro_batch_size=2, aggregation=aggregation, beta=beta, grad_clip=1e9,
                  updates_per_rollout=mu)
    m = update_policy(model, ref, opt, ro, adv, ro.completion_mask, keep, rl, RolloutConfig(), 16,
                      Timer(), d)
    (metrics if metrics is not None else {}).update(m)
    return distributed.full_state_dict(model, d)


CASES = [  # (strategy, aggregation, beta, rank 1 keeps its groups)
    ("ddp", "token_mean", 0.0, True),
    ("ddp", "seq_mean_token_mean", 0.1, True),
    ("ddp", "token_mean", 0.0, False),  # dynamic sampling dropped every group of rank 1
    ("fsdp", "token_mean", 0.1, True),
]


def _worker(rank: int, world: int, port: int, folder: str, data: str, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ro, adv = torch.load(data, weights_only=False)
    mine = torch.arange(rank * B // world * G, (rank + 1) * B // world * G)
    results = []
    for strategy, aggregation, beta, keep_1 in CASES:
        d, _ = distributed.setup(strategy, torch.device("cpu"))
        keep = torch.arange(len(mine)) if (rank == 0 or keep_1) else torch.arange(0)
        model = AutoModelForCausalLM.from_pretrained(folder)
        sd = _update(model, _rows(ro, mine), adv[mine], keep, d, aggregation, beta)
        results.append({k: v.detach().clone() for k, v in sd.items()})
    # mu = 2 minibatches at lr 0 (the policy never moves): the logged means are those of one
    # process, each counted once (they were once re-summed over ranks after every minibatch)
    metrics = {}
    _update(AutoModelForCausalLM.from_pretrained(folder), _rows(ro, mine), adv[mine],
            torch.arange(len(mine)), d, "token_mean", 0.0, mu=2, lr=0.0, metrics=metrics)
    results.append(metrics)
    if rank == 0:
        torch.save(results, out)
    distributed.finish(d)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_update_exactly_like_one(tmp_path):
    torch.set_num_threads(1)
    folder = build(tmp_path / "model", "qwen3", hidden=32, layers=2)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    prompts = [render_prompt(f"Compute {a}+3") for a in (11, 25, 40, 63)]
    ro = sample(model, tok, prompts, G, max_new_tokens=12,
                generator=torch.Generator().manual_seed(1))
    # Unequal lengths across ranks: a mean of per-rank means would weigh tokens wrongly.
    lengths = ro.completion_mask.sum(1)
    ro.completion_mask[: B // 2 * G, 4:] = 0
    assert lengths[: B // 2 * G].clamp(max=4).sum() != lengths[B // 2 * G:].sum()
    adv = grpo.group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.0, 1.0, 0.2]), G)
    data, out = tmp_path / "ro.pt", tmp_path / "two.pt"
    torch.save((ro, adv), data)

    mp.spawn(_worker, args=(2, _free_port(), folder, str(data), str(out)), nprocs=2, join=True)
    *two, two_metrics = torch.load(out)

    start = AutoModelForCausalLM.from_pretrained(folder).state_dict()
    for case, got in zip(CASES, two):
        keep_1 = case[3]
        keep = torch.arange(B * G) if keep_1 else torch.arange(B // 2 * G)
        one = _update(AutoModelForCausalLM.from_pretrained(folder), ro, adv, keep,
                      distributed.SINGLE, case[1], case[2])
        moved = sum((one[k] - start[k]).abs().sum().item() for k in start)
        assert moved > 1e-3, case
        for k in one:
            torch.testing.assert_close(got[k], one[k], rtol=1e-5, atol=1e-6, msg=f"{case} {k}")
    one_metrics = {}
    _update(AutoModelForCausalLM.from_pretrained(folder), ro, adv, torch.arange(B * G),
            distributed.SINGLE, "token_mean", 0.0, mu=2, lr=0.0, metrics=one_metrics)
    for k, rel in (("train/ratio_mean", 0.02), ("train/entropy", 0.1), ("train/grad_norm", 0.25)):
        assert two_metrics[k] == pytest.approx(one_metrics[k], rel=rel), k


EVAL_CFG = {"k": 2, "batch_size": 4, "max_new_tokens": 64}  # 2 problems a batch: 7 make 4


def _eval_worker(rank: int, world: int, port: int, out: str):
    from r1kit.config import EvalConfig
    from r1kit.evaluation import evaluate
    from r1kit.models import load_model
    from r1kit.tasks.arithmetic import sample_problems

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    d, _ = distributed.setup("ddp", torch.device("cpu"))
    model, tok = load_model(str(ASSETS))
    res = [evaluate(model, tok, sample_problems(7, "heldout", 0),
                    EvalConfig(temperature=temperature, **EVAL_CFG), seed=3,
                    part=(d.rank, d.world), gather=lambda mine: distributed.gather(mine, d))
           for temperature in (0.0, 0.6)]
    torch.save(res, f"{out}.{rank}")
    distributed.finish(d)


def test_evaluation_split_over_two_ranks_equals_one(tmp_path):
    """Greedy decoding: the 2-rank evaluation (batches split, records gathered) is the 1-process
    one, completion for completion, on both ranks; sampled: both ranks return the same result."""
    from r1kit.config import EvalConfig
    from r1kit.evaluation import evaluate
    from r1kit.models import load_model
    from r1kit.tasks.arithmetic import sample_problems

    torch.set_num_threads(1)
    model, tok = load_model(str(ASSETS))
    problems = sample_problems(7, "heldout", 0)
    one = evaluate(model, tok, problems, EvalConfig(temperature=0.0, **EVAL_CFG), seed=3)
    assert 0 < one.pass1 < 1  # the shipped base gets some right: the scores are compared too
    out = str(tmp_path / "eval")
    mp.spawn(_eval_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    (greedy, sampled), rank_1 = (torch.load(f"{out}.{r}", weights_only=False) for r in (0, 1))
    assert greedy == one and [greedy, sampled] == rank_1
    assert sampled.num_problems == 7 and len(sampled.completions) == 14
    assert [s["id"] for s in sampled.samples] == [p.id for p in problems]
    assert sampled.completions != one.completions


def _r1kit(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))
    return subprocess.run([sys.executable, "-m", "r1kit", *args], capture_output=True, text=True, check=False,
                          env=env, timeout=300)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_process_run_checkpoints_and_resumes(tmp_path, strategy):
    model = build(tmp_path / "model", "llama", hidden=32, layers=2)
    sets = [f"model.path={model}", f"run.out_dir={tmp_path}", "run.name=two", "rl.steps=2",
            f"dist.strategy={strategy}", "rl.ref_reset_every=1",
            "rl.prompts_per_step=4", "rl.group_size=2", "rl.lr=0.05", "rl.beta=0.01", "eval.num_problems=2", "eval.k=1", "eval.every=0",
            "eval.max_new_tokens=6", "data.train_size=16", "run.checkpoint_every=1",
            "run.report_to=[]", "run.threads=1", "rl.dynamic_sampling=false",
            # a random model scores 0 on accuracy; the length penalty varies within groups
            "rewards.weights={accuracy: 1.0, overlong: 1.0}", "rollout.max_new_tokens=8"]
    args = [a for item in sets for a in ("--set", item)]
    done = _r1kit("zero", "--nproc", "2", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "two"
    state = torch.load(run / "checkpoints" / "step-000002" / "trainer_state.pt", weights_only=False)
    assert len(state["generator"]) == 2 and len(state["rng"]) == 2  # each rank's sampler state
    assert not torch.equal(state["generator"][0], state["generator"][1])
    assert (run / "final" / "model.safetensors").is_file()
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # one row per step: rank 0 alone writes
    logged = [json.loads(r) for r in (run / "completions.jsonl").read_text().splitlines()]
    assert len({r["id"] for r in logged if r["step"] == 1}) == 4  # both ranks' two prompts
    assert any(r["train/reward_std"] > 0 and "train/loss" in r for r in rows)
    before, after = (load_file(str(Path(p) / "model.safetensors")) for p in (model, run / "final"))
    assert set(before) == set(after)  # FSDP gathers the shards; tied weights saved once
    assert any(not torch.equal(before[k], after[k]) for k in before)

    # One more step, resumed by 2 processes; 1 process is refused (its per-rank state differs).
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["rl"]["steps"] = 3
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(UserError, match="same --nproc"):
        zero.main(load_config(ZeroConfig, None, []), resume=str(run))
    done = _r1kit("zero", "--nproc", "2", "--resume", str(run))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert (run / "checkpoints" / "latest").read_text() == "step-000003"


def _sft_cfg(tmp_path: Path, model: str, name: str):
    from r1kit.config import SFTConfig

    data = tmp_path / "sft.jsonl"
    # Uneven lengths and 3 examples per step: rank 0 gets 2, rank 1 gets 1 (a zero-weighted pad).
    data.write_text("".join(json.dumps({"prompt": f"{a}+1?", "completion": "<think> " + "so " * a
                                        + f"</think> <answer> {a + 1} </answer>"}) + "\n"
                            for a in range(1, 7)))
    return load_config(SFTConfig, None, [
        f"model.path={model}", f"run.out_dir={tmp_path}", f"run.name={name}", "run.report_to=[]",
        f"data.train_file={data}", "sft.epochs=1", "sft.batch_size=3", "sft.micro_batch_size=1",
        "sft.lr=0.5", "sft.min_lr=0.5", "sft.warmup_steps=0", "sft.grad_clip=1e9",
        "eval.num_problems=0"])


def _sft_worker(rank: int, world: int, port: int, folder: str, tmp: str):
    from r1kit.stages import sft

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.optim.AdamW = _sgd  # Adam's per-weight normalisation would hide a wrong scale
    sft.main(_sft_cfg(Path(tmp), folder, "two"))


def _sgd(params, lr, weight_decay=0.0):
    return torch.optim.SGD(params, lr=lr)


def test_sft_on_two_ranks_matches_one(tmp_path, monkeypatch):
    from r1kit.stages import sft

    folder = build(tmp_path / "model", "qwen2", hidden=32, layers=2)
    mp.spawn(_sft_worker, args=(2, _free_port(), folder, str(tmp_path)), nprocs=2, join=True)
    monkeypatch.setattr(torch.optim, "AdamW", _sgd)
    sft.main(_sft_cfg(tmp_path, folder, "one"))
    one, two = (load_file(str(tmp_path / n / "final" / "model.safetensors")) for n in ("one", "two"))
    start = load_file(str(Path(folder) / "model.safetensors"))
    assert sum((one[k] - start[k]).abs().sum().item() for k in start) > 1e-3
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6, msg=k)
    assert [json.loads(r)["step"] for r in (tmp_path / "two" / "metrics.jsonl").read_text()
            .splitlines()] == [1, 2]


def test_a_rank_error_ends_the_job_with_its_exit_code_and_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "answer": "1"}\nnot json\n')
    done = _r1kit("zero", "--nproc", "2", "--set", f"data.source={bad}",
                  "--set", f"run.out_dir={tmp_path}", "--set", "rl.prompts_per_step=2")
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.count("bad.jsonl:2: invalid JSON") == 1  # once, not once per rank
    assert "ChildFailedError" not in done.stderr and "Traceback" not in done.stderr


def test_stages_that_run_in_one_process_refuse_torchrun(monkeypatch, capsys):
    from r1kit.cli import main as cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    for stage in ("eval", "distill", "sample", "pipeline"):
        assert cli([stage]) == 2
        assert "runs in one process" in capsys.readouterr().err



def test_gpu_ranks_take_gloo_for_the_cpu_numbers_their_collectives_hold():
    """NCCL alone has no CPU backend: `all_sum` of a CPU float would raise on the first step
    ('No backend type associated with device type cpu')."""
    from torch.distributed.distributed_c10d import Backend, BackendConfig

    from r1kit.distributed import backend_for

    assert backend_for(torch.device("cpu")) == "gloo"
    on_gpu = BackendConfig(Backend(backend_for(torch.device("cuda", 1))))
    assert on_gpu.get_device_backend_map() == {"cpu": "gloo", "cuda": "nccl"}
