"""Evaluate the faithfulness of explanation methods: methods x metrics on a
model and images, as one table.

:func:`evaluate` is the Python entry point that ``python -m captum_saco``
wraps. Methods and metrics are named (see :data:`METHODS` and
:data:`METRICS`); every method explains, and every metric scores, the same
target per image (the model's predicted class unless ``targets`` is given).
Under ``torch.distributed`` (for example ``torchrun``) the batches are
sharded across the processes and the per-image results gathered, so that
every process returns the table of the whole data set.
"""

import csv
import io
import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
from captum.attr import Attribution, IntegratedGradients, Saliency
from torch import Tensor, nn

from captum_saco.attr import (
    AttentionRollout,
    GradientWeightedAttention,
    RandomAttribution,
    RawAttention,
    TransformerAttribution,
)
from captum_saco.metrics import DeletionCurve, comprehensiveness, deletion_curve, saco

# (inputs, target, global indices of the examples) -> attributions
AttributeFn = Callable[[Tensor, Tensor, Tensor], Tensor]
# (model, seed) -> AttributeFn
MethodBuilder = Callable[[nn.Module, int], AttributeFn]


def _random_builder(model: nn.Module, seed: int) -> AttributeFn:
    method = RandomAttribution(model)

    def attribute(inputs: Tensor, target: Tensor, indices: Tensor) -> Tensor:
        # One generator per image, seeded by its index in the whole data set:
        # the maps do not depend on batching or on sharding across processes.
        generators = [torch.Generator().manual_seed(seed + int(i)) for i in indices]
        return method.attribute(inputs, generator=generators)

    return attribute


def _attribute_with(method: Attribution, **kwargs: Any) -> AttributeFn:
    """Call ``method.attribute(inputs, target=target, **kwargs)``."""

    def attribute(inputs: Tensor, target: Tensor, indices: Tensor) -> Tensor:
        # A fresh leaf that requires grad: gradient methods need one, and the
        # caller's tensor stays untouched.
        return method.attribute(inputs.detach().requires_grad_(), target=target, **kwargs)

    return attribute


def _captum_builder(cls: Callable[[nn.Module], Attribution], **kwargs: Any) -> MethodBuilder:
    """A builder for an attribution class: ``cls(model).attribute(inputs,
    target=target, **kwargs)``."""
    return lambda model, seed: _attribute_with(cls(model), **kwargs)


def _instance_builder(method: Attribution) -> MethodBuilder:
    """A builder for a ready-made attribution instance."""
    return lambda model, seed: _attribute_with(method)


METHODS: Dict[str, MethodBuilder] = {
    "random": _random_builder,
    "raw_attention": _captum_builder(RawAttention),
    "attention_rollout": _captum_builder(AttentionRollout),
    "gradient_weighted_attention": _captum_builder(GradientWeightedAttention),
    "transformer_attribution": _captum_builder(TransformerAttribution),
    "integrated_gradients": _captum_builder(IntegratedGradients, n_steps=50),
    "saliency": _captum_builder(Saliency),
}
"""The named explanation methods: ``random`` (:class:`RandomAttribution`,
seeded per image), the ViT attention methods of :mod:`captum_saco.attr`
(``raw_attention``, ``attention_rollout``, ``gradient_weighted_attention``,
``transformer_attribution``, with their defaults and maps upsampled to the
input) and Captum's ``integrated_gradients`` (zero baseline, 50 steps) and
``saliency`` (absolute gradient)."""

DEFAULT_METHODS: Tuple[str, ...] = tuple(METHODS)


def _measure_saco(
    model: nn.Module, x: Tensor, attributions: Tensor, target: Tensor, n_groups: int
) -> Tensor:
    return saco(model, x, attributions, target=target, n_groups=n_groups)


def _measure_deletion(
    model: nn.Module, x: Tensor, attributions: Tensor, target: Tensor, n_groups: int
) -> DeletionCurve:
    return deletion_curve(model, x, attributions, target=target, fractions=_fractions(n_groups))


