"""vLLM rollouts on a GPU, behind the same `sample(...) -> Rollouts` interface as the HF engine.

Two modes (`rollout.vllm_mode`):
- `colocate`: a `vllm.LLM` lives in the training process on the same GPU (a share of its memory,
  `rollout.vllm_gpu_memory_utilization`; cuda:0, where vLLM's in-process executor always puts
  it); after each optimizer step the policy's weights are loaded into vLLM's model in place
  (`load_weights`, one tensor at a time), then the prefix cache is reset. A LoRA adapter folder
  as the model is loaded as its base model, and the first sync brings the merged weights.
- `server`: a separate generation GPU runs `VLLM_SERVER_DEV_MODE=1 vllm serve MODEL
  --weight-transfer-config '{"backend": "nccl"}' --logprobs-mode processed_logprobs` (the
  weight-transfer routes exist only in dev mode); completions come from its OpenAI
  `/v1/completions` endpoint (prompt token ids in, token ids out, for the model it serves), and
  weights go over NCCL through TRL's `VLLMClient` (TRL >= 1.11, the first whose client speaks
  `vllm serve`'s own weight-transfer routes; it needs vLLM on the trainer too). Only the first
  rank sends them (DDP keeps every rank's weights equal).

Weights are sent under their checkpoint names (what `save_pretrained` writes, which is what
vLLM's `load_weights` maps onto its fused layers): transformers 5 fuses some when it loads them
(MoE experts), and `merged_weights` reverts that with transformers' own reverse conversion.
Every sampling setting is sent explicitly, penalties off: a server would otherwise fill unset
ones from the model's `generation_config.json` (e.g. a repetition penalty), and the rollouts would
come from another distribution than the policy the trainer scores. A PEFT policy is sent with its
adapters merged out of place in float32 (`merged_weights`): merging into bf16 weights and
unmerging again after every step would drift the frozen base, which is also the KL reference.
With `rl.rollout_correction` on, the engine is asked for each sampled token's log-prob
(`logprobs=0`, `logprobs_mode="processed_logprobs"`: after temperature and top-p, as TRL asks
for them; a server must be started with `--logprobs-mode processed_logprobs`, which cannot be
checked from here: a warning says so where it matters, temperature != 1 or top_p < 1), and the
trainer weighs the surrogate by pi_old / pi_vllm (`grpo.rollout_weights`), TRL's
`vllm_importance_sampling_*`. With top_p < 1 the vLLM log-probs are over the nucleus.

Everything that needs no GPU is tested on CPU: the sampling-argument mapping, the weight names
(DDP / torch.compile / PEFT prefixes, MoE checkpoint names), building `Rollouts` from token ids,
and both engines' sample/sync against a fake `vllm` module and a stub HTTP server
(tests/test_rollout_vllm.py). vLLM is an optional extra (`pip install r1kit[vllm]`); asking for
it without it installed, or without CUDA, is a clear error. vLLM's sampled log-probs are not
used as pi_old: its kernels and bf16 differ from the training forward, so pi_old is recomputed
by the trainer when mu > 1; they only serve the correction.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import random
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path

import torch

from r1kit.errors import UserError
from r1kit.models import hf_model
from r1kit.rollout.hf import Rollouts, _cut_at_stop, as_strings, pad_id

log = logging.getLogger("r1kit")

_PREFIXES = ("module.", "_orig_mod.", "base_model.model.")  # DDP, torch.compile, PEFT
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")  # transformers' per-layer conversions stay in one

# Server mode: TRL's VLLMClient speaks `vllm serve`'s own weight-transfer routes from TRL 1.11
# (huggingface/trl#6765; before it, only `trl vllm-serve`'s protocol); it imports vLLM's NCCL
# weight-transfer engine, so the trainer needs vLLM too, at a version that TRL release supports
# (>= 0.21 for the start/finish weight-update routes; vLLM 0.28 dropped the trainer-side calls
# TRL 1.11 uses, fixed in a later TRL: huggingface/trl#7001). Not run here.
TRL_MIN = "1.11.0"
SERVE = ("VLLM_SERVER_DEV_MODE=1 vllm serve MODEL --weight-transfer-config "
         "'{\"backend\": \"nccl\"}' --logprobs-mode processed_logprobs")
SERVER_INSTALL = (f"pip install 'trl>={TRL_MIN}' 'r1kit[vllm]' on the trainer (TRL's VLLMClient "
                  "sends the weights with vLLM's NCCL weight-transfer engine)")
PROMPT_ALLOWANCE = 1024  # prompt tokens reserved when the stage does not say its longest prompt
COMPLETIONS_TIMEOUT_S = 3 * 3600  # one rollout batch may take long on a busy server


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


def _clean_name(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if name.startswith(p):
                name, changed = name[len(p):], True
    return name.replace(".base_layer.", ".")


def vllm_weight_names(named: Iterable[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs named as the model's own modules name them: wrapper prefixes
    dropped, PEFT's `.base_layer` unwrapped, adapter tensors left out (merge the adapter before
    calling this). `merged_weights` also turns these into checkpoint names (MoE experts)."""
    return [(_clean_name(name), tensor) for name, tensor in named
            if not ("lora_" in name or "modules_to_save" in name
                    or ".original_module." in name)]


