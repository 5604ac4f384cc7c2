""":func:`evaluate`: explain a model's decisions with each method, score every
explanation with each metric, and summarise; and SaCo's case study of one
image."""

import hashlib
import json
import math
import re
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, IterableDataset

from captum_saco._utils import warn_if_training
from captum_saco.evaluation import distributed
from captum_saco.evaluation.cost import CostMeter
from captum_saco.evaluation.data import Batch, Source
from captum_saco.evaluation.per_image import PerImageFile, Row, check_suffix
from captum_saco.evaluation.registry import (
    DEFAULT_METHODS,
    DEFAULT_METRICS,
    METRICS,
    AttributeFn,
    MethodsType,
    _fractions,
    logits_of,
    resolve_methods,
    resolve_metrics,
)
from captum_saco.evaluation.result import EvaluationResult, summarise
from captum_saco.evaluation.statistics import bootstrap_ci95s, comparisons
from captum_saco.metrics import saco, score_attributions
from captum_saco.metrics._core.perturbation import n_features_of
from captum_saco.metrics._core.saco import check_n_groups

# method -> metric -> the N values, one per image
Scores = Dict[str, Dict[str, List[float]]]


def _score_batch(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    logits: Tensor,
    attributions_by_method: Dict[str, Tensor],
    target: Tensor,
    metrics: List[str],
    n_groups: int,
) -> Scores:
    """Score every method's attributions of one batch with every metric, sharing
    the clean pass (``logits``, run to find the targets) and the perturbed
    forward batches (see :func:`~captum_saco.metrics.score_attributions`)."""
    scores = score_attributions(
        forward_func,
        inputs,
        attributions_by_method,
        metrics,
        target=target,
        n_groups=n_groups,
        clean_output=logits,
        return_curves=True,
    )
    curves = {m: by_metric.pop("deletion_curve", None) for m, by_metric in scores.items()}
    # One copy to the host for all the values (each is a device sync on a GPU),
    # and Python floats: the rows read them one by one.
    keys = [(method, name) for method, by_metric in scores.items() for name in by_metric]
    table = torch.stack([scores[m][k] for m, k in keys]).detach().double().cpu().tolist()
    values: Scores = {method: {} for method in scores}
    for (method, name), column in zip(keys, table):
        values[method][name] = column
    for method, curve in curves.items():
        if curve is not None:  # the per-image deletion curves, kept to re-render reports
            values[method]["deletion_curve"] = curve.detach().double().cpu().tolist()
    return values


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="batch", desc="evaluating", leave=False, disable=None)


def _naming_images(message: str, keys: Sequence[Any]) -> str:
    """``message`` with the metrics' ``examples (indices [i, j])`` of a batch
    (see :func:`~captum_saco.metrics._core.perturbation.warn_about_examples`)
    said as ``examples (images [key_i, key_j])``."""

    def images(match: "re.Match[str]") -> str:
        positions = [int(i) for i in match.group(1).split(",") if i.strip()]
        return f"examples (images {[keys[i] for i in positions]!r})"

    return re.sub(r"examples \(indices \[([\d, ]*)\]\)", images, message)


def _kind(message: str) -> str:
    """A warning's text without its numbers and bracketed lists (counts, indices)."""
    return re.sub(r"\d+", "#", re.sub(r"\[[^\]]*\]", "[...]", message))


