"""Run untrusted Python programs against assert tests: bubblewrap isolation, resource limits, and
grading that the program cannot forge (DESIGN.md: untrusted model output never runs unconfined).

Threat model (README, "Code execution sandbox"): the program is hostile. It may loop, fork, allocate,
print or write without end, read secrets, open sockets, signal or ptrace other processes, outlive
its run, or attack the harness that runs the tests. Defences, each tested in
tests/test_sandbox_adversarial.py:

- isolation (bubblewrap): new user, PID, network, IPC, UTS and cgroup namespaces (the network
  namespace holds only its own loopback); the root is an empty read-only tmpfs with `/usr` (and the
  interpreter's prefix, if elsewhere) bound read-only, `/dev/null` and a private size-capped `/tmp`;
  no `/proc`, `/etc`, home, repository or run folder; the environment is cleared; all capabilities
  dropped; new session; nested user namespaces disabled; killed with its parent. Started by root,
  bubblewrap itself runs as `nobody`, so the process limit applies (it does not to root);
- limits, set by the harness before the program runs: CPU seconds, address space, processes, file
  size, open files, no core files; the parent kills the whole process group when the harness
  exits, at the wall-clock limit, or when the output passes its cap (the program's own output
  and the harness's records have separate caps, so long values never count against the program),
  and bubblewrap's PID 1 takes every leftover with it;
- grading outside the program's reach: a test `assert EXPR == LITERAL` is split in the parent; only
  `EXPR` goes into the sandbox, whose harness reports the value as literal source (the dict a
  Counter equals, 1e999 for inf: `lit` in HARNESS), and the parent compares it with the literal,
  which never enters the sandbox. Harness records carry a random per-run nonce, so printed lines
  ("all tests passed") are ignored. The program can still find the nonce (it shares the harness's
  process), so no record can claim a pass, only report a value; a record of any other shape,
  duplicate or missing records fail that program alone; an early `exit(0)` leaves tests
  unreported, which fail. A bare `assert EXPR` (or a comparison with a
  non-literal) is judged `EXPR is True` inside the sandbox: a program built to subvert the harness
  can forge those, so the built-in task uses only `== LITERAL` tests.

Not defended: kernel exploits, CPU-cache side channels, and timing noise from other programs on the
machine. There is no seccomp filter; the kernel surface is that of an unprivileged user in fresh
namespaces.

Limits are per process, as rlimits are: a program that forks may hold `processes` x `memory_mb`
of memory in all, and the private `/tmp` caps bytes, not the number of (empty) files.

Where bubblewrap cannot run, `Sandbox` refuses with a `UserError` unless `allow_unsandboxed=True`:
then programs run as plain child processes with the same grading and rlimits, in a fresh temporary
directory; started by root they run as `nobody` with the process limit, otherwise as you and
without it (it would count all of your processes). That contains bugs but not attacks (it can read
your files and use the network), and a warning is logged loudly. There is no PID namespace then: a
process the program starts in a new session (`setsid`) escapes the group kill and outlives the run.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from r1kit.errors import UserError

log = logging.getLogger("r1kit")

# Why a program failed; "passed" when every test passed.
REASONS = ("passed", "wrong_answer", "runtime_error", "timeout", "memory_limit", "output_limit",
           "syntax_error", "no_code", "sandbox_error")
_TRUE = object()  # expected value of a bare `assert EXPR`: the sandbox judges `EXPR is True`
MAX_VALUE_CHARS = 100_000  # longest value text compared; a longer expected literal is refused
MAX_VALUE_DEPTH = 100  # deepest nesting the harness writes (its `lit`); a deeper literal is refused
_ERROR_KINDS = ("runtime_error", "memory_limit", "output_limit")  # what the harness reports


@dataclass(frozen=True)
class Limits:
    """Per-program resource limits (the defaults suit short test programs)."""

    wall_s: float = 4.0
    cpu_s: int = 2
    memory_mb: int = 256
    processes: int = 16
    output_bytes: int = 256_000  # the program's own output; the harness's records have their own
    file_bytes: int = 1_000_000
    tmp_bytes: int = 4_000_000
    open_files: int = 64


@dataclass(frozen=True)
class TestOutcome:
    """The result of one program against its tests. `finished` is False for a run that did not
    end on its own after its tests: killed (wall or CPU time, output cap) or exited early."""

    passed: int
    total: int
    reason: str
    detail: str = ""
    seconds: float = 0.0
    finished: bool = True

    @property
    def fraction(self) -> float:
        """The share of tests passed, a run that did not finish counting as one more failed test:
        a program that reports every value and then hangs or floods scores total/(total+1), never
        1, which only "passed" scores."""
        return self.passed / (self.total + (not self.finished)) if self.total else 0.0


@dataclass(frozen=True)
class ParsedTest:
    expr: str
    expected: object  # a Python literal, or _TRUE

    @property
    def harness_expr(self) -> str:
        """The expression the harness evaluates (a bare assert passes on any truthy value, as in
        Python)."""
        return f"(True if ({self.expr}) else False)" if self.expected is _TRUE else self.expr


def parse_test(test: str) -> ParsedTest:
    """Split `assert EXPR == LITERAL` into the expression run in the sandbox and the literal kept in
    the parent; any other single `assert` is judged `EXPR is True`. ValueError if it is not one
    assert, its expression does not compile as the harness compiles it (`assert await f()`), or
    its expected value is longer than `MAX_VALUE_CHARS`, so that it could never pass.

    >>> parse_test("assert f(2) == 8")
    ParsedTest(expr='f(2)', expected=8)
    >>> parse_test("assert 3 == f(1)").expected
    3
    """
    try:
        tree = ast.parse(test.strip(), mode="exec")
    except SyntaxError as e:
        raise ValueError(f"not valid Python ({e.msg})") from None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        raise ValueError("a test must be one assert statement")
    parsed = _split(tree.body[0].test)
    try:  # the harness compiles it alone, in eval mode: `await` or `yield` cannot be there
        compile(parsed.harness_expr, "<test>", "eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        raise ValueError(f"its expression does not compile on its own "
                         f"({getattr(e, 'msg', None) or type(e).__name__})") from None
    if parsed.expected is not _TRUE and len(repr(parsed.expected)) > MAX_VALUE_CHARS:
        raise ValueError(f"its expected value is {len(repr(parsed.expected))} characters long, "
                         f"over the {MAX_VALUE_CHARS} the sandbox compares")
    if parsed.expected is not _TRUE and _depth(parsed.expected) > MAX_VALUE_DEPTH:
        raise ValueError(f"its expected value is nested more than {MAX_VALUE_DEPTH} levels deep, "
                         "deeper than the sandbox writes values")
    return parsed


def _depth(value: object) -> int:
    """How deeply containers nest in literal `value` (0 for a scalar)."""
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, (list, tuple, set, frozenset)):
        return 1 + max(map(_depth, value), default=0)
    return 0


def _split(node: ast.expr) -> ParsedTest:
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq):
        for side, other in ((node.comparators[0], node.left), (node.left, node.comparators[0])):
            try:
                return ParsedTest(ast.unparse(other), ast.literal_eval(side))
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                continue
    return ParsedTest(ast.unparse(node), _TRUE)


# The trusted harness, run as `python -I -S -c HARNESS` with the job on stdin. It sets the limits,
# runs the program in a fresh namespace, evaluates each test expression and reports on the fd 1 it
# started with, one nonce-tagged JSON record per line; the program's own fd 1 and 2 go to the
# other pipe, so its output and the records have separate caps. It holds no expected values.
HARNESS = r"""
import errno, json, os, resource, sys
def kind(e):
    if isinstance(e, MemoryError): return "memory_limit"
    if isinstance(e, OSError) and e.errno == errno.EFBIG: return "output_limit"
    return "runtime_error"