def _measure_comprehensiveness(
    model: nn.Module, x: Tensor, attributions: Tensor, target: Tensor, n_groups: int
) -> Tensor:
    return comprehensiveness(model, x, attributions, target=target, fractions=_fractions(n_groups))


def _fractions(n_groups: int) -> Tuple[float, ...]:
    """The deletion steps 1/K, ..., (K-1)/K (10%, ..., 90% for K = 10)."""
    if isinstance(n_groups, bool) or not isinstance(n_groups, int) or n_groups < 2:
        raise ValueError(f"n_groups: expected an int >= 2, got {n_groups!r}")
    return tuple(k / n_groups for k in range(1, n_groups))


# measurement name -> (model, inputs, attributions, target, n_groups) -> measurement
_MEASUREMENTS: Dict[str, Callable[[nn.Module, Tensor, Tensor, Tensor, int], Any]] = {
    "saco": _measure_saco,
    "deletion_curve": _measure_deletion,
    "comprehensiveness": _measure_comprehensiveness,
}


def _identity(values: Tensor) -> Tensor:
    return values


@dataclass(frozen=True)
class _Metric:
    measurement: str
    read: Callable[[Any], Tensor]
    direction: str


# AOPC, LOdds and AUC are read off one most-salient-first deletion curve.
_METRICS: Dict[str, _Metric] = {
    "saco": _Metric("saco", _identity, "higher is better"),
    "aopc": _Metric("deletion_curve", DeletionCurve.aopc, "higher is better"),
    "lodds": _Metric("deletion_curve", DeletionCurve.lodds, "lower is better"),
    "auc": _Metric("deletion_curve", DeletionCurve.auc, "lower is better"),
    "comprehensiveness": _Metric("comprehensiveness", _identity, "lower is better"),
}

METRICS: Dict[str, str] = {name: metric.direction for name, metric in _METRICS.items()}
"""The named metrics of :mod:`captum_saco.metrics`, each with the direction
that means a more faithful explanation: ``saco``; ``aopc``, ``lodds`` and
``auc`` of the most-salient-first deletion curve at 1/K, ..., (K-1)/K of the
features removed (computed once for the three); ``comprehensiveness``, the
AOPC of the least-salient-first curve."""

DEFAULT_METRICS: Tuple[str, ...] = tuple(METRICS)


@dataclass(frozen=True)
class ResultRow:
    """One method scored by one metric over the data set."""

    method: str
    metric: str
    mean: Optional[float]
    """Mean over the images where the metric is defined (None if none is)."""
    std: Optional[float]
    """Sample standard deviation over the same images (None under two)."""
    n: int
    """Images where the metric is defined."""
    nan: int
    """Images where it is undefined (NaN)."""


