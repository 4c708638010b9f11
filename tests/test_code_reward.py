"""The code reward, the built-in coding task, problem files with tests, and the refusal to run
model-written code without a sandbox (the sandbox itself: test_sandbox*.py)."""

from __future__ import annotations

import json
import random
from collections import Counter
from types import SimpleNamespace

import pytest

from r1kit import sandbox as sb
from r1kit.cli import main as cli
from r1kit.config import CodeConfig, DataConfig, EvalConfig, ZeroConfig, load_config
from r1kit.errors import UserError
from r1kit.rewards import code as code_reward
from r1kit.rewards import get_reward
from r1kit.rewards.scoring import RewardSpec, score
from r1kit.runs import load_problems
from r1kit.tasks import code as code_task
from r1kit.tasks.files import load_jsonl

BWRAP = sb.bwrap_problem(sb.find_python()) is None


@pytest.fixture
def sandbox_ready():
    """The code reward with its defaults; where bubblewrap is missing, the unsafe fallback runs
    the trusted fixture programs of these tests (the hostile ones need bwrap and skip)."""
    code_reward.configure(CodeConfig(unsafe_allow_unsandboxed=not BWRAP, wall_s=3.0))
    yield
    code_reward._state.update(options=None, sandbox=None)


def test_task_splits_are_disjoint_and_reference_programs_pass(sandbox_ready):
    train = code_task.sample_problems(10**6, "train", seed=0)
    held = code_task.sample_problems(10**6, "heldout", seed=0)
    assert len(train) > 900 and len(held) > 90
    assert {p.id for p in train}.isdisjoint({p.id for p in held})
    assert [p.id for p in code_task.sample_problems(5, "train", seed=0)] == [p.id for p in train[:5]]
    picks = random.Random(0).sample(train, 40)
    verdicts = code_reward.run_tests([code_task.correct_solution(p) for p in picks], picks)
    assert [v.reason for v in verdicts] == ["passed"] * 40
    p = picks[0]
    assert p.meta["tests"][0].startswith("assert f(0) == ") and len(p.meta["tests"]) == 5
    assert p.prompt.startswith("Write f with f(0)=")


def test_corpus_programs_are_sloppy_in_the_ways_rl_can_fix(sandbox_ready):
    rng = random.Random(1)
    train = code_task.sample_problems(10**6, "train", seed=0)
    problems = [rng.choice(train) for _ in range(500)]
    texts = [code_task.worked_solution(p, rng, code_task.CodeStyle()) for p in problems]
    verdicts = code_reward.run_tests(texts, problems)
    reasons = Counter(v.reason for v in verdicts)
    assert 0.25 < reasons["passed"] / len(texts) < 0.6
    for reason in ("wrong_answer", "syntax_error", "no_code"):
        assert reasons[reason] > 0, reasons
    assert any("wait," in t for t in texts)
    fmt = get_reward("format")
    assert sum(fmt(t, p) for t, p in zip(texts, problems)) == len(texts)


def test_extract_program_takes_the_last_fenced_block_of_the_answer():
    two = "<answer> ```\nA\n``` and ```py\nB\n``` </answer>"
    assert code_task.extract_program(two) == "B"
    think_only = "<think> ```\nX\n``` </think> <answer> ```python\nY\n``` </answer>"
    assert code_task.extract_program(think_only) == "Y"
    assert code_task.extract_program("```python\nZ\n```") == "Z"  # no answer tags
    assert code_task.extract_program("<answer> ```python\ndef f(x): return") is None
    assert code_task.extract_program("<answer> ```python\n\n``` </answer>") is None
    assert code_task.extract_program("<answer> ```python\r\nW\r\n``` </answer>") == "W"
    with_output = "<answer> ```python\nprint(f(1))\n```\noutput:\n```\n1\n``` </answer>"
    assert code_task.extract_program(with_output) == "print(f(1))"
    empty_then_code = "<answer> ```python\n\n``` then ```\ndef f(): return 2\n``` </answer>"
    assert code_task.extract_program(empty_then_code) == "def f(): return 2"


