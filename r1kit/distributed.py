"""Training on several processes: `torchrun --nproc_per_node N -m r1kit STAGE ...` (or `--nproc N`).

How a GRPO step is split over W ranks (r1kit/stages/zero.py):
- every rank draws the same B prompts (the data order is seeded, so it needs no communication) and
  keeps its own B/W of them: each group of G completions lives on one rank, and its advantages
  are computed there, exactly as on one rank;
- the loss denominator (tokens or sequences of the whole minibatch, `grpo.loss_denominator`) is
  all-reduced, and each rank's loss is the sum over its own rows divided by that global
  denominator, times W because DDP and FSDP average gradients over ranks: the synchronised
  gradient is the 1-rank gradient of the same global batch, not a mean of per-rank means (the
  TRL #3021 / open-instruct #1137 bug class). tests/test_distributed.py checks 1 rank == 2 ranks;
- every rank runs the same number of forward/backward passes (FSDP gathers parameters in each
  forward, DDP reduces in the last backward): a rank with fewer micro-batches than another runs
  extra zero-weighted ones (`micro_steps`);
- metrics are averaged over ranks (maxima for `*_max`); rank 0 alone writes files;
- held-out evaluation is split by batches over the ranks and gathered
  (`evaluation.evaluate(part=..., gather=...)`): 1.68x faster on 2 CPU processes than rank 0
  alone (benchmarks/results/eval_split.md).

`dist.strategy`: `ddp` (a full replica per rank, gradients all-reduced) or `fsdp` (FSDP2
`fully_shard` per decoder layer: parameters, gradients and optimizer state sharded, for models that
do not fit one device). The CPU path uses the gloo backend; CUDA uses NCCL, one GPU per rank.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from r1kit.errors import UserError

STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class Dist:
    """This process's place: rank, world size, and how the model is sharded ('' = one process)."""

    rank: int = 0
    world: int = 1
    strategy: str = ""

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def on(self) -> bool:
        return self.world > 1


SINGLE = Dist()


def setup(strategy: str, device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group torchrun described in the environment (one process: `SINGLE`)."""
    if strategy not in STRATEGIES:
        raise UserError(f"dist.strategy: unknown {strategy!r}; use one of {', '.join(STRATEGIES)}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE, device
    _die_with_parent()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise UserError(f"process {local} has no GPU: {torch.cuda.device_count()} visible, "
                            "one per process is needed (lower --nproc / --nproc_per_node)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # Rank 0 evaluates alone while the others wait, and ranks sample different lengths: a
        # long evaluation must not trip NCCL's default 10-minute watchdog.
        dist.init_process_group(backend_for(device), timeout=timedelta(hours=3))
    return Dist(dist.get_rank(), dist.get_world_size(), strategy), device


def backend_for(device: torch.device) -> str:
    """On GPUs, NCCL for tensors on them and gloo for the CPU ones: the step's own collectives
    (`all_sum`, `all_max`) and object gathers hold numbers in CPU memory, which NCCL alone has no
    backend for (it refuses them)."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def _die_with_parent() -> None:
    """Linux: this process gets SIGTERM when its parent dies (a rank: torchrun; torchrun: the
    `--nproc` launcher). torchrun starts each rank in a session of its own, so a `kill -9` of the
    launching process group would leave the ranks training on, writing the run folder beside a
    resumed run."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        raise SystemExit(1)


def split_batch(d: Dist, prompts_per_step: int) -> slice:
    """This rank's prompts of a step's B: whole groups stay on one rank."""
    if prompts_per_step % d.world:
        raise UserError(f"rl.prompts_per_step={prompts_per_step} must be divisible by the number "
                        f"of processes ({d.world}) so that each group stays on one rank")
    per = prompts_per_step // d.world
    return slice(d.rank * per, (d.rank + 1) * per)


# ----------------------------------------------------------------------------- the model


def check_strategy(strategy: str, lora_on: bool, world: int) -> None:
    """The strategy's errors before any run folder is made (or torchrun started)."""
    if strategy == "fsdp" and lora_on and world > 1:
        raise UserError("dist.strategy=fsdp with LoRA is not supported; use dist.strategy=ddp "
                        "(the frozen base is replicated, only adapters are synchronised)")


def wrap(model, d: Dist):
    """DDP or FSDP2 around `model` (unchanged on one process). Build the optimizer afterwards."""
    if not d.on:
        return model
    if d.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        check_strategy(d.strategy, hasattr(model, "peft_config"), d.world)
        layers = set(getattr(model, "_no_split_modules", None) or [])
        for module in model.modules():
            if type(module).__name__ in layers:
                fully_shard(module)
        fully_shard(model)
        return model
    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                   broadcast_buffers=False)


