"""`r1kit report`: the HTML report of a GRPO run and of a pipeline folder, the per-step metrics it
plots, and the report written at the end of every RL run (a failing one loses nothing)."""

from __future__ import annotations

import base64
import doctest
import io
import json
import logging
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from r1kit import report
from r1kit.cli import main as cli
from r1kit.config import EvalConfig, ZeroConfig, load_config
from r1kit.evaluation import evaluate
from r1kit.models import load_model
from r1kit.rewards.scoring import Scores
from r1kit.rollout.hf import Rollouts
from r1kit.runs import RunFolder
from r1kit.stages import pipeline, zero
from r1kit.tasks.arithmetic import sample_problems
from r1kit.tasks.base import Problem

RL_PLOTS = ("reward/total", "reward/accuracy", "reward/format", "train/completion_tokens",
            "train/kl", "train/entropy", "train/clip_frac", "train/reflection", "train/language",
            "eval/pass@1")
"""What the report must plot for every RL run (reward per function, accuracy, length, KL, ...)."""


def _rl_overrides(tmp_path: Path, model: str, name: str, steps: int = 3,
                  rewards: str = "{accuracy: 1.0, format: 0.1}") -> list[str]:
    return [
        f"model.path={model}", f"run.out_dir={tmp_path}", f"run.name={name}", f"rl.steps={steps}",
        "rl.prompts_per_step=4", "rl.group_size=4", "rl.micro_batch_size=16", "rl.lr=0.01",
        "rl.warmup_steps=1", "rl.beta=0.01", "rl.dynamic_sampling=false",
        "rollout.max_new_tokens=16", "eval.num_problems=4", "eval.k=2", "eval.every=2",
        "eval.max_new_tokens=16", "run.checkpoint_every=0", "data.train_size=64",
        "run.log_completions=4", f"rewards.weights={rewards}",
    ]


@pytest.fixture(scope="module")
def pipeline_folder(tiny_base, tmp_path_factory) -> Path:
    """A small pipeline folder made by the real stages: two RL stages with different rewards
    (01-zero, 04-dev2, each writing its own report at the end), the manifest, and the per-stage
    table and held-out samples as `r1kit pipeline` writes them."""
    root = tmp_path_factory.mktemp("report") / "pipe"
    root.mkdir()
    (root / "manifest.json").write_text(json.dumps({"stages": {}, "evals": {}}))
    manifest = {"stages": {}, "evals": {}}
    for name, rewards in (("01-zero", "{accuracy: 1.0, format: 0.1}"),
                          ("04-dev2", "{accuracy: 1.0, summary_format: 0.1, language: 0.2}")):
        cfg = load_config(ZeroConfig, None, _rl_overrides(root, tiny_base, name, rewards=rewards))
        manifest["stages"][name] = {"kind": "rl", "seconds": 1.0,
                                    "summary": zero.main(cfg, stage="rl")}
    pipe = RunFolder(root, None, resumed=False)
    problems = sample_problems(3, "heldout", seed=0)
    rows = []
    for label, path in (("Base", tiny_base), ("Zero", root / "01-zero" / "final"),
                        ("Dev2", root / "04-dev2" / "final")):
        model, tokenizer = load_model(str(path), "float32", torch.device("cpu"))
        res = evaluate(model, tokenizer, problems, EvalConfig(k=2, max_new_tokens=16))
        pipe.write_jsonl(f"eval/{label}.jsonl", res.samples)
        rows.append(pipeline.table_row(label, res, problems, summary=label == "Dev2"))
    pipe.write_json("manifest.json", manifest)
    pipe.write_json("pipeline.json", {"num_problems": 3, "k": 2, "rows": rows})
    return root


def _figures(page: str) -> dict[str, bytes]:
    """metric key -> the PNG bytes embedded for it."""
    found = re.findall(r'<img alt="[^"]*" data-metric="([^"]+)" src="data:image/png;base64,'
                       r'([A-Za-z0-9+/=]+)"', page)
    return {key: base64.b64decode(data) for key, data in found}


def _check_png(png: bytes, key: str) -> Image.Image:
    assert png[:8] == b"\x89PNG\r\n\x1a\n", key
    assert len(png) > 5_000, (key, len(png))
    img = Image.open(io.BytesIO(png)).convert("RGB")
    img.load()
    colors = img.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 20, key  # axes, text and a curve, not a blank
    return img


C0, C1 = (31, 119, 180), (255, 127, 14)  # matplotlib's first two line colours


