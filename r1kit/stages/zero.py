"""`r1kit zero`: R1-Zero, GRPO with rule-based rewards straight from a base model (R1-SPEC §1-§3.1).

One step, top to bottom, each phase timed:
    generate  B prompts x G completions with the rollout engine (pi_old = the current policy)
    score     every completion with the weighted rule-based rewards; with
              rl.dynamic_sampling_rounds > 1, more batches of B prompts until B groups with
              unequal rewards are kept (DAPO's refill)
    advantage group-relative advantages; dynamic sampling drops groups with equal rewards
    logprobs  pi_old (only when mu > 1, and not when the hf sampler kept them) and the reference
              (only when beta > 0), without grad
    update    mu minibatch updates of the clipped surrogate (+ k3 KL), micro-batched
    sync      the new weights into the rollout engine (vLLM; nothing for the hf engine)
    log       metrics.jsonl, completions.jsonl, progress bar; eval and checkpoint every N steps

Departures from the paper, on purpose: defaults are sized for a tiny model on 2 CPU cores (see
recipes/tiny/zero.yaml); clip-higher and dynamic sampling from DAPO are on by default; dropout
is off (`trainable.disable_dropout`); a step whose loss or gradients are not finite is skipped, and
several in a row stop the run cleanly.
"""

from __future__ import annotations

import logging
import math
import random
import time
import warnings
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from tqdm import tqdm

from r1kit import checkpoint as ckpt
from r1kit import distributed, grpo, lora, memory, trainable
from r1kit.config import ZeroConfig, to_dict
from r1kit.errors import UserError
from r1kit.evaluation import evaluate
from r1kit.language import reasoning_share
from r1kit.logprobs import completion_logprobs, one_forward
from r1kit.metrics import reflection_rate
from r1kit.models import builtin_model_for, compute_dtype, prepare_torch
from r1kit.report import write_report_safely
from r1kit.rewards import code as code_reward
from r1kit.rewards import get_reward, import_reward_modules
from r1kit.rewards.language import check_reward_targets
from r1kit.rewards.scoring import RewardSpec, Scores, score
from r1kit.rollout import check as check_engine
from r1kit.rollout import make_engine
from r1kit.rollout.hf import Rollouts, pad_id
from r1kit.runs import RunFolder, load_problems
from r1kit.sft import cosine_lr
from r1kit.templates import mark_prefill, render_prompt
from r1kit.tracking import Tracker, check_report_to

log = logging.getLogger("r1kit")


class Timer:
    """Accumulates wall time per phase into `time/<phase>` metrics."""

    def __init__(self):
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        yield
        self.add(phase, time.perf_counter() - t0)

    def add(self, phase: str, seconds: float) -> None:
        self.times[f"time/{phase}"] = self.times.get(f"time/{phase}", 0.0) + seconds


