"""Atomic writes of files, HF model folders and resumable training checkpoints.

Everything is written to a temporary sibling and renamed into place, so a run killed at any moment
leaves either the previous artefact or the new one, never a half-written one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from r1kit.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
    os.replace(tmp, path)


@contextmanager
def atomic_dir(path: Path):
    """Yield a temporary folder that replaces `path` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def check_model_out(out: str | Path, *sources: str | Path, key: str = "OUT") -> Path:
    """`out` as an absolute path that a model folder may be written to (replacing it): absent,
    empty, or a model folder already (config.json), and none of `sources` nor a folder holding
    one. Anything else would be deleted by the write."""
    out = Path(out).expanduser().resolve()
    for source in sources:
        src = Path(source).expanduser().resolve()
        if out == src or out in src.parents:
            raise UserError(f"{key} {out} is {source} or holds it: writing there would delete it")
    if out.is_file():
        raise UserError(f"{key} {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise UserError(f"{key} {out} holds files and is not a model folder: writing there would "
                        "delete them; choose an empty or new folder")
    return out


def save_hf_folder(model, tokenizer, out: Path, extra: dict[str, str] | None = None,
                   state_dict: dict | None = None) -> None:
    """`save_pretrained` of model and tokenizer, atomically, plus extra text files.

    `state_dict`: the weights to write instead of the model's own (a sharded model's, gathered)."""
    with atomic_dir(Path(out)) as tmp:
        _save_model(model, tmp, state_dict)
        tokenizer.save_pretrained(tmp)
        for name, text in (extra or {}).items():
            (tmp / name).write_text(text)


def rng_state() -> dict:
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])


def _save_model(model, folder: Path, state_dict: dict | None) -> None:
    if state_dict is None:
        model.save_pretrained(folder, safe_serialization=True)
    else:
        model.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, trainer_state: dict, keep: int = 2,
                    state_dict: dict | None = None):
    """Write `checkpoints/step-N/` (HF model + `trainer_state.pt`), then point `latest` at it."""
    ckpt_root = Path(run_dir) / "checkpoints"
    target = ckpt_root / f"step-{step:06d}"
    for torn in ckpt_root.glob(".step-*"):  # a write cut off by a kill (`atomic_dir`'s temporaries)
        shutil.rmtree(torn, ignore_errors=True)
    with atomic_dir(target) as tmp:
        _save_model(model, tmp, state_dict)
        tokenizer.save_pretrained(tmp)
        torch.save(trainer_state, tmp / "trainer_state.pt")
    atomic_write_text(ckpt_root / "latest", target.name)
    done = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
    for stale in done[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return target


def latest_checkpoint(run_dir: Path) -> Path:
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        raise UserError(f"{run_dir}: no checkpoint to resume from (missing {pointer})")
    target = pointer.parent / pointer.read_text().strip()
    if not (target / "trainer_state.pt").is_file():
        raise UserError(f"{target}: checkpoint is incomplete (no trainer_state.pt)")
    return target


def load_trainer_state(ckpt: Path) -> dict:
    return torch.load(Path(ckpt) / "trainer_state.pt", weights_only=False)


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON ({e})") from None
