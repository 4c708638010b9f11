"""Print the adversarial suite's result table (README, threat model) as Markdown.

    .venv/bin/python benchmarks/sandbox_table.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import test_sandbox_adversarial as suite


def main() -> None:
    captured = {}

    class Grab:
        def pytest_fixture_post_finalizer(self, fixturedef, request):
            if fixturedef.argname == "results" and fixturedef.cached_result:
                captured.update(fixturedef.cached_result[0])

    code = pytest.main(["-q", "-p", "no:cacheprovider", suite.__file__], plugins=[Grab()])
    print("\n| # | hostile program | reason | tests passed | contained |")
    print("|---|---|---|---|---|")
    for i, ((name, _, want), o) in enumerate(zip(captured["table"], captured["outcomes"]), 1):
        ok = "yes" if o.passed < o.total and o.reason == want else "NO"
        print(f"| {i} | {name} | {o.reason} | {o.passed}/{o.total} | {ok} |")
    print(f"\n{len(captured['table'])} programs in {captured['seconds']:.1f} s; pytest exit {code}")


if __name__ == "__main__":
    main()
