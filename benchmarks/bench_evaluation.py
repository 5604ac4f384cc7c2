"""Throughput of the whole evaluation, per method, and where its time goes.

Runs :func:`captum_saco.evaluate` on the embedded Fashion-MNIST ViT, one
method at a time with all the default metrics, and prints for each method:
images per second, the number of calls of the model's forward, the time in
the model's forward passes (timed by hooks on the model) and in backward
passes (``torch.autograd.grad`` and ``Tensor.backward``, timed by wrapping
them), and the share of the time spent outside both: ranking, perturbing,
attention capture, relevance rules, bookkeeping.

Usage::

    python benchmarks/bench_evaluation.py              # 16 images, 2 rounds, ~1 min
    python benchmarks/bench_evaluation.py --limit 64 --threads 1
"""

import argparse
import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator

import torch

from captum_saco.datasets import load_fashion_mnist_samples, load_fashion_mnist_vit
from captum_saco.evaluation import DEFAULT_METHODS, DEFAULT_METRICS, evaluate


@contextmanager
def model_timers(model: torch.nn.Module) -> Iterator[Dict[str, float]]:
    """Time the model's forward calls and every backward pass while active."""
    stats = {"forward_calls": 0.0, "forward_s": 0.0, "backward_s": 0.0}
    started: list = []

    def pre_hook(module: torch.nn.Module, args: Any) -> None:
        started.append(time.perf_counter())

    def post_hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        stats["forward_s"] += time.perf_counter() - started.pop()
        stats["forward_calls"] += 1

    original_grad, original_backward = torch.autograd.grad, torch.Tensor.backward

    def timed_grad(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return original_grad(*args, **kwargs)
        finally:
            stats["backward_s"] += time.perf_counter() - t

    def timed_backward(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return original_backward(self, *args, **kwargs)
        finally:
            stats["backward_s"] += time.perf_counter() - t

    handles = [model.register_forward_pre_hook(pre_hook), model.register_forward_hook(post_hook)]
    torch.autograd.grad, torch.Tensor.backward = timed_grad, timed_backward
    try:
        yield stats
    finally:
        torch.autograd.grad, torch.Tensor.backward = original_grad, original_backward
        for h in handles:
            h.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=16, help="images (default 16)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_fashion_mnist_vit()
    images = load_fashion_mnist_samples(limit=args.limit).images
    # Warm-up: first calls pay for lazy initialisation.
    evaluate(model, images[:2], methods=["saliency"], metrics=["saco"], batch_size=2)

    print(
        f"embedded ViT, {args.limit} images, batch {args.batch_size}, {torch.get_num_threads()} "
        f"threads, best of {args.rounds} rounds, metrics: {', '.join(DEFAULT_METRICS)}"
    )
    header = (
        f"{'method':<28}{'images/s':>9}{'fwd calls':>10}{'fwd s':>8}{'bwd s':>8}"
        f"{'total s':>9}{'outside':>9}"
    )
    print(header)
    print("-" * len(header))
    # Rounds interleave the methods; each method keeps its fastest round, so
    # that load from other processes distorts the comparison less.
    best: Dict[str, Dict[str, float]] = {}
    for _ in range(args.rounds):
        for method in DEFAULT_METHODS:
            with model_timers(model) as stats:
                t = time.perf_counter()
                evaluate(model, images, methods=[method], batch_size=args.batch_size)
                stats["total_s"] = time.perf_counter() - t
            if method not in best or stats["total_s"] < best[method]["total_s"]:
                best[method] = stats
    totals = {"forward_s": 0.0, "backward_s": 0.0, "total_s": 0.0}
    for method in DEFAULT_METHODS:
        stats = best[method]
        total = stats["total_s"]
        inside = stats["forward_s"] + stats["backward_s"]
        print(
            f"{method:<28}{args.limit / total:>9.1f}{int(stats['forward_calls']):>10d}"
            f"{stats['forward_s']:>8.2f}{stats['backward_s']:>8.2f}{total:>9.2f}"
            f"{1 - inside / total:>9.1%}"
        )
        totals["forward_s"] += stats["forward_s"]
        totals["backward_s"] += stats["backward_s"]
        totals["total_s"] += total
    inside = totals["forward_s"] + totals["backward_s"]
    print("-" * len(header))
    print(
        f"{'all methods':<28}{args.limit / totals['total_s']:>9.2f}{'':>10}"
        f"{totals['forward_s']:>8.2f}{totals['backward_s']:>8.2f}{totals['total_s']:>9.2f}"
        f"{1 - inside / totals['total_s']:>9.1%}"
    )
    print(
        "outside = share of the wall time outside the model's forward calls and the "
        "backward passes (backward time includes the part of the graph the methods add)"
    )


if __name__ == "__main__":
    main()
