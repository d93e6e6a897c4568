"""A pytest plugin for the lessons run by nbval (``make test`` loads it with ``-p tools.lesson_times``): the
time each lesson took, printed at the end.

The course promises that every lesson's quick mode runs well under 90 s on a 2-core CPU; this table is
where that is measured (and where the instructors' page takes its quick-mode times from). A lesson over
the line is marked, not failed: machines differ in speed (see the developers' guide). A plugin rather than a
``notebooks/conftest.py``: a second module named ``conftest`` would shadow the tests' own.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pytest

QUICK_MODE_LIMIT_S = 90.0
_seconds: dict[str, float] = defaultdict(float)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    started = time.perf_counter()
    yield
    if str(item.fspath).endswith(".ipynb"):
        _seconds[Path(str(item.fspath)).stem] += time.perf_counter() - started


def pytest_terminal_summary(terminalreporter) -> None:
    if not _seconds:
        return
    terminalreporter.section("lessons: seconds per notebook (cells executed, kernel start excluded)")
    for name, seconds in sorted(_seconds.items()):
        mark = "  <- over the quick-mode line" if seconds > QUICK_MODE_LIMIT_S else ""
        terminalreporter.write_line(f"{name:40s} {seconds:6.1f} s{mark}")
    terminalreporter.write_line(f"{'all lessons':40s} {sum(_seconds.values()):6.1f} s")