def _pixels_like(img: Image.Image, rgb: tuple[int, int, int]) -> int:
    """How many pixels are (nearly) this colour."""
    return sum(n for n, c in img.getcolors(maxcolors=1 << 20)
               if sum(abs(a - b) for a, b in zip(c, rgb)) < 30)


def _assert_offline_page(page: str) -> None:
    assert "<script" not in page.lower()
    for attr in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert attr.startswith("data:"), attr
    assert "<answer>" not in page and "<think>" not in page  # model text is escaped


def test_run_report_plots_tables_and_samples(pipeline_folder):
    run = pipeline_folder / "01-zero"
    page = (run / "report.html").read_text()  # written by zero.main at the end of the run
    figures = _figures(page)
    for key in RL_PLOTS:
        assert key in figures, f"no plot of {key}"
        _check_png(figures[key], key)
    _assert_offline_page(page)

    # The eval table: one row per eval.jsonl line with its pass@1.
    evals = [json.loads(x) for x in (run / "eval.jsonl").read_text().splitlines()]
    assert [e["tag"] for e in evals] == ["base", "step2", "final"]
    table = page[page.index("<h2>Evaluations</h2>"):page.index("<h2>Summary</h2>")]
    for e in evals:
        assert f"<td>{e['tag']}</td><td>{e['step']}</td><td>{e['eval/pass@1']:.3f}</td>" in table

    # Completions of the first and last logged steps, reasoning apart from the answer.
    logged = [json.loads(x) for x in (run / "completions.jsonl").read_text().splitlines()]
    first = logged[0]
    reasoning, answer = report.split_completion(first["completion"])
    assert "<h3>step 1</h3>" in page and "<h3>step 3</h3>" in page
    assert f'<pre class="think">{_esc(reasoning)}</pre>' in page
    if answer:
        assert f'<pre class="answer">{_esc(answer)}</pre>' in page
    assert f"reward {first['reward']:.3f}" in page


def test_pipeline_report_has_a_line_per_rl_stage_and_the_table(pipeline_folder, capsys):
    assert cli(["report", str(pipeline_folder)]) == 0
    assert str(pipeline_folder / "report.html") in capsys.readouterr().out
    page = (pipeline_folder / "report.html").read_text()
    figures = _figures(page)
    for key in (*RL_PLOTS, "reward/summary_format", "reward/language"):
        assert key in figures, f"no plot of {key}"
        _check_png(figures[key], key)
    _assert_offline_page(page)
    # One line per RL stage, each stage in its own colour on every plot (matplotlib's C0, C1):
    # both where both logged the metric, only 04-dev2's where only it has the reward.
    total = Image.open(io.BytesIO(figures["reward/total"])).convert("RGB")
    language = Image.open(io.BytesIO(figures["reward/language"])).convert("RGB")
    assert _pixels_like(total, C0) > 50 and _pixels_like(total, C1) > 50
    assert _pixels_like(language, C0) == 0 and _pixels_like(language, C1) > 50
    assert "RL stages: 01-zero, 04-dev2" in page

    # The per-stage table, row by row from pipeline.json, and held-out samples per checkpoint.
    rows = json.loads((pipeline_folder / "pipeline.json").read_text())["rows"]
    for r in rows:
        assert f"<tr><td>{r['model']}</td><td>{r['pass@1']:.3f}</td>" in page
        assert f"<h3>{r['model']} (held-out)</h3>" in page
    samples = [json.loads(x) for x in (pipeline_folder / "eval" / "Zero.jsonl").read_text()
               .splitlines()]
    reasoning, _ = report.split_completion(samples[0]["completion"])
    assert f'<pre class="think">{_esc(reasoning)}</pre>' in page


