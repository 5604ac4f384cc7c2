"""Cost, memory and precision of the ViT attribution methods, measured side by side.

Every method is one line of ``ENTRIES``: its label, its class, its options, the
baseline its cost is compared with (``"forward"``: one forward pass without
gradient, the model as configured, fused attention included; or
``"forward+backward"``: one forward pass and the gradient of the summed target
logits with respect to the input, what Captum's Saliency pays), the goal for
that ratio, and whether the batch speed-up, the memory bound and the precision
are measured for it. The script prints, from one run:

1. cost ratios: the median time of ``attribute`` on a batch (``--batch``) over the median
   of its baseline, in interleaved rounds (``--model small``, the default: a timm
   ViT on 96x96 images, 16x16 patches, width 192, 6 blocks, random weights;
   ``--model base``: ViT-B/16 at 224x224, for GPUs, where the small model
   measures kernel launches more than arithmetic). The methods that compute in
   float64 by default are also compared with the forward+backward pass of a
   float64 copy of the model: the cost of float64 arithmetic on the device;
2. batch speed-ups: the batch at once against the same method image by image;
3. memory: the peak of torch's allocations during ``attribute`` on a batch of 64
   with ``max_examples_per_batch=8`` over the peak on a batch of 8 (goal <= 1.3),
   at 224x224 (197 tokens) with ``upsample=False`` (the upsampled map, the result
   itself, grows with the batch whatever the chunks). On the CPU the peak is
   taken from the memory events of ``torch.profiler`` (every allocation and
   free of torch's CPU allocator, accumulated in time order); on CUDA from
   ``torch.cuda.max_memory_allocated``. Model weights and inputs exist before
   the call and are not counted;
4. precision: for float16 and bfloat16 copies of the model and for float32 under
   ``torch.autocast(bfloat16)``, max |map - float32 map| / max |float32 map| over
   the batch (the model's own rounding, which the rules do not add to: they
   compute in float32).

    python benchmarks/bench_attr.py [--rounds 10] [--device cpu] [--threads N]
        [--model small|base] [--batch 16]
"""

import argparse
import contextlib
import copy
import itertools
import statistics
from dataclasses import dataclass, field
from typing import Callable, Dict, List

import torch
from common import add_device_option, interleaved_rounds, synchronize
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from captum_saco.attr import (
    AttCAT,
    AttentionGradCAM,
    AttentionRollout,
    GradientWeightedAttention,
    RawAttention,
    TransformerAttribution,
)
from captum_saco.attr._core.attn_lrp import AttnLRP
from captum_saco.attr._core.conservative_lrp import ConservativeLRP
from captum_saco.attr._core.full_lrp import FullLRP
from captum_saco.attr._core.partial_lrp import PartialLRP

MODELS = {  # name -> image size and VisionTransformer options
    "small": (96, dict(embed_dim=192, depth=6, num_heads=3)),
    "base": (224, dict(embed_dim=768, depth=12, num_heads=12)),
}
MEMORY_BATCH, MEMORY_CHUNK = 64, 8


@dataclass(frozen=True)
class Entry:
    """One attribution method of the benchmark."""

    label: str
    cls: type
    options: Dict = field(default_factory=dict)
    baseline: str = "forward+backward"  # or "forward"
    goal: float = 1.3  # for the cost ratio to the baseline
    speed_up: bool = True  # measure the batch against image by image
    memory: bool = True  # measure the peak memory of chunks
    precision: bool = True  # measure float16 / bfloat16 / autocast against float32
    in_float64: bool = False  # computes in float64 by default: also compared with a float64 pass


ENTRIES: List[Entry] = [
    Entry("RawAttention", RawAttention, baseline="forward", speed_up=False),
    Entry("AttentionRollout", AttentionRollout, baseline="forward", speed_up=False),
    Entry("GradientWeightedAttention", GradientWeightedAttention),
    Entry("AttentionGradCAM", AttentionGradCAM),
    Entry("AttCAT", AttCAT),
    Entry("TransformerAttribution", TransformerAttribution, goal=2.0, in_float64=True),
    Entry(
        "TransformerAttribution model",
        TransformerAttribution,
        {"precision": "model"},
        goal=2.0,
        memory=False,
        precision=False,
    ),
    Entry("PartialLRP", PartialLRP, goal=2.0, in_float64=True),
    Entry("FullLRP", FullLRP, goal=2.0, in_float64=True),
    Entry("ConservativeLRP", ConservativeLRP),
    Entry("AttnLRP", AttnLRP),
]


def build_model(name: str, device: str, image_size: int = 0) -> nn.Module:
    """The ``MODELS`` entry ``name`` with random weights (at ``image_size`` if given)."""
    torch.manual_seed(0)
    size, options = MODELS[name]
    model = VisionTransformer(img_size=image_size or size, patch_size=16, num_classes=10, **options)
    return model.eval().to(device)


def forward(model: nn.Module, images: Tensor) -> None:
    with torch.no_grad():
        model(images)


def forward_backward(model: nn.Module, images: Tensor, target: Tensor) -> None:
    inputs = images.detach().requires_grad_()
    scores = model(inputs)
    torch.autograd.grad(scores.gather(1, target[:, None]).sum(), inputs)


def peak_bytes(job: Callable[[], None], device: str) -> int:
    """The peak of torch's allocations made while ``job`` runs (see the module doc)."""
    if device != "cpu":
        job()  # once before: cuBLAS and cuDNN allocate their workspaces on first use
        synchronize(device)
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        job()
        return torch.cuda.max_memory_allocated() - before
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as profile:
        job()
    events = sorted(profile.events(), key=lambda event: event.time_range.start)
    return max(itertools.accumulate(event.self_cpu_memory_usage for event in events), default=0)


