"""The report's example explanations: which images are shown, and their
heatmaps, computed again for those few images only."""

import math
import random
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from captum_saco.evaluation.data import Source
from captum_saco.evaluation.registry import resolve_methods
from captum_saco.evaluation.result import EvaluationResult
from captum_saco.evaluation.runner import _device_of
from captum_saco.metrics._core.perturbation import match_attributions


class Examples(NamedTuple):
    """The example images and every method's heatmaps of them.

    Attributes:
        keys (list): the images' names in the per-image rows.
        why (list of str): why each is shown (``"best"``, ``"median"``,
            ``"worst"``, ``"random"``).
        images (Tensor): ``(E, C, H, W)`` as the model received them.
        heatmaps (dict): method -> ``(E, H, W)`` pixel maps (channels summed,
            upsampled to the image as the metrics read them).
        saco (dict): method -> the images' SaCo in the run (NaN: undefined).
        best_method (str): the method of the highest mean SaCo, by which the
            best, median and worst images are chosen.
    """

    keys: List[Any]
    why: List[str]
    images: Tensor
    heatmaps: Dict[str, Tensor]
    saco: Dict[str, List[float]]
    best_method: str


def best_method(result: EvaluationResult) -> str:
    """The method of the highest mean SaCo (Random Attribution only if alone)."""
    candidates = [m for m in result.methods if m != "random"] or result.methods
    means = {m: result.row(m, "saco").mean for m in candidates}
    return max(candidates, key=lambda m: -math.inf if means[m] is None else means[m])


def choose_examples(
    result: EvaluationResult, n_random: int, seed: int
) -> Tuple[str, List[Tuple[int, str]]]:
    """The best method for SaCo and the images to show, as ``(position in the
    result, why)``: the best, median and worst image for that method's SaCo,
    then ``n_random`` others drawn with ``random.Random(seed)``."""
    method = best_method(result)
    values = result.per_example[(method, "saco")].tolist()
    ranked = sorted((v, i) for i, v in enumerate(values) if not math.isnan(v))
    chosen: Dict[int, str] = {}
    if ranked:
        for why, (_, i) in zip(
            ("best", "median", "worst"), (ranked[-1], ranked[len(ranked) // 2], ranked[0])
        ):
            chosen.setdefault(i, why)
    others = [i for i in range(result.n_images) if i not in chosen]
    for i in sorted(random.Random(seed).sample(others, min(n_random, len(others)))):
        chosen[i] = "random"
    return method, list(chosen.items())


def _value(value: Optional[float]) -> float:
    return math.nan if value is None else value


def explain_examples(
    model: nn.Module,
    data: Union[Tensor, Dataset],
    result: EvaluationResult,
    n_random: int = 3,
    seed: int = 0,
    methods: Optional[Sequence[str]] = None,
) -> Examples:
    r"""
    Explain again, with every method of ``result``, the few images a report
    shows (see :func:`choose_examples`), for the targets of the run.

    Args:
        model (nn.Module): the model of the run, in eval mode.
        data (Tensor or Dataset): the images of the run, as given to
                    :func:`~captum_saco.evaluation.evaluate`.
        result (EvaluationResult): the run's result (with its per-image rows).
        n_random (int): images shown besides the best, median and worst.
                    Default: 3
        seed (int): the run's seed (draws the random images and seeds
                    ``random`` per image as the run did). Default: 0
        methods (sequence of str, optional): the methods' names in
                    :data:`~captum_saco.evaluation.METHODS`. Default: those
                    of ``result``.

    Returns:
        Examples: the images, heatmaps and SaCo values to show.

    Examples::

        See :func:`~captum_saco.report.render_report`, whose example renders
        these.
    """
    names = list(methods or result.methods)
    method, chosen = choose_examples(result, n_random, seed)
    source = Source(data)
    keys = list(dict.fromkeys(str(r["image"]) for r in result.per_image))
    position = {str(source.key(i)): i for i in range(len(source))}
    rows = {(str(r["image"]), r["method"]): r for r in result.per_image}
    wanted = [(position[keys[i]], keys[i], why) for i, why in chosen if keys[i] in position]
    device = _device_of(model, torch.device("cpu"))
    kept: List[Tuple[str, str]] = []
    x, heatmaps = torch.empty(0), {}
    for batch in source.batches([[p for p, _, _ in wanted]] if wanted else []):
        named = {p: (key, why) for p, key, why in wanted}
        kept = [named[p] for p in batch.indices.tolist()]  # in the batch's order
        x = batch.images.to(device)
        target = torch.tensor([rows[(key, names[0])]["target"] for key, _ in kept], device=device)
        for name, build in resolve_methods(names).items():
            attributions = build(model, seed)(x, target, batch.indices)
            heatmaps[name] = match_attributions((x,), attributions, name).maps[0].detach().cpu()
    saco = {m: [_value(rows[(key, m)].get("saco")) for key, _ in kept] for m in names}
    return Examples(
        keys=[key for key, _ in kept],
        why=[why for _, why in kept],
        images=x.detach().cpu(),
        heatmaps=heatmaps,
        saco=saco,
        best_method=method,
    )
