"""``evaluate`` over every method and metric against the sum of the passes it
cannot avoid.

The floor of an evaluation is, per batch: one clean pass of the images (it
finds the targets and serves every metric), each method's own ``attribute``
call (its forward and backward passes), and the metrics' ``3K - 2``
perturbed passes per image and method (K SaCo groups, K - 1
most-salient-first and K - 1 least-salient-first deletion steps), run as
bare forward passes in the fastest chunk size measured in the same run. The
script times ``evaluate`` and that floor side by side, in interleaved rounds,
and prints the ratio (goal <= 1.15) and the time outside the passes (ranking,
bookkeeping, statistics, per batch).

Usage::

    python benchmarks/bench_evaluate_floor.py            # 32 images, 3 rounds
    python benchmarks/bench_evaluate_floor.py --limit 64 --threads 1
    python benchmarks/bench_evaluate_floor.py --device cuda --limit 256 --batch-size 64
"""

import argparse
from typing import Callable, Dict

import torch
from common import add_device_option, interleaved_rounds

from captum_saco.datasets import load_fashion_mnist_samples, load_fashion_mnist_vit
from captum_saco.evaluation import DEFAULT_METHODS, DEFAULT_METRICS, METHODS, evaluate

CHUNKS = (16, 32, 64, 128, 256)
GPU_CHUNKS = (64, 256, 1024, 4096)


def attribution_job(model: torch.nn.Module, images: torch.Tensor, batch: int) -> Callable:
    """The clean pass of every batch (the predicted classes), and every method's
    ``attribute`` on it for them."""

    def job() -> None:
        for start in range(0, len(images), batch):
            x = images[start : start + batch]
            with torch.no_grad():
                target = model(x).argmax(dim=1)
            indices = torch.arange(start, start + len(x))
            for name in DEFAULT_METHODS:
                METHODS[name](model, 0)(x, target, indices)

    return job


def forward_job(model: torch.nn.Module, rows: torch.Tensor, chunk: int) -> Callable:
    def job() -> None:
        with torch.no_grad():
            for start in range(0, len(rows), chunk):
                model(rows[start : start + chunk])

    return job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--n-groups", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    add_device_option(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_fashion_mnist_vit(device=args.device)
    images = load_fashion_mnist_samples(limit=args.limit).images.to(args.device)
    chunks = GPU_CHUNKS if torch.device(args.device).type == "cuda" else CHUNKS
    k, n, m = args.n_groups, len(images), len(DEFAULT_METHODS)
    perturbed_rows = n * m * (3 * k - 2)
    rows = images.repeat((perturbed_rows + n - 1) // n, 1, 1, 1)[:perturbed_rows]

    def run_evaluate() -> None:
        evaluate(model, images, n_groups=k, batch_size=args.batch_size)

    jobs: Dict[str, Callable[[], None]] = {
        "evaluate": run_evaluate,
        "attribute": attribution_job(model, images, args.batch_size),
    }
    jobs.update({f"forward x{c}": forward_job(model, rows, c) for c in chunks})
    times = interleaved_rounds(jobs, args.rounds, args.device)
    best = {name: min(t) for name, t in times.items()}
    forward = min(best[f"forward x{c}"] for c in chunks)
    floor = best["attribute"] + forward
    print(
        f"{n} images, {m} methods, metrics {', '.join(DEFAULT_METRICS)}, K = {k}, "
        f"{args.device}, {args.threads} threads; best of {args.rounds} interleaved rounds"
    )
    print(f"evaluate:                      {best['evaluate']:.2f} s")
    print(f"attribute calls of the methods: {best['attribute']:.2f} s")
    by_chunk = ", ".join(f"{c}: {best[f'forward x{c}']:.2f} s" for c in chunks)
    print(f"{perturbed_rows} bare forward rows, by rows per call: {by_chunk}")
    batches = -(-n // args.batch_size)
    outside = best["evaluate"] - floor
    print(f"outside the passes: {outside:.3f} s, {1e3 * outside / batches:.1f} ms per batch")
    print(f"evaluate / floor: {best['evaluate'] / floor:.3f} (goal <= 1.15)")


if __name__ == "__main__":
    main()