def test_model_text_is_escaped_and_split(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": s, "reward/total": 0.1 * s, "reward/accuracy": 0.1 * s} for s in (1, 2, 2, 3)]
    rows[2]["reward/total"] = 0.9  # step 2 logged twice (a resumed run): the last one counts
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    evil = "<think> 1+1=2 <script>alert(1)</script> & </think> <answer> <b>2</b> </answer>"
    (run / "completions.jsonl").write_text(json.dumps(
        {"step": 1, "id": "p<1>", "answer": "2", "completion": evil, "reward": 1.0}) + "\n")
    page = report.write_report(run).read_text()
    assert '<pre class="think">1+1=2 &lt;script&gt;alert(1)&lt;/script&gt; &amp;</pre>' in page
    assert '<pre class="answer">&lt;answer&gt; &lt;b&gt;2&lt;/b&gt; &lt;/answer&gt;</pre>' in page
    assert "p&lt;1&gt;" in page
    _assert_offline_page(page)
    assert report.Run("r", run, report._by_step(rows)).series("reward/total") == (
        [1.0, 2.0, 3.0], [0.1, 0.9, pytest.approx(0.3)])
    # Metrics this run never logged are listed, not plotted.
    assert "(<code>train/kl</code>): not logged (only with a reference model" in page
    assert "train/kl" not in _figures(page)


def test_split_completion_doctests():
    assert doctest.testmod(report).failed == 0


def test_bad_folders_are_clear_errors(tmp_path, capsys):
    assert cli(["report", str(tmp_path)]) == 2
    assert f"{tmp_path}: nothing to report" in capsys.readouterr().err
    assert cli(["report", str(tmp_path / "nope")]) == 2
    assert f"{tmp_path / 'nope'}: no such folder" in capsys.readouterr().err
    # killed in its first step: the base evaluation is there, no metrics yet
    (tmp_path / "eval.jsonl").write_text('{"step": 0, "eval/pass@1": 0.25}\n')
    assert cli(["report", str(tmp_path)]) == 0
    assert "0.25" in (tmp_path / "report.html").read_text()
    (tmp_path / "report.html").unlink()
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2\n{"step": 3}\n')
    assert cli(["report", str(tmp_path)]) == 2
    assert f"{tmp_path / 'metrics.jsonl'}:2: invalid JSON" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()
    # A run killed while appending leaves a cut-off last line: skipped, the rest is reported.
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "reward/total": 0.5}\n{"step": 2, "rew')
    assert cli(["report", str(tmp_path)]) == 0
    assert "reward/total" in _figures((tmp_path / "report.html").read_text())


def test_rollout_metrics_reflection_and_language():
    problems = [Problem("a", "Compute 4+5", "9"), Problem("b", "Compute 4+5", "9")]
    texts = ["<think> 4+5=9, wait, 4+5=9 </think> <answer> 9 </answer>",
             "<think> 4 плюс 5 is 9 </think> <answer> 9 </answer>",
             "<think> 4+5=9 </think> <answer> 9 </answer>",  # no words: not in the language mean
             "<think> 4 plus 5 is 9, but check </think>"]
    ro = Rollouts(*(torch.zeros(4, 1) for _ in range(4)), texts=texts, num_tokens=[5, 6, 4, 8],
                  truncated=[False] * 4, group_size=2)
    scores = Scores([1.0] * 4, {"accuracy": [1.0] * 4}, {"accuracy": 0})
    m = zero._rollout_metrics(ro, scores, torch.ones(4), torch.tensor([True, True]),
                              [problems[i // 2] for i in range(4)])
    assert m["train/reflection"] == 0.5  # "wait"; "but", "check"
    # en share of the words: "wait" 1; "плюс is" 1/2; "plus is but check" 1 -> mean 5/6
    assert m["train/language"] == pytest.approx((1 + 0.5 + 1) / 3)


def test_a_failing_report_does_not_lose_the_run(tiny_base, tmp_path, monkeypatch, caplog):
    def broken(folder):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "write_report", broken)
    sets = _rl_overrides(tmp_path, tiny_base, "r", steps=1) + ["eval.every=0",
                                                               "run.report_to=[]"]
    with caplog.at_level(logging.WARNING, logger="r1kit"):
        summary = zero.main(load_config(ZeroConfig, None, sets))
    run = tmp_path / "r"
    assert summary["steps"] == 1 and (run / "final" / "model.safetensors").is_file()
    assert json.loads((run / "summary.json").read_text()) == summary
    assert any("could not write the report" in r.message and "disk full" in r.message
               for r in caplog.records)
    assert not (run / "tb").exists()  # report_to=[]: metrics.jsonl only


BROWSERS = ("chromium", "chromium-browser", "google-chrome")


@pytest.mark.skipif(not any(shutil.which(b) for b in BROWSERS), reason="no headless Chromium")
def test_page_renders_in_headless_chromium(pipeline_folder, tmp_path):
    browser = next(shutil.which(b) for b in BROWSERS if shutil.which(b))
    page = pipeline_folder / "01-zero" / "report.html"
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600",
         f"--screenshot={shot}", page.resolve().as_uri()],
        check=True, capture_output=True, timeout=90,
    )
    img = _check_png(shot.read_bytes(), "screenshot")
    assert img.size == (1200, 1600)
    assert _pixels_like(img, C0) > 50, "no plot line on the rendered page"


def _esc(text: str) -> str:
    import html

    return html.escape(text) or "<em>(none)</em>"
