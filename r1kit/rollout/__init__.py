"""Rollout engines: `make_engine(...)` gives an object with
`sample(model, tokenizer, prompts, G, ...) -> Rollouts` and `sync(policy)` (called after each
optimizer step where `needs_sync`). `hf` (r1kit/rollout/hf.py) runs everywhere and needs no sync; `vllm`
(r1kit/rollout/vllm.py) is the GPU engine, colocated or on a server."""

from __future__ import annotations

import os

from r1kit.errors import UserError

ENGINES, VLLM_MODES = ("hf", "vllm"), ("colocate", "server")


class HFEngine:
    """The transformers engine samples from the policy itself: nothing to sync."""

    needs_sync = False

    def sample(self, model, tokenizer, prompts, group_size, **kw):
        from r1kit.rollout.hf import sample

        return sample(model, tokenizer, prompts, group_size, **kw)

    def sync(self, policy) -> None:
        pass


def check(engine: str, vllm_mode: str = "colocate", *, strategy: str = "ddp",
          world: int | None = None) -> None:
    """The settings' errors before any run folder or model exists (a typo, vLLM missing).
    `world`: the number of processes (default: torchrun's WORLD_SIZE, else 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1")) if world is None else world
    if engine not in ENGINES:
        raise UserError(f"rollout.engine: unknown engine {engine!r}; use hf or vllm")
    if engine == "vllm":
        if vllm_mode not in VLLM_MODES:
            raise UserError(f"rollout.vllm_mode: unknown mode {vllm_mode!r}; use colocate or "
                            "server")
        if strategy == "fsdp":
            raise UserError("rollout.engine=vllm with dist.strategy=fsdp is not supported (each "
                            "rank would gather the whole model to sync it); use dist.strategy=ddp "
                            "or rollout.engine=hf")
        if vllm_mode == "colocate" and world > 1:
            raise UserError("rollout.vllm_mode=colocate runs one vLLM engine in one process; with "
                            f"{world} processes use rollout.vllm_mode=server (a `vllm serve` on its "
                            "own GPU) or rollout.engine=hf")
        from r1kit.rollout.vllm import require_server_client, require_vllm

        if vllm_mode == "colocate":
            require_vllm()
        else:  # TRL's client (and vLLM under it) on the trainer, before the server is asked
            require_server_client()


def make_engine(engine: str, model_path: str, *, vllm_mode: str = "colocate",
                vllm_server_url: str = "http://localhost:8000",
                vllm_gpu_memory_utilization: float = 0.3, vllm_max_model_len: int = 0,
                seed: int = 0, logprobs: bool = False, max_new_tokens: int | None = None,
                max_prompt_tokens: int | None = None, device=None,
                vllm_enforce_eager: bool = False):
    """The engine for these settings. `logprobs`: the vLLM engines also return each sampled
    token's log-prob (the HF engine always keeps them), for `rl.rollout_correction`.
    `max_new_tokens` / `max_prompt_tokens` (the rollout budget, the longest prompt): with
    `vllm_max_model_len=0` the colocated engine's KV cache is sized for them rather than for the
    model's whole context. `device`: the policy's, checked against the GPU vLLM runs on.
    `vllm_enforce_eager`: no compile or CUDA graphs (a quick start, for checks)."""
    check(engine, vllm_mode)
    if engine == "hf":
        return HFEngine()
    from r1kit.models import resolve_model_path
    from r1kit.rollout import vllm

    model_path = resolve_model_path(model_path)  # `builtin` -> its folder, for vLLM to load
    if vllm_mode == "server":
        return vllm.VLLMServer(vllm_server_url, model_path, logprobs=logprobs)
    return vllm.VLLMColocated(model_path, gpu_memory_utilization=vllm_gpu_memory_utilization,
                              max_model_len=vllm_max_model_len or None, seed=seed,
                              logprobs=logprobs, max_new_tokens=max_new_tokens,
                              max_prompt_tokens=max_prompt_tokens, device=device,
                              enforce_eager=vllm_enforce_eager)
