"""Where is the knee? CPU throughput of bare forward passes against the chunk size.

The metrics run ``N * (K + 1)`` forward passes; on a CPU one huge batch is
not the fastest way to run them (activations fall out of the caches). This
script times the same rows forwarded in chunks of 4, 8, 16, 27, 48, ...
rows, for several models, interleaving the chunk sizes over rounds, and
prints the time per row and the input elements per chunk (the default rule
bounds them by 2**20 per call on a CPU) beside the chunks that the metrics
choose by default, so that the rule of :mod:`captum_saco.metrics` can be
checked against it:

    python benchmarks/bench_batching.py [--rounds 3] [--threads 2] [--device cpu]

On a GPU each model forwards 8 times as many rows, in chunks up to all of them.
"""

import argparse
from typing import Dict, List, Tuple

import timm
import torch
from common import add_device_option, timed
from torch import Tensor, nn

from captum_saco.datasets import load_fashion_mnist_vit
from captum_saco.metrics import deletion_curve


def models() -> Dict[str, Tuple[nn.Module, Tuple[int, ...], int]]:
    """name -> (model, input shape without batch, rows to forward)."""
    torch.manual_seed(0)
    return {
        "fashion ViT 28px": (load_fashion_mnist_vit().eval(), (1, 28, 28), 576),
        "ViT-S/16 224px": (
            timm.models.VisionTransformer(embed_dim=384, depth=12, num_heads=6).eval(),
            (3, 224, 224),
            48,
        ),
        "small CNN 32px": (
            nn.Sequential(
                nn.Conv2d(3, 16, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(32, 10),
            ).eval(),
            (3, 32, 32),
            576,
        ),
        "ResNet-18 224px": (timm.create_model("resnet18").eval(), (3, 224, 224), 48),
    }


def default_chunks(model: nn.Module, x: Tensor) -> List[int]:
    """The sizes of the forward calls ``deletion_curve`` makes with default
    arguments to run ``x``'s rows (a tenth of them as images, 9 steps)."""
    sizes: List[int] = []

    def recording(rows: Tensor) -> Tensor:
        sizes.append(rows.shape[0])
        return model(rows)

    images = x[: x.shape[0] // 10]
    deletion_curve(recording, images, torch.rand(images.shape[0], *x.shape[2:], device=x.device))
    return sorted(set(sizes), reverse=True)


def run(model: nn.Module, x: Tensor, chunk: int) -> None:
    with torch.no_grad():
        for part in x.split(chunk):
            model(part)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    add_device_option(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gpu = torch.device(args.device).type == "cuda"
    for name, (model, shape, rows) in models().items():
        rows, model = rows * (8 if gpu else 1), model.to(args.device)
        x = torch.randn(rows, *shape, device=args.device)
        sizes = (4, 8, 16, 27, 48, 64, 128, 256, 576, 1024, 2048, 4608)
        chunks = [c for c in sizes if c <= rows]
        times: Dict[int, List[float]] = {c: [] for c in chunks}
        run(model, x[:8], 8)  # warm-up
        for _ in range(args.rounds):
            for c in chunks:
                times[c].append(timed(lambda: run(model, x, c), args.device))
        best = min(min(t) for t in times.values())
        rule = default_chunks(model, x)
        print(
            f"{name}: {rows} rows, {args.device}, threads={args.threads}, "
            f"the metrics' default chunks -> calls of {rule} rows"
        )
        for c in chunks:
            t = min(times[c])
            print(
                f"  chunk {c:4d} ({c * x[0].numel():9d} input elements): "
                f"{t / rows * 1e3:8.3f} ms/row  {t / best:5.2f}x best"
            )


if __name__ == "__main__":
    main()
