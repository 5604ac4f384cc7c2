"""Cost of the ViT attribution methods against the passes they cannot avoid.

On a small timm ViT (96x96 images, 16x16 patches, width 192, 6 blocks, random
weights) and a batch of 16, this script measures side by side, in interleaved
rounds of one run:

- the baselines: one forward pass (no gradient; the model as configured, fused
  attention included) and one forward + backward pass (gradient of the summed
  target logits with respect to the input, what Captum's Saliency pays);
- every method in ``RATIOS``, printed as a ratio to its baseline with its goal;
- for every method in ``SPEED_UPS``, the whole batch at once against the same
  method run image by image.

Adding a method is one line in ``RATIOS`` and, if wanted, one in ``SPEED_UPS``.

    python benchmarks/bench_attr.py [--rounds 10] [--device cpu] [--threads N]
"""

import argparse
import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from captum_saco.attr import (
    AttentionRollout,
    GradientWeightedAttention,
    RawAttention,
    TransformerAttribution,
)
from captum_saco.attr._core.full_lrp import FullLRP
from captum_saco.attr._core.partial_lrp import PartialLRP

BATCH = 16

# (label, method class, options, baseline, goal): cost of attribute() / cost of baseline
RATIOS: List[Tuple[str, type, Dict, str, float]] = [
    ("RawAttention", RawAttention, {}, "forward", 1.3),
    ("AttentionRollout", AttentionRollout, {}, "forward", 1.3),
    ("GradientWeightedAttention", GradientWeightedAttention, {}, "forward+backward", 1.3),
    ("TransformerAttribution", TransformerAttribution, {}, "forward+backward", 2.0),
    (
        "TransformerAttribution model",
        TransformerAttribution,
        {"precision": "model"},
        "forward+backward",
        2.0,
    ),
    ("PartialLRP", PartialLRP, {}, "forward+backward", 2.0),
    ("FullLRP", FullLRP, {}, "forward+backward", 2.0),
]

# (label, method class, options): batch of BATCH at once vs image by image
SPEED_UPS: List[Tuple[str, type, Dict]] = [
    ("GradientWeightedAttention", GradientWeightedAttention, {}),
    ("TransformerAttribution", TransformerAttribution, {}),
    ("PartialLRP", PartialLRP, {}),
    ("FullLRP", FullLRP, {}),
]


def forward(model: nn.Module, images: Tensor) -> None:
    with torch.no_grad():
        model(images)


def forward_backward(model: nn.Module, images: Tensor, target: Tensor) -> None:
    inputs = images.detach().requires_grad_()
    scores = model(inputs)
    torch.autograd.grad(scores.gather(1, target[:, None]).sum(), inputs)


def timed_rounds(
    jobs: Dict[str, Callable[[], None]], rounds: int, device: str
) -> Dict[str, List[float]]:
    """Run every job once per round, interleaved, after a warm-up; seconds per call."""
    times: Dict[str, List[float]] = {name: [] for name in jobs}
    for job in jobs.values():
        job()
    for _ in range(rounds):
        for name, job in jobs.items():
            if device != "cpu":
                torch.cuda.synchronize()
            start = time.perf_counter()
            job()
            if device != "cpu":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = (
        VisionTransformer(
            img_size=96, patch_size=16, embed_dim=192, depth=6, num_heads=3, num_classes=10
        )
        .eval()
        .to(args.device)
    )
    images = torch.rand(BATCH, 3, 96, 96, device=args.device)
    with torch.no_grad():
        target = model(images).argmax(dim=1)

    jobs: Dict[str, Callable[[], None]] = {
        "forward": lambda: forward(model, images),
        "forward+backward": lambda: forward_backward(model, images, target),
    }
    for label, cls, options, _, _ in RATIOS:
        method = cls(model)
        jobs[label] = lambda m=method, o=options: m.attribute(images, target=target, **o)
    for label, cls, options in SPEED_UPS:
        method = cls(model)
        jobs[f"{label} image by image"] = lambda m=method, o=options: [
            m.attribute(images[i : i + 1], target=target[i : i + 1], **o) for i in range(BATCH)
        ]
        jobs.setdefault(label, lambda m=method, o=options: m.attribute(images, target=target, **o))

    times = timed_rounds(jobs, args.rounds, args.device)
    median = {name: statistics.median(t) for name, t in times.items()}

    print(
        f"batch {BATCH}, {args.rounds} interleaved rounds on {args.device} "
        f"({torch.get_num_threads()} CPU threads); median ms per call"
    )
    for name in ("forward", "forward+backward"):
        print(f"  {name:<44s} {1e3 * median[name]:8.2f} ms")
    print("cost ratios (median method / median baseline):")
    for label, _, _, baseline, goal in RATIOS:
        ratio = median[label] / median[baseline]
        verdict = "ok" if ratio <= goal else "over goal"
        print(
            f"  {label:<28s} {1e3 * median[label]:8.2f} ms  / {baseline:<17s} = {ratio:5.2f}"
            f"  (goal <= {goal}: {verdict})"
        )
    print(f"batch of {BATCH} vs image by image (speed-up = image-by-image time / batch time):")
    for label, _, _ in SPEED_UPS:
        single = median[f"{label} image by image"]
        print(
            f"  {label:<28s} {1e3 * median[label]:8.2f} ms vs {1e3 * single:8.2f} ms"
            f"  = x{single / median[label]:5.2f}"
        )


if __name__ == "__main__":
    main()
