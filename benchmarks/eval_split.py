#!/usr/bin/env python
"""Held-out evaluation over several processes: rank 0 alone (as r1kit did before, the other ranks
waiting) against batches split over the ranks and gathered (`evaluate(part=, gather=)`).

N gloo processes on CPU, 1 thread each, the built-in tiny base, the default EvalConfig (k = 4,
T = 0.6, top-p 0.95, 256 completions a batch) on 200 held-out problems; the two modes alternate,
after a warm-up, and rank 0 reports the wall time of each call.

    .venv/bin/python benchmarks/eval_split.py --nproc 2 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch
import torch.multiprocessing as mp

from r1kit import distributed
from r1kit.config import EvalConfig
from r1kit.evaluation import evaluate
from r1kit.models import load_model
from r1kit.tasks.arithmetic import sample_problems


def _worker(rank: int, world: int, port: int, args, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    d, _ = distributed.setup("ddp", torch.device("cpu"))
    model, tok = load_model(str(ROOT / "r1kit" / "assets" / "tiny-base"))
    problems, cfg = sample_problems(args.problems, "heldout", 0), EvalConfig()
    evaluate(model, tok, problems[:8], cfg)  # warm-up
    for rep in range(args.repeats):
        for mode in ("rank 0 alone", "split over ranks"):
            distributed.barrier(d)
            t = time.perf_counter()
            if mode == "rank 0 alone":
                alone = evaluate(model, tok, problems, cfg) if d.main else None
                res = distributed.broadcast(alone, d)
            else:
                res = evaluate(model, tok, problems, cfg, part=(d.rank, d.world),
                               gather=lambda mine: distributed.gather(mine, d))
            if d.main:
                queue.put((mode, rep, time.perf_counter() - t, res.pass1))
    distributed.finish(d)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--problems", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_worker, args=(args.nproc, port, args, queue), nprocs=args.nproc, join=True)
    rows = []
    while not queue.empty():
        rows.append(queue.get())
    for mode, rep, seconds, pass1 in rows:
        print(f"{mode:>17} rep {rep}: {seconds:.2f} s (pass@1 {pass1:.3f})")
    med = {m: statistics.median(r[2] for r in rows if r[0] == m) for m in {r[0] for r in rows}}
    alone, split = med["rank 0 alone"], med["split over ranks"]
    print(f"median: rank 0 alone {alone:.2f} s, split {split:.2f} s; {alone / split:.2f}x")


if __name__ == "__main__":
    main()