def test_score_records_reasons_and_all_or_nothing(sandbox_ready):
    p = code_task.sample_problems(1, "train", seed=0)[0]
    good = code_task.correct_solution(p)
    f0, f1 = (t.split("== ")[1] for t in p.meta["tests"][:2])
    partial = f"<answer> ```python\ndef f(x):\n    return {{0: {f0}, 1: {f1}}}[x]\n``` </answer>"
    loop = "<answer> ```python\nwhile 1: pass\n``` </answer>"
    texts = [good, partial, "<answer> nothing </answer>", loop]
    code_reward.configure(CodeConfig(unsafe_allow_unsandboxed=not BWRAP, wall_s=1.0, cpu_s=1))
    s = score(texts, [p] * 4, [RewardSpec("code", 1.0)], [10] * 4, 64)
    assert s.per_reward["code"] == [1.0, 0.4, 0.0, 0.0]
    assert [s.row_reasons(i)["code"] for i in range(4)] == [
        "passed", "runtime_error", "no_code", "timeout"]
    m = s.means()
    assert m["reward/code/passed"] == 0.25 and m["reward/code/timeout"] == 0.25
    code_reward.configure(CodeConfig(unsafe_allow_unsandboxed=not BWRAP, all_or_nothing=True))
    s = score(texts[:2], [p] * 2, [RewardSpec("code", 1.0)], [10] * 2, 64)
    assert s.per_reward["code"] == [1.0, 0.0]
    arithmetic = load_problems(DataConfig(), 2)[1][0]  # no tests: not scorable by `code`
    assert code_reward.run_tests([good], [arithmetic]) == [None]


def test_evaluation_grades_code_problems_by_their_tests(sandbox_ready, monkeypatch):
    from r1kit import evaluation

    problems = code_task.sample_problems(2, "heldout", seed=0)
    good = [code_task.correct_solution(p) for p in problems]
    wrong = [g.replace("*", "+") for g in good]
    canned = [good[0], good[0], wrong[0], good[1], wrong[1], wrong[1]]  # k=3 per problem
    monkeypatch.setattr(evaluation, "sample", lambda *a, **kw: SimpleNamespace(
        texts=canned, num_tokens=[20] * 6, truncated=[False] * 6))
    model = SimpleNamespace(parameters=lambda: iter([__import__("torch").zeros(1)]),
                            eval=lambda: None)
    res = evaluation.evaluate(model, None, problems, EvalConfig(k=3, batch_size=6),
                              template="plain")
    assert res.pass1 == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert res.cons_k == 0.5  # majority right on the first, wrong on the second


def test_builtin_code_source_and_cli_task_flag():
    train, held = load_problems(DataConfig(source="builtin:code", train_size=50), 20)
    assert len(train) == 50 and len(held) == 20 and all("tests" in p.meta for p in train)
    cfg = load_config(ZeroConfig, None, ["data.source=builtin:code"])
    assert cfg.code == CodeConfig()
    from r1kit.models import builtin_model_for

    derived = builtin_model_for(cfg)
    assert derived.model.path == "builtin:code"  # the base that learned programs
    assert derived.rewards.weights == {"code": 1.0, "format": 0.1}
    mine = load_config(ZeroConfig, None, ["data.source=builtin:code", "rewards.weights={code: 2}"])
    assert builtin_model_for(mine).rewards.weights == {"code": 2}
    other = load_config(ZeroConfig, None, ["data.source=builtin:code", "model.path=m"])
    assert builtin_model_for(other).model.path == "m"


def test_the_shipped_code_base_is_the_code_base_config():
    from r1kit.config import to_dict
    from r1kit.models import resolve_model_path
    from r1kit.stages.base import CODE_BASE, PACKAGED_CODE_BASE

    assert resolve_model_path("builtin:code") == str(PACKAGED_CODE_BASE)
    record = json.loads((PACKAGED_CODE_BASE / "r1kit_base.json").read_text())
    expected = to_dict(CODE_BASE)
    assert {k: v for k, v in record["config"].items() if k in expected} == {
        k: v for k, v in expected.items() if k in record["config"]}


