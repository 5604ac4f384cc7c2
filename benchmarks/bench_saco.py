"""Cost of the metrics with default arguments against what they cannot avoid.

Measured side by side in one run, on the embedded Fashion-MNIST ViT (64
shipped images) and on a ViT-S/16-sized timm model at 224 px (random weights,
a few random images), with random attribution maps:

- ``saco`` (K = 10) and ``deletion_curve`` (9 steps) with default arguments,
  so with the default forward chunking;
- the same N·(K+1) (resp. N·10) forward passes on inputs built beforehand,
  chunked in batches of 8, 16, 32, 64 and all at once: the floor is the
  *best* of these (goal: ours / floor <= 1.10);
- on the embedded model, ``quantus.PixelFlipping`` doing the same deletion
  work (8 steps of 98 pixels, baseline 0, same images, maps and targets;
  goal: ours / Quantus <= 0.8), and the check that both curves agree.

It prints the minimum and median wall time of each over interleaved rounds.
On a GPU (``--device cuda``) the bare passes also try chunks of 128 to 512 rows.

    python benchmarks/bench_saco.py [--rounds 5] [--threads 2] [--vit-s-images 4]
        [--device cpu]
"""

import argparse
import statistics
from typing import Callable, Dict, List, Optional

import numpy as np
import quantus
import timm
import torch
from common import add_device_option, interleaved_rounds
from torch import Tensor, nn

from captum_saco.datasets import load_fashion_mnist_samples, load_fashion_mnist_vit
from captum_saco.metrics import deletion_curve, saco

K = 10
CHUNKS: List[Optional[int]] = [8, 16, 32, 64, None]
GPU_CHUNKS: List[Optional[int]] = [8, 16, 32, 64, 128, 256, 512, None]


def bare_passes(model: nn.Module, rows: Tensor, chunk: Optional[int]) -> None:
    with torch.no_grad():
        for part in rows.split(chunk or rows.shape[0]):
            model(part)


def removed_rows(images: Tensor, maps: Tensor, intervals: List[tuple], baseline: Tensor) -> Tensor:
    """The clean images followed by each image with each rank interval replaced."""
    n = images.shape[0]
    order = maps.flatten(1).argsort(dim=1, descending=True, stable=True)
    ranks = torch.arange(order.shape[1], device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, ranks)
    rank = rank.view(n, 1, *maps.shape[1:])
    perturbed = [
        torch.where((rank >= start) & (rank < stop), baseline, images) for start, stop in intervals
    ]
    return torch.cat([images, torch.stack(perturbed, 1).flatten(0, 1)])


def report(title: str, times: Dict[str, List[float]], ours: Dict[str, str]) -> None:
    print(title)
    for name, values in times.items():
        print(
            f"  {name:34s} min {min(values) * 1e3:9.1f} ms  median "
            f"{statistics.median(values) * 1e3:9.1f} ms"
        )
    for metric, prefix in ours.items():
        floor = min(min(v) for n, v in times.items() if n.startswith(prefix))
        print(
            f"  {metric} (defaults) / best chunked bare passes (goal <= 1.10): "
            f"{min(times[metric]) / floor:.3f}"
        )


def bench_model(
    name: str, model: nn.Module, images: Tensor, maps: Tensor, rounds: int, device: str
) -> None:
    n, features = images.shape[0], maps[0].numel()
    baseline = images.mean(dim=(2, 3), keepdim=True)
    bounds = torch.tensor_split(torch.arange(features), K)
    groups = [(int(g[0]), int(g[-1]) + 1) for g in bounds]
    steps = [(0, round(k / K * features)) for k in range(1, K)]
    saco_rows = removed_rows(images, maps, groups, baseline)
    curve_rows = removed_rows(images, maps, steps, baseline)
    runs: Dict[str, Callable[[], object]] = {
        "saco": lambda: saco(model, images, maps, n_groups=K),
        "deletion_curve": lambda: deletion_curve(model, images, maps),
    }
    for c in GPU_CHUNKS if torch.device(device).type == "cuda" else CHUNKS:
        label = "all" if c is None else str(c)
        runs[f"bare saco passes, chunks of {label}"] = lambda c=c: bare_passes(model, saco_rows, c)
        runs[f"bare curve passes, chunks of {label}"] = lambda c=c: bare_passes(
            model, curve_rows, c
        )
    title = f"{name}: N={n}, K={K}, {device}, threads={torch.get_num_threads()}, {rounds} rounds"
    floors = {"saco": "bare saco", "deletion_curve": "bare curve"}
    report(title, interleaved_rounds(runs, rounds, device), floors)


def bench_quantus(model: nn.Module, images: Tensor, maps: Tensor, rounds: int, device: str) -> None:
    """Ours against quantus.PixelFlipping on the same 8 deletion steps."""
    n, features, n_steps = images.shape[0], maps[0].numel(), 8
    with torch.no_grad():
        targets = model(images).argmax(1)
    fractions = [k / n_steps for k in range(1, n_steps + 1)]
    flipping = quantus.PixelFlipping(
        features_in_step=features // n_steps,
        perturb_baseline=0.0,
        normalise=False,
        abs=False,
        disable_warnings=True,
    )
    x_np, y_np, a_np = images.cpu().numpy(), targets.cpu().numpy(), maps[:, None].cpu().numpy()

    def theirs() -> np.ndarray:
        return np.asarray(
            flipping(
                model=model,
                x_batch=x_np,
                y_batch=y_np,
                a_batch=a_np,
                device=device,
                softmax=True,
                batch_size=64,
            )
        )

    def ours() -> Tensor:
        return deletion_curve(
            model, images, maps, baselines=0.0, target=targets, fractions=fractions
        ).probabilities[:, 1:]

    # Compared with TF32 off: on a GPU, cuDNN's default TF32 convolutions round the
    # patch embedding to ~1e-3, differently for Quantus's batches and ours.
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        difference = (ours().cpu() - torch.from_numpy(theirs()).float()).abs().max().item()
    runs = {"ours (deletion_curve)": ours, "quantus.PixelFlipping": theirs}
    times = interleaved_rounds(runs, rounds, device)
    report(f"deletion curves, {n_steps} steps of {features // n_steps} pixels, N={n}", times, {})
    ratio = min(times["ours (deletion_curve)"]) / min(times["quantus.PixelFlipping"])
    print(
        f"  ours / Quantus (goal <= 0.8): {ratio:.3f}; curves agree: largest difference "
        f"{difference:.2e} ({'yes' if difference < 1e-5 else 'NO'})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
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
    bench_model("embedded Fashion-MNIST ViT", fashion, images, maps, args.rounds, device)
    bench_quantus(fashion, images, maps, args.rounds, device)
    vit_s = timm.models.VisionTransformer(embed_dim=384, depth=12, num_heads=6).eval().to(device)
    n = args.vit_s_images
    bench_model(
        "ViT-S/16 224px (random weights)",
        vit_s,
        torch.randn(n, 3, 224, 224, device=device),
        torch.rand(n, 224, 224, device=device),
        max(2, args.rounds // 2),
        device,
    )


if __name__ == "__main__":
    main()
