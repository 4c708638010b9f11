"""`r1kit sft`: completion-only SFT on {prompt, completion} pairs (R1-SPEC §3.2, §3.5, §5).

The one fine-tuning stage of R1: the cold start on a few thousand long-CoT samples, the SFT on
rejection-sampled data before the last RL stage, and the distillation of students. One run:
    evaluate  held-out pass@1 of the model before training (skipped with eval.num_problems=0)
    train     epochs of length-grouped batches; each optimizer step is cut into micro-batches whose
              losses share the step's token count as denominator (exact gradient accumulation);
              AdamW, warm-up then cosine decay from sft.lr to sft.min_lr
    log       metrics.jsonl per optimizer step; eval every N steps; a checkpoint every N steps
    finish    held-out pass@1 after training, the HF model in final/, summary.json

Departures from the paper, on purpose: defaults are sized for a small model (batch 32 instead of
128, max_len 256 instead of 32,768; `data.max_len=0` trains on whole examples, as distill and the
pipeline do); an optimizer step whose gradient is not finite is skipped.
"""

from __future__ import annotations

import logging
import math
import sys
import time

import torch
from tqdm import tqdm

from r1kit import checkpoint as ckpt
from r1kit import distributed, lora, trainable
from r1kit.config import DataConfig, SFTConfig, to_dict
from r1kit.errors import UserError
from r1kit.evaluation import evaluate
from r1kit.models import prepare_torch
from r1kit.rewards import code as code_reward
from r1kit.runs import load_problems
from r1kit.sft import (
    collate,
    cosine_lr,
    encode,
    length_grouped_batches,
    load_sft_jsonl,
    sft_loss,
    target_count,
)
from r1kit.tracking import Tracker, check_report_to

log = logging.getLogger("r1kit")


