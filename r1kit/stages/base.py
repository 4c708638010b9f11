"""`r1kit base`: build the built-in tiny base model (or find it in the cache / the package).

The default build is deterministic for its seed. The package ships the default build in
`r1kit/assets/tiny-base` so that the demo starts at once; `r1kit base` rebuilds it from scratch
(and `benchmarks/base_model.py` checks the two agree).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from r1kit.checkpoint import check_model_out
from r1kit.config import BaseConfig, to_dict
from r1kit.errors import UserError
from r1kit.models import pick_device

PACKAGED_BASE = Path(__file__).resolve().parent.parent / "assets" / "tiny-base"
# `model.path=builtin:code`: the default recipe with half of the corpus worked one-line programs
# (r1kit/tasks/code.py), shipped in assets/tiny-base-code.
CODE_BASE = BaseConfig(tasks=["arithmetic", "code"])
PACKAGED_CODE_BASE = PACKAGED_BASE.parent / "tiny-base-code"


def cache_root() -> Path:
    return Path(os.environ.get("R1KIT_CACHE", Path.home() / ".cache" / "r1kit"))


# Fields added after the first cached builds: left out of the key at their default, so those
# builds keep their cache folders.
_LATER_FIELDS = {"arch": "llama", "num_kv_heads": 0, "tasks": ["arithmetic"]}


def config_key(cfg: BaseConfig) -> str:
    fields = {k: v for k, v in to_dict(cfg).items()
              if k not in ("out", "device") and not (k in _LATER_FIELDS and v == _LATER_FIELDS[k])}
    blob = json.dumps(fields, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def default_out(cfg: BaseConfig) -> Path:
    return Path(cfg.out) if cfg.out else cache_root() / f"tiny-base-{config_key(cfg)}"


def _is_built(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "r1kit_base.json").is_file()


def ensure_builtin_base(cfg: BaseConfig | None = None, log=print) -> Path:
    """The folder of the base model for `cfg` (default config: the packaged one), built if absent."""
    cfg = cfg or BaseConfig()
    if cfg == BaseConfig() and _is_built(PACKAGED_BASE):
        return PACKAGED_BASE
    if cfg == CODE_BASE and _is_built(PACKAGED_CODE_BASE):
        return PACKAGED_CODE_BASE
    out = default_out(cfg)
    if not _is_built(out):
        log(f"building the base model into {out} (cached for later runs)")
        main(cfg, out=out, log=log)
    return out


def main(cfg: BaseConfig, out: Path | None = None, log=print) -> dict:
    from r1kit.tinybase import build_base

    kv = cfg.num_kv_heads or cfg.num_heads
    if cfg.hidden_size % cfg.num_heads or cfg.num_heads % kv:
        raise UserError(f"hidden_size ({cfg.hidden_size}) must divide by num_heads "
                        f"({cfg.num_heads}), and num_heads by num_kv_heads ({kv})")
    pick_device(cfg.device, key="device")  # a bad or missing device fails now, not after the corpus
    out = check_model_out(out or default_out(cfg), key="out")  # before minutes of work
    record = build_base(cfg, out, log=log)
    record["config_key"] = config_key(cfg)
    record["out"] = str(out)
    log(json.dumps(record, indent=2))
    return record
