"""Atomic writes of files, HF model folders and resumable training checkpoints.

Everything is written to a temporary sibling and renamed into place, so a run killed at any moment
leaves either the previous artefact or the new one, never a half-written one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pickle
import random
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError

from r1kit.errors import UserError

NAME_MAX = 255  # bytes in one file name on the usual file systems (ext4, xfs, btrfs, tmpfs, APFS)
TEMP_MARK = ".tmp-"  # in the name of every temporary file and folder written here
# What a killed process leaves behind: `.NAME.tmp-XXXXXXXX` (and `.NAME.XXXXXXXX`, the
# `atomic_write_text` temporaries of earlier versions), the random part as `tempfile` makes it.
_TEMP_NAME = re.compile(r"\.(.+)\.(tmp-)?[a-z0-9_]{8}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _hidden_name(name: str, suffix: str) -> str:
    """`.NAME{suffix}`, or, where that and the 8 random characters `tempfile` adds would pass
    NAME_MAX (an export OUT of 245 characters), a shortened NAME with a hash of the whole."""
    full = f".{name}{suffix}"
    if len(os.fsencode(full)) + 8 <= NAME_MAX:
        return full
    head = os.fsencode(name)[:100].decode(errors="ignore")
    return f".{head}-{hashlib.sha1(os.fsencode(name)).hexdigest()[:12]}{suffix}"


def _old(path: Path) -> Path:
    """Where `atomic_dir` moves the folder it replaces, for the moment of the swap."""
    return path.with_name(_hidden_name(path.name, ".old"))


def write_error(path: Path, e: BaseException) -> UserError:
    """A failed write as a one-line error naming `path`: out of space, read-only, too long."""
    if isinstance(e, OSError):
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        why = e.strerror or str(e)
    else:  # torch.save's zip writer and safetensors report a failed write in their own words
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        full = True
    return UserError(f"{path}: could not write ({why})" + ("; the disk may be full" if full else ""))


def _is_write_error(e: BaseException) -> bool:
    """An exception of a failed write to disk, not a bug in what was being written."""
    if isinstance(e, OSError):
        return True
    if isinstance(e, SafetensorError):
        return "I/O error" in str(e) or "IoError" in str(e)
    return isinstance(e, RuntimeError) and any(
        mark in str(e) for mark in ("inline_container", "PytorchStreamWriter", "unexpected pos"))


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_hidden_name(path.name, TEMP_MARK))
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:  # no temporary left behind (a full disk, a file size limit)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise write_error(path, e) from None


def recover_dir(path: Path) -> None:
    """Undo a replacement by `atomic_dir` cut off by a kill between its two renames: `path`
    is gone, and the folder it replaced waits under its `.old` name: put it back."""
    path, old = Path(path), _old(Path(path))
    if not path.exists() and old.is_dir():
        os.replace(old, path)


def _follow_umask(folder: Path) -> None:
    """The usual permissions on what was written into `folder`: safetensors writes through a
    temporary file of mode 0600, and mkdtemp makes folders 0700."""
    mask = _umask()
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), 0o666 & ~mask)


@contextmanager
def atomic_dir(path: Path):
    """Yield a temporary folder that replaces `path` only if the block finishes.

    The swap is two renames (`path` to its `.old` name, the new folder to `path`); a kill
    between them leaves the old folder, which `recover_dir` puts back. A failed write (a full
    disk, a read-only folder) is a `UserError` naming `path`; the temporary folder goes."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        recover_dir(path)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_hidden_name(path.name, TEMP_MARK)))
    except OSError as e:
        raise write_error(path, e) from None
    try:
        yield tmp
        _follow_umask(tmp)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_write_error(e):
            raise write_error(path, e) from None
        raise
    old = _old(path)
    try:
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        recover_dir(path)
        raise write_error(path, e) from None
    shutil.rmtree(old, ignore_errors=True)


def is_temporary(name: str) -> bool:
    """Whether a file or folder name is one of r1kit's temporaries (`.NAME.tmp-XXXXXXXX`)."""
    return bool(_TEMP_NAME.fullmatch(name))


def clean_temporaries(folder: Path) -> None:
    """Remove what a process killed while writing left in a run `folder` and its subfolders
    (not nested run folders, which have their own): temporary files and folders of r1kit's own
    naming, and replaced folders (`.NAME.old`) put back where their folder is missing."""
    for root, dirs, files in os.walk(folder):
        root = Path(root)
        if root != Path(folder) and (root / "config.yaml").is_file():
            dirs.clear()  # a stage folder inside a pipeline: its own run
            continue
        for name in list(dirs):
            target = root / name[1:-4]
            if name.startswith(".") and name.endswith(".old") and _old(target).name == name:
                recover_dir(target)
                if target.exists():  # put back, or the swap had finished: a stale copy
                    shutil.rmtree(root / name, ignore_errors=True)
                dirs.remove(name)
            elif _TEMP_NAME.fullmatch(name):
                shutil.rmtree(root / name, ignore_errors=True)
                dirs.remove(name)
        for name in files:
            if _TEMP_NAME.fullmatch(name):
                with contextlib.suppress(OSError):
                    os.unlink(root / name)


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


RUN_CONFIG = "run_config.yaml"
"""In each checkpoint: the config it was trained with, which a resume compares config.yaml with."""


def checkpoint_config(ckpt: Path) -> str | None:
    """The config text checkpoint `ckpt` was trained with; None for one written before
    checkpoints recorded it."""
    path = Path(ckpt) / RUN_CONFIG
    return path.read_text(encoding="utf-8") if path.is_file() else None


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, trainer_state: dict, keep: int = 2,
                    state_dict: dict | None = None, config_text: str | None = None):
    """Write `checkpoints/step-N/` (HF model + `trainer_state.pt` + `config_text`, the YAML config
    the run trains with, as `run_config.yaml`), then point `latest` at it."""
    ckpt_root = Path(run_dir) / "checkpoints"
    target = ckpt_root / f"step-{step:06d}"
    for torn in ckpt_root.glob(".step-*"):  # a write cut off by a kill (`atomic_dir`'s temporaries)
        if torn.name.endswith(".old"):  # ... or a swap cut off: the old checkpoint, whole
            recover_dir(torn.with_name(torn.name[1:-4]))
        shutil.rmtree(torn, ignore_errors=True)
    with atomic_dir(target) as tmp:
        _save_model(model, tmp, state_dict)
        tokenizer.save_pretrained(tmp)
        torch.save(trainer_state, tmp / "trainer_state.pt")
        if config_text is not None:
            (tmp / RUN_CONFIG).write_text(config_text, encoding="utf-8")
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
    recover_dir(target)  # a re-save of this checkpoint killed mid-swap
    if not (target / "trainer_state.pt").is_file():
        raise UserError(f"{target}: checkpoint is incomplete (no trainer_state.pt)")
    return target


def load_trainer_state(ckpt: Path) -> dict:
    path = Path(ckpt) / "trainer_state.pt"
    try:
        return torch.load(path, weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:
        why = str(e).strip().split(". ")[0] or type(e).__name__  # torch adds a paragraph
        raise UserError(f"{path}: damaged or truncated, cannot resume from it ({why})") from None


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON ({e})") from None
