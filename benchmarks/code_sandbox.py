"""Throughput of the code sandbox: executed programs per second for a trivial passing program,
sandboxed (bubblewrap) and unsandboxed (the same harness and limits as plain child processes),
and the per-program latency of each when run one at a time.

    .venv/bin/python benchmarks/code_sandbox.py --programs 200 --workers 2

Every program is distinct (a comment differs), so the result cache never answers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's r1kit

from r1kit import sandbox as sb

TESTS = ["assert f(1) == 5", "assert f(2) == 8", "assert f(0) == 2", "assert f(5) == 17",
         "assert f(10) == 32"]


def measure(box: sb.Sandbox, n: int, tag: str) -> dict:
    jobs = [(f"def f(x): return x*3+2  # {tag} {i}", TESTS) for i in range(n)]
    t0 = time.perf_counter()
    outcomes = box.run_many(jobs)
    batch_s = time.perf_counter() - t0
    assert all(o.reason == "passed" for o in outcomes), {o.reason for o in outcomes}
    one = sb.Sandbox(box.limits, workers=1, allow_unsandboxed=True)
    lat = []
    for i in range(min(n, 40)):
        t = time.perf_counter()
        assert one.run(f"def f(x): return x*3+2  # {tag} one {i}", TESTS).reason == "passed"
        lat.append(time.perf_counter() - t)
    return {"programs": n, "workers": box.workers, "seconds": round(batch_s, 2),
            "programs_per_s": round(n / batch_s, 1),
            "latency_ms_median": round(1000 * statistics.median(lat), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--programs", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    python = sb.find_python()
    problem = sb.bwrap_problem(python)
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                          f"{platform.platform()}, load {os.getloadavg()[0]:.1f} at start",
               "python_in_sandbox": python}
    if problem is None:
        results["sandboxed"] = measure(sb.Sandbox(workers=args.workers), args.programs, "bwrap")
    else:
        results["sandboxed"] = f"not measured: {problem}"
    sb._PROBES[python] = "switched off by the benchmark"  # the same harness without bubblewrap
    plain = sb.Sandbox(workers=args.workers, allow_unsandboxed=True)
    results["unsandboxed"] = measure(plain, args.programs, "plain")
    if problem is None:
        s, u = results["sandboxed"], results["unsandboxed"]
        results["overhead_ms_per_program"] = round(s["latency_ms_median"] - u["latency_ms_median"], 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