def _revert_conversion(model, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` (names as the loaded model has them) under the names and layout its checkpoint
    has: transformers 5 fuses some weights when it loads them (a Mixtral layer's experts into
    one 3-D `mlp.experts.gate_up_proj`), and vLLM's `load_weights` expects the checkpoint's
    (`block_sparse_moe.experts.N.w1.weight`), as `save_pretrained` writes them. Unfused
    tensors are new; the others come back as they are."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers 4 keeps checkpoint names in memory
        return state
    return revert_weight_conversion(model, state)


def _lora_layers(policy) -> dict[str, torch.nn.Module]:
    """The policy's LoRA layers by the (clean) name of the weight they adapt."""
    out = {}
    for name, module in policy.named_modules():
        base = getattr(module, "base_layer", None)
        if base is None or not hasattr(module, "lora_A"):
            continue
        kinds = ("lora_A", "lora_embedding_A")
        if not isinstance(getattr(base, "weight", None), torch.Tensor) or any(
                getattr(module, "use_dora", {}).get(a) for a in _active(module)) or not any(
                a in getattr(module, k, {}) for a in _active(module) for k in kinds):
            raise UserError(f"{name}: a {type(module).__name__} LoRA layer cannot be merged for "
                            "vLLM (only LoRA on linear and embedding layers, without DoRA); use "
                            "rollout.engine=hf")
        out[_clean_name(f"{name}.base_layer.weight")] = module
    return out


def _active(module) -> list[str]:
    adapters = getattr(module, "active_adapters", ())
    return [adapters] if isinstance(adapters, str) else list(adapters)


def _merge(module) -> torch.Tensor:
    """`W + scaling * B @ A` of a LoRA layer, in float32, cast to W's dtype."""
    base = module.base_layer.weight
    weight = base.float()
    if getattr(module, "merged", False):  # peft merged it into W already
        return base
    for a in _active(module):
        if a in module.lora_A:
            delta = module.lora_B[a].weight.float() @ module.lora_A[a].weight.float()
            delta = delta.T if getattr(module, "fan_in_fan_out", False) else delta
        elif a in getattr(module, "lora_embedding_A", {}):  # nn.Embedding: (B @ A).T
            delta = (module.lora_embedding_B[a].float() @ module.lora_embedding_A[a].float()).T
        else:
            continue
        weight = weight + delta * module.scaling[a]
    return weight.to(base.dtype)


@torch.no_grad()
def merged_weights(policy) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's tensors under their checkpoint names (what `save_pretrained` writes and vLLM's
    `load_weights` maps onto its fused layers), one at a time: a PEFT model's LoRA layers with
    their active adapters merged out of place, `W + scaling * B @ A` computed in float32 and
    cast to W's dtype, each only when it is sent; MoE experts unfused one layer at a time. The
    policy's own weights are not touched (an in-place bf16 merge and unmerge drifts them a
    little on every step)."""
    lora = _lora_layers(policy)
    state = dict(vllm_weight_names(policy.state_dict().items()))
    model = hf_model(policy)
    groups: dict[str | None, list[str]] = {}
    for name in state:
        m = _LAYER.search(name)
        groups.setdefault(name[:m.end()] if m else None, []).append(name)
    for keys in groups.values():
        part = {k: state[k] for k in keys}
        converted = _revert_conversion(model, part)
        lazy = {id(part[k]): k for k in keys if k in lora}  # LoRA weights passed as they are
        sent = {id(t) for t in converted.values()}
        if any(i not in sent for i in lazy):  # a LoRA'd weight the conversion rewrites: merge
            part.update({k: _merge(lora[k]) for k in lazy.values()})  # before it (rare)
            converted, lazy = _revert_conversion(model, part), {}
        for name, tensor in converted.items():
            k = lazy.get(id(tensor))
            yield name, (_merge(lora[k]) if k is not None else tensor)


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


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return getattr(sys.modules.get(name), "__version__", None)


def require_server_client() -> None:
    """What the trainer needs to send weights to a `vllm serve` (rollout.vllm_mode=server):
    TRL >= 1.11's VLLMClient, which needs vLLM and CUDA here too."""
    from packaging.version import Version

    trl = _version("trl") if importlib.util.find_spec("trl") is not None else None
    if trl is None:
        raise UserError(f"rollout.vllm_mode=server sends the weights with TRL's VLLMClient: "
                        f"{SERVER_INSTALL}")
    if Version(trl) < Version(TRL_MIN):
        raise UserError(f"rollout.vllm_mode=server needs TRL >= {TRL_MIN}, whose VLLMClient "
                        f"speaks `vllm serve`'s weight-transfer routes (TRL {trl} speaks `trl "
                        f"vllm-serve`'s own): pip install -U 'trl>={TRL_MIN}'")
    if importlib.util.find_spec("vllm") is None:
        raise UserError("rollout.vllm_mode=server: TRL's VLLMClient sends the weights with vLLM's "
                        f"NCCL engine, so vLLM is needed on the trainer too: {SERVER_INSTALL}")
    if not torch.cuda.is_available():
        raise UserError("rollout.vllm_mode=server sends the weights over NCCL from a CUDA GPU; "
                        "use rollout.engine=hf on CPU")


