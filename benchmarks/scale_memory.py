"""Scale-out and memory, measured side by side on one GRPO update (r1kit/stages/zero.py's
`update_policy`, the same code the `rl` stage runs):

  1 vs 2 processes (torch.distributed, gloo on CPU) on the same global batch: wall time of the
  update and peak resident memory per process;
  full fine-tuning vs LoRA (peft) of a ~29M-parameter Llama: trainable parameters, optimizer state
  and peak memory of the update + AdamW step (CUDA: max_memory_allocated; CPU: peak RSS of a fresh
  process, so each configuration runs in its own process).

    python benchmarks/scale_memory.py [--device cpu|cuda] [--out benchmarks/results/scale_memory.md]

Models are random (built here, no hub); rollouts are sampled once and shared by every variant.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results_file import write_results

from r1kit import distributed, grpo
from r1kit.config import LoraConfig, RLConfig, RolloutConfig
from r1kit.rollout.hf import sample
from r1kit.stages.zero import Timer, update_policy
from r1kit.templates import render_prompt
from tests.tiny_models import build

B, G, NEW_TOKENS, REPEATS = 8, 8, 48, 3


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _setup(folder: str, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder).to(device)
    tok = AutoTokenizer.from_pretrained(folder)
    return model, tok


def make_rollouts(folder: str, path: str) -> None:
    model, tok = _setup(folder, "cpu")
    prompts = [render_prompt(f"Compute {a}+{a % 7}-3") for a in range(10, 10 + B)]
    ro = sample(model, tok, prompts, G, max_new_tokens=NEW_TOKENS, temperature=1.0,
                generator=torch.Generator().manual_seed(0))
    rewards = torch.tensor([float(len(t) % 3) for t in ro.texts])
    torch.save((ro, grpo.group_advantages(rewards, G)), path)


def _rows(ro, rows):
    import dataclasses

    pick = lambda xs: [xs[i] for i in rows.tolist()]
    return dataclasses.replace(
        ro, prompt_ids=ro.prompt_ids[rows], prompt_mask=ro.prompt_mask[rows],
        completion_ids=ro.completion_ids[rows], completion_mask=ro.completion_mask[rows],
        texts=pick(ro.texts), num_tokens=pick(ro.num_tokens), truncated=pick(ro.truncated))


def run_update(folder: str, data: str, device: str, lora_r: int, strategy: str = "ddp") -> dict:
    """Child: REPEATS updates (the first is warm-up) on this process's share; times and memory."""
    torch.set_num_threads(1)
    d, dev = distributed.setup(strategy, torch.device(device))
    from r1kit import lora

    model, _ = _setup(folder, str(dev))
    if lora_r:  # (r = 0: full fine-tuning)
        model = lora.apply(model, LoraConfig(r=lora_r, alpha=2.0 * lora_r))
    model = distributed.wrap(model, d)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    ro, adv = torch.load(data, weights_only=False)
    per = B // d.world * G
    mine = torch.arange(d.rank * per, (d.rank + 1) * per)
    ro, adv = _rows(ro, mine), adv[mine]
    rl = RLConfig(micro_batch_size=16, beta=0.0)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(REPEATS):
        distributed.barrier(d)
        t0 = time.perf_counter()
        update_policy(model, None, opt, ro, adv, ro.completion_mask, torch.arange(per), rl,
                      RolloutConfig(), NEW_TOKENS, Timer(), d)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    state_bytes = sum(t.numel() * t.element_size() for s in opt.state.values()
                      for t in s.values() if torch.is_tensor(t))
    out = {
        "rank": d.rank, "world": d.world, "lora_r": lora_r,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in params),
        "optimizer_state_mb": state_bytes / 2**20,
        "update_s": min(times[1:]), "update_s_all": times,
        "peak_rss_mb": _peak_rss_mb(),
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None,
    }
    rows = distributed.gather(out, d)
    distributed.finish(d)
    return rows


def _child(args) -> None:
    rows = run_update(args.folder, args.data, args.device, args.lora_r)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(args.result).write_text(json.dumps(rows))


def _spawn(folder, data, device, lora_r, nproc) -> list[dict]:
    result = tempfile.mktemp(suffix=".json")
    child = [str(Path(__file__).resolve()), "--child", "--folder", folder, "--data", data,
             "--device", device, "--lora-r", str(lora_r), "--result", result]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    if nproc == 1:
        cmd = [sys.executable, *child]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--master_addr=127.0.0.1", f"--master_port={port}", *child]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads(Path(result).read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/scale_memory.md"))
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--folder")
    ap.add_argument("--data")
    ap.add_argument("--lora-r", type=int, default=0)
    ap.add_argument("--result")
    ap.add_argument("--skip-ranks", action="store_true", help="only the LoRA vs full table")
    args = ap.parse_args()
    if args.child:
        return _child(args)

    work = Path(tempfile.mkdtemp())
    small = build(work / "small", "llama", hidden=128, layers=4, heads=4, kv_heads=4)  # ~0.6M
    big = build(work / "big", "llama", hidden=512, layers=11, heads=8, kv_heads=8)  # ~29M
    lines = [
        "# Scale-out and memory: one GRPO update",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M')}; machine: {platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, device {args.device}"
        + (f" ({torch.cuda.get_device_name(0)})" if args.device == "cuda" else ""),
        f"- command: `python benchmarks/scale_memory.py --device {args.device}`",
        (f"- batch: B={B} prompts x G={G} completions, up to {NEW_TOKENS} new tokens, micro-batch "
         f"16 rows, 1 torch thread per process; times are the best of {REPEATS - 1} updates after "
         "a warm-up"),
        "",
    ]
    if not args.skip_ranks and args.device == "cpu":
        data = str(work / "small.pt")
        make_rollouts(small, data)
        lines += ["## 1 vs 2 processes, same global batch (DDP, gloo)", "",
                  "| processes | update s (slowest rank) | peak RSS per process MiB |", "|---|---|---|"]
        for nproc in (1, 2):
            rows = _spawn(small, data, "cpu", 0, nproc)
            lines.append(f"| {nproc} | {max(r['update_s'] for r in rows):.2f} | "
                         f"{max(r['peak_rss_mb'] for r in rows):.0f} |")
        lines.append("")
    data = str(work / "big.pt")
    make_rollouts(big, data)
    lines += ["## Full fine-tuning vs LoRA (r=16, all linear layers), ~29M-parameter Llama", "",
              "| mode | parameters | trainable | AdamW state MiB | update s | peak MiB |",
              "|---|---|---|---|---|---|"]
    for r in (0, 16):
        row = _spawn(big, data, args.device, r, 1)[0]
        peak = row["cuda_peak_mb"] if args.device == "cuda" else row["peak_rss_mb"]
        lines.append(f"| {'LoRA r=16' if r else 'full'} | {row['params'] / 1e6:.1f}M | "
                     f"{row['trainable'] / 1e6:.2f}M | {row['optimizer_state_mb']:.1f} | "
                     f"{row['update_s']:.2f} | {peak:.0f} |")
    lines += ["", "Peak memory: " + ("torch.cuda.max_memory_allocated of the update process."
                                     if args.device == "cuda" else
                                     "peak resident set of the update process (model, "
                                     "activations, gradients, optimizer state, Python and torch).")]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_results(args.out, text)


if __name__ == "__main__":
    main()
