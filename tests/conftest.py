"""Suite-wide rule: a test may skip only for lack of a GPU.

Everything else a test needs ships with the repository (the reference data in
``tests/data``, the tiny models built by the tests, the embedded model), so a
skip for any other reason means the suite silently checks less than it claims:
the run fails, naming the skipped tests.
"""

from typing import List

import pytest

#: skip reasons that are allowed: the hardware is not there
ALLOWED_SKIP_REASONS = ("needs a GPU", "needs a machine without CUDA")

_unexpected: List[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else ""
        reason = reason.removeprefix("Skipped: ")
        if not reason.startswith(ALLOWED_SKIP_REASONS):
            _unexpected.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _unexpected and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if _unexpected:
        terminalreporter.write_sep("=", "skips other than for a missing GPU (these fail the run)")
        for line in _unexpected:
            terminalreporter.write_line(line)