def unwrap(model):
    """The Hugging Face (or PEFT) model inside a DDP wrapper; FSDP2 shards the model in place."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def _fsdp_modules(model) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered(model, d: Dist):
    """A model that can run any number of forwards on one rank alone (sampling, evaluation).

    FSDP gathers every layer's parameters once and keeps them until the block ends (every rank
    must enter); DDP and single processes just yield the plain model.
    """
    if d.strategy != "fsdp" or not d.on:
        yield unwrap(model)
        return
    mods = _fsdp_modules(model)
    for m in mods:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield model
    finally:
        for m in mods:
            m.reshard()
            m.set_reshard_after_forward(True, recurse=False)


@contextlib.contextmanager
def grad_sync(model, d: Dist, sync: bool):
    """Accumulate gradients locally unless `sync` (the last micro-batch of an optimizer step)."""
    if not d.on:
        yield
    elif d.strategy == "fsdp":
        model.set_requires_gradient_sync(sync)
        yield
    elif sync:
        yield
    else:
        with model.no_sync():
            yield


def micro_steps(chunks: list, d: Dist, filler=None) -> list[tuple[object, float, bool]]:
    """`(chunk, weight, is_last)` for every micro-batch, padded to the largest count of any rank
    with zero-weighted repeats of a real chunk (or `filler` when this rank has none), so every
    rank runs the same number of passes."""
    n = all_max(len(chunks), d)
    pad = chunks[0] if chunks else filler
    if n > len(chunks) and pad is None:
        raise ValueError("a rank without micro-batches needs a filler to keep in step")
    out = [(c, 1.0, False) for c in chunks] + [(pad, 0.0, False)] * (n - len(chunks))
    if out:
        out[-1] = (out[-1][0], out[-1][1], True)
    return out


def loss_scale(d: Dist) -> float:
    """DDP and FSDP average gradients over ranks; the loss already has the global denominator."""
    return float(d.world)


# ----------------------------------------------------------------------------- collectives


def all_sum(x: float, d: Dist) -> float:
    if not d.on:
        return x
    t = torch.tensor([float(x)], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item()


def all_max(x: int, d: Dist) -> int:
    if not d.on:
        return x
    t = torch.tensor([x], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def all_any(x: bool, d: Dist) -> bool:
    return all_max(int(bool(x)), d) > 0


def reduce_metrics(metrics: dict, d: Dist) -> dict:
    """Every rank's `{name: number}` -> the mean over ranks (the max for `*_max` keys).

    NaN (no value on a rank, e.g. no scorable completions) is left out of that key's mean.
    """
    if not d.on:
        return metrics
    rows = [None] * d.world
    dist.all_gather_object(rows, metrics)
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows if key in r and isinstance(r[key], (int, float))]
        finite = [v for v in values if not math.isnan(v)]
        if not values:
            out[key] = rows[0][key]
        elif key.endswith("_max"):
            out[key] = max(finite) if finite else math.nan
        else:
            out[key] = sum(finite) / len(finite) if finite else math.nan
    return out


def sum_metrics(metrics: dict, d: Dist) -> dict:
    """Every rank's `{name: number}` -> the sum over the ranks that have each key."""
    if not d.on:
        return metrics
    out: dict = {}
    for row in gather(metrics, d):
        for key, value in row.items():
            out[key] = out.get(key, 0.0) + value
    return out


