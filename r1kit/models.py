"""Loading policies: any Hugging Face causal LM by name or folder, or the built-in base model."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from r1kit.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str = "auto", key: str = "run.device") -> torch.device:
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise UserError(f"{key}: {name!r} is not a device; use auto, cpu, cuda, cuda:N "
                            "or mps") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"device {name!r}: CUDA is not available here (torch "
                            f"{torch.__version__}, no GPU it can use); use cpu or auto")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def prepare_torch(run_cfg) -> torch.device:
    """Threads, seeds and device for a stage, from its `run` config section."""
    if run_cfg.threads:
        torch.set_num_threads(run_cfg.threads)
    random.seed(run_cfg.seed)
    torch.manual_seed(run_cfg.seed)
    return pick_device(run_cfg.device)


def resolve_model_path(path: str) -> str:
    """'builtin' -> the built-in base model folder (built on first use), 'builtin:code' -> the one
    that also learned the built-in coding task; anything else as given."""
    if path in ("builtin", "builtin:code"):
        from r1kit.stages.base import CODE_BASE, ensure_builtin_base

        return str(ensure_builtin_base(CODE_BASE if path == "builtin:code" else None))
    return path


def builtin_model_for(cfg):
    """`cfg` as meant on the built-in coding task: `model.path=builtin` is the code-capable base
    `builtin:code` (the arithmetic-only base has never seen a program), and the default rewards
    (accuracy + format, which compare final answers) are code + format. Else unchanged."""
    if cfg.data.source != "builtin:code":
        return cfg
    if cfg.model.path == "builtin":
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path="builtin:code"))
    rewards = getattr(cfg, "rewards", None)
    if rewards is not None and rewards.weights == type(rewards)().weights:
        weights = {"code" if k == "accuracy" else k: v for k, v in rewards.weights.items()}
        cfg = dataclasses.replace(cfg, rewards=dataclasses.replace(rewards, weights=weights))
    return cfg


def resolve_dtype(name: str, device: torch.device | str = "cpu",
                  key: str = "model.dtype") -> torch.dtype:
    """`auto` is bfloat16 on a CUDA GPU that has it and float32 elsewhere (CPUs, older GPUs)."""
    if name == "auto":
        on_cuda = torch.device(device).type == "cuda"
        native = on_cuda and torch.cuda.is_bf16_supported(including_emulation=False)  # (V100, T4:
        return torch.bfloat16 if native else torch.float32  # emulated bf16 is slow and unloved)
    if name not in DTYPES:
        raise UserError(f"{key}: unknown dtype {name!r}; use auto or one of {sorted(DTYPES)}")
    return DTYPES[name]


def autocast_forward(model, dtype: torch.dtype, device) -> None:
    """Run `model`'s forward passes under `torch.autocast(dtype)`: float32 weights (and optimizer
    state) updated in full precision, matrix products in `dtype`, as mixed-precision training
    does. Hooks, not a wrapped `forward`, so a deep copy (the KL reference) runs its own."""
    device_type, entered = torch.device(device).type, []

    def enter(module, args, kwargs):
        while entered:  # one a KeyboardInterrupt left open (forward hooks run on Exception only)
            entered.pop().__exit__(None, None, None)
        entered.append(torch.autocast(device_type, dtype=dtype))
        entered[-1].__enter__()

    def leave(module, args, kwargs, output):
        entered.pop().__exit__(None, None, None)

    model.register_forward_pre_hook(enter, with_kwargs=True)
    model.register_forward_hook(leave, with_kwargs=True, always_call=True)
    model.r1kit_compute_dtype = dtype


def compute_dtype(model) -> torch.dtype:
    """The dtype `model`'s forward computes in: its autocast dtype (`autocast_forward`), else its
    weights' (wrappers such as DDP and PEFT looked through)."""
    model = hf_model(model)
    return getattr(model, "r1kit_compute_dtype", None) or next(model.parameters()).dtype


