#!/usr/bin/env python
"""Time r1kit's GRPO step on a model folder, configured like the TRL GRPOTrainer baseline.

The step is r1kit's own code, in the order `r1kit zero` runs it:
    r1kit.rollout.hf.sample -> r1kit.rewards.scoring.score -> r1kit.grpo.group_advantages
    -> r1kit.stages.zero.update_policy (reference log-probs without grad, then the update).

The configuration is that of ../shared/peer-bench/trl_grpo_bench.py (RESULTS.md there):
8 prompts x G=8 = 64 completions per step, 64 new tokens, temperature 1.0, top_p 1, stop only at
EOS, beta=0.04 against a frozen reference copy, lr 1e-5 (linear decay, as TRL's default), one
update per rollout (mu=1), every group kept (no dynamic sampling), token-mean aggregation (TRL's
`dapo`), eps 0.2/0.2, advantages scaled by the group std, grad clip 1.0, one micro-batch of 64,
10 steps, seed 0, torch's default thread count. The 512 prompts are built with the peer bench's
`PROMPT_TEMPLATE` (imported from its make_tiny_model.py) and the same seeded generator, and are
taken in the order TRL's RepeatSampler takes them (`torch.randperm(512)` seeded with 0). The
reward is the peer bench's: 1.0 if the right integer appears in the completion (regex -?\\d+).

Per step it prints the wall time, the phase split (generate, score, logprobs = the reference pass,
update = policy forward + backward + optimizer) and the generated tokens; at the end the median
step time over steps 2..N and over all steps. `--json` writes per-step data, versions and machine.

    .venv/bin/python make_tiny_model.py --out benchmarks/out/tiny-model   # from peer-bench
    .venv/bin/python benchmarks/grpo_step_speed.py --model benchmarks/out/tiny-model --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import operator
import os
import platform
import random
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch
import transformers

import r1kit
from r1kit import grpo
from r1kit.config import RLConfig, RolloutConfig
from r1kit.models import load_model
from r1kit.rewards import register
from r1kit.rewards.scoring import RewardSpec, score
from r1kit.rollout.hf import sample
from r1kit.stages.zero import Timer, _rollout_metrics, update_policy
from r1kit.tasks.base import Problem

REWARD_NAME = "bench_contains_answer"
_INT = re.compile(r"-?\d+")
_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


@register(REWARD_NAME)
def contains_answer(completion: str, problem: Problem) -> float:
    """The peer bench's reward: 1.0 if the right number appears as a whole integer, else 0.0."""
    return 1.0 if problem.answer in _INT.findall(completion) else 0.0


def import_prompt_template(peer_bench: Path) -> str:
    """`PROMPT_TEMPLATE` from the peer bench's make_tiny_model.py (imported, not copied)."""
    if not (peer_bench / "make_tiny_model.py").is_file():
        sys.exit(f"{peer_bench}/make_tiny_model.py not found; pass --peer-bench")
    sys.dont_write_bytecode = True  # the peer-bench folder is read-only
    sys.path.insert(0, str(peer_bench))
    from make_tiny_model import PROMPT_TEMPLATE

    return PROMPT_TEMPLATE


