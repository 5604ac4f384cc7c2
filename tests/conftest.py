"""Suite-wide rule: a test may skip only for lack of a GPU (or of the browser
that renders the HTML report as a person sees it).

Everything else a test needs ships with the repository (the reference data in
``tests/data``, the tiny models built by the tests, the embedded model), so a
skip for any other reason means the suite silently checks less than it claims:
the run fails, naming the skipped tests.
"""

from typing import Iterator, List

import pytest

#: skip reasons that are allowed: the hardware is not there
ALLOWED_SKIP_REASONS = ("needs a GPU", "needs a machine without CUDA", "needs chromium")

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


@pytest.fixture
def no_tf32() -> Iterator[None]:
    """TF32 off while a test compares CUDA results with the CPU's: cuDNN allows it
    for float32 convolutions by default, which rounds a patch embedding to about
    1e-3; such tests pin our code on CUDA, not the GPU's faster arithmetic."""
    import torch

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
