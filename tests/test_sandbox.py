"""The sandbox's parts: test parsing, grading in the parent, the refusal path, the unsafe fallback,
batching and the cache (hostile programs: test_sandbox_adversarial.py)."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

import pytest

from r1kit import sandbox as sb
from r1kit.errors import UserError
from r1kit.sandbox import Limits, Sandbox, bwrap_problem, find_python, grade, parse_test

NEEDS_BWRAP = pytest.mark.skipif(
    bwrap_problem(find_python()) is not None,
    reason=f"bubblewrap unavailable: {bwrap_problem(find_python())}",
)
TESTS = ["assert f(1) == 5", "assert f(2) == 8", "assert f(7) == 23"]
FAST = Limits(wall_s=2.0, cpu_s=1)


def test_parse_test_keeps_the_literal_in_the_parent():
    assert parse_test("assert f(2) == 8") == sb.ParsedTest("f(2)", 8)
    assert parse_test("assert [1, 'a'] == g('x')") == sb.ParsedTest("g('x')", [1, "a"])
    assert parse_test("assert f(1) > 0").expected is sb._TRUE
    assert parse_test("assert f(1) == g(1)") == sb.ParsedTest("f(1) == g(1)", sb._TRUE)
    for bad in ("f(1) == 2", "assert f(1) ==", "import os", "assert 1\nassert 2"):
        with pytest.raises(ValueError):
            parse_test(bad)


def _records(nonce: str, *records) -> bytes:
    return "".join(f"\n{nonce} {json.dumps(list(r))}\n" for r in records).encode()


def test_grade_compares_values_in_the_parent_and_ignores_untagged_lines():
    tests = [parse_test(t) for t in TESTS]
    out = b"all tests passed\n3/3\n" + _records("n1", ("value", 0, "5"), ("value", 1, "8"),
                                                ("value", 2, "22"), ("done",))
    o = grade(out, "n1", tests, "", 0)
    assert (o.passed, o.total, o.reason) == (2, 3, "wrong_answer")
    assert grade(out, "other-nonce", tests, "", 0).passed == 0
    forged_twice = _records("n1", ("value", 0, "5")) + out
    assert grade(forged_twice, "n1", tests, "", 0).reason == "runtime_error"
    early_exit = _records("n1", ("value", 0, "5"))
    assert grade(early_exit, "n1", tests, "", 0).reason == "runtime_error"
    bogus = _records("n1", ("value", 7, "5"), ("done",))
    assert grade(bogus, "n1", tests, "", 0).reason == "runtime_error"
    huge = _records("n1", ("value", 0, "[" * 5000), ("value", 1, "8"), ("value", 2, "23"),
                    ("done",))
    assert grade(huge, "n1", tests, "", 0).passed == 2


def test_records_of_the_wrong_shape_fail_that_program_and_never_claim_a_pass():
    """The program can learn the nonce, so every record shape it could forge is checked."""
    tests = [parse_test(t) for t in TESTS]
    ok = [("value", 0, "5"), ("value", 1, "8"), ("value", 2, "23"), ("done",)]
    assert grade(_records("n", *ok), "n", tests, "", 0).reason == "passed"
    forged = [
        [("program_error", "passed", "ok")],  # a reason the harness never reports
        [("test_error", i, "passed", "x") for i in range(3)] + [("done",)],
        [("syntax_error",)],
        [("value", True, "5")] + ok[1:],  # bool is an int subclass
        [("done", 1)],
    ]
    for records in forged:
        o = grade(_records("n", *records), "n", tests, "", 0)
        assert (o.passed, o.reason) == (0, "runtime_error"), records
    for raw in ('{"a": 1}', '"done"', "[]", "[" * 5000 + "]" * 5000, "[1, 2"):
        o = grade(f"\nn {raw}\n".encode() + _records("n", *ok), "n", tests, "", 0)
        assert (o.passed, o.reason) == (0, "runtime_error"), raw


def test_refuses_without_bubblewrap_unless_explicitly_allowed(monkeypatch, caplog):
    monkeypatch.setitem(sb._PROBES, "/fake/python3", "bwrap is not installed")
    with pytest.raises(UserError, match="--unsafe-allow-unsandboxed"):
        Sandbox(FAST, python="/fake/python3")
    python = find_python()
    monkeypatch.setitem(sb._PROBES, python, "bwrap is not installed")
    with caplog.at_level(logging.WARNING, logger="r1kit"):
        unsafe = Sandbox(FAST, allow_unsandboxed=True)
    assert not unsafe.sandboxed
    assert "UNSAFE" in caplog.text
    # Same harness, limits and grading, without isolation.
    assert unsafe.run("def f(x):\n    return 3 * x + 2", TESTS).reason == "passed"
    assert unsafe.run("while True:\n    pass", TESTS).reason == "timeout"
    assert unsafe.run("def f(x):\n    return x", TESTS).reason == "wrong_answer"
    if os.geteuid() == 0:  # started by root, the unconfined program still is not root
        never_root = "import os\nuid = os.geteuid()\ndef f(x):\n    return 3 * x + 2 if uid else -1"
        assert unsafe.run(never_root, TESTS).reason == "passed"


@NEEDS_BWRAP
def test_reasons_for_ordinary_failures():
    box = Sandbox(FAST)
    programs = {
        "def f(x):\n    return 3 * x + 2": ("passed", 3),
        "def f(x):\n    return {1: 5, 2: 8}[x]": ("runtime_error", 2),
        "def f(x):\n    return 3 * x + 1": ("wrong_answer", 0),
        "def f(x) return x": ("syntax_error", 0),
        "import nonexistent_module": ("runtime_error", 0),
        "def g(x):\n    return x": ("runtime_error", 0),
        # a script's own exit at its end (models write one): what it defined is tested
        "import sys\ndef f(x):\n    return 3 * x + 2\nsys.exit(0)": ("passed", 3),
        "import sys\ndef f(x):\n    return 3 * x + 2\nsys.exit(1)": ("runtime_error", 0),
    }
    outcomes = box.run_many([(p, TESTS) for p in programs])
    for (program, (reason, passed)), o in zip(programs.items(), outcomes):
        assert (o.reason, o.passed) == (reason, passed), program


@NEEDS_BWRAP
def test_bare_asserts_and_values_of_any_literal_type():
    box = Sandbox(FAST)
    tests = ["assert is_even(4)", "assert not is_even(3)", "assert pair(2) == (2, [2.5])"]
    good = "def is_even(n):\n    return n % 2 == 0\ndef pair(n):\n    return (n, [n + 0.5])"
    assert box.run(good, tests).reason == "passed"
    truthy = "def is_even(n):\n    return 1\ndef pair(n):\n    return None"
    outcome = box.run(truthy, tests)  # 1 is truthy, as for `assert`; the others fail
    assert (outcome.passed, outcome.reason) == (1, "wrong_answer")


@NEEDS_BWRAP
def test_values_equal_by_pythons_eq_pass_even_when_their_repr_is_no_literal():
    box = Sandbox(FAST)
    equal = {  # returned expression -> the literal it equals in Python
        "collections.Counter('aab')": "{'a': 2, 'b': 1}",
        "collections.OrderedDict([(2, 'x'), (1, 'y')])": "{1: 'y', 2: 'x'}",
        "collections.defaultdict(int, {'a': 1})": "{'a': 1}",
        "frozenset({1, 2})": "{1, 2}",
        "{1: 2, 3: 4}.keys()": "{1, 3}",
        "{1: 2}.items()": "{(1, 2)}",
        "collections.namedtuple('P', 'x y')(1, 2)": "(1, 2)",
        "fractions.Fraction(6, 3)": "2",
        "fractions.Fraction(1, 4)": "0.25",
        "decimal.Decimal('2.5')": "2.5",
        "float('inf')": "1e999",
        "-float('inf')": "-1e999",
        "decimal.Decimal('Infinity')": "1e999",
        "decimal.Decimal('-Infinity')": "-1e999",
        "list(range(3000))": repr(list(range(3000))),
        "enum.IntEnum('E', 'A B').B": "2",
        "bytearray(b'ab')": "b'ab'",
        "[collections.Counter('a'), (frozenset(),)]": "[{'a': 1}, (set(),)]",
    }
    unequal = {  # Python's == says False for these, and so must the grader
        "fractions.Fraction(1, 3)": "0.3333333333333333",
        "{1: 2}.values()": "[2]",
        "range(3)": "[0, 1, 2]",
        "float('nan')": "0.0",
        "decimal.Decimal('NaN')": "0.0",
        "decimal.Decimal('sNaN')": "0",
        "type('S', (str,), {'__eq__': lambda s, o: True})('no')": "'yes'",
        "type('T', (set,), {'__iter__': lambda s: iter([1, 2])})()": "{1, 2}",
    }
    header = "import collections, decimal, enum, fractions\n"
    for cases, reason in ((equal, "passed"), (unequal, "wrong_answer")):
        jobs = [(f"{header}def f():\n    return {expr}", [f"assert f() == {lit}"])
                for expr, lit in cases.items()]
        for expr, o in zip(cases, box.run_many(jobs)):
            assert o.reason == reason, (expr, o)


@NEEDS_BWRAP
def test_long_values_fit_the_output_cap():
    box = Sandbox(FAST)
    long_ascii = [f"assert f({i}) == {'x' * 25_000!r}" for i in range(3)]
    assert box.run("def f(i):\n    return 'x' * 25_000", long_ascii).reason == "passed"
    wide = "中" * 11_000  # 6 bytes a character if JSON escaped it
    assert box.run(f"def f():\n    return {wide!r}", [f"assert f() == {wide!r}"]).reason == "passed"
    # as deep as the harness writes values: accepted at load, and a right program passes
    deepest = "[" * sb.MAX_VALUE_DEPTH + "1" + "]" * sb.MAX_VALUE_DEPTH
    assert box.run(f"def f():\n    return {deepest}", [f"assert f() == {deepest}"]).reason == (
        "passed")
    with pytest.raises(ValueError, match="nested more than"):
        parse_test(f"assert f() == [{deepest}]")


@NEEDS_BWRAP
def test_one_hung_program_does_not_hold_up_the_batch_and_results_are_cached():
    box = Sandbox(Limits(wall_s=1.5, cpu_s=1), workers=2)
    jobs = [("import time\ntime.sleep(30)", TESTS)] + [
        (f"def f(x):\n    return 3 * x + {i % 4}", TESTS) for i in range(12)
    ]
    t0 = time.monotonic()
    outcomes = box.run_many(jobs)
    assert time.monotonic() - t0 < 6
    assert outcomes[0].reason == "timeout"
    assert [o.reason for o in outcomes[1:]].count("passed") == 3  # every "+ 2" program
    t0 = time.monotonic()
    again = box.run_many(jobs[1:])  # finished programs come from the cache
    assert time.monotonic() - t0 < 0.05 and again == outcomes[1:]


@NEEDS_BWRAP
def test_a_full_cache_never_loses_this_batchs_hits():
    box = Sandbox(FAST, cache_size=2)
    old = [(f"def f(x):\n    return 3 * x + {i}", TESTS) for i in range(2)]
    box.run_many(old)  # the cache is full
    new = [(f"def f(x):\n    return 3 * x - {i}", TESTS) for i in range(3)]
    outcomes = box.run_many(old + new)  # adding the new ones evicts the old hits
    assert [o.reason for o in outcomes] == ["wrong_answer", "wrong_answer", "wrong_answer",
                                            "wrong_answer", "wrong_answer"]
    assert len(box._cache) == 2


def test_a_program_killed_after_its_last_value_never_scores_as_passed():
    """Killed (wall, CPU, output cap) or gone before `done`, a run that reported every right value
    did not finish: its share counts that as one more failed test."""
    tests = [parse_test(t) for t in TESTS]
    values = _records("n", ("value", 0, "5"), ("value", 1, "8"), ("value", 2, "23"))
    done = values + _records("n", ("done",))
    for records, killed, rc, reason in [(done, "timeout", -9, "timeout"),
                                        (values, "output_limit", -9, "output_limit"),
                                        (done, "", -signal.SIGXCPU, "timeout"),
                                        (values, "", 1, "runtime_error")]:
        o = grade(records, "n", tests, killed, rc)
        assert (o.passed, o.reason, o.fraction) == (3, reason, 0.75), (killed, rc)
    assert grade(done, "n", tests, "", 0).fraction == 1.0
    one = grade(_records("n", ("value", 0, "5")), "n", tests, "timeout", -9)
    assert one.fraction == 0.25  # one of three tests, and the unfinished run


def test_hang_flood_or_thread_after_the_last_test_is_not_passed():
    box = Sandbox(FAST, allow_unsandboxed=True)  # benign programs: the unsafe fallback may run them
    tests = ["assert f(2) == 4", "assert f(3) == 6"]
    body = "def f(x):\n    return 2 * x\n"
    programs = {
        "import atexit\ndef _spin():\n    while True: pass\natexit.register(_spin)\n": "timeout",
        "import atexit, os\natexit.register(lambda: os.write(1, b'x' * 10**6))\n": "output_limit",
        ("import threading, time\n"
         "threading.Thread(target=time.sleep, args=(100,)).start()\n"): "timeout",
    }
    for (program, reason), o in zip(programs.items(),
                                    box.run_many([(p + body, tests) for p in programs])):
        assert (o.passed, o.reason, o.fraction) == (2, reason, 2 / 3), program


def test_tests_that_cannot_compile_alone_are_refused_and_reported_apart_from_the_program():
    for test in ("assert await f()", "assert (yield)", "assert f() == (yield)"):
        with pytest.raises(ValueError, match="does not compile on its own"):
            parse_test(test)
    # A test the sandbox's Python cannot compile (another version) is the problem's fault.
    tests = [parse_test(t) for t in TESTS]
    o = grade(_records("n", ("bad_test", 1, "SyntaxError: x")), "n", tests, "", 0)
    assert (o.reason, o.passed) == ("sandbox_error", 0) and "test 1 does not compile" in o.detail


def test_the_harness_reports_a_test_it_cannot_compile(monkeypatch):
    box = Sandbox(FAST, allow_unsandboxed=True)
    monkeypatch.setattr(sb, "parse_test", lambda t: sb.ParsedTest(t, 1))  # as if it compiled
    o = box.run("def f():\n    return 1", ["f()", "await f()"])
    assert o.reason == "sandbox_error" and "test 1 does not compile in the sandbox" in o.detail
    assert box.run("def f(:", ["f()", "await f()"]).reason == "syntax_error"  # the program's


def test_expected_values_longer_than_the_sandbox_compares_are_refused():
    fits = "x" * (sb.MAX_VALUE_CHARS - 2)  # its repr adds the quotes
    assert parse_test(f"assert f() == {fits!r}").expected == fits
    with pytest.raises(ValueError, match=f"over the {sb.MAX_VALUE_CHARS}"):
        parse_test(f"assert f() == {fits + 'x'!r}")


def test_long_values_do_not_count_against_the_programs_output_cap():
    box = Sandbox(FAST, allow_unsandboxed=True)
    big = list(range(8000))  # about 47,000 characters
    assert box.run("def f(n):\n    return list(range(n))",
                   [f"assert f(8000) == {big!r}"]).reason == "passed"
    tests = [f"assert g({i}) == {'ab' * (10_000 + 1000 * i)!r}" for i in range(14)]  # 20-46k
    o = box.run("def g(i):\n    return 'ab' * (10_000 + 1000 * i)", tests)
    assert (o.passed, o.reason) == (14, "passed")
    flood = box.run("print('x' * 300_000)\ndef g(i):\n    return 'ab' * (10_000 + 1000 * i)",
                    tests)
    assert flood.reason == "output_limit"  # the program's own output keeps its cap
    o = box.run(f"def f():\n    return {'y' * sb.MAX_VALUE_CHARS!r} + 'y'", ["assert f() == 'y'"])
    assert o.reason == "wrong_answer" and "value over" in o.detail


def _survivors(mark: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if mark.encode() in (proc / "cmdline").read_bytes():
                found.append(proc.name)
        except OSError:
            continue
    return found


def test_unsandboxed_children_die_when_the_program_finishes(monkeypatch):
    monkeypatch.setitem(sb._PROBES, find_python(), "forced for this test")
    box = Sandbox(FAST, allow_unsandboxed=True)
    started = ("import subprocess\n"
               "subprocess.Popen(['sleep', '{mark}'])\n"  # holds the output pipes open too
               "subprocess.Popen(['sleep', '{mark}'], stdout=subprocess.DEVNULL, "
               "stderr=subprocess.DEVNULL)\n"
               "def f(x):\n    return 3 * x + 2")
    mark = "77.4243"
    t0 = time.monotonic()
    o = box.run(started.format(mark=mark), TESTS)
    assert (o.reason, o.finished) == ("passed", True)
    assert time.monotonic() - t0 < FAST.wall_s  # not held to the wall limit by the pipes
    time.sleep(0.2)
    assert _survivors(mark) == []
