"""Problems from JSONL files and local Hugging Face datasets; every malformed input is a
UserError naming the file and line (or row) and the key."""

from __future__ import annotations

import json

import pytest

from r1kit.errors import UserError
from r1kit.tasks.base import Problem
from r1kit.tasks.files import load_data_file, load_hf_dataset, load_jsonl


def write(tmp_path, text: str, name: str = "problems.jsonl"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_load_jsonl_valid(tmp_path):
    lines = [
        {"prompt": "1+1?", "answer": "2"},
        {"id": "q7", "prompt": "half?", "answer": 0.5, "level": 3, "source": "mine"},
        {"prompt": "6*7?", "answer": 42},
    ]
    text = "\n".join(json.dumps(x, ensure_ascii=False) for x in lines[:2]) + "\n   \n"
    text += json.dumps(lines[2]) + "\n"
    problems = load_jsonl(write(tmp_path, text))
    assert problems == [
        Problem("problems-1", "1+1?", "2", {}),
        Problem("q7", "half?", "0.5", {"level": 3, "source": "mine"}),
        Problem("problems-4", "6*7?", "42", {}),  # line 3 is blank; ids keep the line number
    ]


def test_load_jsonl_custom_keys(tmp_path):
    path = write(tmp_path, '{"problem": "1+1?", "solution": "2", "answer": "ignored"}\n')
    (p,) = load_jsonl(path, prompt_key="problem", answer_key="solution")
    assert (p.prompt, p.answer, p.meta) == ("1+1?", "2", {"answer": "ignored"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '{"prompt": "a", "answer": "1"}\n{"prompt": "b" "answer": "2"}\n',
            r"problems\.jsonl:2: invalid JSON \(Expecting ',' delimiter\)",
        ),
        (
            '{"prompt": "a", "answer": "1"}\n\n{"prompt": "b"}\n',
            r"problems\.jsonl:3: missing field 'answer'",
        ),
        ('{"answer": "1"}\n', r"problems\.jsonl:1: missing field 'prompt'"),
        ('{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer": " "}\n',
         r"problems\.jsonl:2: field 'answer' is empty"),
        ('{"prompt": "a", "answer": "1"}\n{"prompt": "", "answer": "1"}\n',
         r"problems\.jsonl:2: field 'prompt' is empty"),
        ('{"problem": " \\n", "answer": "1"}\n', r"problems\.jsonl:1: field 'problem' is empty"),
        ('{"prompt": "a", "answer": NaN}\n', r"problems\.jsonl:1: field 'answer' is nan"),
        (
            '{"prompt": "a", "answer": "1"}\n{"prompt": ["b"], "answer": "2"}\n',
            r"problems\.jsonl:2: field 'prompt' must be a string, got list",
        ),
        (
            '{"prompt": "a", "answer": {"x": 1}}\n',
            r"problems\.jsonl:1: field 'answer' must be a string or a number, got object",
        ),
        (
            '{"prompt": "a", "answer": true}\n',
            r"problems\.jsonl:1: field 'answer' must be a string or a number, got bool",
        ),
        (
            '{"prompt": "a", "answer": null}\n',
            r"problems\.jsonl:1: field 'answer' must be a string or a number, got null",
        ),
        ('["a", "1"]\n', r"problems\.jsonl:1: expected a JSON object, got list"),
        (
            '{"prompt": "a", "answer": "1", "id": [1]}\n',
            r"problems\.jsonl:1: field 'id' must be a string, got list",
        ),
        (
            '{"id": "x", "prompt": "a", "answer": "1"}\n{"id": "x", "prompt": "b", "answer": "2"}\n',
            r"problems\.jsonl:2: duplicate id 'x' \(first at .*problems\.jsonl:1\)",
        ),
        ("", r"problems\.jsonl: file is empty \(no problems\)"),
        ("\n  \n\t\n", r"problems\.jsonl: file is empty \(no problems\)"),
    ],
)
def test_load_jsonl_errors_name_file_and_line(tmp_path, text, message):
    key = "problem" if '"problem"' in text else "prompt"
    with pytest.raises(UserError, match=message):
        load_jsonl(write(tmp_path, text), prompt_key=key)


