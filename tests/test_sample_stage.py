"""`r1kit sample`: rejection sampling / cold-start data end to end on the tiny base model, exact
counts with a scripted sampler, the cold-start rewrite, and resume after an interruption."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from r1kit.cli import UNUSED
from r1kit.cli import main as cli
from r1kit.config import SampleConfig, describe
from r1kit.rewards import get_reward
from r1kit.sft import load_sft_jsonl
from r1kit.stages import sample as sample_stage
from r1kit.tasks.arithmetic import is_heldout
from r1kit.tasks.base import Problem


def _sets(tmp_path: Path, model: str, name: str, *extra: str) -> list[str]:
    sets = [f"model.path={model}", f"run.out_dir={tmp_path}", f"run.name={name}",
            "data.train_size=200", "sample.num_prompts=6", "sample.samples_per_prompt=2",
            "sample.batch_size=2", "rollout.max_new_tokens=12", *extra]
    return [arg for s in sets for arg in ("--set", s)]


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "sft.jsonl").read_text().splitlines()]


def _balanced(counts: dict) -> bool:
    return counts["generated"] == counts["kept"] + sum(counts["rejected"].values())


def test_help_documents_every_key(capsys):
    with pytest.raises(SystemExit) as e:
        cli(["sample", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for key, _, help in describe(SampleConfig):
        assert (key in out) != (key in UNUSED["sample"]), key  # the keys it reads, only
        assert help, f"{key} has no help string"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sample.filters=[correct, readable]", "unknown filter 'readable'"),
        ("sample.cold_start_format=true", "needs the 'correct' filter"),
        ("sample.samples_per_prompt=0", "'sample.samples_per_prompt' must be at least 1, got 0"),
        ("sample.language_tolerance=2", "'sample.language_tolerance' must be at most 1, got 2"),
    ],
)
def test_bad_settings_fail_before_a_run_folder_is_made(tmp_path, capsys, override, message):
    code = cli(["sample", *_sets(tmp_path, "builtin", "bad", "sample.filters=[not_truncated]",
                                 override)])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_sample_run_on_the_tiny_base(tiny_base, tmp_path):
    # a permissive filter so the toy model keeps rows
    assert cli(["sample", *_sets(tmp_path, tiny_base, "loose", "sample.filters=[]",
                                 "sample.max_per_prompt=0")]) == 0
    run = tmp_path / "loose"
    counts = json.loads((run / "counts.json").read_text())
    assert counts["prompts"] == 6 and counts["generated"] == 12 and _balanced(counts)
    assert counts["kept"] >= 6 and counts["rejected"] == {"duplicate": counts["generated"] -
                                                          counts["kept"], "max_per_prompt": 0}
    assert sum(counts["passing_per_prompt"].values()) == 6
    rows = _rows(run)
    assert len(rows) == counts["kept"]
    assert len(load_sft_jsonl(run / "sft.jsonl")) == len(rows)  # what `r1kit sft` reads
    for row in rows:
        assert re.fullmatch(r"Compute \d+([+-]\d)+", row["prompt"])  # the bare question
        assert not is_heldout(row["id"])  # only train problems are sampled
    gen = json.loads((run / "generation.json").read_text())
    assert gen["model"] == tiny_base and gen["samples_per_prompt"] == 2
    assert gen["template"] == "r1_zero" and gen["temperature"] == 1.0 and gen["num_prompts"] == 6

    # the default filters: the counts still add up, and each kept row passes them
    assert cli(["sample", *_sets(tmp_path, tiny_base, "strict")]) == 0
    counts = json.loads((tmp_path / "strict" / "counts.json").read_text())
    assert counts["generated"] == 12 and _balanced(counts)
    assert list(counts["rejected"]) == ["not_truncated", "correct", "well_formed",
                                        "single_language", "no_repetition", "short_paragraphs",
                                        "duplicate", "max_per_prompt"]
    for row in _rows(tmp_path / "strict"):
        p = Problem(row["id"], row["prompt"], row["answer"])
        assert get_reward("accuracy")(row["completion"], p) == 1.0


def _scripted_sample(model, tokenizer, prompts, group_size, **kw):
    """Nine completions per prompt, one for each way to be kept or rejected (see below)."""
    assert group_size == 9
    texts, truncated = [], []
    for prompt in prompts:
        expr = re.search(r"User: Compute ([0-9+-]+)\.", prompt).group(1)
        ans = sum(int(t) for t in re.findall(r"[+-]?\d+", expr))
        good = f"<think> {expr}={ans} </think> <answer> {ans} </answer>"
        texts += [
            good,  # kept
            good,  # duplicate
            f"<think> {expr}",  # truncated
            f"<think> {expr}={ans + 1} </think> <answer> {ans + 1} </answer>",  # wrong
            f"The answer is <answer> {ans} </answer>",  # not well formed
            f"<think> {expr} равно {ans} </think> <answer> {ans} </answer>",  # mixed language
            "<think> " + f"{expr}={ans}, " * 7 + f"</think> <answer> {ans} </answer>",  # a loop
            f"<think> so {expr} is {ans} </think> <answer> {ans} </answer>",  # kept (second)
            f"<think> {ans} </think> <answer> {ans} </answer>",  # over max_per_prompt
        ]
        truncated += [False, False, True, False, False, False, False, False, False]
    return SimpleNamespace(texts=texts, truncated=truncated, num_tokens=[len(t) for t in texts])


@pytest.mark.parametrize("cold_start", [False, True])
def test_exact_counts_and_cold_start_with_a_scripted_sampler(tiny_base, tmp_path, monkeypatch,
                                                            cold_start):
    monkeypatch.setattr(sample_stage, "sample", _scripted_sample)
    name = f"scripted-{cold_start}"
    assert cli(["sample", *_sets(tmp_path, tiny_base, name, "sample.samples_per_prompt=9",
                                 "sample.num_prompts=4", "sample.batch_size=3",
                                 "sample.max_per_prompt=2",
                                 f"sample.cold_start_format={str(cold_start).lower()}")]) == 0
    run = tmp_path / name
    counts = json.loads((run / "counts.json").read_text())
    assert counts["prompts"] == 4 and counts["generated"] == 36 and counts["kept"] == 8
    assert counts["rejected"] == {
        "not_truncated": 4, "correct": 4, "well_formed": 4, "single_language": 4,
        "no_repetition": 4, "short_paragraphs": 0, "duplicate": 4, "max_per_prompt": 4,
    }
    assert counts["passed_filters"] == 16 and counts["prompts_with_kept"] == 4
    assert counts["passing_per_prompt"] == {"4": 4}
    assert counts["truncated"] == pytest.approx(1 / 9)

    rows = _rows(run)
    assert [r["sample"] for r in rows] == [0, 7] * 4
    assert len({r["id"] for r in rows}) == 4
    for row in rows:
        p = Problem(row["id"], row["prompt"], row["answer"])
        assert get_reward("accuracy")(row["completion"], p) == 1.0
        if cold_start:
            assert row["completion"].endswith(f"The answer is <answer> {row['answer']} </answer>")
            assert get_reward("summary_format")(row["completion"], p) == 1.0
            assert get_reward("format")(row["original"], p) == 1.0
        else:
            assert get_reward("format")(row["completion"], p) == 1.0 and "original" not in row


def _scripted_programs(model, tokenizer, prompts, group_size, **kw):
    """Per code prompt: a right program, a wrong one, and an answer without a code block."""
    assert group_size == 3
    texts = []
    for prompt in prompts:
        f0, f1 = map(int, re.search(r"f\(0\)=(-?\d+), f\(1\)=(-?\d+)", prompt).groups())
        program = "<think> ok </think> <answer> ```python\ndef f(x): return x*{}+{}\n``` </answer>"
        texts += [program.format(f1 - f0, f0), program.format(f1 - f0, f0 + 1),
                  f"<think> ok </think> <answer> {f1} </answer>"]
    return SimpleNamespace(texts=texts, truncated=[False] * len(texts),
                           num_tokens=[len(t) for t in texts])


def test_correct_filter_runs_the_programs_of_code_problems(tiny_base, tmp_path, monkeypatch):
    """On problems with tests, `correct` keeps a completion whose program passes every test in
    the sandbox (the `code` section's limits), not one whose answer text matches."""
    from r1kit.rewards import code as code_reward
    from r1kit.sandbox import bwrap_problem, find_python

    monkeypatch.setitem(code_reward._state, "options", None)  # put back afterwards
    monkeypatch.setitem(code_reward._state, "sandbox", None)
    monkeypatch.setattr(sample_stage, "sample", _scripted_programs)
    unsafe = str(bwrap_problem(find_python()) is not None).lower()  # trusted programs only
    assert cli(["sample", *_sets(tmp_path, tiny_base, "code", "data.source=builtin:code",
                                 "sample.samples_per_prompt=3", "sample.num_prompts=4",
                                 "sample.filters=[correct]", "sample.max_per_prompt=0",
                                 f"code.unsafe_allow_unsandboxed={unsafe}", "code.wall_s=3")]) == 0
    assert code_reward._state["sandbox"].limits.wall_s == 3
    counts = json.loads((tmp_path / "code" / "counts.json").read_text())
    assert counts["generated"] == 12 and counts["kept"] == 4 and _balanced(counts)
    assert counts["rejected"]["correct"] == 8 and counts["accuracy"] == pytest.approx(1 / 3)
    rows = _rows(tmp_path / "code")
    assert all(r["sample"] == 0 and "```python" in r["completion"] for r in rows)


def test_code_problems_without_a_sandbox_stop_before_a_run_folder(tmp_path, capsys, no_bwrap):
    assert cli(["sample", *_sets(tmp_path, "builtin", "code", "data.source=builtin:code")]) == 2
    assert "--unsafe-allow-unsandboxed" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_resume_after_an_interruption_writes_no_duplicates(tiny_base, tmp_path, monkeypatch):
    loose = ("sample.filters=[not_truncated]", "sample.max_per_prompt=0",
             "rollout.max_new_tokens=24")
    assert cli(["sample", *_sets(tmp_path, tiny_base, "full", *loose)]) == 0

    calls = {"n": 0}
    real_sample = sample_stage.sample

    def interrupted_in_batch_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(sample_stage, "sample", interrupted_in_batch_2)
    assert cli(["sample", *_sets(tmp_path, tiny_base, "killed", *loose)]) == 130
    run = tmp_path / "killed"
    progress = json.loads((run / "progress.json").read_text())
    assert progress["batches_done"] == 1 and not (run / "counts.json").exists()
    assert len(_rows(run)) == progress["rows"]
    # as if the batch in flight had written some of its rows before it died
    with open(run / "sft.jsonl", "a") as f:
        f.write('{"prompt": "Compute 1+2", "completion": "<think> 1+2=3 </think>"}\n{"prom')

    monkeypatch.setattr(sample_stage, "sample", real_sample)
    assert cli(["sample", "--resume", str(run)]) == 0
    full, resumed = tmp_path / "full", run
    assert (resumed / "sft.jsonl").read_text() == (full / "sft.jsonl").read_text()
    rows = _rows(resumed)
    assert len({(r["id"], r["sample"]) for r in rows}) == len(rows)
    a = json.loads((full / "counts.json").read_text())
    b = json.loads((resumed / "counts.json").read_text())
    a.pop("seconds"), b.pop("seconds")
    assert a == b and b["prompts"] == 6 and _balanced(b)

    # resuming a finished run changes nothing
    assert cli(["sample", "--resume", str(run)]) == 0
    assert (resumed / "sft.jsonl").read_text() == (full / "sft.jsonl").read_text()


def test_resume_needs_a_run_folder(tmp_path, capsys):
    assert cli(["sample", "--resume", str(tmp_path / "nothing")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_an_empty_completion_is_not_kept():
    """`r1kit sft` refuses an empty completion, and with no filter asking for an answer one
    passes them all: it counts as rejected (`empty`), not as a row of sft.jsonl."""
    from r1kit.filters import Candidate, build_filters

    chain = build_filters([])
    problem = Problem("p", "1+1?", "2")
    text = "<think> 1+1 </think> <answer> 2 </answer>"
    tally = sample_stage._new_tally(chain)
    rows = sample_stage.keep_for_prompt([Candidate(" \n", problem), Candidate(text, problem)],
                                        chain, 0, False, tally)
    assert [r["completion"] for r in rows] == [text]
    assert tally["rejected"]["empty"] == 1
    counts = sample_stage._counts(tally)
    assert _balanced(counts) and counts["passed_filters"] == 2
    # after a prompt that prefilled <think>, the opening alone is no completion either
    tally = sample_stage._new_tally(chain)
    rows = sample_stage.keep_for_prompt([Candidate(" \n", problem), Candidate("", problem)],
                                        chain, 0, False, tally, opening="<think>\n")
    assert rows == [] and tally["rejected"]["empty"] == 2