KEYS, ITEMS = type({}.keys()), type({}.items())
def lit(v, depth=0):
    # Python source of a literal equal to v wherever Python's == says so: a Counter, OrderedDict
    # or defaultdict is written as the dict it equals, a frozenset or keys view as a set, a
    # namedtuple as a tuple, inf as 1e999, a Fraction or Decimal as the int or float it equals
    # exactly. Base-class methods, so a subclass cannot choose its own text. Anything else: repr.
    if depth > 100: raise RecursionError("value nested too deeply")
    d = depth + 1
    if v is None or v is True or v is False: return repr(v)
    if isinstance(v, int): return int.__repr__(v)
    if isinstance(v, float):
        if v != v: return "nan"  # equals nothing, so no literal
        return float.__repr__(v) if abs(v) != float("inf") else ("-1e999" if v < 0 else "1e999")
    if isinstance(v, str): return str.__repr__(v)
    if isinstance(v, bytes): return bytes.__repr__(v)
    if isinstance(v, dict):
        return "{" + ", ".join(lit(k, d) + ": " + lit(x, d) for k, x in dict.items(v)) + "}"
    if isinstance(v, list): return "[" + ", ".join(lit(x, d) for x in list.__iter__(v)) + "]"
    if isinstance(v, tuple):
        inner = [lit(x, d) for x in tuple.__iter__(v)]
        return "(" + ", ".join(inner) + ("," if len(inner) == 1 else "") + ")"
    if isinstance(v, (set, frozenset, KEYS, ITEMS)):
        items = (set.__iter__(v) if isinstance(v, set) else
                 frozenset.__iter__(v) if isinstance(v, frozenset) else iter(v))
        inner = [lit(x, d) for x in items]
        return "{" + ", ".join(inner) + "}" if inner else "set()"
    if isinstance(v, bytearray): return bytes.__repr__(bytes(v))
    exact = tuple(getattr(sys.modules.get(m), n, ()) for m, n in
                  (("fractions", "Fraction"), ("decimal", "Decimal")))
    if exact and isinstance(v, exact):
        try:
            if v.is_infinite(): return lit(float(v), d)  # Decimal('Infinity'): no int
        except AttributeError: pass  # a Fraction is always finite
        try:
            if v == int(v): return int.__repr__(int(v))
            if v == float(v): return lit(float(v), d)
        except (ArithmeticError, ValueError): pass  # Decimal('NaN'), sNaN
        return "nan"  # no int or float literal equals it
    return repr(v)
