"""LoRA fine-tuning through `peft`, in every training stage (`--set lora.r=16` or `--lora r=16`).

- The policy's linear layers get low-rank adapters; only those train, so the optimizer state is
  2 x the adapter size instead of 2 x the model.
- The reference of the KL term is the base model itself, run with the adapters switched off
  (`reference`), so no second copy of the weights is kept.
- Checkpoints hold the adapter (and the trainer state); `final/` is the merged model, a plain
  Hugging Face folder, and `final-adapter/` the adapter alone.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from safetensors import SafetensorError

from r1kit import checkpoint as ckpt
from r1kit.distributed import unwrap
from r1kit.errors import UserError


def enabled(cfg) -> bool:
    return cfg.r > 0


def is_lora(model) -> bool:
    return hasattr(unwrap(model), "peft_config")


def _peft():
    try:
        import peft
    except ImportError:
        raise UserError("lora.r > 0 needs peft: pip install 'r1kit[lora]'") from None
    return peft


def apply(model, cfg):
    """`model` with fresh trainable adapters (`cfg` is the `lora` config section)."""
    if not enabled(cfg):
        return model
    peft = _peft()
    targets = list(cfg.target_modules)
    target = targets[0] if targets == ["all-linear"] else targets
    try:
        lora_cfg = peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                   target_modules=target, task_type="CAUSAL_LM")
        return peft.get_peft_model(model, lora_cfg)
    except ValueError as e:
        raise UserError(f"lora: {e} (lora.target_modules={targets})") from None


def load_adapter(model, folder: Path):
    """`model` with the trainable adapter saved in `folder` (resuming a LoRA run)."""
    peft = _peft()
    try:
        return peft.PeftModel.from_pretrained(model, str(folder), is_trainable=True)
    except SafetensorError as e:  # a truncated adapter_model.safetensors
        raise UserError(f"{folder}: could not load the LoRA adapter: its weights are damaged or "
                        f"truncated ({e})") from None


def has_adapter(folder: Path) -> bool:
    return (Path(folder) / "adapter_config.json").is_file()


@contextlib.contextmanager
def reference(policy, ref):
    """The reference policy: the frozen base inside a LoRA policy (adapters off), else `ref`."""
    model = unwrap(policy)
    if is_lora(model):
        with model.disable_adapter():
            yield model
    else:
        yield ref


def save_final(model, tokenizer, out: Path) -> None:
    """`out/`: the plain HF model, LoRA merged in; with LoRA also `out-adapter/`, the adapter.

    peft's `merge_and_unload` folds the adapters into the model itself, so call this last.
    """
    model = unwrap(model)
    out = Path(out)
    if is_lora(model):
        ckpt.save_hf_folder(model, tokenizer, out.with_name(out.name + "-adapter"))
        model = model.merge_and_unload()
    ckpt.save_hf_folder(model, tokenizer, out)


def cli_overrides(spec: str) -> list[str]:
    """`--lora r=16,alpha=32,target_modules=q_proj+v_proj` -> `--set lora.*` overrides.

    >>> cli_overrides("r=16,alpha=32,target_modules=q_proj+v_proj")
    ['lora.r=16', 'lora.alpha=32', 'lora.target_modules=[q_proj,v_proj]']
    """
    out = []
    for item in filter(None, (x.strip() for x in spec.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"--lora: '{item}' must look like key=value (e.g. r=16,alpha=32)")
        if "+" in value:
            value = "[" + ",".join(value.split("+")) + "]"
        out.append(f"lora.{key.strip()}={value.strip()}")
    return out
