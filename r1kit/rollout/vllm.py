"""vLLM rollouts on a GPU, behind the same `sample(...) -> Rollouts` interface as the HF engine.

Two modes (`rollout.vllm_mode`):
- `colocate`: a `vllm.LLM` lives in the training process on the same GPU (a share of its memory,
  `rollout.vllm_gpu_memory_utilization`); after each optimizer step the policy's weights are
  loaded into vLLM's model in place (`load_weights`), then the prefix cache is reset.
- `server`: a separate generation GPU runs `VLLM_SERVER_DEV_MODE=1 vllm serve MODEL
  --weight-transfer-config '{"backend": "nccl"}'` (the weight-transfer routes exist only in dev
  mode); completions come from its OpenAI `/v1/completions` endpoint (prompt token ids in, token
  ids out, for the model it serves), and weights go over NCCL through TRL's `VLLMClient`
  (`pip install trl`), which speaks that server's weight-transfer protocol. Only the first rank
  sends them (DDP keeps every rank's weights equal).

Every sampling setting is sent explicitly, penalties off: a server would otherwise fill unset
ones from the model's `generation_config.json` (e.g. a repetition penalty), and the rollouts would
come from another distribution than the policy the trainer scores. A PEFT policy is sent with its
adapters merged out of place in float32 (`merged_weights`): merging into bf16 weights and
unmerging again after every step would drift the frozen base, which is also the KL reference.
With `rl.rollout_correction` on, the engine is asked for each sampled token's log-prob
(`logprobs=0`, `logprobs_mode="processed_logprobs"`: after temperature and top-p, as TRL asks
for them; a server must be started with `--logprobs-mode processed_logprobs`, which is not
checked), and the trainer weighs the surrogate by pi_old / pi_vllm (`grpo.rollout_weights`),
TRL's `vllm_importance_sampling_*`. With top_p < 1 the vLLM log-probs are over the nucleus.

Everything that needs no GPU is a pure function tested on CPU: the sampling-argument mapping, the
weight-name mapping (DDP / torch.compile / PEFT prefixes), and building `Rollouts` from token ids.
vLLM is an optional extra (`pip install r1kit[vllm]`); asking for it without it installed, or
without CUDA, is a clear error. vLLM's sampled log-probs are not used as pi_old: its kernels and bf16
differ from the training forward, so pi_old is recomputed by the trainer when mu > 1; they only
serve the correction.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import urllib.error
import urllib.request

import torch

from r1kit.errors import UserError
from r1kit.rollout.hf import Rollouts, _cut_at_stop, as_strings, pad_id

_PREFIXES = ("module.", "_orig_mod.", "base_model.model.")  # DDP, torch.compile, PEFT


def sampling_kwargs(group_size: int, *, max_new_tokens: int, temperature: float, top_p: float,
                    stop: list[str], seed: int | None = None) -> dict:
    """`vllm.SamplingParams` arguments for r1kit's sampling settings: G completions per prompt,
    no top-k (vLLM's "off" is -1, 0 on the OpenAI server), stop strings kept in the text as the
    HF engine keeps them, greedy at temperature 0."""
    kw = {"n": group_size, "max_tokens": max_new_tokens, "temperature": max(temperature, 0.0),
          "top_p": top_p if temperature > 0 else 1.0, "top_k": -1, "min_p": 0.0,
          "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
          "stop": [s for s in stop if s], "include_stop_str_in_output": True,
          "skip_special_tokens": True}
    if seed is not None:
        kw["seed"] = seed
    return kw


def vllm_weight_names(named: list[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs as the Hugging Face checkpoint names them, which is what vLLM's
    `load_weights` maps onto its fused layers: wrapper prefixes dropped, PEFT's `.base_layer`
    unwrapped, adapter tensors left out (merge the adapter before calling this)."""
    out = []
    for name, tensor in named:
        if "lora_" in name or "modules_to_save" in name or ".original_module." in name:
            continue
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if name.startswith(p):
                    name, changed = name[len(p):], True
        out.append((name.replace(".base_layer.", "."), tensor))
    return out


def merged_weights(policy) -> list[tuple[str, torch.Tensor]]:
    """The policy's tensors by name; a PEFT model's LoRA layers with their active adapters merged
    out of place, `W + scaling * B @ A` computed in float32 and cast to W's dtype. The policy's
    own weights are not touched (an in-place bf16 merge and unmerge drifts them a little on every
    step)."""
    state = dict(policy.state_dict())
    for name, module in policy.named_modules():
        base = getattr(module, "base_layer", None)
        if base is None or not hasattr(module, "lora_A"):
            continue
        weight = base.weight.float()
        for adapter in getattr(module, "active_adapters", ()):
            if adapter in module.lora_A and not getattr(module, "merged", False):
                delta = (module.lora_B[adapter].weight.float() @ module.lora_A[adapter].weight.float()
                         ) * module.scaling[adapter]
                weight = weight + (delta.T if getattr(module, "fan_in_fan_out", False) else delta)
        state[f"{name}.base_layer.weight"] = weight.to(base.weight.dtype)
    return list(state.items())


def to_rollouts(prompt_ids: list[list[int]], completions: list[list[tuple[list[int], bool]]],
                group_size: int, *, pad_id: int, tokenizer, stop: list[str],
                logprobs: list[list[list[float]]] | None = None) -> Rollouts:
    """`Rollouts` from vLLM's output: for each prompt its token ids, and for each of its G
    completions (token ids, ended by EOS or a stop string). Prompts are left-padded, completions
    right-padded, as the HF engine returns them. `logprobs`, shaped like `completions`: each
    sampled token's log-prob (0 on padding in `Rollouts.logprobs`)."""
    P = max(len(p) for p in prompt_ids)
    rows = [(p, c, done) for p, group in zip(prompt_ids, completions) for c, done in group]
    if len(rows) != len(prompt_ids) * group_size:
        raise ValueError(f"expected {group_size} completions for each of {len(prompt_ids)} prompts")
    T = max(1, max(len(c) for _, c, _ in rows))
    n = len(rows)
    p_ids = torch.full((n, P), pad_id, dtype=torch.long)  # (N, P)
    p_mask = torch.zeros((n, P), dtype=torch.long)  # (N, P)
    c_ids = torch.full((n, T), pad_id, dtype=torch.long)  # (N, T)
    c_mask = torch.zeros((n, T), dtype=torch.long)  # (N, T)
    for i, (p, c, _) in enumerate(rows):
        p_ids[i, P - len(p):], p_mask[i, P - len(p):] = torch.tensor(p, dtype=torch.long), 1
        c_ids[i, : len(c)], c_mask[i, : len(c)] = torch.tensor(c, dtype=torch.long), 1
    lps = None
    if logprobs is not None:
        flat = [lp for group in logprobs for lp in group]
        lps = torch.zeros((n, T), dtype=torch.float32)  # (N, T)
        for i, ((_, c, _), lp) in enumerate(zip(rows, flat, strict=True)):
            if len(lp) != len(c):
                raise UserError(f"vLLM returned {len(lp)} log-probs for a completion of {len(c)} "
                                "tokens; rl.rollout_correction needs one per sampled token (a "
                                "vLLM with logprobs_mode), or set rl.rollout_correction=off")
            # one vLLM could not give (None, NaN) is NaN here: that token is left uncorrected
            lps[i, : len(c)] = torch.tensor(
                [x if x is not None and not math.isnan(x) else math.nan for x in lp],
                dtype=torch.float32)
    texts = [_cut_at_stop(tokenizer.decode(c, skip_special_tokens=True), stop) for _, c, _ in rows]
    return Rollouts(prompt_ids=p_ids, prompt_mask=p_mask, completion_ids=c_ids,
                    completion_mask=c_mask, texts=texts, num_tokens=[len(c) for _, c, _ in rows],
                    truncated=[not done for _, _, done in rows], group_size=group_size,
                    logprobs=lps)


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise UserError("rollout.engine=vllm needs vLLM: pip install 'r1kit[vllm]' (Linux, CUDA); "
                        "or use rollout.engine=hf, which runs everywhere")
    if not torch.cuda.is_available():
        raise UserError("rollout.engine=vllm needs a CUDA GPU; use rollout.engine=hf on CPU")


class VLLMColocated:
    """A `vllm.LLM` beside the policy on one GPU; `sync(policy)` after each optimizer step."""

    needs_sync = True

    def __init__(self, model_path: str, *, gpu_memory_utilization: float, max_model_len: int | None,
                 seed: int, logprobs: bool = False):
        require_vllm()
        self.logprobs = logprobs
        # the engine in this process, so that its model can take the policy's weights in place
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        # bf16 where the GPU has it; vLLM picks its own attention backend (flash / SDPA).
        # vLLM seeds the global generators when it starts: the trainer's (restored from a
        # checkpoint, or seeded by the run) are put back, so that a resume stays exact.
        dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        states = (random.getstate(), torch.get_rng_state(), torch.cuda.get_rng_state_all())
        extra = {"logprobs_mode": "processed_logprobs"} if logprobs else {}
        self.llm = LLM(model=model_path, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                       max_model_len=max_model_len, seed=seed, enable_prefix_caching=True, **extra)
        random.setstate(states[0])
        torch.set_rng_state(states[1])
        torch.cuda.set_rng_state_all(states[2])

    def sample(self, model, tokenizer, prompts, group_size, *, max_new_tokens, temperature=1.0,
               top_p=1.0, stop=(), generator=None) -> Rollouts:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts = as_strings(prompts, "prompts")

        seed = None if generator is None else int(torch.randint(
            2**30, (1,), generator=generator, device=generator.device).item())
        # one seed per prompt, G apart: vLLM seeds completion j of a prompt with seed + j, so a
        # shared seed would give every prompt's j-th completion the same random draws
        params = [SamplingParams(**sampling_kwargs(
            group_size, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
            stop=as_strings(stop, "stop"), seed=None if seed is None else seed + i * group_size),
            **({"logprobs": 0} if self.logprobs else {}))
            for i in range(len(prompts))]
        ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=i) for i in ids], params,
                                 use_tqdm=False)
        groups = [[(list(c.token_ids), c.finish_reason == "stop") for c in o.outputs]
                  for o in outs]
        lps = None
        if self.logprobs:  # per position {token id: Logprob}; the sampled token is always there
            lps = [[[pos[t].logprob for pos, t in zip(c.logprobs, c.token_ids)]
                    for c in o.outputs] for o in outs]
        return to_rollouts(ids, groups, group_size, pad_id=pad_id(tokenizer),
                           tokenizer=tokenizer, stop=as_strings(stop, "stop"), logprobs=lps)

    @torch.no_grad()
    def sync(self, policy) -> None:
        inner = self.llm.llm_engine.model_executor.driver_worker.worker.model_runner.model
        inner.load_weights(vllm_weight_names(merged_weights(policy)))
        self.llm.reset_prefix_cache()