def hf_model(model):
    """The transformers model inside wrappers: DDP (`.module`), torch.compile (`._orig_mod`),
    PEFT (`.get_base_model()`)."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif callable(getattr(model, "get_base_model", None)):
            model = model.get_base_model()
        else:
            return model


def check_trainable_dtype(name: str, key: str = "model.dtype") -> None:
    """float16 weights cannot be trained here: AdamW on them underflows (its eps, 1e-8, is 0 in
    float16; the weights turn to inf/NaN within a few steps) and there is no loss scaling. It
    stays available where nothing is trained (eval, sample, a distillation teacher)."""
    if name == "float16":
        raise UserError(f"{key}=float16 cannot be trained: AdamW on float16 weights turns them to "
                        "inf/NaN (no fp32 master weights or loss scaling here); use bfloat16 (GPUs "
                        "that have it) or float32")


def load_model(path: str, dtype: str = "float32", device: torch.device | str = "cpu",
               attn: str = "auto"):
    """(model, tokenizer) from a hub name or a local folder, ready for sampling and training; a
    LoRA adapter folder (a LoRA run's `final-adapter/`) comes merged into its base model. `attn`
    is the attention implementation (`model.attn_implementation`; auto: transformers' choice)."""
    if not str(path).strip():
        raise UserError("the model path is empty: give a model folder, a hub name or builtin")
    path = resolve_model_path(path)
    torch_dtype = resolve_dtype(dtype, device)
    local = Path(path).expanduser()
    if (local / "adapter_config.json").is_file() and not (local / "config.json").is_file():
        return _load_adapter(local, dtype, device, attn)
    in_folder = is_local_path(path)
    if in_folder and not local.exists():  # not a hub name: no minute of retries
        hub = (f" (taken for a local path because ./{path.split('/')[0]} exists; for the hub's "
               "model of that name, run from another folder)") if (
            path.count("/") == 1 and not path.startswith((".", "/", "~"))) else ""
        raise UserError(f"{path}: no such folder{hub}")
    if in_folder and not (local / "config.json").is_file():
        raise UserError(f"{path}: not a Hugging Face model folder (no config.json)")
    if local.exists():  # an absolute name_or_path: what a LoRA adapter records as its base
        path = str(local.expanduser().resolve())
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        kw = {} if attn == "auto" else {"attn_implementation": attn}
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **kw)
    except (OSError, ImportError) as e:  # (ImportError: flash-attn is not installed)
        raise UserError(f"{path}: could not load model ({e})") from None
    except ValueError as e:
        if attn != "auto" and "attn" in str(e).lower():  # the model has no such kernel
            raise UserError(f"{path}: model.attn_implementation={attn}: "
                            f"{' '.join(str(e).split())[:300]}") from None
        if "Unrecognized configuration class" not in str(e):
            raise
        model_type = AutoConfig.from_pretrained(path).model_type
        raise UserError(f"{path}: a {model_type!r} model is not a causal (decoder-only) language "
                        "model, which is what r1kit samples and trains") from None
    except SafetensorError as e:  # a truncated or empty model.safetensors (a copy cut short)
        raise UserError(f"{path}: could not load model: its weights are damaged or truncated "
                        f"({e})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer


def is_local_path(path: str) -> bool:
    """Whether `path` names a local folder, existing or not, rather than a hub name: it exists,
    starts with `.`, `/` or `~`, has two `/` or more, or is `A/B` where folder `A` exists
    (`runs/typo` is a mistyped run, not the hub's ORG/NAME)."""
    p = Path(path).expanduser()
    return (p.exists() or path.startswith((".", "/", "~")) or path.count("/") > 1
            or (path.count("/") == 1 and p.parent.is_dir()))


def _load_adapter(folder: Path, dtype: str, device, attn: str = "auto"):
    try:
        from peft import PeftModel
    except ImportError:
        raise UserError(f"{folder} is a LoRA adapter: pip install 'r1kit[lora]' to load it into "
                        "its base model") from None
    adapter = folder / "adapter_config.json"
    base_path = json.loads(adapter.read_text()).get("base_model_name_or_path")
    if not base_path:
        raise UserError(f"{adapter}: no base_model_name_or_path to load the adapter into")
    if not Path(base_path).expanduser().is_absolute() and (folder / base_path).is_dir():
        base_path = str(folder / base_path)  # relative to the adapter, not to where we run
    try:
        base, _ = load_model(base_path, dtype, "cpu", attn)
    except UserError as e:
        raise UserError(f"{adapter}: its base model {base_path!r}: {e}") from None
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return PeftModel.from_pretrained(base, str(folder)).merge_and_unload().to(device), tokenizer