def report_costs(args: argparse.Namespace) -> None:
    model, size, batch = build_model(args.model, args.device), MODELS[args.model][0], args.batch
    images = torch.rand(batch, 3, size, size, device=args.device)
    with torch.no_grad():
        target = model(images).argmax(dim=1)
    model64 = copy.deepcopy(model).double()
    jobs: Dict[str, Callable[[], None]] = {
        "forward": lambda: forward(model, images),
        "forward+backward": lambda: forward_backward(model, images, target),
        "forward+backward float64": lambda: forward_backward(model64, images.double(), target),
    }
    for entry in ENTRIES:
        method = entry.cls(model)
        jobs[entry.label] = lambda m=method, o=entry.options: m.attribute(images, target, **o)
        if entry.speed_up:
            jobs[f"{entry.label} image by image"] = lambda m=method, o=entry.options: [
                m.attribute(images[i : i + 1], target[i : i + 1], **o) for i in range(batch)
            ]
    times = interleaved_rounds(jobs, args.rounds, args.device)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"{args.model} model, batch {batch}, {args.rounds} interleaved rounds on {args.device} "
        f"({torch.get_num_threads()} CPU threads); median ms per call"
    )
    for name in ("forward", "forward+backward", "forward+backward float64"):
        print(f"  {name:<44s} {1e3 * median[name]:8.2f} ms")
    print("cost ratios (median method / median baseline):")
    for entry in ENTRIES:
        ratio = median[entry.label] / median[entry.baseline]
        verdict = "ok" if ratio <= entry.goal else "over goal"
        print(
            f"  {entry.label:<28s} {1e3 * median[entry.label]:8.2f} ms  / {entry.baseline:<17s}"
            f" = {ratio:5.2f}  (goal <= {entry.goal}: {verdict})"
        )
        if entry.in_float64:
            float64 = median[entry.label] / median["forward+backward float64"]
            print(f"  {'':<28s} {'':8s}     / the same in float64 = {float64:5.2f}")
    print(f"batch of {batch} vs image by image (speed-up = image-by-image time / batch time):")
    for entry in (entry for entry in ENTRIES if entry.speed_up):
        single = median[f"{entry.label} image by image"]
        print(
            f"  {entry.label:<28s} {1e3 * median[entry.label]:8.2f} ms vs {1e3 * single:8.2f} ms"
            f"  = x{single / median[entry.label]:5.2f}"
        )


def report_memory(args: argparse.Namespace) -> None:
    model = build_model("small", args.device, image_size=224)
    images = torch.rand(MEMORY_BATCH, 3, 224, 224, device=args.device)
    how = "torch.profiler CPU memory events" if args.device == "cpu" else "CUDA allocator"
    print(
        f"peak memory ({how}), 224x224, upsample=False: batch {MEMORY_BATCH} with "
        f"max_examples_per_batch={MEMORY_CHUNK} / batch {MEMORY_CHUNK} (goal <= 1.3)"
    )
    for entry in (entry for entry in ENTRIES if entry.memory):
        method = entry.cls(model)
        options = dict(entry.options, upsample=False)
        chunked = peak_bytes(
            lambda: method.attribute(images, 0, max_examples_per_batch=MEMORY_CHUNK, **options),
            args.device,
        )
        alone = peak_bytes(
            lambda: method.attribute(images[:MEMORY_CHUNK], 0, **options), args.device
        )
        verdict = "ok" if chunked <= 1.3 * alone else "over goal"
        print(
            f"  {entry.label:<28s} {chunked / 2**20:8.1f} MiB / {alone / 2**20:8.1f} MiB"
            f" = {chunked / alone:5.2f}  ({verdict})"
        )


def report_precision(args: argparse.Namespace) -> None:
    model, size = build_model("small", args.device), MODELS["small"][0]
    torch.manual_seed(1)
    images = torch.rand(16, 3, size, size, device=args.device)
    settings = {
        "float16": (torch.float16, contextlib.nullcontext),
        "bfloat16": (torch.bfloat16, contextlib.nullcontext),
        "autocast(bfloat16)": (
            torch.float32,
            lambda: torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16),
        ),
    }
    print("max |map - float32 map| / max |float32 map| over the batch (target: class 0):")
    print(f"  {'':<28s}" + "".join(f"{name:>20s}" for name in settings))
    for entry in (entry for entry in ENTRIES if entry.precision):
        reference = entry.cls(model).attribute(images, 0, upsample=False, **entry.options)
        row = []
        for dtype, context in settings.values():
            with context():  # on a copy: casting the model back would keep the rounding
                maps = entry.cls(copy.deepcopy(model).to(dtype)).attribute(
                    images.to(dtype), 0, upsample=False, **entry.options
                )
            difference = (maps.double() - reference.double()).abs().max()
            row.append(f"{(difference / reference.double().abs().max()).item():20.1e}")
        print(f"  {entry.label:<28s}" + "".join(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    add_device_option(parser)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--model", choices=tuple(MODELS), default="small")
    parser.add_argument("--batch", type=int, default=16, help="for the cost ratios")
    parser.add_argument(
        "--only", choices=("costs", "memory", "precision"), help="run one section only"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sections = {"costs": report_costs, "memory": report_memory, "precision": report_precision}
    for name, report in sections.items():
        if args.only in (None, name):
            report(args)


if __name__ == "__main__":
    main()