class VLLMServer:
    """Completions from a `vllm serve` on another GPU; weights over NCCL via TRL's client."""

    needs_sync = True

    main_rank_only = True  # the server's weights come from one trainer rank

    def __init__(self, url: str, model_name: str, logprobs: bool = False):
        self.url, self.model_name, self.client = url.rstrip("/"), model_name, None
        self.logprobs = logprobs
        self.served = None  # the model name the server answers to (its /v1/models)

    def _request(self, path: str, payload: dict | None = None):
        """JSON from the server; its errors (e.g. prompt + max_tokens past max_model_len) and an
        unreachable server as `UserError`s saying what the server said."""
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(f"{self.url}{path}", data=data,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=600) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace")[:500]
            raise UserError(f"vLLM server {self.url}{path}: HTTP {e.code}: {body}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            raise UserError(f"vLLM server {self.url}: cannot reach it ({e}); start it with "
                            "VLLM_SERVER_DEV_MODE=1 vllm serve MODEL --weight-transfer-config "
                            "'{\"backend\": \"nccl\"}'") from None

    def sample(self, model, tokenizer, prompts, group_size, *, max_new_tokens, temperature=1.0,
               top_p=1.0, stop=(), generator=None) -> Rollouts:
        prompts = as_strings(prompts, "prompts")
        ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        kw = sampling_kwargs(group_size, max_new_tokens=max_new_tokens, temperature=temperature,
                             top_p=top_p, stop=as_strings(stop, "stop"))
        kw["top_k"] = 0  # the OpenAI server's "no top-k"
        if self.served is None:  # the name it serves the model under, not our local path
            models = self._request("/v1/models").get("data") or [{"id": self.model_name}]
            self.served = models[0]["id"]
        payload = {"model": self.served, "prompt": ids, "return_token_ids": True, **kw}
        if self.logprobs:
            payload["logprobs"] = 0  # the sampled token's own log-prob, no alternatives
        choices = self._request("/v1/completions", payload)["choices"]  # prompt-major: n each
        choices.sort(key=lambda c: c["index"])
        per_prompt = [choices[i * group_size:(i + 1) * group_size] for i in range(len(ids))]
        groups = [[(c["token_ids"], c["finish_reason"] == "stop") for c in cs]
                  for cs in per_prompt]
        lps = None
        if self.logprobs:
            lps = [[(c.get("logprobs") or {}).get("token_logprobs") or [] for c in cs]
                   for cs in per_prompt]
        return to_rollouts(ids, groups, group_size, pad_id=pad_id(tokenizer),
                           tokenizer=tokenizer, stop=as_strings(stop, "stop"), logprobs=lps)

    @torch.no_grad()
    def sync(self, policy) -> None:
        if self.client is None:
            try:
                from trl.generation.vllm_client import VLLMClient
            except ImportError:
                raise UserError("rollout.vllm_mode=server sends weights with TRL's VLLMClient: "
                                "pip install trl") from None
            self.client = VLLMClient(base_url=self.url)
            self.client.init_communicator(device=torch.cuda.current_device())
        named = vllm_weight_names(merged_weights(policy))
        with self.client.weight_update():
            for name, tensor in named:
                self.client.update_named_param(name, tensor)
        self.client.reset_prefix_cache()
