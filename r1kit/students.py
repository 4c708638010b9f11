"""Distillation students: built-in presets and user-named models (R1-SPEC §3.5).

R1 distils into Qwen2.5 and Llama bases of other sizes than the teacher. The built-in presets are
their miniatures, each a base model pretrained by `r1kit base` on the teacher's corpus, smaller
than the built-in teacher lineage (Llama, width 128, 3 layers, 0.72M parameters):
    tiny-qwen   Qwen2 architecture (grouped-query attention, q/k/v biases) with Qwen2's own
                tokenizer rules (single-digit numbers, see `tinybase.build_tokenizer`), width 96,
                2 layers, 0.25M parameters
    tiny-llama  Llama architecture with the teacher's tokenizer rules, width 96, 2 layers, 0.28M
Both ship in `r1kit/assets/<name>` and rebuild deterministically with `r1kit base`, e.g.
    r1kit base --set out=DIR --set arch=qwen2 --set hidden_size=96 --set intermediate_size=256 \
               --set num_layers=2 --set num_kv_heads=2 --set corpus_docs=50000 --set steps=1500 \
               --set batch_size=32
(tiny-llama: arch=llama and no num_kv_heads). A preset whose shipped copy is missing or was built
from other settings is built into the cache on first use (15-30 minutes on 2 cores). Any other student is a Hugging Face model folder or hub name.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from r1kit.config import BaseConfig
from r1kit.errors import UserError

ASSETS = Path(__file__).resolve().parent / "assets"

# Half the teacher's pretraining (1500 steps of 32 documents against 3000 of 64): a student's
# base is built once, on a 2-core CPU shared with other jobs, in about 15-20 minutes.
_PRETRAIN = {"corpus_docs": 50_000, "steps": 1500, "batch_size": 32}
PRESETS: dict[str, BaseConfig] = {
    "tiny-qwen": BaseConfig(arch="qwen2", hidden_size=96, intermediate_size=256, num_layers=2,
                            num_heads=4, num_kv_heads=2, **_PRETRAIN),
    "tiny-llama": BaseConfig(arch="llama", hidden_size=96, intermediate_size=256, num_layers=2,
                             num_heads=4, **_PRETRAIN),
}


def check_student(name: str, template: str = "") -> None:
    """A clear error for a student that is neither a preset, a model folder nor a hub name, or
    a model folder whose tokenizer cannot render `template` (checked before any sampling)."""
    if name in PRESETS:
        return
    path = Path(name)
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"student {name!r}: {path} is not a Hugging Face model folder "
                            "(no config.json)")
        from transformers import AutoTokenizer

        from r1kit.templates import check_template

        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.eos_token_id is None:  # SFT ends every completion with it
            raise UserError(f"student {name!r}: its tokenizer has no EOS token to end "
                            "completions with; set eos_token in its tokenizer_config.json")
        if template:
            check_template(template, tokenizer, where=f"student {name!r} with data.template")
        return
    if name.startswith((".", "/", "~")) or name.count("/") != 1 or path.parent.is_dir():
        raise UserError(f"unknown student {name!r}: use a preset ({', '.join(PRESETS)}), a model "
                        "folder, or a hub name like Qwen/Qwen2.5-Math-1.5B")


def student_path(name: str, log=print) -> str:
    """The model folder (or hub name) a student starts from; presets are built when missing."""
    check_student(name)
    if name not in PRESETS:
        return name
    cfg = PRESETS[name]
    packaged = ASSETS / name
    if _built_from(packaged, cfg):
        return str(packaged)
    from r1kit.stages.base import ensure_builtin_base

    return str(ensure_builtin_base(cfg, log=log))


def _built_from(folder: Path, cfg: BaseConfig) -> bool:
    record = folder / "r1kit_base.json"
    if not (folder / "config.json").is_file() or not record.is_file():
        return False
    built = json.loads(record.read_text()).get("config") or {}
    default = dataclasses.asdict(BaseConfig())
    # A field the build predates counts as its default (so an added option keeps old builds).
    return all(built.get(k, default[k]) == v for k, v in dataclasses.asdict(cfg).items()
               if k not in ("out", "device"))
