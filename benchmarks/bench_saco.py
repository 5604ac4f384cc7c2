"""Cost of ``captum_saco.metrics.saco`` against what it cannot avoid.

SaCo needs one clean forward pass and K perturbed passes per example. This
script measures, side by side in one run on a small timm ViT (N=32, K=10):

- ``saco`` itself;
- the N·(K+1) bare forward passes alone, with the same chunking, on inputs
  built beforehand (the floor any implementation pays);
- a straightforward per-example implementation (one image and one group at a
  time, pairs in a Python loop), as the official code does it.

It prints the median and minimum of each over several interleaved rounds, the
overhead ratio saco / bare passes (goal: at most 1.10) and the speed-up over
the per-example implementation.

    python benchmarks/bench_saco.py [--rounds 5] [--device cpu] [--threads T]
"""

import argparse
import statistics
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from captum_saco.metrics import saco

N, K = 32, 10


def bare_passes(
    model: torch.nn.Module, clean: Tensor, perturbed: Tensor, chunk: Optional[int]
) -> None:
    """Forward the clean and the prebuilt perturbed batches, chunked as saco chunks them."""
    size = chunk or perturbed.shape[0]
    with torch.no_grad():
        for part in clean.split(chunk or clean.shape[0]):
            model(part)
        for part in perturbed.split(size):
            model(part)


def per_example_saco(model: torch.nn.Module, images: Tensor, pixel_maps: Tensor) -> List[float]:
    """A straightforward SaCo: one example, one group, one forward pass at a time."""
    results = []
    with torch.no_grad():
        for image, pixel_map in zip(images, pixel_maps):
            baseline = image.mean(dim=(1, 2), keepdim=True)
            probabilities = torch.softmax(model(image[None]), dim=1)[0]
            target = int(probabilities.argmax())
            order = torch.sort(pixel_map.flatten(), descending=True, stable=True).indices
            salience, drop = [], []
            for group in torch.tensor_split(order, K):
                perturbed = image.clone()
                removed = torch.zeros(pixel_map.numel(), dtype=torch.bool, device=image.device)
                removed[group] = True
                removed = removed.view_as(pixel_map)
                perturbed[:, removed] = baseline.expand_as(image)[:, removed]
                p = torch.softmax(model(perturbed[None]), dim=1)[0, target]
                salience.append(float(pixel_map.flatten()[group].sum()))
                drop.append(float(probabilities[target] - p))
            numerator = denominator = 0.0
            for i in range(K):
                for j in range(i + 1, K):
                    w = salience[i] - salience[j]
                    if drop[i] < drop[j]:
                        w = -w
                    numerator += w
                    denominator += abs(w)
            results.append(numerator / denominator)
    return results


def prebuilt_perturbations(images: Tensor, pixel_maps: Tensor) -> Tensor:
    """The N·K perturbed images saco builds, made once outside the timing."""
    baseline = images.mean(dim=(2, 3), keepdim=True)
    order = torch.sort(pixel_maps.flatten(1), dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1]).expand_as(order))
    rank = rank.view(N, 1, 1, *pixel_maps.shape[1:])
    groups = torch.tensor_split(torch.arange(order.shape[1]), K)
    bounds = [(int(g[0]), int(g[-1]) + 1) for g in groups]
    starts = torch.tensor([b[0] for b in bounds]).view(1, K, 1, 1, 1)
    stops = torch.tensor([b[1] for b in bounds]).view(1, K, 1, 1, 1)
    hit = (rank >= starts) & (rank < stops)
    return torch.where(hit, baseline.unsqueeze(1), images.unsqueeze(1)).flatten(0, 1)


def timed(fn: Callable[[], object], device: torch.device) -> Tuple[float, float]:
    """Wall-clock and process CPU seconds of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def summary(values: List[float]) -> Tuple[float, float]:
    return statistics.median(values), min(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--slow-rounds", type=int, default=2, help="rounds of the slow per-example loop"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads (default 1: stable ratios on a shared machine; 0: torch's default)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=32, patch_size=4, embed_dim=96, depth=4, num_heads=3, num_classes=10
    ).eval().to(device)
    images = torch.randn(N, 3, 32, 32, device=device)
    pixel_maps = torch.rand(N, 32, 32, device=device)
    perturbed = prebuilt_perturbations(images.cpu(), pixel_maps.cpu()).to(device)

    # Correctness first (on a few examples): both implementations agree.
    reference = saco(model, images[:4], pixel_maps[:4], n_groups=K)
    naive = torch.tensor(per_example_saco(model, images[:4], pixel_maps[:4]))
    assert torch.allclose(reference.cpu(), naive, atol=1e-4), (reference, naive)

    chunks: List[Optional[int]] = [None, 64]
    runs: Dict[str, Callable[[], object]] = {}
    for chunk in chunks:
        label = "all at once" if chunk is None else f"chunks of {chunk}"
        runs[f"bare passes ({label})"] = lambda c=chunk: bare_passes(model, images, perturbed, c)
        runs[f"saco ({label})"] = lambda c=chunk: saco(
            model, images, pixel_maps, n_groups=K, max_examples_per_batch=c
        )
    slow = "per-example saco"
    runs[slow] = lambda: per_example_saco(model, images, pixel_maps)

    for name, fn in runs.items():  # warm-up (the per-example loop was warmed above)
        if name != slow:
            fn()
    wall: Dict[str, List[float]] = {name: [] for name in runs}
    cpu: Dict[str, List[float]] = {name: [] for name in runs}
    for round_ in range(args.rounds):
        for name, fn in runs.items():
            if name != slow or round_ < args.slow_rounds:
                w, c = timed(fn, device)
                wall[name].append(w)
                cpu[name].append(c)

    print(
        f"saco on timm VisionTransformer(img_size=32, patch_size=4, embed_dim=96, depth=4), "
        f"N={N}, K={K}, device={device}, threads={torch.get_num_threads()}, "
        f"{args.rounds} rounds ({args.slow_rounds} of the per-example loop)"
    )
    print(f"  {'':28s} {'wall median':>12s} {'wall min':>10s} {'CPU median':>11s} {'CPU min':>9s}")
    for name in runs:
        (wm, wn), (cm, cn) = summary(wall[name]), summary(cpu[name])
        print(
            f"  {name:28s} {wm * 1e3:9.1f} ms {wn * 1e3:7.1f} ms "
            f"{cm * 1e3:8.1f} ms {cn * 1e3:6.1f} ms"
        )
    print(f"  ratio saco / {N}*({K}+1) bare passes (goal <= 1.10), median and min:")
    for chunk in chunks:
        label = "all at once" if chunk is None else f"chunks of {chunk}"
        ratios = []
        for kind, times in (("wall", wall), ("CPU", cpu)):
            sm, sn = summary(times[f"saco ({label})"])
            bm, bn = summary(times[f"bare passes ({label})"])
            ratios.append(f"{kind} {sm / bm:.3f} / {sn / bn:.3f}")
        print(f"    {label:16s} " + "   ".join(ratios))
    speedups = []
    for kind, times in (("wall", wall), ("CPU", cpu)):
        (nm, nn), (fm, fn_) = summary(times[slow]), summary(times["saco (all at once)"])
        speedups.append(f"{kind} {nm / fm:.1f}x / {nn / fn_:.1f}x")
    print("  speed-up over per-example saco, median and min: " + "   ".join(speedups))


if __name__ == "__main__":
    main()