def test_load_jsonl_missing_file_and_directory(tmp_path):
    with pytest.raises(UserError, match=r"nope\.jsonl: no such file"):
        load_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="is a directory"):
        load_jsonl(tmp_path)


def test_load_jsonl_not_utf8(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_bytes(b'{"prompt": "\xff", "answer": "1"}\n')
    with pytest.raises(UserError, match=r"problems\.jsonl: not UTF-8"):
        load_jsonl(path)


@pytest.fixture
def saved_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_dict(
        {"problem": ["1+1?", "2+2?"], "solution": ["2", "4"], "level": [1, 2]}
    )
    folder = tmp_path / "mini"
    datasets.DatasetDict({"train": data, "test": data.select([1])}).save_to_disk(str(folder))
    single = tmp_path / "single"
    data.save_to_disk(str(single))
    return folder, single


def test_load_hf_dataset_from_disk(saved_dataset):
    folder, single = saved_dataset
    problems = load_hf_dataset(folder, prompt_key="problem", answer_key="solution")
    assert problems == [
        Problem("mini-0", "1+1?", "2", {"level": 1}),
        Problem("mini-1", "2+2?", "4", {"level": 2}),
    ]
    test = load_hf_dataset(folder, split="test", prompt_key="problem", answer_key="solution")
    assert [p.answer for p in test] == ["4"]
    assert len(load_hf_dataset(single, prompt_key="problem", answer_key="solution")) == 2


def test_load_hf_dataset_errors(saved_dataset):
    folder, _ = saved_dataset
    with pytest.raises(UserError, match=r"mini: no column 'prompt'; columns: problem, solution"):
        load_hf_dataset(folder, answer_key="solution")
    with pytest.raises(UserError, match=r"mini: no split 'validation'; splits: train, test"):
        load_hf_dataset(folder, split="validation", prompt_key="problem", answer_key="solution")


def test_load_hf_dataset_from_data_files(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"prompt": "1+1?", "answer": 2}\n', encoding="utf-8")
    (p,) = load_hf_dataset(folder)
    assert (p.prompt, p.answer) == ("1+1?", "2")
    with pytest.raises(UserError, match=r"no split 'test'.*train"):
        load_hf_dataset(folder, split="test")
    with pytest.raises(UserError, match=r"missing: no such dataset"):
        load_hf_dataset(tmp_path / "missing")


def test_eval_source_is_the_held_out_set_whatever_the_training_source(tmp_path):
    from r1kit.config import DataConfig
    from r1kit.runs import load_problems

    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({"prompt": f"Compute {a}+1", "answer": str(a + 1)}) + "\n"
                            for a in range(5)))
    for source in ("builtin", "builtin:carry", "builtin:code"):
        train, heldout = load_problems(
            DataConfig(source=source, eval_source=str(held), train_size=8), 3)
        assert len(train) == 8 and [p.answer for p in heldout] == ["1", "2", "3"], source
    # a file trains on all of it; a builtin eval source gives that task's held-out split
    train, heldout = load_problems(DataConfig(source=str(held), eval_source="builtin:carry"), 4)
    assert len(train) == 5 and len(heldout) == 4 and heldout[0].prompt.startswith("Compute")
    with pytest.raises(UserError, match="nope.jsonl"):
        load_problems(DataConfig(source="builtin", eval_source=str(tmp_path / "nope.jsonl")), 3)


