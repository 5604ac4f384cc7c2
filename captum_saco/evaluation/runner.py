""":func:`evaluate`: explain a model's decisions with each method, score every
explanation with each metric, and summarise; and SaCo's case study of one
image."""

import math
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from captum_saco.evaluation import distributed
from captum_saco.evaluation.registry import (
    DEFAULT_METHODS,
    DEFAULT_METRICS,
    AttributeFn,
    MethodsType,
    _fractions,
    _Metric,
    logits_of,
    resolve_methods,
    resolve_metrics,
)
from captum_saco.evaluation.result import EvaluationResult, summarise
from captum_saco.metrics import saco

# method -> metric -> (N,) values
Scores = Dict[str, Dict[str, Tensor]]


def _score_batch(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    attributions_by_method: Dict[str, Tensor],
    target: Tensor,
    metrics: Dict[str, _Metric],
    n_groups: int,
) -> Scores:
    """Score every method's attributions of one batch with every metric.

    Each measurement (SaCo, the deletion curve, comprehensiveness) runs once
    per method and serves every metric that reads it.
    """
    scores: Scores = {}
    with torch.no_grad():
        for method, attributions in attributions_by_method.items():
            measured: Dict[Any, Any] = {}
            scores[method] = {}
            for name, metric in metrics.items():
                if metric.measure not in measured:
                    measured[metric.measure] = metric.measure(
                        forward_func, inputs, attributions, target, n_groups
                    )
                scores[method][name] = metric.read(measured[metric.measure]).detach().cpu()
    return scores


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="batch", desc="evaluating", leave=False, disable=None)


