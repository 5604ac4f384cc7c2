"""Cost of the perturbation strategies and of insertion and SRG, measured side by
side in one run with random attribution maps:

- ``insertion_curve`` (9 steps, 10 points) and ``srg`` (9 steps, both deletion
  curves) with default arguments against the same forward passes on inputs
  built beforehand, chunked in batches of 8, 16, 32, 64 and all at once: the
  floor is the *best* of these (goal: ours / floor <= 1.10);
- ``deletion_curve`` and ``saco`` (K = 10) with ``perturbation="token_drop"``
  against ``"baseline"`` (dropping tokens shortens the sequence, so it should
  be cheaper), and ``"blur"`` and ``"noisy_linear"`` against ``"baseline"``.

On the embedded Fashion-MNIST ViT (64 shipped images, 7 x 7 patches) and on a
ViT-S/16-sized timm model at 224 px (random weights, a few random images; the
floor and token dropping only). It prints the minimum and median wall time of
each over interleaved rounds and the ratios.

    python benchmarks/bench_perturbations.py [--rounds 3] [--threads 2]
        [--vit-s-images 4] [--device cpu]
"""

import argparse
from typing import Callable, Dict

import timm
import torch
from bench_saco import CHUNKS, GPU_CHUNKS, bare_passes, removed_rows, report
from common import add_device_option, interleaved_rounds
from torch import Tensor, nn

from captum_saco.datasets import load_fashion_mnist_samples, load_fashion_mnist_vit
from captum_saco.metrics import deletion_curve, insertion_curve, saco, srg

STEPS = 9  # the default fractions 0.1, ..., 0.9


def bench_floor(
    name: str, model: nn.Module, images: Tensor, maps: Tensor, rounds: int, device: str
) -> None:
    """insertion_curve and srg against the bare forward passes they need."""
    features = maps[0].numel()
    baseline = images.mean(dim=(2, 3), keepdim=True)
    m = [round(k / (STEPS + 1) * features) for k in range(1, STEPS + 1)]
    insertion_rows = removed_rows(images, maps, [(k, features) for k in [0] + m], baseline)
    srg_rows = removed_rows(
        images, maps, [(0, k) for k in m] + [(features - k, features) for k in m], baseline
    )
    runs: Dict[str, Callable[[], object]] = {
        "insertion_curve": lambda: insertion_curve(model, images, maps),
        "srg": lambda: srg(model, images, maps),
    }
    for c in GPU_CHUNKS if torch.device(device).type == "cuda" else CHUNKS:
        label = "all" if c is None else str(c)
        runs[f"bare insertion passes, chunks of {label}"] = lambda c=c: bare_passes(
            model, insertion_rows, c
        )
        runs[f"bare srg passes, chunks of {label}"] = lambda c=c: bare_passes(model, srg_rows, c)
    title = (
        f"{name}: N={images.shape[0]}, {device}, threads={torch.get_num_threads()}, {rounds} rounds"
    )
    report(
        title,
        interleaved_rounds(runs, rounds, device),
        {"insertion_curve": "bare insertion", "srg": "bare srg"},
    )


def bench_strategies(
    name: str, model: nn.Module, images: Tensor, grid: Tensor, rounds: int, device: str, strategies
) -> None:
    """deletion_curve and saco under each strategy, against the baseline."""
    runs: Dict[str, Callable[[], object]] = {}
    for strategy in ("baseline",) + tuple(strategies):
        runs[f"deletion_curve, {strategy}"] = lambda s=strategy: deletion_curve(
            model, images, grid, perturbation=s
        )
        runs[f"saco, {strategy}"] = lambda s=strategy: saco(model, images, grid, perturbation=s)
    times = interleaved_rounds(runs, rounds, device)
    report(f"{name}: perturbation strategies, N={images.shape[0]}, {rounds} rounds", times, {})
    for metric in ("deletion_curve", "saco"):
        for strategy in strategies:
            ratio = min(times[f"{metric}, {strategy}"]) / min(times[f"{metric}, baseline"])
            print(f"  {metric}: {strategy} / baseline: {ratio:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: default)")
    parser.add_argument("--vit-s-images", type=int, default=4)
    add_device_option(parser)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = args.device
    fashion = load_fashion_mnist_vit(device=device).eval()
    images = load_fashion_mnist_samples(limit=64).images.to(device)
    maps = torch.rand(images.shape[0], *images.shape[2:], device=device)
    name = "embedded Fashion-MNIST ViT"
    bench_floor(name, fashion, images, maps, args.rounds, device)
    grid = torch.rand(images.shape[0], 1, 7, 7, device=device)
    bench_strategies(name, fashion, images, grid, args.rounds, device, ("token_drop", "blur"))
    bench_strategies(
        name + ", 8 images", fashion, images[:8], grid[:8], args.rounds, device, ("noisy_linear",)
    )
    vit_s = timm.models.VisionTransformer(embed_dim=384, depth=12, num_heads=6).eval().to(device)
    n = args.vit_s_images
    vit_images = torch.randn(n, 3, 224, 224, device=device)
    name = "ViT-S/16 224px (random weights)"
    rounds = max(2, args.rounds // 2)
    bench_floor(name, vit_s, vit_images, torch.rand(n, 224, 224, device=device), rounds, device)
    bench_strategies(
        name,
        vit_s,
        vit_images,
        torch.rand(n, 1, 14, 14, device=device),
        rounds,
        device,
        ("token_drop",),
    )


if __name__ == "__main__":
    main()
