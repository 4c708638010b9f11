"""Loading and saving the model a training stage updates, whatever wraps it: LoRA adapters
(r1kit/lora.py), activation checkpointing (r1kit/memory.py), several processes with DDP or FSDP
(r1kit/distributed.py). The stages call these instead of `load_model` / `save_checkpoint`."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from r1kit import checkpoint as ckpt
from r1kit import distributed, lora, memory
from r1kit.distributed import SINGLE, Dist
from r1kit.errors import UserError
from r1kit.models import autocast_forward, check_trainable_dtype, load_model, resolve_dtype
from r1kit.runs import RunFolder
from r1kit.templates import check_template

log = logging.getLogger("r1kit")


def load_for_run(run: RunFolder, cfg, device):
    """(model, tokenizer, the checkpoint resumed or None) of a stage's run folder, its prompt
    template checked on the tokenizer; a new folder that fails here is removed (`discard`), so
    that a rerun is not stopped by it."""
    resume_from = run.checkpoint()
    with run.discarded_on_error():
        model, tokenizer = load_trainable(cfg.model, cfg.lora, resume_from, device)
        check_template(cfg.data.template, tokenizer)
    return model, tokenizer, resume_from


def load_trainable(model_cfg, lora_cfg, resume_from: Path | None, device):
    """(model, tokenizer) to train: the checkpoint being resumed or `model.path`, with LoRA
    adapters (new, or the checkpoint's) and activation checkpointing as configured."""
    check_trainable_dtype(model_cfg.dtype)
    compute = resolve_dtype(model_cfg.dtype, device)
    # float32 master weights for full fine-tuning (with LoRA the base is frozen, and peft keeps
    # the adapters in float32 already)
    mixed = compute == torch.bfloat16 and model_cfg.master_weights and not lora.enabled(lora_cfg)
    weights = "float32" if mixed else model_cfg.dtype
    adapter = resume_from is not None and lora.has_adapter(resume_from)  # into its base model
    model, tokenizer = load_model(model_cfg.path if adapter else str(resume_from or model_cfg.path),
                                  weights, device, model_cfg.attn_implementation)
    if mixed:
        autocast_forward(model, compute, device)
    model = lora.load_adapter(model, resume_from) if adapter else lora.apply(model, lora_cfg)
    if model_cfg.gradient_checkpointing:
        memory.enable_gradient_checkpointing(model)
    return model, tokenizer


_DROPOUT_ATTR = re.compile(r"dropout|pdrop|layerdrop|drop_path|jitter")


def disable_dropout(model) -> None:
    """Dropout off for RL. The update computes pi_theta in training mode (activation checkpointing
    needs it), while pi_old, the reference and the sampler run without dropout, so dropout would
    make the importance ratio noise (TRL's `disable_dropout`; here functional dropout too, so the
    saved config records the 0 it trained with). SFT keeps the model's dropout; a
    LoRA dropout (peft's `lora_dropout` modules) turned off here is logged, as it was asked for."""
    lora_p = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout):
            if "lora_dropout" in name and module.p > 0:
                lora_p.add(module.p)
            module.p = 0.0
        # functional dropout reads a float attribute in training mode: `attention_dropout`
        # (most HF attention), `dropout` (OPT, XGLM, BioGPT), `attn_pdrop` (GPT-BigCode), or the
        # config's own (Falcon); LayerDrop skips whole layers (OPT's `layerdrop`), and router
        # jitter scales a MoE layer's input (Mixtral's `jitter_noise`)
        config = getattr(module, "config", None)
        for owner in (module, config) if hasattr(config, "to_dict") else (module,):
            for attr, value in list(vars(owner).items()):
                if isinstance(value, float) and _DROPOUT_ATTR.search(attr):
                    setattr(owner, attr, 0.0)
    if lora_p:
        log.warning("lora.dropout=%s is turned off: RL trains without dropout, which would make "
                    "the importance ratio noise (lora.dropout applies to SFT only)",
                    ", ".join(map(str, sorted(lora_p))))


def trainable_parameters(model) -> list:
    return [p for p in model.parameters() if p.requires_grad]


def save_checkpoint(run_path: Path, step: int, model, tokenizer, opt, trainer_state: dict,
                    d: Dist = SINGLE, config_text: str | None = None) -> None:
    """`checkpoints/step-N/` on rank 0: the model (or LoRA adapter), the optimizer gathered from
    every rank, each rank's random state (`rng`, `generator` become per-rank lists). Every rank
    must call it."""
    full = _gathered_weights(model, d) if d.strategy == "fsdp" and d.on else None
    state = dict(trainer_state, optimizer=distributed.optimizer_state(model, opt, d),
                 rng=distributed.gather(ckpt.rng_state(), d))
    if "generator" in state:
        state["generator"] = distributed.gather(state["generator"], d)
    if d.main:
        ckpt.save_checkpoint(run_path, step, distributed.unwrap(model), tokenizer, state,
                             state_dict=full, config_text=config_text)
    distributed.barrier(d)


def restore(saved: dict, model, opt, d: Dist = SINGLE, generator=None) -> None:
    """The optimizer and this rank's random state from a trainer state `save_checkpoint` wrote."""
    distributed.load_optimizer_state(model, opt, saved["optimizer"], d)
    ckpt.set_rng_state(distributed.pick_rank_state(saved["rng"], d, "random state"))
    if generator is not None:
        generator.set_state(distributed.pick_rank_state(saved["generator"], d, "sampler state"))


def _gathered_weights(model, d: Dist) -> dict:
    """FSDP's full state dict, without the copies of tied weights (lm_head = embeddings), which
    `save_pretrained` leaves out of a model's own state dict too."""
    full = distributed.full_state_dict(model, d, for_saving=True)  # (rank 0 saves it)
    if getattr(model.config, "tie_word_embeddings", False):
        tied = getattr(model, "_tied_weights_keys", None) or {}
        for key in (tied.keys() if isinstance(tied, dict) else tied):
            full.pop(key, None)
    return full


def save_final(model, tokenizer, out: Path, d: Dist = SINGLE) -> None:
    """`out/`: a plain Hugging Face folder (LoRA merged, FSDP gathered); every rank must call."""
    if d.strategy == "fsdp" and d.on:
        full = _gathered_weights(model, d)
        if d.main:
            ckpt.save_hf_folder(model, tokenizer, out, state_dict=full)
    elif d.main:
        lora.save_final(model, tokenizer, out)
    distributed.barrier(d)


class _QuietRun(RunFolder):
    """The run folder as ranks other than 0 see it: same path and config, writes nothing."""

    def append_many(self, name: str, records: list[dict]) -> None:
        pass

    def write_json(self, name: str, obj) -> None:
        pass

    def write_jsonl(self, name: str, records: list[dict]) -> None:
        pass

    def discard(self) -> None:
        pass


def open_run(cfg, stage: str, resume: str | None, d: Dist = SINGLE, **kw) -> RunFolder:
    """`RunFolder.open` on rank 0; the other ranks get the same folder, read-only for them."""
    if not d.on:
        return RunFolder.open(cfg, stage, resume, **kw)
    run = err = None
    if d.main:
        try:
            run = RunFolder.open(cfg, stage, resume, **kw)
        except UserError as e:
            err = e
    opened = distributed.broadcast(err or (run and (run.path, run.cfg, run.resumed)), d)
    if isinstance(opened, UserError):
        raise opened
    return run if d.main else _QuietRun(*opened)