def main(cfg: SFTConfig, resume: str | None = None) -> dict:
    """One SFT run; its summary. With `resume` (its folder), `cfg` only says the stage: the
    run goes on with its saved config.yaml (edit that file to change a setting)."""
    # Under torchrun each process takes its share of every batch; rank 0 alone writes.
    ranks, device = distributed.setup(cfg.dist.strategy, prepare_torch(cfg.run))
    distributed.check_strategy(cfg.dist.strategy, lora.enabled(cfg.lora), ranks.world)
    if resume:
        run = trainable.open_run(cfg, "sft", resume, ranks)
        cfg = run.cfg
        examples, eval_set = _inputs(cfg)
    else:
        examples, eval_set = _inputs(cfg)  # a bad data file or no sandbox fails before a run folder
        run = trainable.open_run(cfg, "sft", None, ranks)
        cfg = run.cfg

    model, tokenizer, resume_from = trainable.load_for_run(run, cfg, device)
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    model = distributed.wrap(model, ranks)
    d, s = cfg.data, cfg.sft
    encoded = encode(examples, tokenizer, d.template)
    lengths = [len(p) + len(c) for p, c in encoded]
    max_len = resolve_max_len(d.max_len, lengths)
    if encoded and all(len(p) >= max_len for p, _ in encoded):  # no completion token fits
        run.discard()
        raise UserError(f"data.max_len={d.max_len} leaves no room for any completion: the shortest "
                        f"prompt is {min(len(p) for p, _ in encoded)} tokens")
    truncated = sum(n > max_len for n in lengths)
    if truncated:
        log.warning(f"{truncated} of {len(examples)} examples are longer than data.max_len="
                    f"{d.max_len} tokens; their completions are cut (and lose their EOS)")
    if ranks.main and isinstance(context, int) and max_len > context:
        log.warning(f"{sum(n > context for n in lengths)} examples are longer than the model's "
                    f"{context} positions (max_position_embeddings; the longest is "
                    f"{max(lengths)} tokens): they train past its context; cap data.max_len "
                    "or sample shorter completions")
    steps_per_epoch = math.ceil(len(examples) / s.batch_size)
    total_steps = s.epochs * steps_per_epoch
    if s.warmup_steps >= total_steps and ranks.main and not resume_from:
        log.warning(f"sft.warmup_steps={s.warmup_steps} covers all {total_steps} steps: the rate "
                    f"never reaches sft.lr={s.lr} and never decays; lower sft.warmup_steps")
    micro = min(s.micro_batch_size, s.batch_size)
    opt = torch.optim.AdamW(trainable.trainable_parameters(model), lr=s.lr,
                            weight_decay=s.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: cosine_lr(step, total_steps, s.warmup_steps, s.lr, s.min_lr) / s.lr
    )
    state = {"step": 0, "base_eval": None, "wall_seconds": 0.0, "train_seconds": 0.0,
             "first_loss": None, "last_loss": None}

    if resume_from:
        saved = ckpt.load_trainer_state(resume_from)
        trainable.restore(saved, model, opt, ranks)
        sched.load_state_dict(saved["scheduler"])
        state = saved["state"]
        log.warning(f"resumed {run.path} from {resume_from.name} (step {state['step']})")
    logged_to = run.rewind_logs(state["step"] if resume_from else None,
                                ("metrics.jsonl", "eval.jsonl"))
    tracker = Tracker(run.path, cfg.run.report_to if ranks.main else [], config=to_dict(cfg),
                      resume_step=logged_to)

    def evaluate_now(tag: str) -> dict:
        if not eval_set:
            return {}
        with distributed.gathered(model, ranks) as m:  # each rank samples a share of batches
            res = evaluate(m, tokenizer, eval_set, cfg.eval, template=d.template,
                           seed=cfg.run.seed, part=(ranks.rank, ranks.world),
                           gather=lambda mine: distributed.gather(mine, ranks))
        metrics = run.record_eval(state["step"], tag, res)
        tracker.log(metrics, state["step"])
        return metrics

    t_start = time.time() - state["wall_seconds"]
    if state["base_eval"] is None:
        state["base_eval"] = evaluate_now("base")
        if ranks.main:
            _print_eval("base", state["base_eval"])

    bar = tqdm(total=total_steps, initial=state["step"], desc="sft", dynamic_ncols=True,
               mininterval=1.0, disable=not ranks.main)
    batches, batches_epoch = [], None
    while state["step"] < total_steps:
        t_step = time.perf_counter()
        epoch, position = divmod(state["step"], steps_per_epoch)
        if batches_epoch != epoch:  # the order of an epoch depends only on seed and epoch
            batches = length_grouped_batches(lengths, s.batch_size, f"{cfg.run.seed}-{epoch}")
            batches_epoch = epoch
        rows = batches[position]

        # ---------------------------------------------------------------- forward / backward
        mine = rows[ranks.rank :: ranks.world]  # this process's share of the batch
        micro_batches = [
            collate([examples[i] for i in mine[j : j + micro]], tokenizer, d.template, max_len)
            for j in range(0, len(mine), micro)
        ]
        # The step's token count over every rank: micro-batches and ranks sum to the full batch.
        n_tokens = int(distributed.all_sum(sum(target_count(mb) for mb in micro_batches), ranks))
        model.train()
        opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        filler = None if micro_batches else collate(examples[:1], tokenizer, d.template, max_len)
        for mb, weight, last in distributed.micro_steps(micro_batches, ranks, filler):
            batch = {k: v.to(device) for k, v in mb.items() if isinstance(v, torch.Tensor)}
            with distributed.grad_sync(model, ranks, last):
                loss, _ = sft_loss(model, batch, denominator=max(n_tokens, 1))
                (loss * (weight * distributed.loss_scale(ranks))).backward()
            loss_sum += weight * loss.item()
        loss_sum = distributed.all_sum(loss_sum, ranks)

        # ---------------------------------------------------------------- optimizer step
        lr = sched.get_last_lr()[0]
        grad_norm = distributed.full(torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                                    s.grad_clip))
        if torch.isfinite(grad_norm) and math.isfinite(loss_sum):
            opt.step()
        else:
            log.warning(f"step {state['step'] + 1}: non-finite loss or gradient; step skipped")
        opt.zero_grad(set_to_none=True)  # none held through evaluations and checkpoints
        sched.step()
        state["step"] += 1

        # ---------------------------------------------------------------- log
        metrics = {
            "train/loss": loss_sum, "train/lr": lr, "train/grad_norm": grad_norm.item(),
            "train/tokens": n_tokens, "train/examples": len(rows),
            "time/step": time.perf_counter() - t_step,
        }
        state["train_seconds"] += metrics["time/step"]
        state["first_loss"] = loss_sum if state["first_loss"] is None else state["first_loss"]
        state["last_loss"] = loss_sum
        run.append("metrics.jsonl", {"step": state["step"], "epoch": epoch + 1, **metrics})
        tracker.log(metrics, state["step"])
        bar.set_postfix(loss=f"{loss_sum:.3f}", lr=f"{lr:.2e}", refresh=False)
        bar.update(1)

        if cfg.eval.every and state["step"] % cfg.eval.every == 0 and state["step"] < total_steps:
            m = evaluate_now(f"step{state['step']}")
            if m:
                bar.write(f"step {state['step']}: held-out pass@1 {m['eval/pass@1']:.3f}")
        state["wall_seconds"] = time.time() - t_start
        if cfg.run.checkpoint_every and state["step"] % cfg.run.checkpoint_every == 0:
            _save(run, state, model, tokenizer, opt, sched, ranks)
    bar.close()

    state["wall_seconds"] = time.time() - t_start
    if not (cfg.run.checkpoint_every and state["step"] % cfg.run.checkpoint_every == 0):
        _save(run, state, model, tokenizer, opt, sched, ranks)
    final = evaluate_now("final")
    trainable.save_final(model, tokenizer, run.path / "final", ranks)  # LoRA merged
    summary = _summary(state, final, cfg.eval.k, examples=len(examples), truncated=truncated,
                       max_len=max_len, epochs=s.epochs)
    run.write_json("summary.json", summary)
    tracker.close()
    if ranks.main:
        _print_eval("final", final, base=state["base_eval"])
        print(f"run folder: {run.path}")
    distributed.finish(ranks)
    return summary


