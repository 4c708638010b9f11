"""Where training metrics go besides `metrics.jsonl`: TensorBoard and Weights & Biases.

`run.report_to` lists the writers: `tensorboard` (event files in the run folder's `tb/`, the
default) and `wandb` (the optional extra `r1kit[wandb]`). `metrics.jsonl` stays the record the
report and resume read; these writers are views of it, so a writer that fails to start stops the
run before training (a clear error), and nothing here touches the JSONL logs.

W&B without an API key (no WANDB_API_KEY, no ~/.netrc entry) runs in offline mode, so a run never
stops to ask for a login: `WANDB_MODE=offline` is set and the log says how to sync it later.
An explicit WANDB_MODE (online, offline, disabled) is left as the user set it.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import math
import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

from r1kit.errors import UserError

log = logging.getLogger("r1kit")

WRITERS = ("tensorboard", "wandb")


def check_report_to(report_to: list) -> list[str]:
    """The writers named in `run.report_to`, checked; 'none' or [] = none."""
    names = [str(n).strip().lower() for n in report_to if str(n).strip().lower() != "none"]
    for name in names:
        if name not in WRITERS:
            raise UserError(f"run.report_to: unknown writer '{name}'; known: "
                            f"{', '.join(WRITERS)} (or none)")
    if "wandb" in names:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise UserError("run.report_to: wandb is not installed; pip install 'r1kit[wandb]' "
                            "or leave wandb out of run.report_to") from None
    return list(dict.fromkeys(names))


class Tracker:
    """Sends flat `{name: number}` metrics at a step to every writer of `run.report_to`.

    `resume_step`: a resumed run re-logs the steps after its last checkpoint, so TensorBoard drops
    the events it had at or after `resume_step + 1` (`purge_step`), and W&B continues the same run.
    """

    def __init__(self, path: Path, report_to: list, *, config: dict | None = None,
                 resume_step: int | None = None):
        self.writers = check_report_to(report_to)
        self.path = Path(path)
        self._tb = self._wandb = None
        if "tensorboard" in self.writers:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(
                str(self.path / "tb"), flush_secs=30,
                purge_step=None if resume_step is None else resume_step + 1,
            )
        if "wandb" in self.writers:
            self._wandb = _start_wandb(self.path, config or {}, resumed=resume_step is not None)
        # A killed run (Ctrl-C, an error) still flushes what it logged, and W&B marks it failed.
        atexit.register(self.close, 1)

    def log(self, metrics: dict, step: int) -> None:
        """Log every finite-or-NaN number of `metrics` at `step` (strings and bools skipped)."""
        values = {k: float(v) for k, v in metrics.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for k, v in values.items():
                if not math.isinf(v):
                    self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(values, step=step)

    def close(self, exit_code: int = 0) -> None:
        """Flush and close the writers; the stage calls it when it finishes (exit code 0), and
        the process's exit does when it did not."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish(exit_code=exit_code)
            self._wandb = None
        atexit.unregister(self.close)


def _start_wandb(path: Path, config: dict, resumed: bool):
    import wandb

    if not os.environ.get("WANDB_MODE") and not wandb_key_configured():
        os.environ["WANDB_MODE"] = "offline"
        log.warning(f"wandb: no API key configured (WANDB_API_KEY or `wandb login`), so logging "
                    f"offline to {path / 'wandb'}; upload later with `wandb sync {path / 'wandb'}/offline-run-*`")
    # A pipeline's stages are separate W&B runs, grouped under the pipeline folder's name.
    group = path.parent.name if (path.parent / "manifest.json").is_file() else None
    # The same id for the same run folder, so a resumed run continues its W&B run.
    run_id = f"{path.name}-{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"
    run_id = "".join(c if c.isalnum() or c in "-_" else "-" for c in run_id)
    return wandb.init(
        project=os.environ.get("WANDB_PROJECT", "r1kit"), name=path.name, group=group,
        id=run_id, resume="allow" if resumed else None, dir=str(path), config=config,
        reinit="finish_previous",
    )


def wandb_key_configured() -> bool:
    """True when W&B would find an API key: WANDB_API_KEY, or a netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""
    netrc_file = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return netrc_file.is_file() and netrc.netrc(str(netrc_file)).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False
