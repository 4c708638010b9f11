"""`r1kit distill` and `r1kit eval MODEL...` on toy models: the verification filter, the dataset
round trip (JSONL and `datasets`), a tiny distillation that trains the students, resume of the
teacher sampling and of the whole run, the comparison table, and clear errors for bad input."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from datasets import load_from_disk
from safetensors.torch import load_file

from r1kit.cli import main as cli
from r1kit.config import DistillConfig, describe, load_config
from r1kit.errors import UserError
from r1kit.filters import Candidate, build_filters
from r1kit.sft import load_sft_jsonl
from r1kit.sft_dataset import write_sft_dataset
from r1kit.stages import distill
from r1kit.stages import sample as sample_stage
from r1kit.stages import sft as sft_stage
from r1kit.students import PRESETS, check_student
from r1kit.tasks.base import Problem

P = Problem("p1", "Compute 47+8-9", "46")


@pytest.fixture(scope="module")
def qwen_student(tmp_path_factory) -> str:
    """A toy Qwen2 student with Qwen2 tokenizer rules, built like the tiny-qwen preset."""
    from r1kit.stages.base import main as build
    from tests.conftest import TINY_BASE

    cfg = dataclasses.replace(TINY_BASE, arch="qwen2", num_kv_heads=1, steps=10)
    out = tmp_path_factory.mktemp("qwen-student") / "model"
    build(cfg, out=out, log=lambda *_: None)  # fails if AutoTokenizer does not round-trip
    return str(out)


def _correct_sampler(model, tokenizer, prompts, group_size, **kw):
    """A teacher that is always right: one verified completion and one wrong one per prompt
    (group_size 2), so the filters have something to reject."""
    texts = []
    for prompt in prompts:
        expr = re.search(r"User: Compute ([0-9+-]+)\.", prompt).group(1)
        ans = sum(int(t) for t in re.findall(r"[+-]?\d+", expr))
        texts += [f"<think> {expr}={ans} </think> <answer> {ans} </answer>",
                  f"<think> {expr}={ans + 1} </think> <answer> {ans + 1} </answer>"][:group_size]
    return SimpleNamespace(texts=texts, truncated=[False] * len(texts),
                           num_tokens=[8] * len(texts))


def _sets(tmp_path: Path, name: str, *extra: str) -> list[str]:
    sets = [f"run.out_dir={tmp_path}", f"run.name={name}", "run.threads=2",
            "data.train_size=200", "sample.num_prompts=24", "sample.samples_per_prompt=2",
            "sample.batch_size=8", "rollout.max_new_tokens=16", "sft.epochs=3",
            "sft.batch_size=8", "sft.micro_batch_size=8", "sft.warmup_steps=1", "sft.lr=3e-3",
            "eval.num_problems=4", "eval.k=2", "eval.max_new_tokens=16", *extra]
    return [arg for s in sets for arg in ("--set", s)]


# ------------------------------------------------------------------------- filter and dataset


def test_any_format_filter_keeps_verified_answers_in_either_format():
    chain = build_filters(["not_truncated", "correct", "any_format"])
    keep = [Candidate("<think> 47+8=55, 55-9=46 </think> <answer> 46 </answer>", P),
            Candidate("<think> 47+8=55, 55-9=46 </think> The answer is <answer> 46 </answer>", P)]
    drop = [Candidate("<think> 47+8=55, 55-9=47 </think> <answer> 47 </answer>", P),  # wrong
            Candidate("<think> 47+8=55 </think> <answer> 46 </answer> more", P),  # trailing text
            Candidate("<think> 47+8=55, 55-9=46 </think> <answer> 46 </answer>", P,
                      truncated=True)]
    kept, rejected = chain.apply(keep + drop)
    assert kept == keep
    assert rejected == {"not_truncated": 1, "correct": 1, "any_format": 1}


def test_default_filters_keep_a_reasoning_teachers_boxed_answers():
    """R1-Distill's samples, `</think>` then a summary with `\\boxed{}`, start inside the
    reasoning behind a prefilling template; the default chain keeps the correct, closed ones."""
    chain = build_filters(list(DistillConfig().sample.filters))
    pre = Problem("p1", "Compute 47+8-9", "46", {"prefilled_think": True})
    keep = [Candidate("First 47+8=55, then 55-9=46.\n</think>\n\nSo it is $\\boxed{46}$.", pre),
            Candidate("<think> 47+8=55, 55-9=46 </think> <answer> 46 </answer>", P),
            Candidate("<think> 47+8=55, 55-9=46 </think> The answer is <answer> 46 </answer>", P)]
    drop = [Candidate("First 47+8=55, then 55-9=46, so $\\boxed{46}$.", pre),  # never closed
            Candidate("<think>First 47+8=55.</think> So $\\boxed{46}$.", pre),  # opened twice
            Candidate("55-9=$\\boxed{46}$.</think> I am done.", pre),  # no answer after it
            Candidate("First 47+8=55, then 55-9=47.</think> So $\\boxed{47}$.", pre)]  # wrong
    kept, rejected = chain.apply(keep + drop)
    assert kept == keep
    assert rejected["think_format"] == 3 and rejected["correct"] == 1
    with pytest.raises(UserError, match="distill.max_len"):
        load_config(DistillConfig, None, ["distill.max_len=1"])


def test_dataset_round_trips_through_jsonl_and_load_from_disk(tmp_path):
    rows = [{"prompt": f"Compute {i}+1", "completion": f"<think> {i}+1={i + 1} </think> "
             f"<answer> {i + 1} </answer>", "id": f"t{i}", "answer": str(i + 1), "sample": 0}
            for i in range(5)]
    rows[2]["completion"] += " \u2028 ünïcode"
    src = tmp_path / "sft.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    gen, counts = {"model": "teacher", "temperature": 0.6}, {"kept": 5, "rejected": {"correct": 3}}
    assert write_sft_dataset(src, tmp_path / "ds", gen, counts) == 5
    ds = load_from_disk(str(tmp_path / "ds" / "hf"))
    assert ds.column_names == ["prompt", "completion", "id", "answer", "sample"]
    assert ds.to_list() == rows
    assert json.loads(ds.info.description) == {"generation": gen, "counts": counts}
    jsonl = load_sft_jsonl(tmp_path / "ds" / "train.jsonl")
    assert [(e.prompt, e.completion) for e in jsonl] == [(r["prompt"], r["completion"])
                                                         for r in rows]
    assert json.loads((tmp_path / "ds" / "counts.json").read_text()) == counts
    assert json.loads((tmp_path / "ds" / "generation.json").read_text()) == gen
    # a general (non-reasoning) row and a rewritten row keep what tells them apart
    mixed = rows[:2] + [{"prompt": "hi", "completion": "Hello!", "id": "g0", "kind": "general"}]
    mixed[0] = {**mixed[0], "original": "<think>0+1=1</think> <answer>1</answer>"}
    (tmp_path / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mixed))
    write_sft_dataset(tmp_path / "mixed.jsonl", tmp_path / "ds3", gen, counts)
    back = load_from_disk(str(tmp_path / "ds3" / "hf")).to_list()
    assert [r["kind"] for r in back] == ["reasoning", "reasoning", "general"]
    assert back[0]["original"] == mixed[0]["original"] and back[1]["original"] is None
    assert [r["answer"] for r in back] == ["1", "2", None]
    # a malformed source leaves no half-written dataset behind
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n')
    with pytest.raises(UserError, match="bad.jsonl:1: missing field 'completion'"):
        write_sft_dataset(tmp_path / "bad.jsonl", tmp_path / "ds2", gen, counts)
    assert not (tmp_path / "ds2").exists()


# ------------------------------------------------------------------------- students


def test_student_presets_are_smaller_than_the_teacher_and_of_two_architectures():
    from r1kit.config import BaseConfig

    teacher = BaseConfig()
    assert {c.arch for c in PRESETS.values()} == {"qwen2", "llama"}
    for cfg in PRESETS.values():
        assert cfg.hidden_size * cfg.num_layers < teacher.hidden_size * teacher.num_layers


def test_qwen_student_reloads_with_its_own_tokenizer(qwen_student):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qwen_student)
    assert type(tok).__name__ == "Qwen2Tokenizer"  # what transformers gives any Qwen2 folder
    text = "<think> 47+8=55 </think> <answer> 55 </answer>"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert "</think>" in tok.convert_ids_to_tokens(tok("</think>")["input_ids"])
    assert AutoModelForCausalLM.from_pretrained(qwen_student).config.model_type == "qwen2"


# ------------------------------------------------------------------------- distill end to end


def test_distill_trains_students_and_resumes(tiny_base, qwen_student, tmp_path, monkeypatch,
                                             capsys):
    monkeypatch.setattr(sample_stage, "sample", _correct_sampler)
    calls = {"sft": 0}
    real_sft = sft_stage.main

    def sft_then_kill_once(*args, **kwargs):
        calls["sft"] += 1
        summary = real_sft(*args, **kwargs)
        if calls["sft"] == 1:
            raise KeyboardInterrupt  # killed after the first student finished its SFT
        return summary

    monkeypatch.setattr(sft_stage, "main", sft_then_kill_once)
    args = ["distill", "--teacher", tiny_base, "--students", f"{qwen_student},{tiny_base}",
            *_sets(tmp_path, "d")]
    assert cli(args) == 130
    root = tmp_path / "d"
    manifest = json.loads((root / "manifest.json").read_text())
    assert list(manifest["parts"]) == ["samples", "dataset"]

    capsys.readouterr()
    assert cli(["distill", "--resume", str(root)]) == 0
    out = capsys.readouterr().out
    assert "samples: finished earlier, skipped" in out
    assert calls["sft"] == 2  # the first student was recognised as finished, not trained again

    # the dataset: only verified samples, the same rows in JSONL and datasets
    counts = json.loads((root / "dataset" / "counts.json").read_text())
    assert counts["generated"] == 48 and counts["kept"] == 24
    assert counts["rejected"]["correct"] == 24
    gen = json.loads((root / "dataset" / "generation.json").read_text())
    assert gen["model"] == tiny_base and gen["temperature"] == 0.6 and gen["top_p"] == 0.95
    ds = load_from_disk(str(root / "dataset" / "hf"))
    jsonl = [json.loads(line) for line in (root / "dataset" / "train.jsonl").read_text()
             .splitlines()]
    assert len(ds) == 24 and ds.to_list() == [{k: r[k] for k in ds.column_names} for r in jsonl]

    # each student: every parameter changed, and the SFT loss went down
    for label, base in (("model", qwen_student), ("model-2", tiny_base)):
        folder = root / "students" / label
        before = load_file(Path(base) / "model.safetensors")
        after = load_file(folder / "final" / "model.safetensors")
        assert set(before) == set(after)
        assert all(not torch.equal(before[k], after[k]) for k in before), label
        losses = [json.loads(line)["train/loss"]
                  for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert losses[-1] < 0.9 * losses[0], (label, losses)

    result = json.loads((root / "distill.json").read_text())
    assert [r["model"] for r in result["rows"]] == [
        "Teacher", "model base", "model distilled", "model-2 base", "model-2 distilled"]
    assert {r["arch"] for r in result["rows"]} == {"llama", "qwen2"}
    assert "| Teacher |" in out and "vs Teacher" in (root / "distill.md").read_text()
    assert cli(["report", str(root)]) == 0  # a distillation page, not a pipeline's
    page = (root / "report.html").read_text()
    assert "Teacher and students" in page and "students: model, model-2" in page
    assert page.count("<tr><td>model") == 4 and "pipeline" not in page

    # a finished run resumed again trains and samples nothing
    assert cli(["distill", "--resume", str(root)]) == 0
    assert calls["sft"] == 2


def test_teacher_sampling_resumes_without_duplicates(tiny_base, tmp_path, monkeypatch):
    monkeypatch.setattr(sample_stage, "sample", _correct_sampler)
    assert cli(["distill", "--teacher", tiny_base, "--students", tiny_base,
                *_sets(tmp_path, "full", "sft.epochs=1")]) == 0

    calls = {"n": 0}

    def killed_in_batch_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return _correct_sampler(*args, **kwargs)

    monkeypatch.setattr(sample_stage, "sample", killed_in_batch_2)
    assert cli(["distill", "--teacher", tiny_base, "--students", tiny_base,
                *_sets(tmp_path, "killed", "sft.epochs=1")]) == 130
    samples = tmp_path / "killed" / "samples"
    progress = json.loads((samples / "progress.json").read_text())
    assert progress["batches_done"] == 1 and progress["rows"] == 8
    with open(samples / "sft.jsonl", "a") as f:  # the batch in flight had written part of a row
        f.write('{"prompt": "Compute 1+2", "compl')

    monkeypatch.setattr(sample_stage, "sample", _correct_sampler)
    assert cli(["distill", "--resume", str(tmp_path / "killed")]) == 0
    full = (tmp_path / "full" / "dataset" / "train.jsonl").read_text()
    resumed = (tmp_path / "killed" / "dataset" / "train.jsonl").read_text()
    assert resumed == full
    ids = [json.loads(line)["id"] for line in resumed.splitlines()]
    assert len(ids) == len(set(ids)) == 24


# ------------------------------------------------------------------------- eval and errors


def test_eval_compares_two_models_in_one_table(tiny_base, qwen_student, tmp_path, capsys):
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"prompt": f"Compute {a}+{b}", "answer": str(a + b)})
                                + "\n" for a, b in [(12, 3), (40, 5), (7, 8)]))
    out = tmp_path / "cmp"
    assert cli(["eval", tiny_base, qwen_student, "--problems", str(problems), "--out", str(out),
                "--set", "eval.k=2", "--set", "eval.max_new_tokens=12"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("| model | arch |") == 1  # one table
    result = json.loads((out / "comparison.json").read_text())
    assert result["num_problems"] == 3 and result["k"] == 2
    assert [r["arch"] for r in result["rows"]] == ["llama", "qwen2"]
    assert len({r["model"] for r in result["rows"]}) == 2
    for r in result["rows"]:
        assert 0.0 <= r["pass@1"] <= 1.0 and r["params"] > 0
        assert f"| {r['model']} |" in printed
    assert (out / "comparison.md").read_text().count("| llama |") == 1

    # the single-model usage is unchanged
    assert cli(["eval", "--model", tiny_base, "--set", f"run.out_dir={tmp_path}",
                "--set", "eval.num_problems=2", "--set", "eval.k=1",
                "--set", "eval.max_new_tokens=8"]) == 0
    assert "pass@1" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--teacher", "no/such/teacher-dir"], "teacher no/such/teacher-dir: no such folder"),
        (["--teacher", "{base}", "--students", "tiny-gpt"], "unknown student 'tiny-gpt'"),
        (["--students", "tiny-llama"], "no teacher: give --teacher"),
        (["--teacher", "{tmp}"], "not a model folder (no config.json)"),
        (["--teacher", "{base}", "--set", "sample.filters=[correct, fast]"],
         "unknown filter 'fast'"),
    ],
)
def test_bad_input_is_one_clear_line(tiny_base, tmp_path, capsys, args, message):
    args = [a.format(base=tiny_base, tmp=tmp_path) for a in args]
    code = cli(["distill", *args, "--set", f"run.out_dir={tmp_path}", "--set", "run.name=bad"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_code_problems_without_a_sandbox_stop_before_a_folder(tiny_base, tmp_path, capsys,
                                                              no_bwrap):
    code = cli(["distill", "--teacher", tiny_base, "--set", "data.source=builtin:code",
                "--set", f"run.out_dir={tmp_path}", "--set", "run.name=code"])
    assert code == 2 and "--unsafe-allow-unsandboxed" in capsys.readouterr().err
    assert not (tmp_path / "code").exists()
    # where bubblewrap is missing, `r1kit eval` of several models stops before its folder too
    assert cli(["eval", "builtin", "builtin", "--problems", "builtin:code",
                "--set", f"run.out_dir={tmp_path}"]) == 2
    assert "--unsafe-allow-unsandboxed" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_samples_and_students_get_the_code_section(tmp_path):
    cfg = load_config(DistillConfig, None, ["code.wall_s=7", "code.unsafe_allow_unsandboxed=true"])
    assert distill.sample_config(cfg, "teacher", tmp_path).code == cfg.code
    assert distill.sft_config(cfg, "base", "s", tmp_path).code == cfg.code


def test_eval_compare_takes_builtin_as_the_code_base_on_the_code_task(tmp_path, monkeypatch):
    from r1kit.stages import evaluate as evaluate_stage

    seen = []

    def fake_row(label, path, *args, **kwargs):
        seen.append((label, Path(path).name))
        return {"model": label}, None

    monkeypatch.setattr(evaluate_stage, "evaluate_row", fake_row)
    monkeypatch.setattr(evaluate_stage, "write_comparison", lambda *a, **kw: "table")
    monkeypatch.setattr(evaluate_stage.code_reward, "configure_for", lambda *a, **kw: False)
    assert cli(["eval", "builtin", "builtin:code", "--task", "builtin:code",
                "--set", "eval.num_problems=2", "--out", str(tmp_path / "o")]) == 0
    assert seen == [("builtin", "tiny-base-code"), ("builtin:code", "tiny-base-code")]


def test_eval_of_a_missing_model_folder_is_a_clear_error(tiny_base, tmp_path, capsys,
                                                         monkeypatch):
    assert cli(["eval", tiny_base, str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "missing: no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli(["eval", tiny_base, str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "empty: neither a model folder (config.json), a LoRA adapter" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # runs/typo: a typo'd folder, not the hub's ORG/NAME
    (tmp_path / "runs").mkdir()
    assert cli(["eval", tiny_base, "runs/typo", "--out", str(tmp_path / "o")]) == 2
    assert "runs/typo: no such folder" in capsys.readouterr().err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub name is fetched before anything runs
    assert cli(["eval", tiny_base, "someorg/nomodel", "--out", str(tmp_path / "o")]) == 2
    assert "someorg/nomodel: no such folder, and the hub cannot give it" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing was evaluated


def test_check_student_and_help():
    check_student("tiny-qwen")
    check_student("Qwen/Qwen2.5-Math-1.5B")  # a hub name is accepted (and loaded later)
    with pytest.raises(UserError, match="unknown student 'qwen'"):
        check_student("qwen")
    with pytest.raises(SystemExit):
        cli(["distill", "--help"])


def test_a_student_folder_without_a_chat_template_fails_before_sampling(tiny_base, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    student = tmp_path / "student"
    AutoModelForCausalLM.from_pretrained(tiny_base).save_pretrained(student)
    tok = AutoTokenizer.from_pretrained(tiny_base)
    tok.chat_template = None
    tok.save_pretrained(student)
    check_student(str(student), "r1_zero")
    with pytest.raises(UserError, match="student .* with data.template"):
        check_student(str(student), "chat")
    keys = [k for k, _, _ in describe(DistillConfig)]
    assert "distill.teacher" in keys and "distill.students" in keys


def test_resume_needs_a_distill_folder(tmp_path, capsys):
    assert cli(["distill", "--resume", str(tmp_path)]) == 2
    assert "not a distill folder" in capsys.readouterr().err


def test_teacher_resolution(tiny_base, tmp_path):
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "config.json").write_text("{}")
    assert distill.resolve_teacher(str(run)) == str(run / "final")
    pipe = tmp_path / "pipe"
    (pipe / "07-r1" / "final").mkdir(parents=True)
    (pipe / "07-r1" / "final" / "config.json").write_text("{}")
    assert distill.resolve_teacher(str(pipe)) == str(pipe / "07-r1" / "final")
    assert distill.resolve_teacher(tiny_base) == tiny_base


# ------------------------------------------------------------------------- pipeline stage


def test_pipeline_distill_stage_and_its_table_rows(tiny_base, tmp_path, monkeypatch):
    from r1kit.config import PipelineConfig, load_config
    from r1kit.stages import pipeline

    sets = ["pipeline.distill=true", f"pipeline.students=[{tiny_base}]",
            "pipeline.distill_prompts=8", "pipeline.distill_samples=2", "data.train_size=100",
            "sample.filters=[not_truncated, correct, well_formed]", "run.threads=2"]
    cfg = load_config(PipelineConfig, None, sets)
    pipeline._check(cfg)
    (kind, dcfg), = pipeline.distill_stage_config(cfg, tmp_path).values()
    assert kind == "distill" and dcfg.distill.teacher == str(tmp_path / "07-r1" / "final")
    assert dcfg.sample.filters == ["not_truncated", "correct", "any_format"]  # R1's summary form
    assert dcfg.sample.num_prompts == 8 and dcfg.sample.samples_per_prompt == 2
    assert pipeline.checkpoints(cfg)[-1] == ("Distill model", "08-distill/students/model")
    off = load_config(PipelineConfig, None, [])
    assert pipeline.distill_stage_config(off, tmp_path) == {}
    assert pipeline.checkpoints(off) == list(pipeline.CHECKPOINTS)
    with pytest.raises(UserError, match="unknown student 'tiny-gpt'"):
        pipeline._check(load_config(PipelineConfig, None, [*sets, "pipeline.students=[tiny-gpt]"]))

    # the stage itself: R1's samples -> each student's SFT; a second call redoes nothing
    import shutil

    shutil.copytree(tiny_base, tmp_path / "07-r1" / "final")
    monkeypatch.setattr(sample_stage, "sample", _correct_sampler)
    dcfg = dataclasses.replace(dcfg, sft=dataclasses.replace(dcfg.sft, batch_size=4,
                                                             micro_batch_size=4, epochs=1))
    out = pipeline.run_stage("08-distill", "distill", dcfg, tmp_path / "08-distill")
    final = tmp_path / "08-distill" / "students" / "model" / "final"
    assert out == {"students": {"model": str(final)}} and (final / "config.json").is_file()
    assert not (tmp_path / "08-distill" / "distill.md").exists()  # the pipeline's table has them
    mtime = (final / "model.safetensors").stat().st_mtime_ns
    assert pipeline.run_stage("08-distill", "distill", dcfg, tmp_path / "08-distill") == out
    assert (final / "model.safetensors").stat().st_mtime_ns == mtime


def test_mistakes_fail_before_the_teacher_is_sampled(tiny_base, tmp_path, capsys, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    noeos = tmp_path / "noeos"
    shutil.copytree(tiny_base, noeos)
    tok = AutoTokenizer.from_pretrained(noeos)
    tok.eos_token = None
    tok.pad_token = None
    tok.save_pretrained(noeos)
    base = ["distill", "--teacher", str(tiny_base), "--set", f"run.out_dir={tmp_path / 'out'}"]
    for extra, message in ((["--students", str(noeos)], "has no EOS token"),
                           (["--students", "tiny-llama", "--set", "eval.num_problems=0"],
                            "eval.num_problems must be at least 1"),
                           (["--students", "tiny-llama", "--set", "sft.min_lr=0.5"],
                            "sft.min_lr <= sft.lr"),
                           (["--students", "runs/typo"], "unknown student 'runs/typo'")):
        assert cli([*base, *extra]) == 2, extra
        assert message in capsys.readouterr().err
    assert cli(["distill", "--teacher", "runs/typo", "--students", "tiny-llama"]) == 2
    assert "teacher runs/typo: no such folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------- real teachers' samples


def _problem_sum(prompt: str) -> tuple[str, int]:
    expr = re.search(r"Compute ([0-9+-]+)", prompt).group(1)
    return expr, sum(int(t) for t in re.findall(r"[+-]?\d+", expr))


def _long_sampler(model, tokenizer, prompts, group_size, **kw):
    """A teacher whose verified samples are ~350 tokens of reasoning, longer than r1kit sft's 256."""
    texts = []
    for prompt in prompts:
        expr, ans = _problem_sum(prompt)
        steps = " ".join(f"{i}+{i + 1}={2 * i + 1}," for i in range(20))
        texts += [f"<think> {steps} {expr}={ans} </think> <answer> {ans} </answer>"] * group_size
    return SimpleNamespace(texts=texts, truncated=[False] * len(texts),
                           num_tokens=[8] * len(texts))