def main():
    out = os.dup(1)  # the records' pipe; the program's print and os.write(1) go to the other
    os.dup2(2, 1)
    job = json.loads(sys.stdin.read())
    sys.stdin.close()
    write, dumps, tag, cap = os.write, json.dumps, job["nonce"], job["max_value"]
    def emit(*record):  # UTF-8 as is (6 bytes per escaped CJK character would eat the cap)
        line = "\n" + tag + " " + dumps(record, ensure_ascii=False) + "\n"
        write(out, line.encode("utf-8", "backslashreplace"))
    for name, soft, hard in job["rlimits"]:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    try:
        code = compile(job["program"], "<program>", "exec")
    except (SyntaxError, ValueError) as e:
        emit("syntax_error", type(e).__name__ + ": " + str(e)[:200])
        return
    tests = []
    for i, t in enumerate(job["tests"]):
        try:  # the parent compiled it too: only a different Python version gets here
            tests.append(compile(t, "<test>", "eval"))
        except (SyntaxError, ValueError) as e:
            emit("bad_test", i, type(e).__name__ + ": " + str(e)[:200])
            return
    ns = {"__name__": "solution", "__builtins__": __builtins__}
    try:
        exec(code, ns)
    except SystemExit as e:  # a script's own exit() at its end: what it defined stands
        if e.code not in (None, 0):
            emit("program_error", kind(e), type(e).__name__ + ": " + str(e)[:200])
            return
    except BaseException as e:
        emit("program_error", kind(e), type(e).__name__ + ": " + str(e)[:200])
        return
    for i, test in enumerate(tests):
        try:
            value = eval(test, ns)
            text = "True" if value is True else lit(value)
        except BaseException as e:
            emit("test_error", i, kind(e), type(e).__name__ + ": " + str(e)[:200])
            continue
        emit("value", i, text[:cap + 1])
    emit("done")