def make_problems(n: int, seed: int, template: str) -> list[Problem]:
    """trl_grpo_bench.make_dataset('synthetic'): the same draws from the same seeded generator."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        op = rng.choice("+-*")
        out.append(Problem(f"arith-{i}", template.format(a=a, op=op, b=b), str(_OPS[op](a, b))))
    return out


def trl_order(n: int, seed: int, needed: int) -> list[int]:
    """The prompt order of TRL's RepeatSampler (shuffle=True, seed=args.seed): one seeded
    generator, a fresh `randperm` per epoch."""
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < needed:
        order += torch.randperm(n, generator=g).tolist()
    return order


def machine_info() -> dict:
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["mem_total_gib"] = round(int(line.split()[1]) / 2**20, 1)
                break
        info["loadavg_at_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def git_revision() -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "r1kit"], cwd=ROOT,
                               text=True, capture_output=True, check=True).stdout.strip()
        return rev + ("+dirty(r1kit/)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(ROOT / "benchmarks" / "out" / "tiny-model"))
    p.add_argument("--peer-bench", default=str(ROOT.parent / "shared" / "peer-bench"),
                   help="folder holding make_tiny_model.py (for PROMPT_TEMPLATE)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--prompts-per-step", type=int, default=8)
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--micro-batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="write per-step data and the summary here")
    args = p.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    template = import_prompt_template(Path(args.peer_bench).resolve())
    B, G, T = args.prompts_per_step, args.num_generations, args.max_new_tokens

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": __import__("tokenizers").__version__,
        "r1kit": getattr(r1kit, "__version__", None),
        "r1kit_git": git_revision(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    machine = machine_info()
    print("versions:", json.dumps(versions), flush=True)

    rl = RLConfig(
        steps=args.steps, prompts_per_step=B, group_size=G, updates_per_rollout=1,
        micro_batch_size=args.micro_batch_size, lr=args.lr, warmup_steps=0, weight_decay=0.0,
        grad_clip=1.0, beta=args.beta, ref_reset_every=0, eps_low=0.2, eps_high=0.2,
        aggregation="token_mean", scale_by_std=True, ratio_level="token",
        dynamic_sampling=False, overlong_filter=False,
    )
    rollout_cfg = RolloutConfig(engine="hf", temperature=args.temperature, top_p=1.0,
                                max_new_tokens=T, stop=[])
    specs = [RewardSpec(REWARD_NAME, 1.0)]

    # Seeding as `r1kit zero` does it.
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    t_init = time.perf_counter()
    policy, tokenizer = load_model(args.model, "float32", args.device)
    ref = copy.deepcopy(policy).eval().requires_grad_(False) if rl.beta > 0 else None
    opt = torch.optim.AdamW(policy.parameters(), lr=rl.lr, weight_decay=rl.weight_decay)
    # TRL's default schedule: linear decay to 0 over max_steps, no warm-up.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: max(0.0, (rl.steps - s) / max(1, rl.steps))
    )
    opt_time = {"t0": 0.0, "s": 0.0}
    opt.register_step_pre_hook(lambda *_: opt_time.update(t0=time.perf_counter()))
    opt.register_step_post_hook(
        lambda *_: opt_time.update(s=opt_time["s"] + time.perf_counter() - opt_time["t0"]))
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    problems_all = make_problems(max(512, rl.steps * B), args.seed, template)
    order = trl_order(len(problems_all), args.seed, rl.steps * B)
    init_s = time.perf_counter() - t_init

    n_params = sum(q.numel() for q in policy.parameters())
    print(
        f"config: {B} prompts x {G} gens = {B * G} completions/step, max_new_tokens={T}, "
        f"T={args.temperature}, top_p=1.0, stop=EOS only, beta={rl.beta}, lr={rl.lr}, "
        f"mu={rl.updates_per_rollout}, aggregation={rl.aggregation}, eps={rl.eps_low}/"
        f"{rl.eps_high}, micro_batch={rl.micro_batch_size}, dynamic_sampling="
        f"{rl.dynamic_sampling}, steps={rl.steps}, seed={args.seed}, params={n_params}, "
        f"ref_model={ref is not None}, threads={torch.get_num_threads()}",
        flush=True,
    )

    steps = []
    t_train = time.perf_counter()
    for step in range(rl.steps):
        timer = Timer()
        opt_time["s"] = 0.0
        t_step = time.perf_counter()
        with timer("generate"):
            idx = order[step * B : (step + 1) * B]
            problems = [problems_all[i] for i in idx]
            policy.eval()
            ro = sample(policy, tokenizer, [pr.prompt for pr in problems], G, max_new_tokens=T,
                        temperature=rollout_cfg.temperature, top_p=rollout_cfg.top_p,
                        stop=rollout_cfg.stop, generator=gen)
        with timer("score"):
            per_row = [pr for pr in problems for _ in range(G)]
            scores = score(ro.texts, per_row, specs, ro.num_tokens, T, timeout_s=5.0)
            rewards = torch.tensor(scores.total, dtype=torch.float32)  # (B*G,)
        with timer("advantage"):
            advantages = grpo.group_advantages(rewards, G, scale_by_std=rl.scale_by_std)
            group_equal = (rewards.view(B, G) == rewards.view(B, G)[:, :1]).all(dim=1)  # (B,)
            keep = ~group_equal if rl.dynamic_sampling else torch.ones(B, dtype=torch.bool)
            rows = keep.repeat_interleave(G).nonzero().squeeze(-1)
            mask = ro.completion_mask.clone()  # (B*G, T')
            metrics = _rollout_metrics(ro, scores, rewards, group_equal, per_row)
        with timer("update_total"):
            update = update_policy(policy, ref, opt, ro, advantages, mask, rows, rl, rollout_cfg,
                                   T, timer)
        if update["ok"]:
            sched.step()
        wall = time.perf_counter() - t_step

        tm = timer.times
        gen_s, score_s = tm["time/generate"], tm["time/score"]
        logp_s = tm.get("time/logprobs", 0.0)
        upd_s = tm["time/update_total"] - logp_s
        tokens = sum(ro.num_tokens)
        rec = {
            "step": step + 1,
            "wall_s": wall,
            "generate_s": gen_s,
            "score_s": score_s,
            "ref_logps_s": logp_s,
            "update_s": upd_s,  # policy forward + backward + clip + optimizer
            "optimizer_s": opt_time["s"],
            "advantage_s": tm["time/advantage"],
            "other_s": wall - gen_s - score_s - tm["time/advantage"] - tm["time/update_total"],
            "completions": len(ro),
            "kept_rows": len(rows),
            "gen_tokens": tokens,
            "gen_tokens_padded": len(ro) * ro.completion_ids.shape[1],
            "gen_tok_per_s": tokens / gen_s,
            "e2e_tok_per_s": tokens / wall,
            "reward_mean": metrics["reward/total"],
            "truncated": metrics["train/truncated"],
            "completion_tokens_mean": metrics["train/completion_tokens"],
            "loss": update.get("train/loss"),
            "kl": update.get("train/kl"),
            "grad_norm": update.get("train/grad_norm"),
            "update_ok": update["ok"],
            "lr": sched.get_last_lr()[0],
        }
        steps.append(rec)
        print(
            f"[step {rec['step']:>3}] wall {wall:6.2f}s | generate {gen_s:6.2f}s "
            f"({100 * gen_s / wall:4.1f}%) | score {score_s:5.3f}s | ref logprobs {logp_s:5.2f}s "
            f"| update {upd_s:5.2f}s (opt {opt_time['s']:5.3f}s) | tokens {tokens} "
            f"| gen {rec['gen_tok_per_s']:7.1f} tok/s | e2e {rec['e2e_tok_per_s']:6.1f} tok/s "
            f"| reward {rec['reward_mean']:.3f} kl {rec['kl'] or 0.0:.2e}",
            flush=True,
        )
    train_s = time.perf_counter() - t_train

    walls = [s["wall_s"] for s in steps]
    tot_wall = sum(walls)
    gen_total = sum(s["generate_s"] for s in steps)
    tok_total = sum(s["gen_tokens"] for s in steps)

    def frac(key: str) -> float:
        return sum(s[key] for s in steps) / tot_wall

    summary = {
        "engine": "r1kit",
        "versions": versions,
        "machine": machine,
        "command": [sys.executable, *sys.argv],
        "config": {
            "model": args.model, "params": n_params, "prompts_per_step": B,
            "num_generations": G, "completions_per_step": B * G, "max_new_tokens": T,
            "temperature": args.temperature, "top_p": 1.0, "stop": [], "beta": rl.beta,
            "lr": rl.lr, "lr_schedule": "linear decay to 0 (TRL default)", "steps": rl.steps,
            "seed": args.seed, "updates_per_rollout": rl.updates_per_rollout,
            "micro_batch_size": rl.micro_batch_size, "aggregation": rl.aggregation,
            "eps_low": rl.eps_low, "eps_high": rl.eps_high, "scale_by_std": rl.scale_by_std,
            "dynamic_sampling": rl.dynamic_sampling, "grad_clip": rl.grad_clip,
            "reward": "contains (regex -?\\d+)", "prompt_order": "TRL RepeatSampler (randperm)",
        },
        "init_s": init_s,
        "train_total_s": train_s,
        "sum_step_wall_s": tot_wall,
        "median_step_s": statistics.median(walls),
        "median_step_s_excl_first": statistics.median(walls[1:]) if len(walls) > 1 else None,
        "total_gen_tokens": tok_total,
        "total_gen_tokens_padded": sum(s["gen_tokens_padded"] for s in steps),
        "gen_tok_per_s": tok_total / gen_total,
        "median_gen_tok_per_s": statistics.median(s["gen_tok_per_s"] for s in steps),
        "e2e_gen_tok_per_s": tok_total / tot_wall,
        "fractions": {k: frac(f"{k}_s") for k in
                      ("generate", "score", "ref_logps", "update", "optimizer", "advantage",
                       "other")},
        "steps": steps,
        "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print("\n=== summary ===")
    print(f"versions: torch {versions['torch']}, transformers {versions['transformers']}, "
          f"r1kit {versions['r1kit']} ({versions['r1kit_git']})")
    print(f"steps: {len(steps)}, total {train_s:.2f}s, sum of step walls {tot_wall:.2f}s, "
          f"init {init_s:.2f}s")
    excl = summary["median_step_s_excl_first"]
    print(f"median step {summary['median_step_s']:.3f}s (steps 2..{len(steps)}: "
          + (f"{excl:.3f}s)" if excl is not None else "n/a)"))
    print(f"generated tokens: {tok_total}; generation {summary['gen_tok_per_s']:.1f} tok/s; "
          f"end-to-end {summary['e2e_gen_tok_per_s']:.1f} tok/s")
    print("time split: " + ", ".join(f"{k} {100 * v:.1f}%"
                                     for k, v in summary["fractions"].items()))
    print(f"ru_maxrss {summary['ru_maxrss_mib']:.0f} MiB")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=2, default=str)
        print("wrote", args.json)


if __name__ == "__main__":
    main()