class _WarningGroups:
    """Records the warnings of the scoring, to warn once per warning site and
    kind of message, saying how many similar warnings followed."""

    def __init__(self) -> None:
        self.caught: List[warnings.WarningMessage] = []

    @contextmanager
    def recording(self, keys: Sequence[Any]) -> Iterator[None]:
        """Record the warnings of one batch, whose examples are the images ``keys``:
        the metrics' warnings name examples by their position in the batch, the
        recorded ones name the images."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield
            finally:
                for w in caught:
                    w.message = w.category(_naming_images(str(w.message), keys))
                self.caught.extend(caught)

    def emit(self) -> None:
        sites: Dict[Tuple[Any, str, int, str], List[warnings.WarningMessage]] = {}
        for w in self.caught:
            key = (w.category, w.filename, w.lineno, _kind(str(w.message)))
            sites.setdefault(key, []).append(w)
        for (category, filename, lineno, _), ws in sites.items():
            more = f" (and {len(ws) - 1} similar warnings)" if len(ws) > 1 else ""
            warnings.warn_explicit(f"{ws[0].message}{more}", category, filename, lineno)


def _describe(value: Any) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__


def _check_inputs(inputs: Any, workers: Any) -> Source:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers: expected a non-negative int, got {workers!r}")
    if isinstance(inputs, Dataset) and not isinstance(inputs, Tensor):
        if isinstance(inputs, IterableDataset) or not hasattr(inputs, "__len__"):
            raise ValueError(
                f"inputs: expected a map-style data set (with __len__ and __getitem__), got "
                f"{type(inputs).__name__}: images are read by position, in fixed batches"
            )
        if len(inputs) == 0:  # type: ignore[arg-type]
            raise ValueError("inputs: expected a data set holding at least one image, got none")
        return Source(inputs, workers)
    if not isinstance(inputs, Tensor) or inputs.dim() < 2 or inputs.shape[0] == 0:
        raise ValueError(
            "inputs: expected a tensor of shape (N, ...) or a data set holding at least one "
            "image, got " + _describe(inputs)
        )
    return Source(inputs)


def _check_targets(targets: Any, source: Source) -> None:
    n = len(source)
    if isinstance(targets, Tensor):
        if targets.shape != (n,) or targets.is_floating_point() or targets.dtype == torch.bool:
            raise ValueError(
                f"targets: expected an integer tensor of shape ({n},), one class per image, "
                f"got {_describe(targets)} of dtype {targets.dtype}"
            )
        return
    if targets is None or targets == "predicted":
        return
    if targets != "label":
        raise ValueError(
            f"targets: expected None, 'predicted', 'label' or a tensor, got {targets!r}"
        )
    if not source.has_labels or getattr(source.inputs, "classes", None) == []:
        raise ValueError(
            "targets: 'label' needs a data set with labels (a folder with one subfolder per "
            "class), got " + ("a tensor" if not source.has_labels else "a flat folder")
        )


def _targets_setting(targets: Union[None, str, Tensor]) -> str:
    """How the targets were chosen, as the per-image file's settings record it."""
    if isinstance(targets, Tensor):
        digest = hashlib.sha256(targets.detach().long().cpu().numpy().tobytes()).hexdigest()
        return f"given (sha256 {digest[:16]})"
    return "predicted" if targets is None else targets


def _images_setting(source: Source) -> str:
    """Which images are evaluated, as the per-image file's settings record it:
    their number and a digest of their names (paths in an image folder)."""
    keys = json.dumps([str(source.key(i)) for i in range(len(source))])
    return f"{len(source)} (names sha256 {hashlib.sha256(keys.encode()).hexdigest()[:16]})"


def _check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**62:
        raise ValueError(f"seed: expected an int in [0, 2**62], got {seed!r}")


