"""Run folders (`runs/NAME/`) and the problem sets a run reads.

A run folder holds the resolved `config.yaml`, `metrics.jsonl` (one object per step),
`eval.jsonl`, `completions.jsonl`, `samples/`, `checkpoints/`, the final HF model and
`summary.json`. Every whole-file write is atomic; JSONL logs are appended line by line.

Each checkpoint keeps the config it was trained with: a resume compares config.yaml, which a user
may edit to extend the run, with it, logs what changed and refuses what it cannot continue with.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import fnmatch
import json
import logging
import math
import os
import shutil
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import yaml

from r1kit.checkpoint import (
    atomic_write_text,
    checkpoint_config,
    clean_temporaries,
    is_temporary,
    latest_checkpoint,
    read_json,
)
from r1kit.config import (
    DataConfig,
    DistillConfig,
    EvalStageConfig,
    PipelineConfig,
    SampleConfig,
    SFTConfig,
    ZeroConfig,
    load_config,
    to_dict,
)
from r1kit.errors import UserError
from r1kit.tasks.arithmetic import is_heldout, sample_problems
from r1kit.tasks.base import Problem
from r1kit.tasks.files import file_format, load_data_file, load_hf_dataset, load_jsonl

log = logging.getLogger("r1kit")


def to_json(obj, indent: int | None = None) -> str:
    """Strict JSON: a NaN or infinite number (a metric with nothing to average) is written as
    null, which jq, JavaScript and every JSON parser read; Python's default `NaN` is not JSON.

    >>> to_json({"a": float("nan"), "b": [1.5, float("inf")]})
    '{"a": null, "b": [1.5, null]}'
    """
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(obj), indent=indent, ensure_ascii=False, allow_nan=False)


class FolderLock:
    """An exclusive `flock` on a run folder's `.lock`: a second r1kit process on the same folder
    (two `--resume` at once) would train it twice and interleave its logs. The `RunFolder`s of
    the folder hold it; it is released when the last of them is gone (a stage called from
    Python returned) or the process ends."""

    def __init__(self, fd: int):
        self.fd = fd
        self.release = weakref.finalize(self, os.close, fd)  # (once; by hand or when collected)


_held: dict[str, weakref.ref] = {}  # run folder -> its lock, while this process holds it


def lock_folder(path: Path) -> FolderLock:
    """Lock the run folder `path` for this process, or a one-line error naming the process that
    has it. Re-entrant within one process (a pipeline resumes its stages; tests run stages
    again). Under torchrun only rank 0, the one that writes, opens run folders and locks them."""
    lock = Path(path) / ".lock"
    key = str(Path(path).resolve())
    held = _held[key]() if key in _held else None
    if held is not None and held.release.alive:
        try:
            if os.path.samestat(os.fstat(held.fd), os.stat(lock)):
                return held
        except OSError:
            pass
        held.release()  # the folder was removed and made again (a stage started over)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise UserError(f"{path}: cannot write to the run folder ({e.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise UserError(f"{path} is in use by another r1kit process (pid {pid}); wait for it to "
                        "end, or stop it") from None
    except OSError as e:  # a file system without locks (some network mounts): go on unlocked
        log.warning(f"{lock}: cannot lock the run folder ({e.strerror}); make sure no other "
                    "r1kit process uses it")
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    held = FolderLock(fd)
    _held[key] = weakref.ref(held)
    return held


def _is_leftover(path: Path) -> bool:
    """An empty folder, or one holding only what a start killed before its config.yaml left (its
    lock, a half-written config): a new run may take it."""
    return all(p.name == ".lock" or is_temporary(p.name) for p in path.iterdir())


@dataclass
class RunFolder:
    path: Path
    cfg: object
    resumed: bool
    lock: FolderLock | None = dataclasses.field(default=None, repr=False, compare=False)

    @staticmethod
    def saved_config(cfg, stage: str, resume: str):
        """The config saved in the run folder `resume`, of the type of `cfg` (`r1kit STAGE`). A
        bad value there (an edit to extend the run) is an error naming the key and the file."""
        path = Path(resume)
        saved = path / "config.yaml"
        if not saved.is_file():
            raise UserError(f"{path}: not a run folder (no config.yaml)")
        made_by = _stage_of(saved)
        if made_by not in (None, type(cfg)):
            raise UserError(f"{path}: not a run folder of `r1kit {stage}` but of `r1kit "
                            f"{STAGE_NAMES[made_by]}`; resume it with the command that made it")
        try:
            return load_config(type(cfg), saved)
        except UserError as e:
            raise UserError(str(e) if str(e).startswith(str(saved)) else f"{saved}: {e}") from None

    @classmethod
    def open(
        cls, cfg, stage: str, resume: str | None = None, checkpoints: bool = True
    ) -> RunFolder:
        """A new run folder for `cfg`, or the one named by `resume` with its saved config, locked
        for this process while the returned `RunFolder` lives (`lock_folder`). Resuming removes
        the temporaries of a killed write (`clean_temporaries`).

        `checkpoints=False`: a stage that keeps its own progress file resumes without a
        checkpoint (`r1kit sample`).
        """
        if resume:
            path = Path(resume)
            cfg = cls.saved_config(cfg, stage, resume)
            lock = lock_folder(path)
            clean_temporaries(path)  # what a killed write left
            if checkpoints and not (path / "checkpoints" / "latest").is_file():
                log.warning(f"{path}: no checkpoint yet, so the run starts over in this folder "
                            "(with its saved config.yaml)")
            elif checkpoints:
                latest = latest_checkpoint(path)
                recorded = checkpoint_config(latest)
                check_resume_config(cfg, None if recorded is None else yaml.safe_load(recorded),
                                    latest, path / "config.yaml")
            return cls(path, cfg, resumed=True, lock=lock)
        name = cfg.run.name or f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}"
        path = Path(cfg.run.out_dir) / name
        suffix = 1
        while (lock := _new_folder(path, taken_ok=bool(cfg.run.name))) is None:
            suffix += 1  # two runs started in the same second
            name = f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}-{suffix}"
            path = Path(cfg.run.out_dir) / name
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, name=name))
        run = cls(path, cfg, resumed=False, lock=lock)
        atomic_write_text(path / "config.yaml", run.config_text)
        return run

    @property
    def config_text(self) -> str:
        """The config this run trains with, as YAML: config.yaml when the run began, and in each
        checkpoint (config.yaml may be edited while the run goes on)."""
        return yaml.safe_dump(to_dict(self.cfg), sort_keys=False)

    def checkpoint(self) -> Path | None:
        """The checkpoint a resumed run continues from; None for a new run, or a resumed one
        killed before its first checkpoint (it starts over)."""
        if not self.resumed or not (self.path / "checkpoints" / "latest").is_file():
            return None
        return latest_checkpoint(self.path)

    def discard(self) -> None:
        """Remove a new run's folder that holds nothing but its config.yaml: a run that failed
        before it began (a model that does not load) leaves no folder in the way of a rerun."""
        if not self.resumed and {p.name for p in self.path.iterdir()} <= {"config.yaml", ".lock"}:
            if self.lock is not None:
                self.lock.release()
            shutil.rmtree(self.path)

    @contextlib.contextmanager
    def discarded_on_error(self):
        """`discard` the folder if the block raises (and re-raise)."""
        try:
            yield
        except BaseException:
            self.discard()
            raise

    def record_eval(self, step: int, tag: str, result) -> dict[str, float]:
        """Log an `EvalResult` to eval.jsonl and its samples to samples/eval-TAG.jsonl."""
        metrics = result.metrics()
        self.append("eval.jsonl", {"step": step, "tag": tag, **metrics})
        self.write_jsonl(f"samples/eval-{tag}.jsonl", result.samples)
        return metrics

    def read_state(self, name: str) -> dict | None:
        """A JSON state file of a resumed run (None for a new run or a missing file)."""
        path = self.path / name
        return read_json(path) if self.resumed and path.is_file() else None

    def drop_rows_after(self, name: str, step: int, tags: tuple[str, ...] = ()) -> None:
        """Keep only the log rows of `name` up to `step` (and none tagged one of `tags`): a
        resumed run writes the steps after its checkpoint again. A torn last line (a write cut
        off by the kill) goes too; any other unreadable line is an error naming it."""
        path = self.path / name
        if not path.is_file():
            return
        lines = path.read_text(encoding="utf-8").split("\n")  # the last item: "" or torn
        rows = []
        for i, line in enumerate(lines[:-1], 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{i}: not a JSON row ({e.msg})") from None
        kept = [r for r in rows if r.get("step", 0) <= step and r.get("tag") not in tags]
        if len(kept) < len(rows) or lines[-1]:
            self.write_jsonl(name, kept)

    def rewind_logs(self, step: int | None, names: tuple[str, ...]) -> int | None:
        """For a resumed run, drop the rows of `names` after `step` (its checkpoint's; None:
        killed before its first one, so all of them) and any `final` row: they are written
        again. Returns the step the logs now end at (-1: none), the `Tracker`'s `resume_step`;
        None for a new run."""
        if not self.resumed:
            return None
        step = -1 if step is None else step
        for name in names:
            self.drop_rows_after(name, step, tags=("final",))
        return step

    def append(self, name: str, record: dict) -> None:
        self.append_many(name, [record])

    def append_many(self, name: str, records: list[dict]) -> None:
        with open(self.path / name, "a") as f:
            f.writelines(to_json(r) + "\n" for r in records)

    def write_json(self, name: str, obj) -> None:
        atomic_write_text(self.path / name, to_json(obj, indent=2) + "\n")

    def write_jsonl(self, name: str, records: list[dict]) -> None:
        atomic_write_text(self.path / name, "".join(to_json(r) + "\n" for r in records))


STAGE_NAMES = {ZeroConfig: "zero` or `r1kit rl", SFTConfig: "sft", SampleConfig: "sample",
               DistillConfig: "distill", PipelineConfig: "pipeline", EvalStageConfig: "eval"}


def _stage_of(saved: Path):
    """The config class of the stage that wrote the run config `saved`, told by its sections;
    None when they are no stage's (a section misspelt, a file that does not parse)."""
    try:
        tree = yaml.safe_load(saved.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        return None
    sections = set(tree) if isinstance(tree, dict) else None
    return next((c for c in STAGE_NAMES if {f.name for f in dataclasses.fields(c)} == sections),
                None)


# The keys a resumed run cannot take a change of: its checkpoint's weights and optimizer state
# were made with them (model, LoRA, FSDP or DDP; the saved optimizer keeps its own lr and weight
# decay, so a new one would be ignored), or its data order and random streams (the seed, the
# training data and its batching; a sampling run's batches, model and settings). The rest, e.g.
# rl.steps and sft.epochs (to extend a run), eval.*, checkpoint_every, logging and the loss and
# sampling settings of RL, apply from the checkpoint on. Paths (`PATHS`) may change, with a
# warning: a moved folder or a relative path resumed from elsewhere must be pointed at again.
_TRAINED = ("model.dtype", "model.master_weights", "lora.r", "lora.alpha", "lora.target_modules",
            "dist.*", "run.seed")
FIXED_ON_RESUME = {
    ZeroConfig: (*_TRAINED, "data.split", "data.train_size", "data.prompt_key",
                 "data.answer_key", "data.template", "rl.lr", "rl.weight_decay"),
    SFTConfig: (*_TRAINED, "data.template", "data.max_len", "sft.batch_size",
                "sft.lr", "sft.weight_decay"),
    SampleConfig: ("run.seed", "model.*", "data.*", "rollout.*", "sample.*"),
}
PATHS = ("model.path", "data.source", "data.train_file", "data.eval_source")
EVAL_SETTINGS = ("eval.k", "eval.temperature", "eval.top_p", "eval.num_problems",
                 "eval.max_new_tokens")
"""What the evaluation before training (and every one since) was made with: the run's
before/after comparison and its curve need the same on resume."""


def config_changes(recorded: dict, cfg, prefix: str = "") -> dict[str, tuple]:
    """{key: (recorded value, value in `cfg`)} for every key whose value differs; keys that
    `recorded` (written by an earlier r1kit) lacks are not compared."""
    changes = {}
    for f in dataclasses.fields(cfg):
        if not isinstance(recorded, dict) or f.name not in recorded:
            continue
        old, new = recorded[f.name], getattr(cfg, f.name)
        if dataclasses.is_dataclass(new):
            changes.update(config_changes(old, new, f"{prefix}{f.name}."))
        elif old != new:
            changes[prefix + f.name] = (old, new)
    return changes


def check_resume_config(cfg, recorded: dict | None, where: Path, saved: Path) -> None:
    """Compare `cfg`, read from `saved` (a run's config.yaml, which may have been edited since,
    e.g. to train longer), with `recorded`, the config `where` (the checkpoint or progress file
    resumed from) was made with: log what changed; a change `FIXED_ON_RESUME` lists is an error."""
    if recorded is None:
        log.warning(f"{where} does not record the config it was made with (an earlier r1kit "
                    f"wrote it): changes to {saved} since cannot be checked")
        return
    changes = config_changes(recorded, cfg)
    shown = lambda keys: ", ".join(f"{k} {changes[k][0]!r} -> {changes[k][1]!r}" for k in keys)
    fixed = [k for k in changes if k not in PATHS and any(
        fnmatch.fnmatchcase(k, pattern) for pattern in FIXED_ON_RESUME.get(type(cfg), ()))]
    if isinstance(cfg, ZeroConfig) and changes.get("rl.beta", (None,))[0] == 0 and not cfg.lora.r:
        fixed.append("rl.beta")  # the checkpoint holds no reference model to take the KL to
    if fixed:
        them = "it" if len(fixed) == 1 else "them"
        raise UserError(f"{saved}: {shown(fixed)} since {where} was written; a resumed run cannot "
                        f"change {them}: what it resumes (weights, optimizer state, data order, "
                        f"sampled batches, random streams) was made with {them}; put {them} back, "
                        "or start a new run")
    evaluated = (recorded.get("eval") or {}).get("num_problems") != 0  # (SFT may evaluate none)
    evals = [k for k in changes if k in EVAL_SETTINGS and isinstance(cfg, (ZeroConfig, SFTConfig))
             and (evaluated or k == "eval.num_problems")]
    if evals:
        them = "it" if len(evals) == 1 else "them"
        raise UserError(f"{saved}: {shown(evals)} since {where} was written; a resumed run cannot "
                        f"change {them}: the evaluations so far, the one before training "
                        f"included, were made with {them}, and the run compares its final model "
                        f"with them; put {them} back (evaluate with other settings with "
                        "`r1kit eval`)")
    if changes:
        log.warning(f"{saved}: changed since {where}: {shown(changes)}")
    moved = [k for k in changes if k in PATHS]
    if moved:
        log.warning(f"{saved}: {', '.join(moved)} must name the same model or data as before "
                    "(a moved folder, a path written another way); other ones would resume the "
                    "run on other weights or problems")


def _new_folder(path: Path, taken_ok: bool) -> FolderLock | None:
    """Make and lock the folder of a new run at `path`; None if it exists and `taken_ok` is not
    set (a name made from the time: try the next). A folder of the name the user chose may
    exist if a new run may take it (`_is_leftover`); it is locked before it is checked, so that
    two starts cannot both take it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir()  # atomic: of two starts, one makes it
    except FileExistsError:
        if not taken_ok:
            return None
        if not path.is_dir():
            raise UserError(f"{path} is a file, not a run folder; set run.name") from None
        taken = f"{path} already exists; resume it with --resume {path} or set run.name"
        if (path / "config.yaml").exists():
            raise UserError(taken) from None
        lock = lock_folder(path)
        if (path / "config.yaml").exists():  # made meanwhile by another start
            lock.release()
            raise UserError(taken) from None
        if not _is_leftover(path):  # its old logs would be appended to
            lock.release()
            raise UserError(f"{path} already exists and holds files that are not a run's (no "
                            "config.yaml): a new run would add to them; choose another run.name, "
                            "or empty it") from None
        clean_temporaries(path)  # a half-written config.yaml
        return lock
    except OSError as e:
        raise UserError(f"{path}: cannot make the run folder ({e.strerror})") from None
    return lock_folder(path)


def _load_source(source: str, split: str, data: DataConfig) -> list[Problem]:
    if source.startswith("hf:"):
        return load_hf_dataset(source[3:], split, data.prompt_key, data.answer_key)
    if source.endswith(".jsonl") or (Path(source).is_file() and not file_format(source)):
        return load_jsonl(source, data.prompt_key, data.answer_key)  # errors name the line
    if Path(source).is_file():  # a JSON array, CSV or parquet file (or compressed)
        return load_data_file(source, data.prompt_key, data.answer_key)
    raise UserError(
        f"data source '{source}': use 'builtin', 'builtin:carry', 'builtin:code', a .jsonl, .json, "
        ".csv or .parquet file, or hf:NAME_OR_PATH"
    )


def load_problems(data: DataConfig, num_eval: int) -> tuple[list[Problem], list[Problem]]:
    """(train, held-out) problems. `data.eval_source`, when given, is the held-out set whatever the
    training source; otherwise the builtin tasks have their own held-out split, and from a file a
    fixed 1-in-10 hash bucket of its ids is held out, so the two never overlap."""
    train, heldout = _train_and_heldout(data, num_eval)
    if data.eval_source:
        if data.eval_source.startswith(("builtin", "reasoning_gym:")):  # a builtin held-out split
            other = dataclasses.replace(data, source=data.eval_source, eval_source="")
            heldout = _train_and_heldout(other, num_eval)[1]
        else:
            heldout = _load_source(data.eval_source, data.eval_split, data)
    return train, heldout[:num_eval]


def _train_and_heldout(data: DataConfig, num_eval: int) -> tuple[list[Problem], list[Problem]]:
    if data.source in ("builtin", "builtin:carry"):  # the carry tier: R1-SPEC §6, reflection
        carry = data.source == "builtin:carry"
        train = sample_problems(data.train_size, "train", seed=0, carry_only=carry)
        return train, sample_problems(num_eval, "heldout", seed=0, carry_only=carry)
    if data.source.startswith("reasoning_gym:"):  # procedural tasks scored by their own scorer
        from r1kit.tasks import reasoning_gym

        return (reasoning_gym.load(data.source, data.train_size, "train"),
                reasoning_gym.load(data.source, num_eval, "heldout"))  # eval_source: above
    if data.source == "builtin:code":  # one-line Python functions, graded by tests in the sandbox
        from r1kit.tasks import code

        return (code.sample_problems(data.train_size, "train", seed=0),
                code.sample_problems(num_eval, "heldout", seed=0))
    problems = _load_source(data.source, data.split, data)
    if data.eval_source:  # all of the file is for training
        return problems, []
    train = [p for p in problems if not is_heldout(p.id)]
    heldout = [p for p in problems if is_heldout(p.id)]
    if not train or not heldout:
        raise UserError(
            f"data source '{data.source}' has {len(problems)} problems: too few to hold out 1 in "
            "10 for evaluation; give data.eval_source"
        )
    return train, heldout