def _distill_cfg(tmp_path: Path, name: str, teacher: str, students: list[str], *extra: str):
    from r1kit.config import load_config

    return load_config(DistillConfig, None, [
        f"run.out_dir={tmp_path}", f"run.name={name}", "run.threads=2", "data.train_size=100",
        f"distill.teacher={teacher}", f"distill.students=[{', '.join(students)}]",
        "sample.num_prompts=4", "sample.batch_size=4", "rollout.max_new_tokens=16",
        "sft.epochs=1", "sft.batch_size=4", "sft.micro_batch_size=4", "sft.warmup_steps=0",
        *extra])


def _record_encoded(monkeypatch) -> list[tuple]:
    """Spy on the SFT stage's tokenization: (tokenizer, [(prompt ids, completion ids)]) per run."""
    seen, real = [], sft_stage.encode

    def encode(examples, tokenizer, template):
        pairs = real(examples, tokenizer, template)
        seen.append((tokenizer, pairs))
        return pairs

    monkeypatch.setattr(sft_stage, "encode", encode)
    return seen


def test_students_train_on_whole_samples_unless_capped(tiny_base, tmp_path, monkeypatch):
    from tests.tiny_models import build

    student = build(tmp_path / "student", "qwen2")  # 512 positions, room for the long samples
    monkeypatch.setattr(sample_stage, "sample", _long_sampler)
    seen = _record_encoded(monkeypatch)
    widths = []
    real_collate = sft_stage.collate

    def collate(examples, tokenizer, template, max_len):
        batch = real_collate(examples, tokenizer, template, max_len)
        widths.append(batch["input_ids"].shape[1])
        return batch

    monkeypatch.setattr(sft_stage, "collate", collate)
    cfg = _distill_cfg(tmp_path, "whole", tiny_base, [student],
                       "sample.filters=[not_truncated, correct, think_format]")
    assert cfg.distill.max_len == 0
    assert distill.sft_config(cfg, student, "s", tmp_path).data.max_len == 0
    distill.main(cfg, table=False)
    (_, pairs), = seen
    lengths = [len(p) + len(c) for p, c in pairs]
    assert len(lengths) == 4 and min(lengths) > 300  # longer than r1kit sft's default 256
    summary = json.loads((tmp_path / "whole" / "students" / "student" / "summary.json").read_text())
    assert summary["truncated"] == 0 and summary["max_len"] == max(lengths)
    assert max(widths) == max(lengths)  # every token trained on, the EOS included

    # a user cap cuts them
    widths.clear()
    capped = _distill_cfg(tmp_path, "capped", tiny_base, [student],
                          "sample.filters=[not_truncated, correct, think_format]",
                          "distill.max_len=240", "distill.gradient_checkpointing=true")
    assert distill.sft_config(capped, student, "s", tmp_path).model.gradient_checkpointing
    distill.main(capped, table=False)
    summary = json.loads((tmp_path / "capped" / "students" / "student" / "summary.json").read_text())
    assert summary["truncated"] == 4 and summary["max_len"] == 240 and max(widths) == 240
    # `r1kit sft` keeps its documented default; the pipeline's SFT stages take whole samples
    from r1kit.config import PipelineConfig, SFTConfig
    from r1kit.stages import pipeline

    assert SFTConfig().data.max_len == 256
    stages = pipeline.stage_configs(load_config(PipelineConfig, None, []), tmp_path)
    assert stages["03-dev1"][1].data.max_len == stages["06-dev3"][1].data.max_len == 0


