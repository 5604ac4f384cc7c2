"""What an evaluation costs: each method's attribution seconds per image, the
scoring's seconds per image, their ratio to one forward and one
forward+backward pass of the model measured in the same run, and the peak
memory of each method where the device reports it (CUDA)."""

import datetime
import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional

import torch
from torch import Tensor

from captum_saco.evaluation.registry import AttributeFn

Cost = Dict[str, Any]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CostMeter:
    """Accumulates the time of each method's attributions, of the clean
    forward passes and of the scoring over the images of a run (see
    :meth:`record` for what it reports)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.started = time.perf_counter()
        self.attribution: Dict[str, float] = {}
        self.peak_memory: Dict[str, Optional[int]] = {}
        self.scoring_seconds = 0.0
        self.forward_seconds = 0.0
        self.images = 0
        self.forward_backward: Optional[float] = None

    @contextmanager
    def _timing(self) -> Iterator[List[float]]:
        """The seconds the block took (the device synchronised), in the list
        it yields, once the block has ended."""
        seconds: List[float] = []
        _synchronize(self.device)
        start = time.perf_counter()
        yield seconds
        _synchronize(self.device)
        seconds.append(time.perf_counter() - start)

    def timed(self, methods: Dict[str, AttributeFn]) -> Dict[str, AttributeFn]:
        """``methods`` whose calls are timed (and their peak memory read on CUDA)."""

        def timing(name: str, attribute: AttributeFn) -> AttributeFn:
            def call(x: Tensor, target: Tensor, indices: Tensor) -> Tensor:
                cuda = self.device.type == "cuda"
                if cuda:
                    torch.cuda.reset_peak_memory_stats(self.device)
                with self._timing() as seconds:
                    attributions = attribute(x, target, indices)
                self.attribution[name] += seconds[0]
                if cuda:
                    peak = torch.cuda.max_memory_allocated(self.device)
                    self.peak_memory[name] = max(self.peak_memory[name] or 0, peak)
                return attributions

            return call

        self.attribution = {name: 0.0 for name in methods}
        self.peak_memory = {name: None for name in methods}
        return {name: timing(name, attribute) for name, attribute in methods.items()}

    @contextmanager
    def clean_pass(self) -> Iterator[None]:
        """Time the clean forward pass of a batch (which the run makes anyway,
        to find the targets): the unit "one forward pass"."""
        with self._timing() as seconds:
            yield
        self.forward_seconds += seconds[0]

    def forward_backward_pass(self, forward_func: Any, x: Tensor, target: Tensor) -> None:
        """Time one forward+backward pass (the gradient of the target logits
        with respect to the images) of the batch ``x``, once per run: the unit
        "one forward+backward pass"."""
        if self.forward_backward is not None:
            return
        leaf = x.detach().requires_grad_(True)
        with self._timing() as seconds, torch.enable_grad():
            logits = forward_func(leaf)
            torch.autograd.grad(logits.gather(1, target[:, None]).sum(), leaf)
        self.forward_backward = seconds[0] / x.shape[0]

    @contextmanager
    def scoring(self, n_images: int) -> Iterator[None]:
        """Time the scoring of a batch of ``n_images``, which also counts them."""
        with self._timing() as seconds:
            yield
        self.scoring_seconds += seconds[0]
        self.images += n_images

    def record(self, recorded: Optional[Cost] = None, earlier_images: int = 0) -> Cost:
        """The costs, as JSON-ready numbers (unrounded), combined with those
        ``recorded`` by the earlier part of a resumed run, which evaluated the
        ``earlier_images`` that this part did not (the averages weighted by
        the images of each part).

        ``{"images", "wall_seconds", "device", "finished" (the date),
        "forward_seconds_per_image",
        "forward_backward_seconds_per_image", "methods": {name:
        {"seconds_per_image", "scoring_seconds_per_image",
        "ratio_to_forward", "ratio_to_forward_backward",
        "peak_memory_bytes"}}}``, where ``images`` counts the images whose
        timings the averages hold (a run stopped before its end records no
        cost: the run that resumes it times only the images it evaluates,
        and ``wall_seconds`` is its own). The scoring of all methods shares its
        perturbed forward batches; a method's ``scoring_seconds_per_image``
        is the scoring time split equally between the methods.
        """
        wall = time.perf_counter() - self.started
        n, methods = self.images, list(self.attribution)
        before = recorded or {}
        m = min(int(before.get("images") or 0), earlier_images)
        if n == 0 and m:
            return dict(before)  # nothing evaluated again: the recorded run's cost

        def mixed(mine: Optional[float], theirs: Optional[float]) -> Optional[float]:
            if mine is None or theirs is None or not m:
                return mine if mine is not None else theirs
            return (mine * n + theirs * m) / (n + m)

        forward = mixed(
            self.forward_seconds / n if n else None, before.get("forward_seconds_per_image")
        )
        backward = mixed(self.forward_backward, before.get("forward_backward_seconds_per_image"))
        out: Cost = {
            "images": n + m,
            "wall_seconds": wall + float(before.get("wall_seconds") or 0.0),
            "device": str(self.device),
            "finished": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "forward_seconds_per_image": forward,
            "forward_backward_seconds_per_image": backward,
            "methods": {},
        }
        earlier = before.get("methods") or {}
        for name in methods:
            old = earlier.get(name) or {}
            seconds = mixed(self.attribution[name] / n if n else None, old.get("seconds_per_image"))
            scoring = mixed(
                self.scoring_seconds / n / len(methods) if n else None,
                old.get("scoring_seconds_per_image"),
            )
            peaks = [p for p in (self.peak_memory.get(name), old.get("peak_memory_bytes")) if p]
            out["methods"][name] = {
                "seconds_per_image": seconds,
                "scoring_seconds_per_image": scoring,
                "ratio_to_forward": seconds / forward if seconds is not None and forward else None,
                "ratio_to_forward_backward": (
                    seconds / backward if seconds is not None and backward else None
                ),
                "peak_memory_bytes": max(peaks) if peaks else None,
            }
        return out