def main(cfg: ZeroConfig, resume: str | None = None, stage: str = "zero") -> dict:
    """One GRPO run; its summary. `stage` names new run folders (`r1kit rl` is this same stage,
    run from any checkpoint with any rewards, e.g. Dev1 with the language reward). With `resume`
    (a run folder), `cfg` only says the stage: the run goes on with its saved config.yaml, as
    `r1kit zero --resume` does (edit that file to change a setting)."""
    if resume:  # (every rank reads it; `trainable.open_run` opens the folder, on rank 0)
        cfg = RunFolder.saved_config(cfg, stage, resume)
    # Inputs first: a bad problem file or reward name leaves no run folder behind.
    cfg = builtin_model_for(cfg)  # builtin:code -> the code base and reward
    train_set, eval_set = load_problems(cfg.data, cfg.eval.num_problems)
    if not eval_set:
        raise UserError("no held-out problems (eval.num_problems=0 or an empty eval source): a "
                        "GRPO run evaluates its model before and after training")
    if cfg.rollout.temperature <= 0:
        raise UserError("rollout.temperature must be more than 0 for GRPO: a group of greedy "
                        "completions has no spread to learn from, and the log-probs divide by it")
    import_reward_modules(cfg.rewards.modules)
    specs = [RewardSpec(name, _weight(name, w)) for name, w in cfg.rewards.weights.items()]
    for spec in specs:
        get_reward(spec.name)
    check_reward_targets(train_set, cfg.rewards.weights)  # not at the first batch with one
    _check_active_last(cfg.rewards.active_last, cfg.rewards.weights)
    if "code" not in cfg.rewards.weights and code_reward.any_tests(train_set):
        log.warning("the training problems have tests, but rewards.weights has no `code` reward: "
                    "accuracy cannot score a program, so nothing would be learnt; e.g. --set "
                    "'rewards.weights={code: 1.0, format: 0.1}'")
    code_reward.configure_for(eval_set, cfg.code, needed="code" in cfg.rewards.weights)
    check_report_to(cfg.run.report_to)
    check_engine(cfg.rollout.engine, cfg.rollout.vllm_mode, strategy=cfg.dist.strategy)
    if lora.enabled(cfg.lora) and cfg.rl.ref_reset_every:
        raise UserError("rl.ref_reset_every needs full fine-tuning: with LoRA (lora.r > 0) the "
                        "reference is the frozen base model; set rl.ref_reset_every=0")
    # Under torchrun each process takes B/W prompts; rank 0 alone writes (r1kit/distributed.py).
    d, device = distributed.setup(cfg.dist.strategy, prepare_torch(cfg.run))
    mine = distributed.split_batch(d, cfg.rl.prompts_per_step)
    distributed.check_strategy(cfg.dist.strategy, lora.enabled(cfg.lora), d.world)
    run = trainable.open_run(cfg, stage, resume, d)
    cfg = run.cfg

    policy, tokenizer, resume_from = trainable.load_for_run(run, cfg, device)
    trainable.disable_dropout(policy)
    rl = cfg.rl
    G = rl.group_size
    ref = memory.make_reference(policy, rl.beta, lora.is_lora(policy), rl.offload_ref)
    policy = distributed.wrap(policy, d)
    opt = torch.optim.AdamW(trainable.trainable_parameters(policy), lr=rl.lr,
                            weight_decay=rl.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, rl))
    gen = torch.Generator(device=device).manual_seed(cfg.run.seed + 1_000_003 * d.rank)
    state = {"step": 0, "order": None, "cursor": 0, "bad_steps": 0, "stuck": 0, "base_eval": None,
             "wall_seconds": 0.0, "train_seconds": 0.0}

    if resume_from:
        saved = ckpt.load_trainer_state(resume_from)
        trainable.restore(saved, policy, opt, d, generator=gen)
        sched.load_state_dict(saved["scheduler"])
        state = saved["state"]
        if ref is not None:
            ref.load_state_dict(saved["ref"])
        log.warning(f"resumed {run.path} from {resume_from.name} (step {state['step']})")
    logged_to = run.rewind_logs(state["step"] if resume_from else None,
                                ("metrics.jsonl", "eval.jsonl", "completions.jsonl"))
    # vLLM loads the model from its folder, then takes the policy's weights (resumed, LoRA-merged)
    longest = None  # a colocated vLLM's KV cache is sized for the longest prompt and the budget
    if cfg.rollout.engine == "vllm" and cfg.rollout.vllm_mode == "colocate":
        rendered = [render_prompt(p.prompt, cfg.data.template, tokenizer) for p in train_set]
        longest = max(map(len, tokenizer(rendered, add_special_tokens=False)["input_ids"]))
    engine = make_engine(cfg.rollout.engine, cfg.model.path, vllm_mode=cfg.rollout.vllm_mode,
                         vllm_server_url=cfg.rollout.vllm_server_url,
                         vllm_gpu_memory_utilization=cfg.rollout.vllm_gpu_memory_utilization,
                         vllm_max_model_len=cfg.rollout.vllm_max_model_len,
                         seed=cfg.run.seed + d.rank,
                         logprobs=rl.rollout_correction != "off",
                         max_new_tokens=cfg.rollout.max_new_tokens, max_prompt_tokens=longest,
                         device=device, vllm_enforce_eager=cfg.rollout.vllm_enforce_eager)
    if rl.rollout_correction != "off" and cfg.rollout.engine == "vllm" and cfg.rollout.top_p < 1:
        log.warning("rl.rollout_correction with rollout.top_p < 1: vLLM's log-probs are taken over "
                    "the top-p nucleus, the training forward's over the whole vocabulary, so the "
                    "weights are below 1 by the nucleus mass (sequence modes: its product)")
    if engine.needs_sync:  # (FSDP gathers every layer for it: only where it does something)
        _sync_engine(engine, policy, d)
    tracker = Tracker(run.path, cfg.run.report_to if d.main else [], config=to_dict(cfg),
                      resume_step=logged_to)

    def evaluate_now(tag: str) -> dict:
        with distributed.gathered(policy, d) as model:  # each rank samples a share of batches
            res = evaluate(model, tokenizer, eval_set, cfg.eval, template=cfg.data.template,
                           stop=cfg.rollout.stop, seed=cfg.run.seed, part=(d.rank, d.world),
                           gather=lambda mine: distributed.gather(mine, d))
        metrics = run.record_eval(state["step"], tag, res)
        tracker.log(metrics, state["step"])
        return metrics

    t_start = time.time() - state["wall_seconds"]
    if state["base_eval"] is None:
        state["base_eval"] = evaluate_now("base")
        if d.main:
            _print_eval("base", state["base_eval"], cfg.eval)

    bar = tqdm(total=rl.steps, initial=state["step"], desc=stage, dynamic_ncols=True,
               mininterval=1.0, disable=not d.main)
    stopped = None
    saved_at = state["step"] if resume_from else None  # the step of the last checkpoint written
    while state["step"] < rl.steps:
        timer = Timer()
        t_step = time.perf_counter()
        lr = sched.get_last_lr()[0]  # this step's rate (the scheduler moves on after the update)

        # ---------------------------------------------------------------- generate and score
        active = [spec for spec in specs if state["step"] >= rl.steps - int(
            cfg.rewards.active_last.get(spec.name, rl.steps))]
        batches, useful = [], 0  # groups this rank could update on
        n_rounds = rl.dynamic_sampling_rounds if rl.dynamic_sampling else 1
        for r in range(n_rounds):
            with timer("generate"):
                problems = _next_problems(state, train_set, rl.prompts_per_step, cfg.run.seed)
                problems = problems[mine]
                prompts = [render_prompt(p.prompt, cfg.data.template, tokenizer) for p in problems]
                problems = [mark_prefill(p, text) for p, text in zip(problems, prompts)]
                policy.eval()
                with distributed.gathered(policy, d) as model:
                    ro = engine.sample(model, tokenizer, prompts, G,
                                       max_new_tokens=cfg.rollout.max_new_tokens,
                                       temperature=cfg.rollout.temperature,
                                       top_p=cfg.rollout.top_p, stop=cfg.rollout.stop,
                                       generator=gen)
            with timer("score"):
                per_row = [p for p in problems for _ in range(G)]
                scores = score(ro.texts, per_row, active, ro.num_tokens,
                               cfg.rollout.max_new_tokens, timeout_s=cfg.rewards.timeout_s)
            batches.append((ro, scores, per_row))
            if n_rounds == 1:
                break
            # DAPO's refill: another batch of prompts (on every rank, in step: FSDP gathers the
            # layers on all of them) until the ranks together hold B groups to update on
            useful += int(_useful_groups(torch.tensor(scores.total), ro.truncated, G, rl).sum())
            counts = distributed.gather(useful, d)
            if sum(counts) >= rl.prompts_per_step or r + 1 == n_rounds:
                break
        ro, scores, per_row = _concat_batches(batches, pad_id(tokenizer))
        rewards = torch.tensor(scores.total, dtype=torch.float32)  # (n*B*G,)
        # ---------------------------------------------------------------- advantage
        finite = bool(rewards.isfinite().all())  # (1e39 is finite to Python, not in float32)
        advantages = (grpo.group_advantages(rewards, G, scale_by_std=rl.scale_by_std) if finite
                      else torch.zeros_like(rewards))  # (n*B*G,); the update is skipped below
        group_equal = (rewards.view(-1, G) == rewards.view(-1, G)[:, :1]).all(dim=1)  # (n*B,)
        keep = ~group_equal if rl.dynamic_sampling else torch.ones_like(group_equal)
        if n_rounds > 1:  # at most B groups over the ranks, each rank's first ones (DAPO)
            keep = _useful_groups(rewards, ro.truncated, G, rl)
            quota = rl.prompts_per_step - sum(counts[: d.rank])
            keep &= keep.cumsum(0) <= max(0, quota)
        rows = keep.repeat_interleave(G).nonzero().squeeze(-1)  # kept rows
        mask = ro.completion_mask.clone()  # (n*B*G, T)
        if rl.overlong_filter:
            mask[torch.tensor(ro.truncated)] = 0
        metrics = _rollout_metrics(ro, scores, rewards, group_equal, per_row)
        if n_rounds > 1:  # batches sampled, and the share of B updated on (over the ranks)
            metrics["train/sampling_rounds"] = float(len(batches))
            metrics["train/groups_kept"] = distributed.all_sum(
                float(keep.sum()), d) / rl.prompts_per_step

        # ---------------------------------------------------------------- update
        finite = not distributed.all_any(not finite, d)
        if distributed.all_any(len(rows) > 0 and mask[rows].any(), d) and finite:
            update = update_policy(policy, ref, opt, ro, advantages, mask, rows, rl, cfg.rollout,
                                   cfg.rollout.max_new_tokens, timer, d)
            ok, applied = update.pop("ok"), update.pop("applied")
            metrics.update(update)
            if not ok:
                state["bad_steps"] += 1
                # with mu > 1, the minibatches before the bad one were applied already
                what = (f"the update's last {rl.updates_per_rollout - applied} of "
                        f"{rl.updates_per_rollout} minibatches skipped" if applied else
                        "update skipped")
                log.warning(f"step {state['step'] + 1}: non-finite loss or gradient; {what} "
                            f"({state['bad_steps']} in a row)")
            else:
                state["bad_steps"] = 0
            if applied and engine.needs_sync:  # vLLM samples the next step from the new weights
                with timer("sync"):
                    _sync_engine(engine, policy, d)
        elif not finite:
            state["bad_steps"] += 1
            log.warning(f"step {state['step'] + 1}: non-finite rewards; update skipped")
        with warnings.catch_warnings():  # the schedule follows the steps, updated or not (torch
            warnings.filterwarnings("ignore", "Detected call of")  # warns if none was yet)
            sched.step()
        if state["bad_steps"] >= rl.max_bad_steps:
            kept = (f"the last good checkpoint is intact in {run.path / 'checkpoints'}"
                    if (run.path / "checkpoints" / "latest").is_file() else "no checkpoint was written")
            stopped = f"stopped after {state['bad_steps']} consecutive non-finite steps; {kept}"
            log.error(stopped)
            break
        _watch_for_stuck_rewards(state, group_equal, scores, rl.stuck_steps, d)
        state["step"] += 1

        # ---------------------------------------------------------------- reference reset
        if ref is not None and rl.ref_reset_every and state["step"] % rl.ref_reset_every == 0:
            ref.load_state_dict(distributed.full_state_dict(policy, d))

        # ---------------------------------------------------------------- log
        metrics["time/step"] = time.perf_counter() - t_step
        state["train_seconds"] += metrics["time/step"]
        metrics.update(timer.times)
        metrics = distributed.reduce_metrics(metrics, d)  # means over ranks
        metrics["train/lr"] = lr
        run.append("metrics.jsonl", {"step": state["step"], **metrics})
        tracker.log(metrics, state["step"])
        if cfg.run.log_completions:  # spread over the step's rows, every rank's
            per_rank = math.ceil(cfg.run.log_completions / d.world)
            logged = [
                {"step": state["step"], "id": per_row[i].id, "answer": per_row[i].answer,
                 "completion": ro.texts[i], "reward": scores.total[i],
                 "rewards": {k: v[i] for k, v in scores.per_reward.items()},
                 **_reasons(scores, i)}
                for i in range(0, len(ro), max(1, len(ro) // per_rank))][:per_rank]
            run.append_many("completions.jsonl", [
                r for rows in distributed.gather(logged, d) for r in rows
            ][: cfg.run.log_completions])
        solved = metrics.get("reward/accuracy", metrics.get("reward/code", math.nan))
        bar.set_postfix(reward=f"{metrics['reward/total']:.2f}", acc=f"{solved:.2f}",
                        refresh=False)  # shown with this step's count, not the next one's
        bar.update(1)

        if cfg.eval.every and state["step"] % cfg.eval.every == 0 and state["step"] < rl.steps:
            m = evaluate_now(f"step{state['step']}")
            bar.write(f"step {state['step']}: held-out pass@1 {m['eval/pass@1']:.3f}")
        state["wall_seconds"] = time.time() - t_start
        due = cfg.run.checkpoint_every and state["step"] % cfg.run.checkpoint_every == 0
        if due and state["bad_steps"] == 0:  # never checkpoint in the middle of a bad streak
            _save(run, state, policy, tokenizer, opt, sched, gen, ref, d)
            saved_at = state["step"]
    bar.close()

    state["wall_seconds"] = time.time() - t_start
    if stopped is None and saved_at != state["step"]:  # (writing it again only risks it)
        _save(run, state, policy, tokenizer, opt, sched, gen, ref, d)
    final = evaluate_now("final") if stopped is None else {}
    state["wall_seconds"] = time.time() - t_start  # the whole run, its evaluations included
    summary = _summary(state, final, cfg.eval.k, stopped)
    if stopped is None:  # a plain HF folder: LoRA merged (and final-adapter/), FSDP gathered
        trainable.save_final(policy, tokenizer, run.path / "final", d)
    run.write_json("summary.json", summary)
    tracker.close()
    if d.main:
        write_report_safely(run.path)
        if final:
            _print_eval("final", final, cfg.eval, base=state["base_eval"])
        print(f"run folder: {run.path}")
    distributed.finish(d)
    return summary


# -------------------------------------------------------------------------------- helpers


def _sync_engine(engine, policy, d: distributed.Dist) -> None:
    """The policy's weights into the rollout engine: from every rank into its own colocated
    engine, or from the first rank alone into a shared server (the others wait for it)."""
    one = getattr(engine, "main_rank_only", False)
    with distributed.gathered(policy, d) as model:
        if d.main or not one:
            engine.sync(model)
    if one:
        distributed.barrier(d)


def _lr_factor(step: int, rl) -> float:
    """The learning rate of rollout step `step` (from 0) over rl.lr: linear warm-up, then constant
    or a cosine decay (a high rate early reaches the first gains sooner; a low one late keeps them).
    It follows the steps whether or not they updated (every group dropped, a non-finite step), so
    the cosine ends at rl.min_lr on the last step; with mu > 1 every minibatch of a step uses it."""
    if rl.lr_schedule == "cosine":
        return cosine_lr(step, rl.steps, rl.warmup_steps, rl.lr, rl.min_lr) / rl.lr
    return min(1.0, (step + 1) / max(1, rl.warmup_steps))


def _reasons(scores, i: int) -> dict:
    """`{"reasons": {reward: reason}}` for rewards that say why (the code reward), else {}."""
    reasons = scores.row_reasons(i)
    return {"reasons": reasons} if reasons else {}


def _weight(name: str, w) -> float:
    """A reward weight as a float (YAML reads `1e-3` as a string); an error names a bad one."""
    try:
        value = float(w) if isinstance(w, (int, float, str)) and not isinstance(w, bool) else None
    except ValueError:
        value = None
    if value is None or not math.isfinite(value):
        raise UserError(f"rewards.weights.{name} must be a finite number, got {w!r}")
    return value


def _check_active_last(active_last: dict, weights: dict) -> None:
    for name, n in active_last.items():
        if name not in weights:
            raise UserError(f"rewards.active_last: {name!r} is not in rewards.weights")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise UserError(f"rewards.active_last.{name} must be a whole number of steps >= 1, "
                            f"got {n!r}")


def _next_problems(state: dict, train_set: list, n: int, seed: int) -> list:
    """The next `n` problems of a seeded shuffled order, reshuffled each epoch (resumable)."""
    out = []
    while len(out) < n:
        if state["order"] is None or state["cursor"] >= len(state["order"]):
            epoch = state.get("epoch", 0)
            order = list(range(len(train_set)))
            random.Random(f"{seed}-{epoch}").shuffle(order)
            state.update(order=order, cursor=0, epoch=epoch + 1)
        take = state["order"][state["cursor"] : state["cursor"] + n - len(out)]
        state["cursor"] += len(take)
        out += [train_set[i] for i in take]
    return out


def update_policy(policy, ref, opt, ro: Rollouts, advantages, mask, rows, rl, rollout_cfg,
                  max_tokens, timer, d: distributed.Dist = distributed.SINGLE) -> dict:
    """mu optimizer steps over the kept rows, each over micro-batches with an exact denominator.

    `rows` are whole groups of G, in order. Minibatches are whole groups. Micro-batches hold rows
    of similar completion length, each run only up to its own longest completion, with each
    distinct prompt run once (`completion_logprobs(groups=...)`); where a pass must be one forward
    (DDP/FSDP, checkpointing) they are whole groups instead, packed without padding.
    Over several processes (`d`) the denominator is that of every rank's rows together, and a rank
    with no kept rows takes part with a zero-weighted group (r1kit/distributed.py).
    """
    G = ro.group_size
    temp = rollout_cfg.temperature
    real = len(rows) > 0
    if not real:  # kept rows elsewhere: run a group with zero weight, in step with the others
        rows = torch.arange(G)
    t_used = max(1, int(mask[rows].sum(-1).max().item()))  # the longest kept completion
    data = {
        "p_ids": ro.prompt_ids[rows], "p_mask": ro.prompt_mask[rows],
        "c_ids": ro.completion_ids[rows, :t_used], "c_mask": mask[rows, :t_used],
        "adv": advantages[rows],
    }
    correct = rl.rollout_correction != "off"
    if correct:
        if ro.logprobs is None:
            raise RuntimeError("rl.rollout_correction needs the sampler's log-probs; the rollout "
                               "engine kept none")
        data["sampler_lp"] = ro.logprobs[rows, :t_used]
    device = next(policy.parameters()).device
    data = {k: v.to(device) for k, v in data.items()}
    n = len(rows)
    seq_len = data["p_ids"].shape[1] + t_used
    mb = memory.micro_batch_rows(G, rl.micro_batch_size, rl.max_tokens_per_micro_batch, seq_len)
    # every rank's kept completion tokens: the token means below are weighted by their tokens
    tokens_all = distributed.all_sum(float(data["c_mask"].sum()) if real else 0.0, d)

    lengths = data["c_mask"].sum(-1)  # (n,)

    def micro_batches(mbatch: torch.Tensor, by_length: bool) -> list[torch.Tensor]:
        """`mbatch` (whole groups) cut every mb rows; by_length: sorted by completion length
        first, so that a micro-batch computes little padding."""
        if by_length:
            mbatch = mbatch[torch.argsort(lengths[mbatch], stable=True).to(mbatch.device)]
        return [mbatch[i : i + mb] for i in range(0, len(mbatch), mb)]

    def logprobs_of(model, idx, **kw):
        """(n_mb, t_used) log-probs (and entropies) of rows `idx`, computed up to their longest
        completion; zeros (masked) beyond it."""
        t = max(1, int(lengths[idx].max()))
        lp, ent = completion_logprobs(
            model, data["p_ids"][idx], data["p_mask"][idx], data["c_ids"][idx, :t],
            data["c_mask"][idx, :t], temperature=temp, groups=idx // G, **kw)
        pad = (0, t_used - t)
        return F.pad(lp, pad), (F.pad(ent, pad) if ent is not None else None)

    def no_grad_pass(model) -> torch.Tensor:
        out = torch.zeros(n, t_used, device=device)
        for idx in micro_batches(torch.arange(n, device=device), by_length=True):
            out[idx] = logprobs_of(model, idx)[0]
        return out

    with timer("logprobs"), torch.no_grad(), distributed.gathered(policy, d) as model:
        old = ref_lp = None
        # the sampler's log-probs equal the training forward's in float32 only (in bf16 the
        # decode steps round differently: ratios off 1 by up to 0.1 before any update, which
        # GSPO's 3e-4 clip range turns into clipped sequences)
        if (rl.updates_per_rollout > 1 and rl.reuse_sampling_logprobs and ro.logprobs is not None
                and rollout_cfg.engine == "hf"  # vLLM's (for the correction) are its kernels'
                and compute_dtype(policy) == torch.float32):
            old = ro.logprobs[rows, :t_used].to(device)  # kept by the sampler: no pi_old pass
        elif rl.updates_per_rollout > 1:
            policy.eval()
            old = no_grad_pass(model)
        if rl.beta > 0:
            with lora.reference(policy, ref) as r, memory.reference_on(r, device) as r:
                ref_lp = no_grad_pass(r)

    t_update = time.perf_counter()
    policy.train()
    group_order = torch.randperm(n // G)
    minibatches = [  # tensor_split: exactly mu of them, some maybe empty, on every rank
        (g[:, None] * G + torch.arange(G)).flatten()
        for g in group_order.tensor_split(rl.updates_per_rollout)
    ]
    sums: dict[str, float] = {}  # this rank's partial sums, summed over ranks after the loop
    grad_norms: list[float] = []
    ran, ok = 0, True  # minibatches that ran (empty ones are skipped)
    for mbatch in minibatches:
        local = real and len(mbatch) > 0 and bool(data["c_mask"][mbatch].any())
        denom = distributed.all_sum(  # every rank's tokens (or sequences) of this minibatch
            grpo.loss_denominator(data["c_mask"][mbatch], rl.aggregation) if local else 0.0, d)
        if denom == 0:  # empty on every rank (mu above the kept groups): no step, no metrics
            continue
        opt.zero_grad(set_to_none=True)
        chunks = micro_batches(mbatch, not one_forward(policy)) if real else []
        for idx, weight, last in distributed.micro_steps(chunks, d, filler=torch.arange(G)):
            with distributed.grad_sync(policy, d, last):
                lp, ent = logprobs_of(policy, idx, with_entropy=True)  # (n_mb, T')
                # mu = 1: pi_old is the policy before this update, i.e. lp itself
                old_mb = old[idx] if old is not None else lp.detach()
                weights = grpo.rollout_weights(
                    old_mb, data["sampler_lp"][idx], data["c_mask"][idx], rl.rollout_correction,
                    c_max=rl.rollout_correction_max, c_min=rl.rollout_correction_min,
                ) if correct else None
                loss, m = grpo.policy_loss(
                    lp, old_mb, data["adv"][idx],
                    data["c_mask"][idx], ref_logprobs=ref_lp[idx] if ref_lp is not None else None,
                    beta=rl.beta, eps_low=rl.eps_low, eps_high=rl.eps_high,
                    aggregation=rl.aggregation, max_tokens=max_tokens,
                    ratio_level=rl.ratio_level, loss_denominator=max(denom, 1.0),
                    is_weights=weights,
                )
                if correct:
                    m.update(_correction_metrics(weights, old_mb, data["sampler_lp"][idx],
                                                 data["c_mask"][idx], rl))
                (loss * (weight * distributed.loss_scale(d))).backward()
            if weight == 0:
                continue
            cm = data["c_mask"][idx].float()
            # Entropy of the full next-token distribution (already computed with the log-probs),
            # averaged over the completion tokens of the rows being updated.
            m["entropy"] = ((ent * cm).sum() / cm.sum().clamp(min=1)).item()
            # loss and pg_loss are partial sums (exact denominator); the rest are token means of
            # the call, weighted by its share of the tokens: the token means over every row
            # updated, whatever the micro-batching (length-sorted calls differ in tokens per row)
            sums["train/loss"] = sums.get("train/loss", 0.0) + loss.item()
            sums["train/pg_loss"] = sums.get("train/pg_loss", 0.0) + float(m.pop("pg_loss"))
            share = float(cm.sum()) / max(tokens_all, 1.0)
            for k, v in m.items():
                sums[f"train/{k}"] = sums.get(f"train/{k}", 0.0) + float(v) * share
        ran += 1
        grad_norm = distributed.full(
            torch.nn.utils.clip_grad_norm_(policy.parameters(), rl.grad_clip))
        if not torch.isfinite(grad_norm):
            ok = False
            opt.zero_grad(set_to_none=True)
            break
        opt.step()
        opt.zero_grad(set_to_none=True)  # no model-sized gradients held through the rollout
        grad_norms.append(grad_norm.item())  # already global
    sums = distributed.sum_metrics(sums, d)  # the loss sums and row-weighted means, global
    for key in ("train/loss", "train/pg_loss"):  # the mean over the minibatches that ran
        if key in sums:
            sums[key] /= ran
    if grad_norms:
        sums["train/grad_norm"] = sum(grad_norms) / len(grad_norms)
    policy.eval()
    timer.add("update", time.perf_counter() - t_update)
    sums["ok"] = ok and math.isfinite(sums.get("train/loss", 0.0))
    sums["applied"] = len(grad_norms)  # optimizer steps taken (minibatches)
    return sums


def _useful_groups(rewards, truncated: list[bool], G: int, rl) -> torch.Tensor:
    """(groups,) which groups carry a gradient: rewards not all equal, and with the overlong
    filter on, some completion not truncated (a fully masked group updates nothing)."""
    grouped = rewards.view(-1, G)  # (groups, G)
    useful = (grouped != grouped[:, :1]).any(dim=1)
    if rl.overlong_filter:
        useful &= ~torch.tensor(truncated).view(-1, G).all(dim=1)
    return useful


def _concat_batches(batches: list, pad_id: int):
    """One step's sampled batches (`Rollouts`, `Scores`, problems per row) as one."""
    if len(batches) == 1:
        return batches[0]
    return (Rollouts.concat([ro for ro, _, _ in batches], pad_id),
            Scores.concat([sc for _, sc, _ in batches]),
            [p for _, _, rows in batches for p in rows])


def _correction_metrics(weights, old, sampler_lp, c_mask, rl) -> dict:
    """Token means of the rollout correction: its weight, the share of tokens whose weight it
    capped (truncate) or dropped (mask), and the mean |pi_old - pi_sampler| log-prob gap."""
    cm = c_mask.float()
    n = cm.sum().clamp(min=1)
    if rl.rollout_correction.endswith("mask"):
        changed = weights == 0
    else:
        changed = (weights == rl.rollout_correction_max) | (weights == rl.rollout_correction_min)
    return {
        "rollout_is_weight": ((weights * cm).sum() / n).item(),
        "rollout_is_changed": ((changed.float() * cm).sum() / n).item(),
        "rollout_logprob_gap": (((old.detach() - sampler_lp).abs().nan_to_num() * cm).sum()
                                / n).item(),
    }


def _rollout_metrics(ro: Rollouts, scores, rewards, group_equal, problems: list) -> dict:
    """Per-step rollout statistics; `problems` holds each completion's problem (B*G).

    `train/language`: mean share of target-language words in the reasoning, over completions whose
    reasoning has words (NaN when none has), as in the pipeline table; `train/reflection`: share of
    completions with a reflection word (R1-SPEC §6). Both are regex passes over the texts.
    """
    m = scores.means()
    n_tok = torch.tensor(ro.num_tokens, dtype=torch.float32)
    shares = [reasoning_share(t, p) for t, p in zip(ro.texts, problems)]
    shares = [s for s in shares if s is not None]
    m.update({
        "train/completion_tokens": n_tok.mean().item(),
        "train/completion_tokens_max": n_tok.max().item(),
        "train/truncated": sum(ro.truncated) / len(ro),
        "train/zero_adv_groups": group_equal.float().mean().item(),
        "train/reward_std": rewards.double().std().item(),  # (float32 leaves 1e-8 when equal)
        "train/reflection": reflection_rate(ro.texts),
        "train/language": sum(shares) / len(shares) if shares else math.nan,
    })
    return m


def _watch_for_stuck_rewards(state: dict, group_equal, scores, patience: int,
                             d: distributed.Dist = distributed.SINGLE) -> None:
    """Warn loudly about the most common 'nothing is learning' failure (PEERS.md §2, item 4).
    Judged on the whole step, every rank's groups; warned once, by the first rank."""
    stuck = not distributed.all_any(not bool(group_equal.all()), d)
    state["stuck"] = state["stuck"] + 1 if stuck else 0
    if state["stuck"] == patience and d.main:
        log.warning(
            f"every group has had equal rewards for {patience} steps: all advantages are zero and "
            "the policy is not learning. Check that the reward reads the completion format the "
            "model writes (answer tags, a prefilled <think>), that the reference answers parse, "
            "and that max_new_tokens leaves room to finish; a harder or easier problem mix, or a "
            "higher temperature, restores variance."
        )
    # each reward's one value on this rank, or "varied"; stuck where every rank has None or 0.0
    distinct = {name: set(v) for name, v in scores.per_reward.items()}
    here = {name: next(iter(v)) if len(v) == 1 else "varied" for name, v in distinct.items()}
    ranks = distributed.gather(here, d)
    for name in scores.per_reward:
        values = {r[name] for r in ranks}
        key = f"stuck_{name}"
        state[key] = state.get(key, 0) + 1 if len(values) == 1 and values <= {None, 0.0} else 0
        if state[key] == patience and d.main:
            log.warning(
                f"reward '{name}' returned {next(iter(values))} for every completion for "
                f"{patience} steps: check its expected format against completions.jsonl in the "
                "run folder."
            )


def _save(run, state, policy, tokenizer, opt, sched, gen, ref, d) -> None:
    """A resumable checkpoint (every rank calls; rank 0 writes; LoRA: the adapter)."""
    trainable.save_checkpoint(run.path, state["step"], policy, tokenizer, opt, {
        "scheduler": sched.state_dict(), "generator": gen.get_state(), "state": state,
        "ref": ref.state_dict() if ref is not None else None,
    }, d, config_text=run.config_text)


def _summary(state: dict, final: dict, k: int, stopped: str | None) -> dict:
    base = state["base_eval"]
    out = {
        "steps": state["step"],
        "wall_seconds": round(state["wall_seconds"], 2),
        "train_seconds": round(state["train_seconds"], 2),
        "base_pass@1": base["eval/pass@1"],
        "base_pass@1_ci": [base["eval/pass@1_lo"], base["eval/pass@1_hi"]],
        f"base_cons@{k}": base[f"eval/cons@{k}"],
        "base_cons@k": base[f"eval/cons@{k}"],
        "base_format": base["eval/format"],
    }
    if final:
        out.update({
            "final_pass@1": final["eval/pass@1"],
            "final_pass@1_ci": [final["eval/pass@1_lo"], final["eval/pass@1_hi"]],
            f"final_cons@{k}": final[f"eval/cons@{k}"],
            "final_cons@k": final[f"eval/cons@{k}"],
            "final_format": final["eval/format"],
        })
    if stopped:
        out["stopped"] = stopped
    return out


def _print_eval(tag: str, m: dict, ev, base: dict | None = None) -> None:
    k = ev.k
    if base is None:
        print(f"[{tag}] held-out pass@1 {m['eval/pass@1']:.3f} "
              f"[{m['eval/pass@1_lo']:.3f}, {m['eval/pass@1_hi']:.3f}]  "
              f"cons@{k} {m[f'eval/cons@{k}']:.3f}  format {m['eval/format']:.3f}")
        return
    rows = [("pass@1", "eval/pass@1"), (f"pass@{k}", f"eval/pass@{k}"),
            (f"cons@{k}", f"eval/cons@{k}"), ("format", "eval/format"),
            ("tokens", "eval/tokens"), ("reflection", "eval/reflection")]
    if k == 1:  # pass@1 is already the first row
        del rows[1]
    print(f"\n{'held-out':<12}{'base':>10}{'final':>10}")
    for name, key in rows:
        print(f"{name:<12}{base[key]:>10.3f}{m[key]:>10.3f}")
    print(f"pass@1 95% CI: base [{base['eval/pass@1_lo']:.3f}, {base['eval/pass@1_hi']:.3f}]"
          f"  final [{m['eval/pass@1_lo']:.3f}, {m['eval/pass@1_hi']:.3f}]"
          f"  (k={k} samples per problem, T={ev.temperature}, top-p {ev.top_p})")