def _check_options(batch_size: Any, seed: Any, per_image_file: Optional[str], resume: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    _check_seed(seed)
    if not isinstance(resume, bool):
        raise ValueError(f"resume: expected a bool, got {resume!r}")
    if per_image_file is not None:
        check_suffix(per_image_file)
    elif resume:
        raise ValueError("resume: needs per_image_file, the results to resume from")


def _device_of(model: nn.Module, fallback: torch.device) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else fallback


def _predicted(forward_func: Callable[..., Tensor], x: Tensor) -> Tensor:
    with torch.no_grad():
        return forward_func(x).argmax(dim=1)


class _Scorer:
    """Explains and scores one batch at a time."""

    def __init__(
        self,
        model: nn.Module,
        methods: Dict[str, AttributeFn],
        metrics: List[str],
        n_groups: int,
        targets: Any,
        meter: CostMeter,
    ) -> None:
        self.forward_func, self.meter = logits_of(model), meter
        self.methods, self.metrics, self.n_groups, self.targets = (
            methods,
            metrics,
            n_groups,
            targets,
        )

    def _target(self, batch: Batch, logits: Tensor, keys: List[Any]) -> Tensor:
        if isinstance(self.targets, Tensor):
            target, what = self.targets[batch.indices], "class"
        elif isinstance(self.targets, str) and self.targets == "label":
            assert batch.labels is not None
            target, what = batch.labels, "label"
        else:
            return logits.argmax(dim=1)
        classes = logits.shape[1]
        outside = ((target < 0) | (target >= classes)).nonzero().flatten().tolist()
        if outside:
            j = outside[0]
            if what == "label" and int(target[j]) < 0:
                raise ValueError(
                    f"targets: 'label' needs a label per image, and image {keys[j]!r} has none"
                )
            raise ValueError(
                f"targets: the {what} {int(target[j])} of image {keys[j]!r} is not a class of "
                f"the model, which has {classes} outputs; expected classes in [0, {classes})"
            )
        return target.to(logits.device)

    def rows(self, batch: Batch, x: Tensor, keys: List[Any]) -> List[Row]:
        """The per-image rows of one batch: its targets (given or predicted),
        clean probabilities, every method's attributions and their scores."""
        check_n_groups(self.n_groups, n_features_of([x]))  # before any method runs
        with torch.no_grad(), self.meter.clean_pass():
            logits = self.forward_func(x)
        target = self._target(batch, logits, keys)
        probability = logits.double().softmax(dim=1).gather(1, target[:, None])[:, 0].cpu()
        attributions = {
            name: attribute(x, target, batch.indices) for name, attribute in self.methods.items()
        }
        with self.meter.scoring(len(keys)):
            scores = _score_batch(
                self.forward_func, x, logits, attributions, target, self.metrics, self.n_groups
            )
        self.meter.forward_backward_pass(self.forward_func, x, target)
        labels = [None] * len(keys) if batch.labels is None else batch.labels.tolist()
        targets, probabilities = target.tolist(), probability.tolist()
        return [
            {
                "image": key,
                "label": None if labels[j] is None or labels[j] < 0 else labels[j],
                "target": targets[j],
                "probability": probabilities[j],
                "method": method,
                **{k: scores[method][k][j] for k in self.metrics},
                **_curve_of(scores[method], j),
            }
            for j, key in enumerate(keys)
            for method in self.methods
        ]


def _curve_of(scores: Dict[str, Any], j: int) -> Row:
    """Image ``j``'s deletion curve, as a per-image row keeps it, if measured."""
    curve = scores.get("deletion_curve")
    return {} if curve is None else {"deletion_curve": curve[j]}


def _done(
    stored: Dict[Tuple[str, str], Row],
    source: Source,
    methods: Sequence[str],
    metrics: Sequence[str],
) -> Set[int]:
    """The positions of the images stored for every method and metric."""
    return {
        i
        for i in range(len(source))
        if all(
            (row := stored.get((str(source.key(i)), m))) is not None
            and all(k in row for k in metrics)
            for m in methods
        )
    }


def _plan(n: int, batch_size: int, done: Set[int]) -> List[List[int]]:
    """This process's batches: fixed blocks of ``batch_size`` positions,
    sharded across processes, without the blocks whose images are all done.
    A block is run whole or not at all, so that a resumed run forms the
    batches of an uninterrupted one (an image's float32 values may depend on
    the batch it is computed in)."""
    blocks = [
        list(range(b * batch_size, min(n, (b + 1) * batch_size)))
        for b in distributed.shard(math.ceil(n / batch_size))
    ]
    return [block for block in blocks if not done.issuperset(block)]


def _run_batches(
    scorer: _Scorer,
    source: Source,
    plan: List[List[int]],
    device: torch.device,
    writer: Optional[PerImageFile],
    progress: bool,
) -> Tuple[List[Row], List[int]]:
    """Score the planned batches; returns the new rows and the positions of the
    skipped images."""
    rows: List[Row] = []
    skipped: List[int] = []
    groups = _WarningGroups()
    bar = _progress_bar(len(plan), progress and distributed.world()[0] == 0)
    try:
        for batch in source.batches(plan):
            for index, reason in batch.skipped:
                skipped.append(index)
                warnings.warn(f"skipping the image {source.key(index)!r}: {reason}")
            if batch.indices.numel():
                keys = [source.key(int(i)) for i in batch.indices]
                with groups.recording(keys):
                    new = scorer.rows(batch, batch.images.to(device), keys)
                if writer is not None:
                    writer.append(new)
                rows.extend(new)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        groups.emit()
    return rows, skipped


def _collect(
    stored: Dict[Tuple[str, str], Row],
    new_rows: List[Row],
    source: Source,
    methods: Sequence[str],
) -> List[Row]:
    """Stored and new rows of the images of ``source``, in input order."""
    by_key = dict(stored)
    by_key.update({(str(r["image"]), r["method"]): r for r in new_rows})
    ordered = []
    for i in range(len(source)):
        key = str(source.key(i))
        # The image's own key: a CSV file stores an index as text.
        ordered += [
            {**by_key[(key, m)], "image": source.key(i)} for m in methods if (key, m) in by_key
        ]
    return ordered


def _result(
    rows: List[Row],
    methods: List[str],
    metrics: List[str],
    skipped: List[Any],
    model_name: str,
) -> EvaluationResult:
    images = list(dict.fromkeys(str(r["image"]) for r in rows))
    position = {key: i for i, key in enumerate(images)}
    # Filled as lists: a Python float is written in a fraction of a tensor item's time.
    values = {(m, k): [math.nan] * len(images) for m in methods for k in metrics}
    for r in rows:
        i = position[str(r["image"])]
        for k in metrics:
            values[(r["method"], k)][i] = r[k]
    per_example = {key: torch.tensor(v, dtype=torch.float64) for key, v in values.items()}
    return EvaluationResult(
        model=model_name,
        n_images=len(images),
        rows=[
            summarise(m, k, values, ci95)
            for ((m, k), values), ci95 in zip(
                per_example.items(), bootstrap_ci95s(list(per_example.values()))
            )
        ],
        per_example=per_example,
        per_image=rows,
        skipped=skipped,
        comparisons=comparisons(per_example, methods, {k: METRICS[k] for k in metrics}),
    )


def evaluate(
    model: nn.Module,
    inputs: Union[Tensor, Dataset],
    targets: Union[None, str, Tensor] = None,
    methods: MethodsType = DEFAULT_METHODS,
    metrics: Sequence[str] = DEFAULT_METRICS,
    n_groups: int = 10,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = False,
    model_name: Optional[str] = None,
    workers: int = 0,
    per_image_file: Optional[str] = None,
    resume: bool = False,
) -> EvaluationResult:
    r"""
    Explain ``model``'s decisions on ``inputs`` with each method and score
    every explanation with each metric.

    Each batch of images is explained once per method, for one target per
    image (the model's predicted class, SaCo's default, unless ``targets``
    says otherwise), and every metric scores that explanation for the same
    target with its default baseline (the per-image, per-channel mean of the
    input). A method that fails raises; an image where a metric is undefined
    counts as NaN in the ``nan`` column, with one warning per kind. An item
    of a data set that cannot be read (not an image, a decompression bomb), or
    whose shape differs from most of its batch's, is skipped with a warning
    naming it, and listed in ``result.skipped``.

    Batch ``b`` holds the images ``b * batch_size`` to ``(b + 1) *
    batch_size - 1``. Under ``torch.distributed`` (initialised, world size
    > 1) it runs on process ``b % world_size``, which reads only those
    images, and the per-image values are gathered: every process returns
    the table of all the images, equal to the single-process table
    (``random`` is seeded per image with ``seed + index``).

    With ``per_image_file``, the per-image rows (see
    :mod:`captum_saco.evaluation.per_image`) are appended and flushed batch
    by batch, so that a run that dies keeps every finished batch; with
    ``resume=True`` the images already in the file for every method and
    metric are not evaluated again, and the result equals that of an
    uninterrupted run.

    Args:
        model (nn.Module): the classifier, on the device to use, in eval
                    mode; returns ``(N, C)`` logits, or an output with
                    ``.logits`` (Hugging Face models). It is not modified.
        inputs (Tensor or Dataset): ``(N, ...)`` images as the model
                    expects them (resized and normalised), or a data set of
                    ``(image, label)`` items such as
                    :class:`~captum_saco.datasets.ImageFiles` or torchvision's
                    ``ImageFolder`` (read batch by batch by a ``DataLoader``);
                    items may also be an image alone or ``(image,)`` (label
                    unknown), images tensors or NumPy arrays, labels integers
                    or None (unknown).
                    Moved to the model's device batch by batch.
        targets (Tensor or str, optional): ``(N,)`` class per image;
                    ``"label"``, the data set's labels; or None or
                    ``"predicted"``, the model's predicted class.
                    Default: None
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
        workers (int): ``DataLoader`` worker processes reading a data set.
                    Default: 0 (read in this process)
        per_image_file (str, optional): a ``.jsonl`` or ``.csv`` file for
                    the per-image rows. Default: None
        resume (bool): continue the run recorded in ``per_image_file``
                    (the same inputs, model name, methods, metrics, targets,
                    n_groups, batch_size and seed, which the file's settings
                    record and a resumed run checks; of the inputs, their
                    number and names). Default: False

    Returns:
        EvaluationResult: the rows ``{method, metric, mean, std, n, nan,
        ci95}`` (methods x metrics, in the given order), the per-image
        values and rows, the paired comparisons of the methods, what each
        method cost (``result.cost``, see
        :meth:`~captum_saco.evaluation.cost.CostMeter.record`), and writers
        for text, JSON, CSV and Markdown.

    Raises:
        ValueError: unknown method or metric names, ``inputs`` without
            images or an iterable-style data set, ``targets`` of the wrong
            shape or ``"label"`` without labels, ``batch_size`` < 1, a
            ``seed`` outside ``[0, 2**62]``, ``resume`` without a file, or
            with a file that this function did not write or that was written
            with other settings (see :mod:`captum_saco.evaluation.per_image`).

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
        >>> sorted(result.per_image[0])
        ['image', 'label', 'method', 'probability', 'saco', 'target']
    """
    builders, metric_defs = resolve_methods(methods), resolve_metrics(metrics)
    source = _check_inputs(inputs, workers)
    _check_targets(targets, source)
    _check_options(batch_size, seed, per_image_file, resume)
    _fractions(n_groups)  # validates n_groups before any work
    warn_if_training(model, "evaluate", stacklevel=2)
    model_name = model_name or type(model).__name__
    meter = CostMeter(_device_of(model, torch.device("cpu")))
    built = meter.timed({name: build(model, seed) for name, build in builders.items()})
    scorer = _Scorer(model, built, metric_defs, n_groups, targets, meter)
    rank, world = distributed.world()
    writer = None
    stored: Dict[Tuple[str, str], Row] = {}
    recorded_cost = None
    if per_image_file is not None:
        settings = {
            "model": model_name,
            "methods": list(built),
            "metrics": list(metric_defs),
            "images": _images_setting(source),
            "n_groups": n_groups,
            "batch_size": batch_size,  # an image's values may depend on its batch
            "seed": seed,
            "targets": _targets_setting(targets),
        }
        writer = PerImageFile(per_image_file, settings, rank, world)
        stored = writer.read() if resume else {}
        recorded_cost = writer.recorded("cost") if resume else None
        distributed.barrier()  # every process has read before any appends
        writer.open(resume)
    done = _done(stored, source, built, metric_defs)
    plan = _plan(len(source), batch_size, done)
    device = _device_of(model, torch.device("cpu"))
    try:
        new_rows, skipped = _run_batches(scorer, source, plan, device, writer, progress)
    finally:
        if writer is not None:
            writer.close()
    parts = distributed.gather((new_rows, skipped))
    rows = _collect(stored, [r for part, _ in parts for r in part], source, list(built))
    result = _result(
        rows,
        list(built),
        list(metric_defs),
        [source.key(i) for i in sorted(i for _, part in parts for i in part)],
        model_name,
    )
    result.cost = meter.record(recorded_cost, len(done))
    if writer is not None and rank == 0:
        writer.merge(rows)
        writer.record("cost", result.cost)
    return result


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
    _check_seed(seed)
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
