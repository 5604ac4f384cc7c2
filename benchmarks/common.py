"""What the benchmarks share: the ``--device`` option and wall-clock timing that
waits for the device (CUDA kernels run asynchronously)."""

import argparse
import time
from typing import Callable, Dict, List

import torch


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="e.g. cpu, cuda (default: cpu)")


def synchronize(device: str) -> None:
    """Wait for the work queued on ``device`` (nothing to wait for on a CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(job: Callable[[], object], device: str = "cpu") -> float:
    """Seconds ``job`` takes, the device's queued work included."""
    synchronize(device)
    start = time.perf_counter()
    job()
    synchronize(device)
    return time.perf_counter() - start


def interleaved_rounds(
    jobs: Dict[str, Callable[[], object]], rounds: int, device: str = "cpu"
) -> Dict[str, List[float]]:
    """Seconds of every job in each of ``rounds`` rounds, the jobs interleaved
    within a round (so that a slow spell of a noisy machine hits them all), after
    one warm-up call of each."""
    for job in jobs.values():
        job()
    times: Dict[str, List[float]] = {name: [] for name in jobs}
    for _ in range(rounds):
        for name, job in jobs.items():
            times[name].append(timed(job, device))
    return times