main()
"""


def find_python() -> str:
    """The interpreter run inside the sandbox: the system `python3` under /usr if there is one
    (nothing else needs binding), else the base interpreter of this Python."""
    system = shutil.which("python3", path="/usr/bin:/bin")
    if system:
        return os.path.realpath(system)
    import sys

    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


class Sandbox:
    """Runs programs against tests, batched over a pool of `workers` processes at once.

    Results of programs that finished (not timeouts or sandbox errors) are cached by
    (program, tests): the G completions of a group often write the same program.
    """

    def __init__(self, limits: Limits = Limits(), workers: int = 0,
                 allow_unsandboxed: bool = False, python: str = "", cache_size: int = 4096):
        self.limits = limits
        self.workers = workers or os.cpu_count() or 1
        self.python = python or find_python()
        self._cache: OrderedDict[tuple, TestOutcome] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        problem = bwrap_problem(self.python)
        self.sandboxed = problem is None
        if problem is not None:
            if not allow_unsandboxed:
                raise UserError(
                    f"code execution needs the bubblewrap sandbox, which cannot run here: {problem}. "
                    "Install it (Debian/Ubuntu: apt-get install bubblewrap; `make env` does it as "
                    "root), or pass --unsafe-allow-unsandboxed (code.unsafe_allow_unsandboxed="
                    "true) to run model-written code UNCONFINED with only resource limits"
                )
            log.warning(
                "!!! UNSAFE: running model-written code WITHOUT a sandbox (%s). It can read your "
                "files, use the network and signal your processes; only resource limits apply. !!!",
                problem,
            )

    # ------------------------------------------------------------------ public

    def run(self, program: str, tests: list[str]) -> TestOutcome:
        return self.run_many([(program, tests)])[0]

    def run_many(self, jobs: list[tuple[str, list[str]]]) -> list[TestOutcome]:
        """One outcome per `(program, tests)`, run in parallel; identical jobs run once."""
        keys = [(program, tuple(tests)) for program, tests in jobs]
        todo = []
        known: dict[tuple, TestOutcome] = {}  # this batch's cache hits, safe from eviction below
        with self._lock:
            for key in dict.fromkeys(keys):
                if key in self._cache:
                    known[key] = self._cache[key]
                    self._cache.move_to_end(key)
                else:
                    todo.append(key)
        fresh: dict[tuple, TestOutcome] = {}
        if todo:
            with ThreadPoolExecutor(max_workers=min(self.workers, len(todo))) as pool:
                for key, outcome in zip(todo, pool.map(lambda k: self._run_one(*k), todo)):
                    fresh[key] = outcome
        with self._lock:
            for key, outcome in fresh.items():
                if outcome.reason not in ("timeout", "sandbox_error"):  # may pass on a calmer machine
                    self._cache[key] = outcome
                    if len(self._cache) > self._cache_size:
                        self._cache.popitem(last=False)
        return [fresh[key] if key in fresh else known[key] for key in keys]

    # ------------------------------------------------------------------ one program

    def _run_one(self, program: str, tests: tuple[str, ...]) -> TestOutcome:
        t0 = time.monotonic()
        try:
            parsed = [parse_test(t) for t in tests]
        except ValueError as e:
            return TestOutcome(0, len(tests), "sandbox_error", f"bad test: {e}")
        nonce = secrets.token_hex(16)
        job = json.dumps({"program": program, "tests": [p.harness_expr for p in parsed],
                          "nonce": nonce, "max_value": MAX_VALUE_CHARS,
                          "rlimits": self._rlimits()}).encode()
        workdir = None if self.sandboxed else tempfile.mkdtemp(prefix="r1kit-unsafe-")
        if workdir and os.geteuid() == 0:
            os.chown(workdir, 65534, 65534)  # the program runs as nobody
        try:
            records, output, killed, rc = self._execute(job, workdir, _records_cap(len(tests)))
        finally:
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)
        outcome = grade(records, nonce, parsed, killed, rc, output)
        return replace(outcome, seconds=time.monotonic() - t0)

    def _rlimits(self) -> list[tuple[str, int, int]]:
        lim = self.limits
        rl = [("RLIMIT_CPU", lim.cpu_s, lim.cpu_s + 1),
              ("RLIMIT_AS", lim.memory_mb << 20, lim.memory_mb << 20),
              ("RLIMIT_FSIZE", lim.file_bytes, lim.file_bytes),
              ("RLIMIT_NOFILE", lim.open_files, lim.open_files),
              ("RLIMIT_CORE", 0, 0)]
        if self.sandboxed or os.geteuid() == 0:  # (run as nobody) as you, it would count all of
            rl.append(("RLIMIT_NPROC", lim.processes, lim.processes))  # your processes
        return rl

    def _argv(self) -> list[str]:
        run = [self.python, "-I", "-S", "-c", HARNESS]
        if not self.sandboxed:
            return run
        return bwrap_argv(self.python, self.limits.tmp_bytes) + run

    def _execute(self, job: bytes, workdir: str | None,
                 records_cap: int) -> tuple[bytes, bytes, str, int]:
        """Run the harness; return (its records, the program's own output, why it was killed or
        "", exit status). The process group is killed in the end, whether or not the harness
        finished: what the program started does not outlive its run."""
        as_nobody = os.geteuid() == 0  # never root: for bubblewrap (see above) or unsandboxed
        proc = subprocess.Popen(
            self._argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, cwd=workdir or "/",
            start_new_session=True, close_fds=True,
            **({"user": 65534, "group": 65534, "extra_groups": []} if as_nobody else {}),
        )
        deadline = time.monotonic() + self.limits.wall_s
        try:
            proc.stdin.write(job)
            proc.stdin.close()
        except BrokenPipeError:
            pass
        caps = {proc.stdout: records_cap, proc.stderr: self.limits.output_bytes}
        got = {stream: bytearray() for stream in caps}
        killed, exited = "", False
        with selectors.DefaultSelector() as sel:
            for stream in caps:
                sel.register(stream, selectors.EVENT_READ)
            while sel.get_map() and not killed:
                left = deadline - time.monotonic()
                if left <= 0 and not exited:
                    killed = "timeout"
                    break
                ready = sel.select(timeout=0 if exited else min(left, 0.1))
                if not ready:
                    if exited:  # all it wrote is read; a process it left holds the pipes open
                        break
                    exited = _exited(proc)
                    continue
                for key, _ in ready:
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    got[key.fileobj] += chunk
                    if len(got[key.fileobj]) > caps[key.fileobj]:
                        killed = "output_limit"
                # also while a process it left keeps writing (unsandboxed: no PID namespace)
                exited = exited or _exited(proc)
        _kill_group(proc)  # before reaping proc, so that its group id cannot have been reused
        try:
            rc = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # cannot happen after SIGKILL unless the kernel stalls
            _kill_group(proc)
            rc = proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        return bytes(got[proc.stdout]), bytes(got[proc.stderr]), killed, rc


def _records_cap(tests: int) -> int:
    """Bytes of harness records for `tests` tests: a value of `MAX_VALUE_CHARS` characters at
    up to 6 bytes each (a JSON-escaped control character), plus the record around it."""
    return tests * (6 * (MAX_VALUE_CHARS + 1) + 300) + 4096


def _exited(proc: subprocess.Popen) -> bool:
    """Whether `proc` has exited, without reaping it (its pid, the group's id, stays taken)."""
    return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def bwrap_argv(python: str, tmp_bytes: int) -> list[str]:
    """The bubblewrap command line (see the module docstring for why each part is there)."""
    argv = ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns",
            "--uid", "65534", "--gid", "65534", "--die-with-parent", "--new-session",
            "--cap-drop", "ALL", "--clearenv",
            "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8",
            "--setenv", "HOME", "/tmp",
            "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/lib", "/lib32", "/lib64", "/libx32", "/sbin"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    prefix = str(Path(python).resolve().parent.parent)
    if not prefix.startswith("/usr"):  # e.g. pyenv or conda: bind only that installation
        argv += ["--ro-bind", prefix, prefix]
    if os.path.isfile("/etc/ld.so.cache"):
        argv += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    argv += ["--dir", "/dev", "--dev-bind", "/dev/null", "/dev/null",
             "--size", str(tmp_bytes), "--tmpfs", "/tmp",
             "--remount-ro", "/", "--chdir", "/tmp", "--"]
    return argv


_PROBES: dict[str, str | None] = {}


def bwrap_problem(python: str) -> str | None:
    """None if the bubblewrap sandbox runs `python` here, else why not (cached per interpreter)."""
    if python not in _PROBES:
        if shutil.which("bwrap") is None:
            _PROBES[python] = "bwrap is not installed"
        else:
            kw = {"user": 65534, "group": 65534, "extra_groups": []} if os.geteuid() == 0 else {}
            try:
                r = subprocess.run(bwrap_argv(python, 1 << 20) + [python, "-I", "-S", "-c",
                                   "print(6*7)"], check=False, capture_output=True, timeout=30, env={}, **kw)
                ok = r.returncode == 0 and r.stdout.strip() == b"42"
                err = r.stderr.decode(errors="replace").strip()[:300]
                _PROBES[python] = None if ok else f"bwrap failed ({err or f'exit {r.returncode}'})"
            except (OSError, subprocess.TimeoutExpired) as e:
                _PROBES[python] = f"bwrap failed ({e})"
    return _PROBES[python]


def grade(output: bytes, nonce: str, tests: list[ParsedTest], killed: str, rc: int,
          program_output: bytes = b"") -> TestOutcome:
    """Grade the harness's records (`output`) in the parent, comparing values with the expected
    literals; `program_output` is what the program printed (where bubblewrap's errors go)."""
    total = len(tests)
    values: dict[int, str] = {}
    errors: dict[int, str] = {}
    prefix = nonce + " "
    program_error = syntax = bad_test = None
    done = tampered = False
    for line in output.decode("utf-8", errors="replace").split("\n"):
        if not line.startswith(prefix):
            continue
        # The program can read the nonce (it runs in the harness's process), so a record is
        # trusted only in its exact shape; anything else is tampering, a failure of this program
        # alone. No record can claim a pass: passes come from comparing values here.
        try:
            record = json.loads(line[len(prefix):])
        except (ValueError, RecursionError):
            record = None
        if not (isinstance(record, list) and record and isinstance(record[0], str)):
            tampered = True
            continue
        kind, n = record[0], len(record)
        fresh = (n > 1 and type(record[1]) is int and 0 <= record[1] < total
                 and record[1] not in values and record[1] not in errors)
        if kind == "value" and n == 3 and fresh and isinstance(record[2], str):
            values[record[1]] = record[2]
        elif (kind == "test_error" and n == 4 and fresh and record[2] in _ERROR_KINDS
              and isinstance(record[3], str)):
            errors[record[1]] = f"{record[2]}|{record[3]}"
        elif (kind == "program_error" and n == 3 and program_error is None
              and record[1] in _ERROR_KINDS and isinstance(record[2], str)):
            program_error = (record[1], record[2])
        elif kind == "syntax_error" and n == 2 and syntax is None and isinstance(record[1], str):
            syntax = record[1]
        elif kind == "bad_test" and n == 3 and fresh and bad_test is None and isinstance(
                record[2], str):
            bad_test = f"test {record[1]} does not compile in the sandbox's Python: {record[2]}"
        elif kind == "done" and n == 1 and not done:
            done = True
        else:
            tampered = True
    passed = sum(1 for i, t in enumerate(tests) if i in values and _matches(values[i], t.expected))
    if killed:  # (a record cut off by the kill is no tampering)
        return TestOutcome(passed, total, killed, f"killed: {killed}", finished=False)
    if tampered:
        return TestOutcome(0, total, "runtime_error", "harness output tampered with")
    if syntax is not None:
        return TestOutcome(0, total, "syntax_error", syntax)
    if bad_test is not None:  # the problem's fault, not the program's
        return TestOutcome(0, total, "sandbox_error", bad_test)
    if program_error is not None:
        return TestOutcome(0, total, program_error[0], program_error[1])
    # SIGXCPU at the soft CPU limit; SIGKILL at the hard one (a program that ignores SIGXCPU).
    if rc in (128 + signal.SIGXCPU, -signal.SIGXCPU, 128 + signal.SIGKILL, -signal.SIGKILL):
        return TestOutcome(passed, total, "timeout", "CPU time limit", finished=False)
    if not done:
        detail = f"exited (status {rc}) before the tests finished"
        if rc != 0 and not values and not errors and b"bwrap:" in program_output:
            return TestOutcome(0, total, "sandbox_error",
                               program_output.decode(errors="replace")[-300:])
        return TestOutcome(passed, total, "runtime_error", detail, finished=False)
    if passed == total:
        return TestOutcome(passed, total, "passed")
    if errors:
        kinds = [e.split("|", 1) for e in errors.values()]
        reason = next((k for k, _ in kinds if k != "runtime_error"), "runtime_error")
        return TestOutcome(passed, total, reason, kinds[0][1])
    long = next((i for i, v in values.items() if len(v) > MAX_VALUE_CHARS), None)
    detail = "" if long is None else f"test {long}: value over {MAX_VALUE_CHARS} characters"
    return TestOutcome(passed, total, "wrong_answer", detail)


def _matches(text: str, expected: object) -> bool:
    if expected is _TRUE:
        return text == "True"
    if len(text) > MAX_VALUE_CHARS:
        return False
    try:
        value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    try:
        return bool(value == expected)
    except Exception:  # noqa: BLE001 -- literals compare safely, but be defensive
        return False