# -------------------------------------------------------------------------------- helpers


def resolve_max_len(max_len: int, lengths: list[int]) -> int:
    """The length examples are cut at: `data.max_len`, or with 0 the longest example (prompt +
    completion + EOS in the model's tokens), so that none is cut.

    >>> resolve_max_len(256, [300, 12]), resolve_max_len(0, [300, 12])
    (256, 300)
    """
    return max_len if max_len else max(lengths, default=2)


def check_lr(s) -> None:
    """The `sft` section's learning rates (also checked by distill before it samples)."""
    if not 0 <= s.min_lr <= s.lr or s.lr <= 0:
        raise UserError(f"need 0 <= sft.min_lr <= sft.lr and sft.lr > 0; got min_lr={s.min_lr}, lr={s.lr}")


def _inputs(cfg: SFTConfig) -> tuple[list, list]:
    """(training examples, held-out problems), checking the settings a user can get wrong."""
    d, s = cfg.data, cfg.sft
    if not d.train_file:
        raise UserError("data.train_file is required (a JSONL of {prompt, completion} pairs)")
    check_report_to(cfg.run.report_to)
    check_lr(s)
    examples = load_sft_jsonl(d.train_file)
    if cfg.eval.num_problems <= 0:
        return examples, []
    source = d.eval_source or "builtin"
    data = DataConfig(source=source, split=d.eval_split, eval_source=d.eval_source,
                      eval_split=d.eval_split, prompt_key=d.prompt_key,
                      answer_key=d.answer_key, template=d.template, train_size=1)  # held-out only
    n = cfg.eval.num_problems
    if source.startswith(("builtin", "reasoning_gym:")):  # held-out splits, disjoint from training
        eval_set = load_problems(data, n)[1]
    else:  # a file: its problems that are not training prompts here (e.g. sampled from it)
        eval_set = load_problems(data, sys.maxsize)[1]
        trained = {e.prompt for e in examples}
        kept = [p for p in eval_set if p.prompt not in trained]
        if len(kept) < len(eval_set):
            log.warning(f"data.eval_source: {len(eval_set) - len(kept)} of its {len(eval_set)} "
                        f"problems are prompts of {d.train_file}; left out of the evaluation")
        if not kept:
            raise UserError(f"data.eval_source {d.eval_source}: every problem is a training prompt "
                            f"of {d.train_file}; give held-out problems")
        eval_set = kept[:n]
    code_reward.configure_for(eval_set, cfg.code)
    return examples, eval_set


def _save(run, state, model, tokenizer, opt, sched, ranks) -> None:
    trainable.save_checkpoint(run.path, state["step"], model, tokenizer, opt, {
        "scheduler": sched.state_dict(), "state": state}, ranks, config_text=run.config_text)


def _summary(state: dict, final: dict, k: int, **extra) -> dict:
    out = {
        "steps": state["step"],
        "wall_seconds": round(state["wall_seconds"], 2),
        "train_seconds": round(state["train_seconds"], 2),
        **extra,
        "first_loss": state["first_loss"],
        "last_loss": state["last_loss"],
    }
    for tag, m in (("base", state["base_eval"]), ("final", final)):
        if m:
            out.update({
                f"{tag}_pass@1": m["eval/pass@1"],
                f"{tag}_pass@1_ci": [m["eval/pass@1_lo"], m["eval/pass@1_hi"]],
                f"{tag}_cons@k": m[f"eval/cons@{k}"],
                f"{tag}_format": m["eval/format"],
                f"{tag}_summary_format": m["eval/summary_format"],
            })
    return out


def _print_eval(tag: str, m: dict, base: dict | None = None) -> None:
    if not m:
        return
    # both formats: cold-start data teach the summary form, which R1-Zero's `format` rejects
    line = (f"[{tag}] held-out pass@1 {m['eval/pass@1']:.3f} "
            f"[{m['eval/pass@1_lo']:.3f}, {m['eval/pass@1_hi']:.3f}]  format {m['eval/format']:.3f}"
            f"  summary form {m['eval/summary_format']:.3f}")
    if base:
        line += f"  (base pass@1 {base['eval/pass@1']:.3f})"
    print(line)