def _r1_distill_sampler(model, tokenizer, prompts, group_size, **kw):
    """A DeepSeek-R1-Distill-like teacher behind a template that prefills `<think>\\n`: reasoning,
    `</think>`, a summary with `\\boxed{}` and no <answer> tags. Per prompt: a correct sample, the
    same reasoning never closed, and a wrong closed one."""
    assert all(p.endswith("<think>\n") for p in prompts)
    texts = []
    for prompt in prompts:
        expr, ans = _problem_sum(prompt)
        closed = "Let me add it up: {0}={1}.\n</think>\n\nThe sum is $\\boxed{{{1}}}$."
        unclosed = "Let me add it up: {0}={1}, so the sum is $\\boxed{{{1}}}$."
        texts += [closed.format(expr, ans), unclosed.format(expr, ans),
                  closed.format(expr, ans + 1)][:group_size]
    return SimpleNamespace(texts=texts, truncated=[False] * len(texts),
                           num_tokens=[8] * len(texts))


def test_an_r1_distill_teacher_is_kept_and_its_rows_open_think_once(tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from tests.tiny_models import build

    teacher = build(tmp_path / "teacher", "qwen2", think_template=True)
    prefilling = build(tmp_path / "think-student", "qwen2", think_template=True)
    plain = build(tmp_path / "plain-student", "llama")
    monkeypatch.setattr(sample_stage, "sample", _r1_distill_sampler)
    seen = _record_encoded(monkeypatch)
    cfg = _distill_cfg(tmp_path, "r1d", teacher, [prefilling, plain], "data.template=chat",
                       "sample.samples_per_prompt=3")
    assert "think_format" in cfg.sample.filters  # the defaults, with single_language and more
    distill.main(cfg, table=False)

    counts = json.loads((tmp_path / "r1d" / "samples" / "counts.json").read_text())
    assert counts["kept"] == 4 and counts["generated"] == 12
    assert counts["rejected"]["correct"] == 4 and counts["rejected"]["think_format"] == 4
    rows = [json.loads(line) for line in
            (tmp_path / "r1d" / "dataset" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    for row in rows:  # the prefilled opening is back, once; the sampled text follows unchanged
        assert row["completion"].startswith("<think>\nLet me add it up: ")
        assert row["completion"].count("<think>") == 1 and "</think>" in row["completion"]

    # each student's training text opens the reasoning exactly once: in the prompt when its
    # template prefills <think>, else in the completion, which it learns to write
    assert [Path(t.name_or_path).name for t, _ in seen] == ["think-student", "plain-student"]
    for tokenizer, pairs in seen:
        tok = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
        prefills = tokenizer.name_or_path.endswith("think-student")
        for p, c in pairs:
            prompt, completion = tok.decode(p), tok.decode(c[:-1])
            assert (prompt + completion).count("<think>") == 1, (prompt, completion)
            assert prompt.endswith("<think>\n") == prefills
            assert completion.startswith("Let me add" if prefills else "<think>\nLet me add")
