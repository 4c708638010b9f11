"""Writing a results file: the script's own part, then the notes written by hand, which a rerun
keeps. Everything from the `NOTES` line on is the hand-written part (analysis, earlier runs);
what comes before it is replaced by the new run's report."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's r1kit

from r1kit.checkpoint import atomic_write_text

NOTES = "<!-- notes, written by hand: a rerun of the script keeps everything from here on -->"


def write_results(path: str | Path, text: str) -> None:
    """`text`, then the notes `path` already holds (from the `NOTES` line on), written atomically."""
    path = Path(path)
    old = path.read_text() if path.is_file() else ""
    notes = old[old.index(NOTES):] if NOTES in old else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text.rstrip("\n") + "\n" + ("\n" + notes if notes else ""))