def full(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a DTensor (FSDP's gradient norm), else `t`."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def broadcast(obj, d: Dist):
    """Rank 0's `obj` on every rank."""
    if not d.on:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj, d: Dist) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if not d.on:
        return [obj]
    rows = [None] * d.world
    dist.all_gather_object(rows, obj)
    return rows


def barrier(d: Dist) -> None:
    if d.on:
        dist.barrier()


def abandon() -> None:
    """Leave the process group on an error, without waiting for the other ranks (they may never
    come): left initialised, gloo's threads abort the interpreter's exit (SIGABRT, torchrun's
    failure report) instead of the one-line error."""
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def finish(d: Dist) -> None:
    if d.on and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- state


def full_state_dict(model, d: Dist, for_saving: bool = False) -> dict:
    """The whole model's plain state dict on every rank (FSDP gathers its shards; every rank must
    call). `for_saving`: gathered into rank 0's CPU memory only (the others get {}), so no GPU
    holds a second whole copy of a model sharded because it does not fit one."""
    if d.strategy == "fsdp" and d.on:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(
            full_state_dict=True, cpu_offload=for_saving))
    return unwrap(model).state_dict()


def optimizer_state(model, opt, d: Dist) -> dict:
    """The optimizer's state as one rank would hold it (FSDP: gathered; call on every rank)."""
    if d.strategy == "fsdp" and d.on:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        return get_optimizer_state_dict(model, opt, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))
    return opt.state_dict()


def load_optimizer_state(model, opt, saved: dict, d: Dist) -> None:
    if d.strategy == "fsdp" and d.on:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(model, opt, saved, options=StateDictOptions(full_state_dict=True))
    else:
        opt.load_state_dict(saved)


def pick_rank_state(saved: list | dict, d: Dist, what: str):
    """This rank's entry of a per-rank list written by a run of the same size."""
    if not isinstance(saved, list):  # written by one process
        saved = [saved]
    if len(saved) != d.world:
        raise UserError(f"the checkpoint was written by {len(saved)} process(es) and this run has "
                        f"{d.world}: resume with the same --nproc (its {what} is per rank)")
    return saved[d.rank]


# ----------------------------------------------------------------------------- launching


def launch(nproc: int, argv: list[str]) -> int:
    """`r1kit ... --nproc N`: re-run the same command under torchrun with N processes."""
    if nproc < 1:
        raise UserError(f"--nproc must be at least 1, got {nproc}")
    cmd = [sys.executable, "-c", "from r1kit.distributed import torchrun; torchrun()",
           "--standalone", f"--nproc_per_node={nproc}", "-m", "r1kit", *argv]
    proc = subprocess.Popen(cmd)
    # A signal to this launcher goes on to torchrun, which stops its ranks (left running, they
    # would go on writing the run folder); `subprocess.call` would SIGKILL torchrun instead.
    previous = {s: signal.signal(s, lambda sig, _: proc.send_signal(sig))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
        return 128 - code if code < 0 else code  # killed by a signal: the shell's 128 + N
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def torchrun() -> None:
    """`python -m torch.distributed.run` with `sys.argv`, whose ends the ranks have already
    explained are quiet: a rank's one-line error (exit 2) or "interrupted" (130) is not followed
    by torchrun's failure report or a traceback of the signal it passed on. Other failures (a
    crash, a traceback in a rank) keep torchrun's report."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main

    _die_with_parent()  # the launcher killed: torchrun stops its ranks
    try:
        main(sys.argv[1:])
    except SignalException as e:  # Ctrl-C or a kill, passed on to the ranks, which stopped
        raise SystemExit(128 + int(e.sigval)) from None
    except ChildFailedError as e:
        codes = {f.exitcode for f in e.failures.values()}
        explained = codes & {2, 130}  # the others were stopped by torchrun (a signal: < 0)
        if explained and all(c in explained or c < 0 for c in codes):
            raise SystemExit(max(explained)) from None
        raise