def test_problem_files_carry_tests_with_clear_errors(tmp_path):
    good = {"prompt": "Write double", "tests": ["assert double(2) == 4"],
            "entry_point": "double", "language": "python"}
    path = tmp_path / "code.jsonl"
    path.write_text(json.dumps(good) + "\n")
    [p] = load_jsonl(path)
    assert p.meta["tests"] == ["assert double(2) == 4"] and p.answer == ""
    bad = [
        ({"tests": "assert f(1) == 2"}, "field 'tests' must be a non-empty list"),
        ({"tests": []}, "must be a non-empty list of assert statements, got an empty list"),
        ({"tests": [3]}, "field 'tests' item 0 must be a string"),
        ({"tests": ["assert f(1) == 2", "print(1)"]}, "field 'tests' item 1"),
        ({"tests": ["assert f(1) =="]}, "not valid Python"),
        ({"tests": ["assert f(1) == 2", "assert await f()"]},
         r"field 'tests' item 1 \('assert await f\(\)'\): its expression does not compile"),
        ({"tests": [f"assert f() == {'x' * 100_000!r}"]},
         "field 'tests' item 0 .*: its expected value is 100002 characters long, over the 100000"),
        ({"tests": [f"assert f() == {'[' * 101 + ']' * 101}"]},
         "field 'tests' item 0 .*: its expected value is nested more than 100 levels deep"),
        ({"entry_point": "two words"}, "field 'entry_point'"),
        ({"language": "cpp"}, "only 'python' can be run"),
    ]
    for change, message in bad:
        path.write_text(json.dumps(good) + "\n" + json.dumps({**good, **change}) + "\n")
        with pytest.raises(UserError, match=f"code.jsonl:2: .*{message}"):
            load_jsonl(path)


def test_problem_csv_files_carry_tests_as_a_json_cell(tmp_path):
    from r1kit.tasks.files import load_data_file

    path = tmp_path / "code.csv"
    path.write_text('prompt,tests\nWrite double,"[""assert double(2) == 4""]"\n'
                    'Write triple,assert triple(1) == 3\n')
    with pytest.raises(UserError, match="code.csv:3: field 'tests' must be a JSON list"):
        load_data_file(path)
    path.write_text(path.read_text().splitlines()[0] + "\n" + path.read_text().splitlines()[1])
    [p] = load_data_file(path)
    assert p.meta["tests"] == ["assert double(2) == 4"]


def test_extract_program_reads_indented_tilde_and_titled_fences():
    listed = ("<answer>\n1. The function:\n   ```python\n   def f(x):\n       return 2 * x\n"
              "   ```\n</answer>")
    assert code_task.extract_program(listed) == "def f(x):\n    return 2 * x"
    titled = "<answer>\n```python title=sol.py\ndef f(x): return 1\n```\n</answer>"
    assert code_task.extract_program(titled) == "def f(x): return 1"
    tilde = "<answer> ~~~python\ndef f(x): return '```'\n~~~ </answer>"
    assert code_task.extract_program(tilde) == "def f(x): return '```'"
    tilde_then_py = "<answer> ~~~\nA\n~~~ and ```py\nB\n``` then ~~~\nC\n~~~</answer>"
    assert code_task.extract_program(tilde_then_py) == "B"  # the last python-tagged one
    prose = "I put code in ```python fences like this:\n```python\ndef f(): return 3\n```"
    assert code_task.extract_program(prose) == "def f(): return 3"  # a mention opens no block


