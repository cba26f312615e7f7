"""Run OTT-JAX's own soft-sort tests against softsort (what ``nox -s ott-tests`` calls).

Usage: ``python tests/ott_harness/run_ott_tests.py SOFT_SORT_TEST WORKDIR [pytest args...]``.

``SOFT_SORT_TEST`` is OTT-JAX 0.6.0's ``tests/tools/soft_sort_test.py``, obtained with
``git show 0.6.0:tests/tools/soft_sort_test.py`` in a clone of https://github.com/ott-jax/ott
(it is not shipped here: CI does not depend on a fetched file). A copy goes into
``WORKDIR`` with exactly one line changed, ``from ott.tools import soft_sort`` becoming
``import softsort as soft_sort``; the test file's other ``ott`` imports (its acceleration
and implicit-differentiation objects) stay, so OTT-JAX must be installed. The copy runs
next to ``ott_conftest.py`` (as ``conftest.py``) under a bare pytest configuration, as in
OTT-JAX's own repository (no softsort settings such as ``filterwarnings = error``).

With ``OTT_TESTS_SUMMARY=FILE`` set, the outcome of every test is also written to ``FILE``
(one line each, then the totals): docs/migration.rst includes the one in benchmarks/results.
"""

from __future__ import annotations

import collections
import os
import pathlib
import shutil
import sys
from typing import Any

ORIGINAL = "from ott.tools import soft_sort"
REPLACEMENT = "import softsort as soft_sort"
HERE = pathlib.Path(__file__).resolve().parent


def rewrite(text: str) -> str:
    """The test file with its one ``soft_sort`` import pointed at softsort."""
    lines = text.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if line.strip() == ORIGINAL]
    if len(hits) != 1:
        msg = f"expected the line {ORIGINAL!r} exactly once in the test file, found it {len(hits)} time(s)"
        raise SystemExit(msg)
    (i,) = hits
    lines[i] = lines[i].replace(ORIGINAL, REPLACEMENT)
    return "".join(lines)


class _Outcomes:
    """pytest plugin: the outcome of each test (its call, or its setup when skipped there)."""

    def __init__(self) -> None:
        self.outcomes: dict[str, str] = {}

    def pytest_runtest_logreport(self, report: Any) -> None:
        name = report.nodeid.split("::", 1)[-1]
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            self.outcomes[name] = report.outcome

    def summary(self) -> str:
        lines = [f"{outcome:8} {name}" for name, outcome in self.outcomes.items()]
        counts = collections.Counter(self.outcomes.values())
        return "\n".join([*lines, ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))]) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    source, workdir = pathlib.Path(argv[0]), pathlib.Path(argv[1])
    if not source.is_file():
        msg = (
            f"OTT-JAX's test file not found at {str(source)!r}. Get it with: git clone "
            "https://github.com/ott-jax/ott && git -C ott show 0.6.0:tests/tools/soft_sort_test.py > soft_sort_test.py"
        )
        raise SystemExit(msg)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "soft_sort_test.py").write_text(rewrite(source.read_text()))
    shutil.copyfile(HERE / "ott_conftest.py", workdir / "conftest.py")
    (workdir / "pytest.ini").write_text("[pytest]\n")

    import pytest

    args = ["-c", str(workdir / "pytest.ini"), "--rootdir", str(workdir), "-p", "no:cacheprovider", "-rfEs"]
    outcomes = _Outcomes()
    code = int(pytest.main([*args, str(workdir / "soft_sort_test.py"), *argv[2:]], plugins=[outcomes]))
    summary_file = os.environ.get("OTT_TESTS_SUMMARY")
    if summary_file:
        pathlib.Path(summary_file).write_text(outcomes.summary())
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
