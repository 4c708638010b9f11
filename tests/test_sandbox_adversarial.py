"""Hostile programs against the sandbox: each must be contained and scored as a failure with the
right reason, and the test process and the machine must be unharmed (r1kit/sandbox.py).

Most attacks are written so that the program computes the right answer only if the attack worked
(`ok` below): a pass would mean an escape. All cases run as one parallel batch with tight limits.
`benchmarks/sandbox_table.py` prints the table the README shows.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from r1kit.sandbox import Limits, Sandbox, bwrap_problem, find_python

PROBLEM = bwrap_problem(find_python())
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=f"bubblewrap unavailable: {PROBLEM}")

REPO = Path(__file__).resolve().parent.parent
TESTS = ["assert f(1) == 5", "assert f(2) == 8", "assert f(7) == 23"]
LIMITS = Limits(wall_s=2.0, cpu_s=1, memory_mb=128, processes=16, output_bytes=20_000,
                file_bytes=200_000, tmp_bytes=1_000_000)
MARK = "4242.125"  # argument of the background sleep that must not survive
WIN = "\ndef f(x):\n    return x * 3 + 2 if ok else -1\n"  # right only if the attack worked


def cases(ctx: dict) -> list[tuple[str, str, str]]:
    """(name, program, expected reason). `ctx` holds paths, ports and pids of this test run."""
    return [
        ("infinite loop", "while True:\n    pass", "timeout"),
        ("infinite loop ignoring SIGXCPU",
         "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass",
         "timeout"),
        ("sleep past the wall limit", "import time\ntime.sleep(60)", "timeout"),
        ("hang inside the tested function", "def f(x):\n    while True:\n        pass", "timeout"),
        ("fork bomb", "import os\nwhile True:\n    os.fork()", "runtime_error"),
        ("thread bomb",
         ("import threading, time\nwhile True:\n"
         "    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()"),
         "runtime_error"),
        ("memory bomb, one allocation", "x = bytearray(10**10)", "memory_limit"),
        ("memory bomb, growing", "a = []\nwhile True:\n    a.append(' ' * 10**6)", "memory_limit"),
        ("raise the memory limit, then allocate",
         ("import resource\ntry:\n    resource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n"
         "except Exception:\n    pass\nx = bytearray(10**10)"), "memory_limit"),
        ("huge stdout via print", "while True:\n    print('x' * 10000)", "output_limit"),
        ("huge stdout via os.write", "import os\nwhile True:\n    os.write(1, b'y' * 65536)",
         "output_limit"),
        ("write a huge file", "open('/tmp/big', 'wb').write(b'0' * 10**8)", "output_limit"),
        ("fill the private tmp",
         "i = 0\nwhile True:\n    open(f'/tmp/f{i}', 'wb').write(b'0' * 150_000)\n    i += 1",
         "runtime_error"),
        ("read /etc/shadow", _try("open('/etc/shadow').read()"), "wrong_answer"),
        ("list the user's home", _try(f"import os\nos.listdir({str(Path.home())!r})"),
         "wrong_answer"),
        ("read the repository", _try(f"open({str(REPO / 'pyproject.toml')!r}).read()"),
         "wrong_answer"),
        ("read the run folder", _try(f"open({ctx['secret_file']!r}).read()"), "wrong_answer"),
        ("write into the run folder",
         _try(f"open({ctx['planted']!r}, 'w').write('pwned')"), "wrong_answer"),
        ("write outside tmp (/usr, /)",
         _try("open('/usr/pwned', 'w').write('x')\nopen('/pwned', 'w').write('x')"),
         "wrong_answer"),
        ("connect to a server on the host's 127.0.0.1",
         _try(f"import socket\nsocket.create_connection(('127.0.0.1', {ctx['port']}), timeout=1)"),
         "wrong_answer"),
        ("list network interfaces (only lo may exist)",
         "import socket\nok = [n for _, n in socket.if_nameindex()] != ['lo']" + WIN,
         "wrong_answer"),
        ("os.kill the parent", _try(f"import os, signal\nos.kill({ctx['pid']}, signal.SIGTERM)"),
         "wrong_answer"),
        ("kill every process it can see", "import os, signal\nos.kill(-1, signal.SIGKILL)",
         "runtime_error"),
        ("ptrace the parent",
         _try(f"import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
              f"assert libc.ptrace(16, {ctx['pid']}, 0, 0) == 0"), "wrong_answer"),
        ("ctypes system() writing on the host",
         _try(f"import ctypes\nctypes.CDLL(None).system(b'echo pwned > {ctx['planted2']}')\n"
              f"open({ctx['planted2']!r}).read()"), "wrong_answer"),
        ("background process that outlives the run",
         (f"import subprocess, os\nsubprocess.Popen(['sleep', '{MARK}'], start_new_session=True)\n"
         "def f(x):\n    return -1"), "wrong_answer"),
        ("read a secret environment variable",
         "import os\nok = os.environ.get('HF_TOKEN', '').startswith('hf_')" + WIN, "wrong_answer"),
        ("read secrets from /proc/*/environ", _try("open('/proc/1/environ').read()"),
         "wrong_answer"),
        ("patch the harness to report success",
         ("import sys\nfr = sys._getframe(1)\nemit = fr.f_locals.get('emit') or "
         "fr.f_back.f_locals['emit']\nfor i in range(3):\n    emit('value', i, 'True')\n"
         "emit('done')\nimport os\nos._exit(0)"), "wrong_answer"),
        ("monkeypatch builtins the harness uses",
         "import builtins\nbuiltins.repr = lambda v: 'True'\nbuiltins.eval = lambda *a: True",
         "wrong_answer"),
        ("exit(0) before the tests run", "import sys\nsys.exit(0)", "runtime_error"),
        ("os._exit(0) before the tests run", "import os\nos._exit(0)", "runtime_error"),
        ("print a forged 'all tests passed' line",
         ("print('all tests passed')\nprint('3/3 passed')\nprint('\\n' + '0' * 32 + ' [\"done\"]')\n"
         "def f(x):\n    return -1"), "wrong_answer"),
        ("unbounded recursion", "def f(x):\n    return f(x)", "runtime_error"),
        ("forge a 'passed' verdict with the harness's nonce",
         _forge('["program_error", "passed", "ok"]'), "runtime_error"),
        ("forge 'passed' test errors and 'done' with the nonce",
         _forge(*[f'["test_error", {i}, "passed", "x"]' for i in range(3)], '["done"]'),
         "runtime_error"),
        ("write a malformed record with the nonce", _forge('{"a": 1}'), "runtime_error"),
        ("write a record nested 5000 deep with the nonce", _forge("[" * 5000 + "]" * 5000),
         "runtime_error"),
        ("write a short syntax_error record with the nonce", _forge('["syntax_error"]'),
         "runtime_error"),
    ]


def _forge(*records: str) -> str:
    """A program that reads the nonce from the harness's frame and writes its own records."""
    lines = "".join(f"os.write(1, ('\\n' + tag + ' ' + {r!r} + '\\n').encode())\n"
                    for r in records)
    return f"import os, sys\ntag = sys._getframe(1).f_locals['tag']\n{lines}os._exit(0)\n"