@dataclass
class EvaluationResult:
    """The table of :func:`evaluate`, with the per-image values behind it."""

    model: str
    n_images: int
    rows: List[ResultRow]
    per_example: Dict[Tuple[str, str], Tensor] = field(repr=False)
    """``(method, metric)`` -> CPU tensor ``(n_images,)`` in input order."""

    @property
    def methods(self) -> List[str]:
        return list(dict.fromkeys(r.method for r in self.rows))

    @property
    def metrics(self) -> List[str]:
        return list(dict.fromkeys(r.metric for r in self.rows))

    def row(self, method: str, metric: str) -> ResultRow:
        """The row of ``method`` and ``metric``."""
        for r in self.rows:
            if r.method == method and r.metric == metric:
                return r
        raise KeyError((method, metric))

    def to_dict(self) -> Dict[str, Any]:
        """``{"model", "n_images", "results": [{"method", "metric", "mean",
        "std", "n", "nan"}, ...]}``; undefined means and stds are None."""
        return {
            "model": self.model,
            "n_images": self.n_images,
            "results": [asdict(r) for r in self.rows],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(
            out, fieldnames=["method", "metric", "mean", "std", "n", "nan"], lineterminator="\n"
        )
        writer.writeheader()
        for r in self.rows:
            writer.writerow(asdict(r))
        return out.getvalue()

    def _cells(self) -> Tuple[List[str], List[List[str]]]:
        header = ["method"] + self.metrics
        body = [[m] + [_cell(self.row(m, k)) for k in self.metrics] for m in self.methods]
        return header, body

    def _legend(self) -> str:
        directions: Dict[str, List[str]] = {}
        for k in self.metrics:
            directions.setdefault(METRICS.get(k, "custom metric"), []).append(k)
        parts = [f"{d}: {', '.join(ks)}" for d, ks in directions.items()]
        return (
            f"{self.model}, {self.n_images} images; cells: mean ± std (undefined values)"
            f"; {'; '.join(parts)}"
        )

    def to_markdown(self) -> str:
        header, body = self._cells()
        lines = [
            "| " + " | ".join(header) + " |",
            "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines) + "\n\n" + self._legend() + "\n"

    def format_table(self) -> str:
        """The methods x metrics table as aligned plain text."""
        header, body = self._cells()
        widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]

        def line(row: List[str]) -> str:
            first = row[0].ljust(widths[0])
            return "  ".join([first] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])])

        rule = "-" * len(line(header))
        return "\n".join([line(header), rule] + [line(r) for r in body] + [rule, self._legend()])

    def __str__(self) -> str:
        return self.format_table()

    def save(self, path: str) -> None:
        """Write the table to ``path`` as JSON, CSV or Markdown by its suffix
        (``.json``, ``.csv``, ``.md``)."""
        writers = {".json": self.to_json, ".csv": self.to_csv, ".md": self.to_markdown}
        suffix = "." + path.rsplit(".", 1)[-1].lower() if "." in path else ""
        if suffix not in writers:
            raise ValueError(
                f"output: expected a file name ending in .json, .csv or .md, got {path!r}"
            )
        with open(path, "w", newline="") as f:
            f.write(writers[suffix]())


def _cell(r: ResultRow) -> str:
    mean = "nan" if r.mean is None else f"{r.mean:.4f}"
    std = "nan" if r.std is None else f"{r.std:.4f}"
    return f"{mean} ± {std} ({r.nan})"


def _summarise(method: str, metric: str, values: Tensor) -> ResultRow:
    defined = values[~torch.isnan(values)].double()
    n = int(defined.numel())
    mean = float(defined.mean()) if n else None
    std = float(defined.std()) if n > 1 else None
    return ResultRow(method, metric, mean, std, n, int(values.numel()) - n)


def _resolve_methods(
    methods: Union[Sequence[str], Mapping[str, Attribution]],
) -> Dict[str, MethodBuilder]:
    if isinstance(methods, str):
        raise TypeError("methods: expected a sequence of method names, got a string")
    if isinstance(methods, Mapping):
        resolved: Dict[str, MethodBuilder] = {}
        for name, method in methods.items():
            if isinstance(method, Attribution):
                resolved[name] = _instance_builder(method)
            elif isinstance(method, str) and method in METHODS:
                resolved[name] = METHODS[method]
            else:
                raise TypeError(
                    f"methods: expected a captum Attribution or a method name for "
                    f"{name!r}, got {type(method).__name__}"
                )
        return resolved
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(
            f"methods: unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}"
        )
    return {m: METHODS[m] for m in methods}


def _resolve_metrics(metrics: Sequence[str]) -> Dict[str, _Metric]:
    if isinstance(metrics, str):
        raise TypeError("metrics: expected a sequence of metric names, got a string")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(
            f"metrics: unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)}"
        )
    return {m: _METRICS[m] for m in metrics}


def _shard(n_batches: int) -> Tuple[range, int]:
    """The batch numbers of this process, and the number of processes."""
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
        return range(rank, n_batches, world), world
    return range(n_batches), 1