@contextmanager
def _grouped_warnings() -> Iterator[None]:
    """Warn once per warning site, saying how many similar warnings followed."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            sites: Dict[Tuple[Any, str, int], List[warnings.WarningMessage]] = {}
            for w in caught:
                sites.setdefault((w.category, w.filename, w.lineno), []).append(w)
    for (category, filename, lineno), ws in sites.items():
        more = f" (and {len(ws) - 1} similar warnings)" if len(ws) > 1 else ""
        warnings.warn_explicit(f"{ws[0].message}{more}", category, filename, lineno)


def _describe(value: Any) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__


def _check_data(inputs: Any, targets: Any, batch_size: Any) -> None:
    if not isinstance(inputs, Tensor) or inputs.dim() < 2 or inputs.shape[0] == 0:
        raise ValueError(
            "inputs: expected a tensor of shape (N, ...) holding at least one image, got "
            + _describe(inputs)
        )
    n = inputs.shape[0]
    if targets is not None and (not isinstance(targets, Tensor) or targets.shape != (n,)):
        raise ValueError(
            f"targets: expected a tensor of shape ({n},), one class per image, got "
            + _describe(targets)
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")


def _device_of(model: nn.Module, fallback: torch.device) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else fallback


def _predicted(forward_func: Callable[..., Tensor], x: Tensor) -> Tensor:
    with torch.no_grad():
        return forward_func(x).argmax(dim=1)


def _explain_and_score(
    model: nn.Module,
    methods: Dict[str, AttributeFn],
    metrics: Dict[str, _Metric],
    x: Tensor,
    target: Optional[Tensor],
    indices: Tensor,
    n_groups: int,
) -> Scores:
    """One batch: its target (given or predicted), every method's
    attributions, and their scores."""
    forward_func = logits_of(model)
    if target is None:
        target = _predicted(forward_func, x)
    attributions = {name: attribute(x, target, indices) for name, attribute in methods.items()}
    return _score_batch(forward_func, x, attributions, target, metrics, n_groups)


def _per_example(
    parts: List[List[Tuple[Tensor, Scores]]], n: int, methods: Sequence[str], metrics: Sequence[str]
) -> Dict[Tuple[str, str], Tensor]:
    """The gathered batch scores as ``(method, metric)`` -> ``(n,)`` in input order."""
    values = {
        (m, k): torch.full((n,), math.nan, dtype=torch.float64) for m in methods for k in metrics
    }
    for part in parts:
        for indices, scores in part:
            for (m, k), column in values.items():
                column[indices] = scores[m][k].double()
    return values


def evaluate(
    model: nn.Module,
    inputs: Tensor,
    targets: Optional[Tensor] = None,
    methods: MethodsType = DEFAULT_METHODS,
    metrics: Sequence[str] = DEFAULT_METRICS,
    n_groups: int = 10,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = False,
    model_name: Optional[str] = None,
) -> EvaluationResult:
    r"""
    Explain ``model``'s decisions on ``inputs`` with each method and score
    every explanation with each metric.

    Each batch of images is explained once per method, for one target per
    image (the model's predicted class, SaCo's default, unless ``targets`` is
    given), and every metric scores that explanation for the same target with
    its default baseline (the per-image, per-channel mean of the input).
    A method that fails raises; an image where a metric is undefined counts
    as NaN in the ``nan`` column, with one warning per kind.

    Under ``torch.distributed`` (initialised, world size > 1) batch ``b``
    runs on process ``b % world_size`` and the per-image values are
    gathered: every process returns the table of all the images, equal to
    the single-process table (batches are formed identically, and
    ``random`` is seeded per image with ``seed + index``).

    Args:
        model (nn.Module): the classifier, on the device to use, in eval
                    mode; returns ``(N, C)`` logits, or an output with
                    ``.logits`` (Hugging Face models). It is not modified.
        inputs (Tensor): ``(N, ...)`` images as the model expects them
                    (resized and normalised); moved to the model's device
                    batch by batch.
        targets (Tensor, optional): ``(N,)`` class per image.
                    Default: None, the model's predicted class.
        methods (sequence of str, or mapping of str to Attribution):
                    names from :data:`METHODS`, or ``{name: attribution}``
                    with your own Captum attribution instances (called as
                    ``attribution.attribute(inputs, target=target)``) or
                    names. Default: all of :data:`METHODS`.
        metrics (sequence of str): names from :data:`METRICS`.
                    Default: all of them.
        n_groups (int): ``K``, the number of salience groups of SaCo and
                    the number of deletion steps of the cumulative metrics.
                    Default: 10
        batch_size (int): images explained at once. Default: 16
        seed (int): seed of ``random`` (image ``i`` uses ``seed + i``).
                    Default: 0
        progress (bool): show a tqdm progress bar (if tqdm is installed,
                    on the first process only). Default: False
        model_name (str, optional): the name recorded in the result.
                    Default: the model's class name.

    Returns:
        EvaluationResult: the rows ``{method, metric, mean, std, n, nan}``
        (methods x metrics, in the given order), the per-image values, and
        writers for text, JSON, CSV and Markdown.

    Raises:
        ValueError: unknown method or metric names, ``inputs`` without
            images, ``targets`` of the wrong shape, ``batch_size`` < 1.

    Examples::

        >>> import torch
        >>> from captum_saco.evaluation import evaluate
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(
        ...     torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
        ...     torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 3)).eval()
        >>> result = evaluate(model, torch.randn(6, 1, 8, 8),
        ...                   methods=["random", "saliency"], metrics=["saco"])
        >>> [(r.method, r.metric, r.n) for r in result.rows]
        [('random', 'saco', 6), ('saliency', 'saco', 6)]
        >>> sorted(result.to_dict())
        ['model', 'n_images', 'results']
    """
    builders, metric_defs = resolve_methods(methods), resolve_metrics(metrics)
    _check_data(inputs, targets, batch_size)
    _fractions(n_groups)  # validates n_groups before any work
    if model.training:
        warnings.warn(
            "evaluate: the model is in training mode (dropout, batch statistics make "
            "the results random); call model.eval() first",
            UserWarning,
            stacklevel=2,
        )
    n = inputs.shape[0]
    device = _device_of(model, inputs.device)
    built = {name: build(model, seed) for name, build in builders.items()}
    my_batches = distributed.shard(math.ceil(n / batch_size))
    bar = _progress_bar(len(my_batches), progress and distributed.world()[0] == 0)
    local: List[Tuple[Tensor, Scores]] = []
    with _grouped_warnings():
        for b in my_batches:
            indices = torch.arange(b * batch_size, min(n, (b + 1) * batch_size))
            target = None if targets is None else targets[indices].to(device)
            scores = _explain_and_score(
                model, built, metric_defs, inputs[indices].to(device), target, indices, n_groups
            )
            local.append((indices, scores))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    per_example = _per_example(distributed.gather(local), n, list(built), list(metric_defs))
    rows = [summarise(m, k, values) for (m, k), values in per_example.items()]
    return EvaluationResult(
        model=model_name or type(model).__name__, n_images=n, rows=rows, per_example=per_example
    )


def saco_case_study(
    model: nn.Module,
    inputs: Tensor,
    index: int = 0,
    methods: MethodsType = DEFAULT_METHODS,
    target: Optional[int] = None,
    n_groups: int = 10,
    seed: int = 0,
) -> Dict[str, Any]:
    r"""
    SaCo's measurements for one image and each method, as in the case study
    of Wu et al. (CVPR 2024): the summed salience ``s(G_i)`` and the
    probability drop ``Δ_i`` of each salience group.

    Args:
        model (nn.Module): the classifier, in eval mode.
        inputs (Tensor): ``(N, ...)`` images; ``inputs[index]`` is studied.
        index (int): the image. ``random`` is seeded with ``seed + index``,
                    as in :func:`evaluate`. Default: 0
        methods: as in :func:`evaluate`.
        target (int, optional): the class explained. Default: predicted.
        n_groups (int): ``K``. Default: 10
        seed (int): as in :func:`evaluate`. Default: 0

    Returns:
        dict: method name -> :class:`captum_saco.metrics.SacoDetails` of
        the one image (tensors on the CPU, batch dimension 1).

    Examples::

        >>> import torch
        >>> from captum_saco.evaluation import saco_case_study
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
        >>> study = saco_case_study(model, torch.randn(2, 1, 4, 4), index=1,
        ...                         methods=["random", "saliency"], n_groups=4)
        >>> study["saliency"].probability_drop.shape
        torch.Size([1, 4])
    """
    builders = resolve_methods(methods)
    if not 0 <= index < inputs.shape[0]:
        raise ValueError(f"index: expected an image index in [0, {inputs.shape[0]}), got {index}")
    x = inputs[index : index + 1].to(_device_of(model, inputs.device))
    forward_func = logits_of(model)
    chosen = _predicted(forward_func, x) if target is None else torch.tensor([target])
    chosen = chosen.to(x.device)
    study = {}
    for name, build in builders.items():
        attributions = build(model, seed)(x, chosen, torch.tensor([index]))
        with torch.no_grad():
            details = saco(
                forward_func, x, attributions, target=chosen, n_groups=n_groups, return_details=True
            )
        study[name] = type(details)(*(t.detach().cpu() for t in details))
    return study