def model_source(path: str) -> tuple[str, str]:
    """(model, tokenizer) for vLLM to load: a LoRA adapter folder (no config.json) is its base
    model, resolved as r1kit.models loads it (relative to the adapter folder where that exists;
    `builtin` names too), with the adapter's tokenizer where the folder has one. The startup
    sync then loads the merged weights."""
    from r1kit.models import resolve_model_path

    folder = Path(path).expanduser()
    adapter = folder / "adapter_config.json"
    if not adapter.is_file() or (folder / "config.json").is_file():
        return path, path
    base = json.loads(adapter.read_text()).get("base_model_name_or_path")
    if not base:
        raise UserError(f"{adapter}: no base_model_name_or_path for vLLM to load")
    if not Path(base).expanduser().is_absolute() and (folder / base).is_dir():
        base = str(folder / base)
    base = resolve_model_path(base)
    has_tokenizer = any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    return base, str(folder) if has_tokenizer else base


def _bf16() -> bool:
    """Whether the GPU computes in bf16 natively (compute capability 8.0+): vLLM refuses bf16
    below it, where torch's default `is_bf16_supported()` still says yes (emulated)."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.3
        return torch.cuda.get_device_capability() >= (8, 0)


def _context_length(path: str) -> int | None:
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        return None
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(config, "max_position_embeddings", None)


def default_max_model_len(path: str, max_new_tokens: int | None,
                          max_prompt_tokens: int | None = None) -> int | None:
    """The KV cache's sequence length when rollout.vllm_max_model_len is 0: the longest prompt
    (or PROMPT_ALLOWANCE) plus the completion budget, at most the model's context. vLLM refuses
    to start when its cache cannot hold one sequence of `max_model_len` tokens, which a 32k-128k
    context does not fit in a 0.3 share of the GPU. None (the model's context) when the budget
    is not known."""
    if not max_new_tokens:
        return None
    want = (max_prompt_tokens or PROMPT_ALLOWANCE) + max_new_tokens
    context = _context_length(path)
    return want if context is None else min(want, context)


def _check_device(device) -> None:
    """vLLM's in-process executor puts its worker on cuda:0 whatever the trainer uses (local rank
    0; `torch.cuda.set_device` beforehand does not move it), so a colocated engine is refused
    beside a policy on another GPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index != 0:
        raise UserError(f"rollout.vllm_mode=colocate runs vLLM on cuda:0, but the policy is on "
                        f"cuda:{index}; pick the GPU with CUDA_VISIBLE_DEVICES={index} and "
                        "run.device=cuda (it is then cuda:0)")