def test_killed_programs_score_under_1_and_the_correct_filter_agrees_with_eval(sandbox_ready):
    from r1kit.filters import Candidate, correct
    from r1kit.rewards.scoring import Verdict
    from r1kit.tasks.base import Problem

    problem = Problem("p", "Write f", "", {"tests": ["assert f(2) == 4", "assert f(3) == 6"]})
    code_reward.configure(CodeConfig(unsafe_allow_unsandboxed=not BWRAP, wall_s=2.0, cpu_s=1))
    spin = "import atexit\ndef _spin():\n    while True: pass\natexit.register(_spin)\n"
    texts = [f"<answer> ```python\n{head}def f(x): return 2*x\n``` </answer>"
             for head in ("", spin)]
    good, hung = code_reward.run_tests(texts, [problem] * 2)
    assert (float(good), good.reason) == (1.0, "passed")
    assert (float(hung), hung.reason) == (pytest.approx(2 / 3), "timeout")
    assert correct(Candidate(texts[0], problem)) == (True, "")
    assert correct(Candidate(texts[1], problem)) == (False, "tests fail (timeout)")
    # a score of 1 with any other reason (a precomputed value) is not kept either
    assert not correct(Candidate("", problem, scores={"code": Verdict(1.0, "timeout")}))[0]


def test_refuses_to_start_without_bubblewrap_and_leaves_no_run_folder(monkeypatch, tmp_path,
                                                                      capsys):
    monkeypatch.setitem(sb._PROBES, sb.find_python(), "bwrap is not installed")
    with pytest.raises(UserError, match="bubblewrap"):
        code_reward.configure(CodeConfig())
    args = ["zero", "--task", "builtin:code", "--set", f"run.out_dir={tmp_path}",
            "--set", "rewards.weights={code: 1.0}"]
    assert cli(args) == 2
    assert "--unsafe-allow-unsandboxed" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
    unsafe = code_reward.configure(load_config(ZeroConfig, None, [
        "code.unsafe_allow_unsandboxed=true"]).code)
    assert not unsafe.sandboxed
    code_reward._state.update(options=None, sandbox=None)


def test_zero_on_builtin_code_logs_reasons(tiny_base, tmp_path, sandbox_ready):
    from r1kit.stages import zero

    cfg = load_config(ZeroConfig, None, [
        f"model.path={tiny_base}", f"run.out_dir={tmp_path}", "run.name=code",
        "data.source=builtin:code", "data.train_size=32", "rl.steps=2", "rl.prompts_per_step=2",
        "rl.group_size=2", "rollout.max_new_tokens=8", "eval.num_problems=2", "eval.k=1",
        "eval.max_new_tokens=8", "rewards.weights={code: 1.0, format: 0.1}",
        f"code.unsafe_allow_unsandboxed={str(not BWRAP).lower()}", "run.report_to=[]",
    ])
    zero.main(cfg)
    rows = [json.loads(line) for line in (tmp_path / "code" / "metrics.jsonl").open()]
    assert rows[-1]["reward/code/no_code"] == 1.0  # an untrained toy writes no code block
    logged = [json.loads(line) for line in (tmp_path / "code" / "completions.jsonl").open()]
    assert logged and all(r["reasons"] == {"code": "no_code"} for r in logged)


def test_base_corpus_mix_keeps_the_arithmetic_only_corpus_unchanged():
    from r1kit.config import BaseConfig
    from r1kit.tasks.arithmetic import sample_problems, worked_solution
    from r1kit.templates import render_prompt
    from r1kit.tinybase import EOS, corpus

    cfg = BaseConfig()
    rng = random.Random("corpus-3")  # the corpus as the shipped base was built
    old = [render_prompt(p.prompt) + worked_solution(p, rng, cfg.corpus) + EOS
           for p in sample_problems(300, "train", seed=3)]
    assert corpus(300, cfg, 3) == old
    mixed = corpus(300, BaseConfig(tasks=["arithmetic", "code"]), 3)
    assert len(mixed) == 300
    assert sum("Write f with" in d for d in mixed) == 150 and sum("Compute" in d for d in mixed) == 150
    assert mixed[:20] != old[:20]  # interleaved, so the tokenizer's sample sees both
    with pytest.raises(UserError, match="tasks: give distinct tasks"):
        corpus(10, BaseConfig(tasks=["poetry"]), 0)