def _gather(
    local: Dict[Tuple[str, str], List[Tuple[Tensor, Tensor]]], world: int
) -> List[Dict[Tuple[str, str], List[Tuple[Tensor, Tensor]]]]:
    if world == 1:
        return [local]
    gathered: List[Any] = [None] * world
    dist.all_gather_object(gathered, local)
    return gathered


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="batch", desc="evaluating", leave=False, disable=None)


def _reemit(caught: List[warnings.WarningMessage]) -> None:
    """Warn once per warning site, saying how many similar warnings followed."""
    sites: Dict[Tuple[Any, str, int], List[warnings.WarningMessage]] = {}
    for w in caught:
        sites.setdefault((w.category, w.filename, w.lineno), []).append(w)
    for (category, filename, lineno), ws in sites.items():
        more = f" (and {len(ws) - 1} similar warnings)" if len(ws) > 1 else ""
        warnings.warn_explicit(f"{ws[0].message}{more}", category, filename, lineno)


def evaluate(
    model: nn.Module,
    inputs: Tensor,
    targets: Optional[Tensor] = None,
    methods: Union[Sequence[str], Mapping[str, Attribution]] = DEFAULT_METHODS,
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
                    mode; returns ``(N, C)`` logits. It is not modified.
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
    method_builders = _resolve_methods(methods)
    metric_fns = _resolve_metrics(metrics)
    if not isinstance(inputs, Tensor) or inputs.dim() < 2 or inputs.shape[0] == 0:
        raise ValueError(
            "inputs: expected a tensor of shape (N, ...) holding at least one image, got "
            + (
                f"shape {tuple(inputs.shape)}"
                if isinstance(inputs, Tensor)
                else type(inputs).__name__
            )
        )
    n = inputs.shape[0]
    if targets is not None and (not isinstance(targets, Tensor) or targets.shape != (n,)):
        raise ValueError(
            f"targets: expected a tensor of shape ({n},), one class per image, got "
            + (
                f"shape {tuple(targets.shape)}"
                if isinstance(targets, Tensor)
                else type(targets).__name__
            )
        )
    _fractions(n_groups)  # validates n_groups before any work
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    if model.training:
        warnings.warn(
            "evaluate: the model is in training mode (dropout, batch statistics make "
            "the results random); call model.eval() first",
            UserWarning,
            stacklevel=2,
        )
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else inputs.device
    built = {name: build(model, seed) for name, build in method_builders.items()}

    n_batches = math.ceil(n / batch_size)
    my_batches, world = _shard(n_batches)
    bar = _progress_bar(
        len(my_batches) * len(built), progress and (world == 1 or dist.get_rank() == 0)
    )
    local: Dict[Tuple[str, str], List[Tuple[Tensor, Tensor]]] = {
        (m, k): [] for m in built for k in metric_fns
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for b in my_batches:
            indices = torch.arange(b * batch_size, min(n, (b + 1) * batch_size))
            x = inputs[indices].to(device)
            if targets is None:
                with torch.no_grad():
                    target = model(x).argmax(dim=1)
            else:
                target = targets[indices].to(device)
            for method_name, attribute in built.items():
                attributions = attribute(x, target, indices)
                measured: Dict[str, Any] = {}
                for metric_name, metric in metric_fns.items():
                    if metric.measurement not in measured:
                        with torch.no_grad():
                            measured[metric.measurement] = _MEASUREMENTS[metric.measurement](
                                model, x, attributions, target, n_groups
                            )
                    values = metric.read(measured[metric.measurement])
                    local[(method_name, metric_name)].append((indices, values.detach().cpu()))
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    _reemit(caught)

    per_example: Dict[Tuple[str, str], Tensor] = {}
    gathered = _gather(local, world)
    for key in local:
        values = torch.full((n,), math.nan, dtype=torch.float64)
        for part in gathered:
            for idx, v in part[key]:
                values[idx] = v.double()
        per_example[key] = values
    rows = [_summarise(m, k, per_example[(m, k)]) for m, k in local]
    return EvaluationResult(
        model=model_name or type(model).__name__, n_images=n, rows=rows, per_example=per_example
    )


def saco_case_study(
    model: nn.Module,
    inputs: Tensor,
    index: int = 0,
    methods: Union[Sequence[str], Mapping[str, Attribution]] = DEFAULT_METHODS,
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
    builders = _resolve_methods(methods)
    if not 0 <= index < inputs.shape[0]:
        raise ValueError(f"index: expected an image index in [0, {inputs.shape[0]}), got {index}")
    parameter = next(model.parameters(), None)
    x = inputs[index : index + 1].to(parameter.device if parameter is not None else inputs.device)
    with torch.no_grad():
        chosen = model(x).argmax(dim=1) if target is None else torch.tensor([target])
    chosen = chosen.to(x.device)
    study = {}
    for name, build in builders.items():
        attributions = build(model, seed)(x, chosen, torch.tensor([index]))
        with torch.no_grad():
            details = saco(
                model, x, attributions, target=chosen, n_groups=n_groups, return_details=True
            )
        study[name] = type(details)(*(t.detach().cpu() for t in details))
    return study


def plot_evaluation(
    result: EvaluationResult,
    path: str,
    case_study: Optional[Mapping[str, Any]] = None,
    image: Optional[Tensor] = None,
) -> None:
    r"""
    Save a PNG of the evaluation: one bar chart per metric (the mean of each
    method, with its standard error) and, if ``case_study`` is given (from
    :func:`saco_case_study`), SaCo's per-group probability drops of one image
    for each method, with the groups' summed salience.

    Args:
        result (EvaluationResult): from :func:`evaluate`.
        path (str): the PNG file to write.
        case_study (mapping, optional): method -> SacoDetails of one image.
        image (Tensor, optional): that image ``(C, H, W)``, shown beside it.

    Raises:
        ImportError: if matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(
            "plotting needs matplotlib; install it with pip install 'captum-saco[plot]'"
        ) from e

    methods, metrics = result.methods, result.metrics
    n_cols = max(len(metrics), len(case_study or {}) + (image is not None))
    n_rows = 2 if case_study else 1
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.2 * n_cols, 3.6 * n_rows), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, metric in zip(axes[0], metrics):
        rows = [result.row(m, metric) for m in methods]
        means = [math.nan if r.mean is None else r.mean for r in rows]
        errors = [0.0 if r.std is None else r.std / math.sqrt(r.n) for r in rows]
        ax.bar(
            range(len(methods)),
            means,
            yerr=errors,
            color=[colours(i % 10) for i in range(len(methods))],
        )
        ax.set_xticks(range(len(methods)), methods, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{metric} ({METRICS.get(metric, '')})", fontsize=9)
        ax.axhline(0, color="black", linewidth=0.5)
    for ax in axes[0][len(metrics) :]:
        ax.axis("off")
    if case_study:
        panels = list(axes[1])
        if image is not None:
            ax = panels.pop(0)
            shown = image.detach().cpu().float()
            shown = (shown - shown.min()) / (shown.max() - shown.min() + 1e-12)
            ax.imshow(shown.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray")
            ax.set_title("case-study image", fontsize=9)
            ax.axis("off")
        for i, (ax, (name, details)) in enumerate(zip(panels, case_study.items())):
            drops = details.probability_drop[0].double().numpy()
            salience = details.group_salience[0].double().numpy()
            groups = list(range(1, len(drops) + 1))
            ax.bar(groups, drops, color=colours(methods.index(name) % 10 if name in methods else i))
            ax.set_xlabel("salience group (most salient first)", fontsize=7)
            ax.set_ylabel("probability drop Δ", fontsize=7)
            ax.set_title(f"{name}: SaCo {float(details.coefficient[0]):.3f}", fontsize=9)
            twin = ax.twinx()
            twin.plot(groups, salience, color="black", marker=".", linewidth=1)
            twin.set_ylabel("group salience s(G)", fontsize=7)
        for ax in panels[len(case_study) :]:
            ax.axis("off")
    fig.suptitle(f"{result.model}: {result.n_images} images", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
