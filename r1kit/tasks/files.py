"""Problems from files: JSONL, or a Hugging Face dataset (a local `save_to_disk` folder, a folder
of data files, or a hub name).

Each record has a string `prompt` and an `answer` (a string, or a number that becomes a string),
an optional `id`, and anything else, which goes to `Problem.meta` for rewards to read. The keys
for prompt and answer are configurable (`problem`/`solution` in many datasets). Every mistake in
the data is a `UserError` naming the file, line (or row) and key.

A coding problem carries `tests` (a non-empty list of `assert` statements, run against the
program in the sandbox by the `code` reward; in a CSV, a cell holding that list as JSON) instead
of an answer, and optionally `entry_point` (the function name) and `language` (only "python");
they go to `Problem.meta`, checked on load: each test must compile as the sandbox runs it, and
its expected value fit the values the sandbox compares (`r1kit.sandbox.MAX_VALUE_CHARS`).
`language` is the programming language, never the natural language of the reasoning: that is
the optional `target_language` of any problem (an ISO 639-1 code the language reward can label
words with, `en`, `ru`, `zh`, `ko`, `ja`, or with `language:lingua` also `fr`, `de`, `es`, `it`, `pt`; else
the prompt's language, `r1kit.language`), checked on load too: case and a region or script
subtag are ignored (`EN`, `en-US`, `zh-Hans`), and an empty one is no target.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import math
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from r1kit.errors import UserError
from r1kit.language import TARGET_KEY, TARGET_LANGUAGES, check_language, normalize_target
from r1kit.tasks.base import Problem


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (split on "\n" only: JSON may hold U+2028 and friends),
    or a `UserError` naming the file."""
    name = str(path)
    if not path.exists():
        raise UserError(f"{name}: no such file")
    if path.is_dir():
        raise UserError(f"{name}: is a directory, not a JSONL file")
    try:
        return path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise UserError(f"{name}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise UserError(f"{name}: cannot read ({e.strerror})") from None


def jsonl_records(path: Path, lines: list[str] | None = None) -> Iterator[tuple[str, int, Any]]:
    """`(where, lineno, record)` for each non-blank line of a JSONL file (or of its `lines`,
    already read), `where` being `FILE:LINE`; invalid JSON is a `UserError` naming it."""
    for lineno, line in enumerate(read_lines(path) if lines is None else lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: invalid JSON ({e.msg})") from None
        yield where, lineno, record


def load_jsonl(
    path: str | Path, prompt_key: str = "prompt", answer_key: str = "answer"
) -> list[Problem]:
    """One problem per line of a JSONL file; whitespace-only lines are skipped.

    Ids default to `STEM-LINENO` (`problems-3` for line 3 of `problems.jsonl`).
    """
    path = Path(path)
    records = ((where, f"{path.stem}-{lineno}", record)
               for where, lineno, record in jsonl_records(path))
    return _to_problems(records, str(path), prompt_key, answer_key)


FILE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
COMPRESSIONS = {".gz": gzip, ".bz2": bz2, ".xz": lzma}


def file_format(path: str | Path) -> str | None:
    """The format of a data file (`json`, `csv`, `parquet`; the text ones compressed too), or None.

    >>> file_format("a.json"), file_format("b.csv.gz"), file_format("c.txt")
    ('json', 'csv', None)
    """
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    return FILE_FORMATS.get(suffixes[-1]) if suffixes else None


def load_data_file(path: str | Path, prompt_key: str = "prompt",
                   answer_key: str = "answer") -> list[Problem]:
    """Problems from a `.json` array (or JSON lines), a `.csv` file (every cell text, as
    written: `007` stays `007`; a `tests` cell holds a JSON list) or, through `datasets`, a
    `.parquet` file; the text formats also
    gzip, bz2 or xz compressed. JSON numbers keep their exact value. Errors name the file and
    the line or item. Ids default to `STEM-N` (N: the line, or the item from 0)."""
    path = Path(path)
    fmt = file_format(path)
    if fmt == "parquet":
        return load_hf_dataset(path, "train", prompt_key, answer_key)
    opener = COMPRESSIONS.get(path.suffix.lower())
    try:
        with (opener.open(path, "rt", encoding="utf-8") if opener else
              open(path, encoding="utf-8")) as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    stem = path.name.split(".")[0]
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            records = [(f"{path}:{reader.line_num}", f"{stem}-{reader.line_num}", row)
                       for row in reader]
        except csv.Error as e:
            raise UserError(f"{path}:{reader.line_num}: invalid CSV ({e})") from None
        for where, _, row in records:
            if None in row or None in row.values():  # more or fewer cells than the header
                raise UserError(f"{where}: {len(reader.fieldnames or [])} columns in the header, "
                                "a different number on this line")
            for key in ("tests", "entry_point", "language"):  # optional: an empty cell is none
                if key in row and not row[key].strip():  # (tests: a math row of a mixed table)
                    del row[key]
            if "tests" in row:  # cells are text: the list of tests is written as JSON
                try:
                    row["tests"] = json.loads(row["tests"])
                except json.JSONDecodeError as e:
                    raise UserError(f"{where}: field 'tests' must be a JSON list of assert "
                                    f"statements in a CSV cell ({e.msg})") from None
    elif text.lstrip().startswith("["):  # a JSON array of objects
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        records = [(f"{path} item {i}", f"{stem}-{i}", item) for i, item in enumerate(items)]
    else:  # JSON lines
        records = [(where, f"{stem}-{lineno}", record)
                   for where, lineno, record in jsonl_records(path, text.split("\n"))]
    return _to_problems(records, str(path), prompt_key, answer_key)


def load_hf_dataset(
    name_or_path: str | Path,
    split: str = "train",
    prompt_key: str = "prompt",
    answer_key: str = "answer",
) -> list[Problem]:
    """The problems of one split of a Hugging Face dataset.

    A folder written by `save_to_disk` is read with `datasets.load_from_disk` (a saved single
    `Dataset` has no splits, so `split` is ignored for it); one data file (`file_format`) with
    its format's loader (`load_data_file` reads the text formats exactly, without datasets' type
    inference); anything else (a folder of data files, a hub name) goes to
    `datasets.load_dataset`, with a configuration after a colon where the dataset has several
    (`openai/gsm8k:main`). Ids default to `NAME-ROW` (row from 0).
    """
    import datasets  # heavy; only this loader needs it

    name = str(name_or_path)
    path = Path(name_or_path)
    if path.is_file():  # one data file: datasets' loader for its format
        try:
            data = datasets.load_dataset(file_format(path), data_files=name, split="train")
        except Exception as e:  # noqa: BLE001 -- datasets raises many types for a bad file
            raise UserError(f"{name}: cannot read it as {file_format(path)} ({e})") from None
    elif path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        data = datasets.load_from_disk(name)
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise UserError(f"{name}: no split {split!r}; splits: {', '.join(data)}")
            data = data[split]
    else:
        config = ""
        before, _, after = name.rpartition(":")  # NAME:CONFIG (no configuration has a /)
        if not path.exists() and before and after and "/" not in after:
            name, config = before, after
        try:
            data = datasets.load_dataset(name, config or None, split=split)
        except ValueError as e:
            if "config name is missing" in str(e).lower():  # gsm8k: main or socratic
                raise UserError(f"{name}: name one of its configurations after a colon, "
                                f"hf:{name}:CONFIG ({e})") from None
            if "split" in str(e).lower():  # datasets' message lists the splits there are
                raise UserError(f"{name}: no split {split!r} ({e})") from None
            raise UserError(f"{name}: cannot load dataset ({e})") from None
        except FileNotFoundError as e:
            raise UserError(f"{name}: no such dataset or folder ({e})") from None
        except ConnectionError as e:  # a hub name, offline or unreachable
            raise UserError(f"{name}: cannot reach the Hugging Face Hub for it ({e})") from None

    columns = list(data.column_names)
    for key in (prompt_key, answer_key):
        if key not in columns and not (key == answer_key and "tests" in columns):
            raise UserError(f"{name}: no column {key!r}; columns: {', '.join(columns)}")
    stem = path.name or name
    records = ((f"{name} row {i}", f"{stem}-{i}", row) for i, row in enumerate(data))
    return _to_problems(records, name, prompt_key, answer_key)


def _to_problems(
    records: Iterable[tuple[str, str, Any]], name: str, prompt_key: str, answer_key: str
) -> list[Problem]:
    """Validate `(where, default_id, record)` triples into problems; ids must be unique."""
    problems: list[Problem] = []
    first_seen: dict[str, str] = {}
    for where, default_id, record in records:
        if not isinstance(record, Mapping):
            raise UserError(f"{where}: expected a JSON object, got {_type_name(record)}")
        # a mixed table (parquet, a dataset, JSON with nulls): a math row's tests, entry_point
        # and language are null, a coding row's answer is
        record = {k: v for k, v in record.items() if not (
            v is None and k in ("tests", "entry_point", "language"))}
        has_tests = "tests" in record  # a coding problem: graded by its tests, no answer needed
        if has_tests and record.get(answer_key, "") is None:
            record = {k: v for k, v in record.items() if k != answer_key}
        for key in (prompt_key, answer_key):
            if key not in record and not (key == answer_key and has_tests):
                raise UserError(f"{where}: missing field {key!r}")
        prompt = record[prompt_key]
        if not isinstance(prompt, str):
            raise UserError(
                f"{where}: field {prompt_key!r} must be a string, got {_type_name(prompt)}"
            )
        if not prompt.strip():  # a question of nothing: the model would be asked nothing
            raise UserError(f"{where}: field {prompt_key!r} is empty")
        if has_tests:
            _check_code_fields(record, where)
        target = normalize_target(record.get(TARGET_KEY))  # `EN`, `en-US`: en; "": none
        if target not in (None, *TARGET_LANGUAGES):
            # any built-in labeler's (the stage checks those it is configured with, on start)
            check_language(record[TARGET_KEY], TARGET_LANGUAGES, f"{where}: field {TARGET_KEY!r}")
        answer = record.get(answer_key, "")
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            if not math.isfinite(answer):
                raise UserError(f"{where}: field {answer_key!r} is {answer}, not an answer")
            # as written in plain decimals: str(0.00005) is '5e-05', which math_verify reads as e-5
            answer = str(answer) if isinstance(answer, int) else format(Decimal(repr(answer)), "f")
        elif not isinstance(answer, str):
            raise UserError(
                f"{where}: field {answer_key!r} must be a string or a number, "
                f"got {_type_name(answer)}"
            )
        if not answer.strip() and not has_tests:  # nothing to check a completion against
            raise UserError(f"{where}: field {answer_key!r} is empty")
        pid = record.get("id")
        if pid is None:
            pid = default_id
        elif isinstance(pid, int) and not isinstance(pid, bool):
            pid = str(pid)
        elif not isinstance(pid, str):
            raise UserError(f"{where}: field 'id' must be a string, got {_type_name(pid)}")
        if pid in first_seen:
            raise UserError(f"{where}: duplicate id {pid!r} (first at {first_seen[pid]})")
        first_seen[pid] = where
        meta = {k: v for k, v in record.items() if k not in (prompt_key, answer_key, "id")}
        if TARGET_KEY in meta:
            meta[TARGET_KEY] = target
        problems.append(Problem(id=pid, prompt=prompt, answer=answer, meta=meta))
    if not problems:
        raise UserError(f"{name}: file is empty (no problems)")
    return problems


def _check_code_fields(record: Mapping, where: str) -> None:
    """`tests`: a non-empty list of `assert` statements (r1kit/sandbox.py grades them);
    `entry_point`: an identifier; `language`: python (the only one the sandbox runs)."""
    from r1kit.sandbox import parse_test

    tests = record["tests"]
    if not isinstance(tests, list) or not tests:
        got = "an empty list" if tests == [] else _type_name(tests)
        raise UserError(f"{where}: field 'tests' must be a non-empty list of assert statements, "
                        f"got {got}")
    for j, test in enumerate(tests):
        if not isinstance(test, str):
            raise UserError(f"{where}: field 'tests' item {j} must be a string, "
                            f"got {_type_name(test)}")
        try:
            parse_test(test)
        except ValueError as e:
            raise UserError(f"{where}: field 'tests' item {j} ({test[:60]!r}): {e}") from None
    entry = record.get("entry_point")
    if entry is not None and not (isinstance(entry, str) and entry.isidentifier()):
        raise UserError(f"{where}: field 'entry_point' must be a function name, got {entry!r}")
    language = record.get("language", "python")
    if language != "python":
        raise UserError(f"{where}: field 'language' is {language!r}; only 'python' can be run")


def _type_name(value: Any) -> str:
    """JSON-flavoured type names for messages: list, object, bool, null, ..."""
    names = {list: "list", dict: "object", bool: "bool", type(None): "null"}
    return names.get(type(value), type(value).__name__)
