"""An SFT dataset as both a JSONL file and a Hugging Face `datasets` folder (R1-SPEC §3.5).

R1 released its distillation data as plain samples; here the teacher's kept samples are written
twice so either kind of tool can read them: `train.jsonl` (what `r1kit sft` reads) and `hf/`
(`datasets.load_from_disk`), with how they were made (`generation.json`: teacher, sampling
settings, filters) and what the filters did (`counts.json`) beside them and in the dataset's
`info.description`. Both writes are atomic: a killed run leaves the old folder or the new one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from datasets import Dataset, DatasetInfo

from r1kit.checkpoint import atomic_dir
from r1kit.sft import load_sft_jsonl
from r1kit.tasks.files import jsonl_records

COLUMNS = ("prompt", "completion", "id", "answer", "sample", "kind", "original")
DEFAULTS = {"kind": "reasoning"}  # general rows say "general"; a column missing from a row: null


def write_sft_dataset(jsonl: Path, folder: Path, generation: dict, counts: dict) -> int:
    """Copy the rows of `jsonl` into `folder` as train.jsonl and hf/; returns the row count."""
    load_sft_jsonl(jsonl)  # every row must be a valid {prompt, completion} pair
    rows = [record for _, _, record in jsonl_records(Path(jsonl))]
    columns = [c for c in COLUMNS if any(c in r for r in rows)]
    table = ({c: [r.get(c, DEFAULTS.get(c)) for r in rows] for c in columns} if rows
             else {"prompt": [], "completion": []})
    info = DatasetInfo(description=json.dumps({"generation": generation, "counts": counts}))
    with atomic_dir(Path(folder)) as tmp:
        shutil.copyfile(jsonl, tmp / "train.jsonl")
        Dataset.from_dict(table, info=info).save_to_disk(str(tmp / "hf"))
        (tmp / "generation.json").write_text(json.dumps(generation, indent=2) + "\n")
        (tmp / "counts.json").write_text(json.dumps(counts, indent=2) + "\n")
    return len(rows)