def test_json_csv_and_compressed_files_load_by_their_format(tmp_path, monkeypatch):
    import gzip

    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    from r1kit.config import DataConfig
    from r1kit.runs import load_problems

    rows = [{"prompt": "tiny?", "answer": 0.00005}, {"prompt": "big?", "answer": 1e20}]
    files = {"array.json": json.dumps(rows, indent=2),
             "table.csv": "prompt,answer\ntiny?,0.00005\nbig?,100000000000000000000\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with gzip.open(tmp_path / "rows.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    for name in (*files, "rows.jsonl.gz"):
        path = str(tmp_path / name)
        train, heldout = load_problems(DataConfig(source=path, eval_source=path), 10)
        # floats as written in plain decimals, not 5e-05 (which math_verify reads as e - 5)
        assert [(p.prompt, p.answer) for p in train] == [
            ("tiny?", "0.00005"), ("big?", "100000000000000000000")], name
        assert heldout == train


def test_csv_cells_stay_as_written_and_bad_files_name_the_place(tmp_path):
    from r1kit.tasks.files import load_data_file

    table = tmp_path / "t.csv"
    table.write_text('id,prompt,answer\n007,"a, b?",010\n1,"two\nlines",NA\n')
    rows = load_data_file(table)
    assert [(p.id, p.prompt, p.answer) for p in rows] == [
        ("007", "a, b?", "010"), ("1", "two\nlines", "NA")]
    (tmp_path / "short.csv").write_text("prompt,answer\n1+1?\n")
    with pytest.raises(UserError, match=r"short.csv:2: 2 columns in the header"):
        load_data_file(tmp_path / "short.csv")
    (tmp_path / "bad.json").write_text('[{"prompt": "1+1?", "answer": "2"},\n {"prompt": }]')
    with pytest.raises(UserError, match=r"bad.json:2: invalid JSON"):
        load_data_file(tmp_path / "bad.json")
    (tmp_path / "item.json").write_text('[{"prompt": "1+1?", "answer": "2"}, {"prompt": "x"}]')
    with pytest.raises(UserError, match=r"item.json item 1"):
        load_data_file(tmp_path / "item.json")
    (tmp_path / "latin.csv").write_bytes("prompt,answer\ncaf\xe9?,1\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin.csv: not UTF-8"):
        load_data_file(tmp_path / "latin.csv")


def test_a_mixed_file_of_math_and_code_rows(tmp_path):
    # a table holds both kinds: a math row leaves the code cells empty (CSV) or null (JSON,
    # parquet, datasets), a code row leaves the answer empty or null, and its optional
    # entry_point may be empty too
    table = tmp_path / "mixed.csv"
    table.write_text('prompt,answer,tests,entry_point\n1+1?,2,,\n'
                     '"double(n)",,"[""assert double(2) == 4""]",\n')
    rows = [{"prompt": "1+1?", "answer": "2", "tests": None, "entry_point": None},
            {"prompt": "double(n)", "answer": None, "tests": ["assert double(2) == 4"],
             "entry_point": None}]
    lines = tmp_path / "mixed.jsonl"
    lines.write_text("\n".join(json.dumps(r) for r in rows))
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "mixed.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    for path in (table, lines, parquet):
        math_row, code_row = load_data_file(path)
        assert math_row.answer == "2" and set(math_row.meta) <= {"id"}, path
        assert code_row.meta["tests"] == ["assert double(2) == 4"] and code_row.answer == ""
        assert "entry_point" not in code_row.meta


def test_a_hub_dataset_takes_its_configuration_after_a_colon(monkeypatch):
    """openai/gsm8k has two configurations (main, socratic): `hf:openai/gsm8k:main`."""
    import datasets

    asked = []

    def load_dataset(name, config=None, split=None):
        asked.append((name, config, split))
        if config is None:
            raise ValueError("Config name is missing. Please pick one among the available "
                             "configs: ['main', 'socratic']")
        return datasets.Dataset.from_list([{"question": "1+1?", "answer": "#### 2"}])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    (p,) = load_hf_dataset("openai/gsm8k:main", prompt_key="question")
    assert asked == [("openai/gsm8k", "main", "train")] and p.prompt == "1+1?"
    with pytest.raises(UserError, match=r"openai/gsm8k: name one of its configurations after a "
                                        r"colon, hf:openai/gsm8k:CONFIG"):
        load_hf_dataset("openai/gsm8k", prompt_key="question")
    # a folder whose path has a colon: the configuration is after the last one, if any
    asked.clear()
    load_hf_dataset("/data/a:b/ds:main", prompt_key="question")
    with pytest.raises(UserError, match="name one of its configurations"):
        load_hf_dataset("/data/a:b/ds", prompt_key="question")
    assert asked == [("/data/a:b/ds", "main", "train"), ("/data/a:b/ds", None, "train")]