def _try(attack: str) -> str:
    """A program whose f is right only if `attack` ran without an exception."""
    body = "\n".join("    " + line for line in attack.splitlines())
    return f"try:\n{body}\n    ok = True\nexcept BaseException:\n    ok = False{WIN}"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run-folder")
    secret = run_dir / "secret.txt"
    secret.write_text("top secret")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    accepted: list = []

    def serve():
        while not stop.is_set():
            try:
                accepted.append(server.accept())
            except OSError:
                pass

    stop = threading.Event()
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ctx = {"secret_file": str(secret), "planted": str(run_dir / "planted.txt"),
           "planted2": str(run_dir / "planted2.txt"), "port": server.getsockname()[1],
           "pid": os.getpid()}
    old = os.environ.get("HF_TOKEN")
    os.environ["HF_TOKEN"] = "hf_FAKEsecretFAKEsecret"
    try:
        table = cases(ctx)
        sandbox = Sandbox(LIMITS, workers=2)
        t0 = time.monotonic()
        outcomes = sandbox.run_many([(program, TESTS) for _, program, _ in table])
        seconds = time.monotonic() - t0
    finally:
        if old is None:
            del os.environ["HF_TOKEN"]
        else:
            os.environ["HF_TOKEN"] = old
        stop.set()
        thread.join()
        server.close()
    return {"table": table, "outcomes": outcomes, "run_dir": run_dir, "accepted": accepted,
            "seconds": seconds}


def test_at_least_25_hostile_programs(results):
    assert len(results["table"]) >= 25


@pytest.mark.parametrize("index", range(45))
def test_contained_and_scored_as_failure(results, index):
    if index >= len(results["table"]):
        pytest.skip("no such case")
    name, _, reason = results["table"][index]
    outcome = results["outcomes"][index]
    assert outcome.passed < outcome.total, f"{name}: escaped ({outcome})"
    assert outcome.reason == reason, f"{name}: {outcome}"


def test_the_host_is_unharmed(results):
    run_dir = results["run_dir"]
    assert (run_dir / "secret.txt").read_text() == "top secret"
    assert not (run_dir / "planted.txt").exists() and not (run_dir / "planted2.txt").exists()
    assert not Path("/usr/pwned").exists() and not Path("/pwned").exists()
    assert results["accepted"] == [], "a sandboxed program reached the host's loopback"
    for proc in Path("/proc").iterdir():  # no sandboxed process outlived its run
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        assert MARK.encode() not in cmdline, f"background process survived: pid {proc.name}"
    # The batch ran in parallel and every hang was cut at the wall limit.
    hangs = sum(o.reason == "timeout" for o in results["outcomes"])
    assert results["seconds"] < LIMITS.wall_s * hangs / 2 + 15


def test_a_good_program_still_passes_under_the_same_limits():
    outcome = Sandbox(LIMITS).run("def f(x):\n    return x * 3 + 2", TESTS)
    assert (outcome.passed, outcome.reason) == (3, "passed")