def _device_of(policy) -> torch.device:
    param = next(iter(policy.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


class VLLMColocated:
    """A `vllm.LLM` beside the policy on one GPU; `sync(policy)` after each optimizer step."""

    needs_sync = True

    def __init__(self, model_path: str, *, gpu_memory_utilization: float, max_model_len: int | None,
                 seed: int, logprobs: bool = False, max_new_tokens: int | None = None,
                 max_prompt_tokens: int | None = None, device=None, enforce_eager: bool = False):
        require_vllm()
        if device is not None:
            _check_device(device)
        self.logprobs = logprobs
        # The engine core must run in this process: `sync` loads the weights into its model in
        # place, reached through `llm_engine.model_executor`, which vLLM sets only when it does
        # not spawn the core into a child process (VLLM_ENABLE_V1_MULTIPROCESSING=0).
        if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0") != "0":
            log.warning("VLLM_ENABLE_V1_MULTIPROCESSING=%s set to 0: rollout.vllm_mode=colocate "
                        "loads the weights into vLLM's model in this process",
                        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"])
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        model, tokenizer = model_source(model_path)
        self.max_model_len = max_model_len or default_max_model_len(model, max_new_tokens,
                                                                    max_prompt_tokens)
        # bf16 where the GPU has it natively; vLLM picks its own attention backend (flash / SDPA).
        # vLLM seeds the global generators when it starts: the trainer's (restored from a
        # checkpoint, or seeded by the run) are put back, so that a resume stays exact.
        dtype = "bfloat16" if _bf16() else "float16"
        cuda = torch.cuda.is_initialized()
        states = (random.getstate(), torch.get_rng_state(),
                  torch.cuda.get_rng_state_all() if cuda else None)
        extra = {"logprobs_mode": "processed_logprobs"} if logprobs else {}
        if tokenizer != model:
            extra["tokenizer"] = tokenizer
        if enforce_eager:  # no torch.compile / CUDA graphs: starts in seconds, samples slower
            extra["enforce_eager"] = True
        try:
            self.llm = LLM(model=model, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                           max_model_len=self.max_model_len, seed=seed, enable_prefix_caching=True,
                           **extra)
        except ValueError as e:  # e.g. the KV cache cannot hold one max_model_len sequence
            if "max_model_len" not in str(e) and "KV cache" not in str(e):
                raise
            raise UserError(f"vLLM could not start: {' '.join(str(e).split())[:400]}; lower "
                            "rollout.vllm_max_model_len or raise "
                            "rollout.vllm_gpu_memory_utilization") from None
        random.setstate(states[0])
        torch.set_rng_state(states[1])
        if states[2] is not None:
            torch.cuda.set_rng_state_all(states[2])

    def sample(self, model, tokenizer, prompts, group_size, *, max_new_tokens, temperature=1.0,
               top_p=1.0, stop=(), generator=None) -> Rollouts:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts = as_strings(prompts, "prompts")
        ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        longest = max((len(i) for i in ids), default=0)
        if self.max_model_len and longest + max_new_tokens > self.max_model_len:
            raise UserError(f"a prompt of {longest} tokens + rollout.max_new_tokens="
                            f"{max_new_tokens} is past vLLM's max_model_len {self.max_model_len}; "
                            "raise rollout.vllm_max_model_len")

        seed = None if generator is None else int(torch.randint(
            2**30, (1,), generator=generator, device=generator.device).item())
        # one seed per prompt, G apart: vLLM seeds completion j of a prompt with seed + j, so a
        # shared seed would give every prompt's j-th completion the same random draws
        params = [SamplingParams(**sampling_kwargs(
            group_size, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
            stop=as_strings(stop, "stop"), seed=None if seed is None else seed + i * group_size),
            **({"logprobs": 0} if self.logprobs else {}))
            for i in range(len(prompts))]
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

    def _model(self):
        try:
            return self.llm.llm_engine.model_executor.driver_worker.worker.model_runner.model
        except AttributeError as e:
            raise UserError(f"vLLM's model is not reachable in this process ({e}); "
                            "rollout.vllm_mode=colocate needs VLLM_ENABLE_V1_MULTIPROCESSING=0 "
                            "and a vLLM whose in-process engine exposes it (see pyproject's "
                            "vllm extra)") from None

    @torch.no_grad()
    def sync(self, policy) -> None:
        _check_device(_device_of(policy))
        self._model().load_weights(merged_weights(policy))  # one tensor at a time
        self.llm.reset_prefix_cache()


class VLLMServer:
    """Completions from a `vllm serve` on another GPU; weights over NCCL via TRL's client."""

    needs_sync = True

    main_rank_only = True  # the server's weights come from one trainer rank

    def __init__(self, url: str, model_name: str, logprobs: bool = False):
        self.url, self.model_name, self.client = url.rstrip("/"), model_name, None
        self.logprobs = logprobs
        self.served = None  # the model name the server answers to (its /v1/models)
        self.warned = False

    def _request(self, path: str, payload: dict | None = None, timeout: float = 60):
        """JSON from the server; its errors (e.g. prompt + max_tokens past max_model_len), an
        unreachable server and one that does not answer in `timeout` s as `UserError`s."""
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(f"{self.url}{path}", data=data,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace")[:500]
            raise UserError(f"vLLM server {self.url}{path}: HTTP {e.code}: {body}") from None
        except (TimeoutError, urllib.error.URLError, ConnectionError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, TimeoutError):
                raise UserError(f"vLLM server {self.url}{path}: no answer within {timeout:.0f} s "
                                "(it was reached; busy or stuck?)") from None
            raise UserError(f"vLLM server {self.url}: cannot reach it ({reason}); start it with "
                            f"{SERVE}") from None

    def sample(self, model, tokenizer, prompts, group_size, *, max_new_tokens, temperature=1.0,
               top_p=1.0, stop=(), generator=None) -> Rollouts:
        prompts = as_strings(prompts, "prompts")
        ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        kw = sampling_kwargs(group_size, max_new_tokens=max_new_tokens, temperature=temperature,
                             top_p=top_p, stop=as_strings(stop, "stop"))
        kw["top_k"] = 0  # the OpenAI server's "no top-k"
        if self.logprobs and not self.warned and (kw["temperature"] != 1 or kw["top_p"] < 1):
            self.warned = True
            log.warning("rl.rollout_correction with rollout.vllm_mode=server: the server must run "
                        "with --logprobs-mode processed_logprobs, which r1kit cannot check; with "
                        "vLLM's default (raw_logprobs) its log-probs ignore rollout.temperature "
                        "and top_p, and the correction weights are wrong")
        if self.served is None:  # the name it serves the model under, not our local path
            models = self._request("/v1/models").get("data") or [{"id": self.model_name}]
            self.served = models[0]["id"]
        payload = {"model": self.served, "prompt": ids, "return_token_ids": True, **kw}
        if self.logprobs:
            payload["logprobs"] = 0  # the sampled token's own log-prob, no alternatives
        choices = self._request("/v1/completions", payload,
                                timeout=COMPLETIONS_TIMEOUT_S)["choices"]  # prompt-major: n each
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

    def _connect(self, device) -> None:
        """TRL's VLLMClient and its NCCL group, on the policy's GPU; what is missing or down as a
        one-line `UserError`."""
        require_server_client()
        try:
            from trl.generation.vllm_client import VLLMClient
        except ImportError as e:  # e.g. a vLLM without the weight-transfer engine TRL imports
            raise UserError(f"rollout.vllm_mode=server: TRL's VLLMClient cannot be imported ({e}); "
                            f"it needs TRL >= {TRL_MIN} with a vLLM that TRL release supports: "
                            f"{SERVER_INSTALL}") from None
        try:
            client = VLLMClient(base_url=self.url)
        except ImportError as e:  # TRL raises it when vLLM (or requests) is not installed
            raise UserError(f"rollout.vllm_mode=server: {e}; {SERVER_INSTALL}") from None
        except OSError as e:  # requests' ConnectionError: nothing answers /health
            reason = " ".join(str(e).split())[:200]
            raise UserError(f"vLLM server {self.url}: cannot reach it ({reason}); start it with "
                            f"{SERVE}") from None
        try:
            client.init_communicator(device=device)
        except Exception as e:  # noqa: BLE001 (TRL raises plain Exception for an HTTP error)
            raise UserError(f"vLLM server {self.url}: the weight-transfer setup failed ("
                            f"{' '.join(str(e).split())[:300]}); the server must run in dev mode "
                            f"with NCCL weight transfer: {SERVE}") from None
        self.client = client

    @torch.no_grad()
    def sync(self, policy) -> None:
        if self.client is None:
            device = _device_of(policy)
            if device.type != "cuda":
                raise UserError("rollout.vllm_mode=server sends the weights over NCCL from the "
                                f"policy's GPU; the policy is on {device}: use run.device=cuda")
            self._connect(device)
        with self.client.weight_update():
            for name, tensor in merged_weights(policy):  # one tensor at a time
                self.client.update_named_param(name, tensor)
        self.client.reset_prefix_cache()
