"""Peak memory and throughput of ``python -m captum_saco --images`` on a
folder of generated 224-px images: peak memory must not grow with the
number of images (streamed input), and reading workers should add speed.

Generates 200 and 2,000 random 224x224 JPEG files in class subfolders, runs
the command on each (a small CNN from this file, so that reading and
preprocessing the files is a large part of the work; ``random`` and
``saliency`` scored by ``saco``), and prints the peak resident memory of the
command's process (from ``wait4``), the ratio 2,000 / 200 (goal <= 1.2), and
the images per second on 2,000 images with 0 and 2 reading workers.

Usage::

    python benchmarks/bench_memory.py            # a few minutes
    python benchmarks/bench_memory.py --small 100 --large 1000
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Tuple

import numpy as np
import torch
from PIL import Image


def small_cnn() -> torch.nn.Module:
    """The model of the benchmark (``--model bench_memory:small_cnn``)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 7, stride=4),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(128, 10),
    ).eval()


def write_images(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)


def run(images: Path, n: int, workers: int) -> Tuple[float, float]:
    """Peak RSS (MiB) of the command's main process and its wall time (s)."""
    command = [
        sys.executable,
        "-m",
        "captum_saco",
        "--model",
        "bench_memory:small_cnn",
        "--images",
        str(images),
        "--limit",
        str(n),
        "--methods",
        "random,saliency",
        "--metrics",
        "saco",
        "--batch-size",
        "32",
        "--workers",
        str(workers),
        "--no-progress",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "command failed")
    return usage.ru_maxrss / 1024, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--large", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        images = Path(folder) / "images"
        write_images(images, args.large)
        # Warm-up: file system caches and the first import of the packages.
        run(images, 10, 0)
        small_rss, _ = run(images, args.small, 0)
        large_rss, time_0 = run(images, args.large, 0)
        _, time_2 = run(images, args.large, 2)
        # Start-up (imports, model) measured on 10 images, taken off both times.
        _, startup = run(images, 10, 0)
    print(f"peak RSS, {args.small} images:   {small_rss:8.1f} MiB")
    print(f"peak RSS, {args.large} images: {large_rss:8.1f} MiB")
    print(f"ratio {args.large}/{args.small}: {large_rss / small_rss:.3f} (goal <= 1.2)")
    work = {workers: seconds - startup for workers, seconds in [(0, time_0), (2, time_2)]}
    if min(work.values()) <= 0:  # a loaded machine, or too few images to tell
        print(
            f"throughput not measured: {time_0:.1f} s and {time_2:.1f} s for {args.large} "
            f"images with 0 and 2 workers, {startup:.1f} s for 10; use a larger --large"
        )
        return
    for workers, seconds in work.items():
        rate = (args.large - 10) / seconds
        print(f"{workers} workers: {rate:7.1f} images/s ({seconds + startup:.1f} s in all)")
    print(f"speed-up with 2 workers: {work[0] / work[2]:.2f}x on {os.cpu_count()} CPUs")
    print(f"images/s = ({args.large} - 10) / (time on {args.large} - time on 10 images)")


if __name__ == "__main__":
    main()
