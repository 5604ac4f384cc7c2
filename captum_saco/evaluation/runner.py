""":func:`evaluate`: explain a model's decisions with each method, score every
explanation with each metric, and summarise; and SaCo's case study of one
image."""

import hashlib
import json
import math
import re
import warnings
from contextlib import contextmanager
from typing import (
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

import torch
from torch import Tensor, nn
from captum._utils.common import _format_additional_forward_args
from torch.utils.data import Dataset, IterableDataset

from captum_saco._utils import BaselineType, model_output, warn_if_training
from captum_saco.evaluation import distributed
from captum_saco.evaluation.cost import CostMeter
from captum_saco.evaluation.data import Batch, Source, Stream
from captum_saco.evaluation.per_image import PerImageFile, Row, RowKey, check_suffix, row_key
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
from captum_saco.evaluation.result import EvaluationResult, combine, summarise
from captum_saco.evaluation.statistics import agreement, bootstrap_ci95s, comparisons
from captum_saco.metrics import saco, score_attributions
from captum_saco.metrics._core.perturbation import n_features_of, target_probability
from captum_saco.metrics._core.perturbations import PERTURBATIONS as STRATEGIES
from captum_saco.metrics._core.saco import check_n_groups

# method -> metric -> the N values, one per image
Scores = Dict[str, Dict[str, List[float]]]


CHANGE_TOLERANCE = 1e-5
"""The relative change below which a perturbed input leaves the model's output
unchanged (see :class:`_OutputChanges`): about a hundred float32 roundings."""


class _OutputChanges:
    """Records, while the metrics score one batch, whether the model's output
    changed under any perturbation of each image.

    The metrics call the model as ``model(inputs, ids, *additional_forward_args)``:
    ``ids``, the images' positions in the batch, is an additional forward
    argument with one row per image, which the metrics hand to every
    perturbed row of that image. A forward pre-hook on the model takes
    ``ids`` out of the arguments (the model never sees it) and a forward hook
    reads the output (both removed when :meth:`watching` ends, also on
    errors). For each row it reads the value the metrics read their
    probability drops from (the target's softmax probability ``p``, or
    ``1 − p`` where the clean ``p`` exceeds 1/2; see
    :class:`~captum_saco.metrics._core.perturbation.TargetProbability`): the
    row *changed* the output when that value differs from the clean one by
    more than :data:`CHANGE_TOLERANCE` of the clean value, or either is NaN.
    Hooks, not a wrapping function: a perturbation such as ``token_drop``
    needs the model itself."""

    def __init__(self, logits: Tensor, target: Tensor) -> None:
        self.target = target
        clean, _ = target_probability(logits.detach(), target, apply_softmax=True)
        self.by_q = clean.p > 0.5
        self.reference = torch.where(self.by_q, clean.q, clean.p)
        self.changes = torch.zeros(target.shape[0], dtype=torch.long, device=target.device)

    @contextmanager
    def watching(self, model: nn.Module) -> Iterator[None]:
        pending: List[Tensor] = []

        def take_ids(module: nn.Module, args: Tuple[Any, ...]) -> Tuple[Any, ...]:
            pending.append(args[1])
            return (args[0], *args[2:])

        def read(module: nn.Module, args: Tuple[Any, ...], output: Any) -> None:
            self._record(pending.pop(), model_output(output))

        handles = [model.register_forward_pre_hook(take_ids), model.register_forward_hook(read)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _record(self, ids: Tensor, output: Tensor) -> None:
        with torch.no_grad():
            rows = ids.to(self.target.device)
            probability, _ = target_probability(
                output.detach(), self.target[rows], apply_softmax=True
            )
            value = torch.where(self.by_q[rows], probability.q, probability.p)
            reference = self.reference[rows]
            # NaN (a non-finite output) counts as a change: it is not a stable output.
            changed = ~((value - reference).abs() <= CHANGE_TOLERANCE * reference)
            self.changes.index_add_(0, rows, changed.long())

    def unchanged(self) -> List[bool]:
        """Per image of the batch: no perturbed input changed the output."""
        return (self.changes == 0).tolist()


def _score_batch(
    model: nn.Module,
    inputs: Tensor,
    logits: Tensor,
    attributions_by_method: Dict[str, Tensor],
    target: Tensor,
    metrics: List[str],
    n_groups: int,
    baselines: BaselineType = None,
    additional_forward_args: Optional[Tuple[Any, ...]] = None,
    perturbation: str = "baseline",
) -> Tuple[Scores, List[bool]]:
    """Score every method's attributions of one batch with every metric, sharing
    the clean pass (``logits``, run to find the targets) and the perturbed
    forward batches (see :func:`~captum_saco.metrics.score_attributions`).
    Returns the scores (with each method's ``"deletion_curve"`` where one is
    measured) and, per image, whether the model's output stayed unchanged
    under every perturbation (see :class:`_OutputChanges`)."""
    recorder = _OutputChanges(logits, target)
    ids = torch.arange(inputs.shape[0], device=inputs.device)
    with recorder.watching(model), warnings.catch_warnings():
        # evaluate has said so once, naming itself
        warnings.filterwarnings("ignore", message="forward_func: the model is in training mode")
        scores = score_attributions(
            model,
            inputs,
            attributions_by_method,
            metrics,
            baselines=baselines,
            additional_forward_args=(ids, *(additional_forward_args or ())),
            target=target,
            n_groups=n_groups,
            clean_output=logits,
            perturbation=perturbation,
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
    return values, recorder.unchanged()


def _length(iterable: Any) -> Optional[int]:
    """``len(iterable)`` where it has one (a DataLoader's batches), else None."""
    try:
        return len(iterable)
    except TypeError:
        return None


def _progress_bar(total: Optional[int], enabled: bool) -> Any:
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


def _named_examples(message: str) -> Set[int]:
    """The batch positions a metric's warning names (``examples (indices [i, j])``)."""
    return {
        int(i)
        for found in re.findall(r"examples \(indices \[([\d, ]*)\]\)", message)
        for i in found.split(",")
        if i.strip()
    }


def _kind(message: str) -> str:
    """A warning's text without its numbers and bracketed lists (counts, indices)."""
    return re.sub(r"\d+", "#", re.sub(r"\[[^\]]*\]", "[...]", message))


class _WarningGroups:
    """Records the warnings of the scoring, to warn once per warning site and
    kind of message, saying how many similar warnings followed."""

    def __init__(self) -> None:
        self.caught: List[warnings.WarningMessage] = []

    @contextmanager
    def recording(self, keys: Sequence[Any]) -> Iterator[Set[int]]:
        """Record the warnings of one batch, whose examples are the images ``keys``:
        the metrics' warnings name examples by their position in the batch, the
        recorded ones name the images. The block may add positions to the set
        it is given: the warnings about those examples alone are dropped (the
        images where the model's output did not change, said once instead)."""
        quiet: Set[int] = set()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield quiet
            finally:
                for w in caught:
                    named = _named_examples(str(w.message))
                    if named and quiet.issuperset(named):
                        continue
                    w.message = w.category(_naming_images(str(w.message), keys))
                    self.caught.append(w)

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


def _check_inputs(inputs: Any, workers: Any) -> Union[Source, Stream]:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers: expected a non-negative int, got {workers!r}")
    if isinstance(inputs, Dataset) and not isinstance(inputs, Tensor):
        if isinstance(inputs, IterableDataset) or not hasattr(inputs, "__len__"):
            raise ValueError(
                f"inputs: expected a map-style data set (with __len__ and __getitem__), got "
                f"{type(inputs).__name__}: images are read by position, in fixed batches; or "
                "give a DataLoader over it, whose batches are read in order"
            )
        if len(inputs) == 0:  # type: ignore[arg-type]
            raise ValueError("inputs: expected a data set holding at least one image, got none")
        return Source(inputs, workers)
    if not isinstance(inputs, (Tensor, str, bytes, Mapping)) and hasattr(inputs, "__iter__"):
        return Stream(inputs)
    if not isinstance(inputs, Tensor) or inputs.dim() < 2 or inputs.shape[0] == 0:
        raise ValueError(
            "inputs: expected a tensor of shape (N, ...), a data set, or an iterable of "
            "batches (a DataLoader) holding at least one image, got " + _describe(inputs)
        )
    return Source(inputs)


def _check_targets(targets: Any, source: Union[Source, Stream]) -> Union[None, str, Tensor]:
    """The checked targets; a list of ints becomes a tensor. The number of the
    images of a stream is known only once they are read."""
    n = len(source)
    if isinstance(targets, (list, tuple)):
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in targets):
            raise ValueError(f"targets: expected a list of int classes, one per image, got {targets!r}")
        targets = torch.tensor(targets, dtype=torch.long)
    if isinstance(targets, Tensor):
        shape_ok = targets.dim() == 1 if isinstance(source, Stream) else targets.shape == (n,)
        if not shape_ok or targets.is_floating_point() or targets.dtype == torch.bool:
            raise ValueError(
                f"targets: expected an integer tensor of shape ({n},) or a list of {n} ints, "
                f"one class per image, got {_describe(targets)} of dtype {targets.dtype}"
            )
        return targets
    if targets is None or targets == "predicted":
        return targets
    if targets != "label":
        raise ValueError(
            f"targets: expected None, 'predicted', 'label' or a tensor, got {targets!r}"
        )
    if not source.has_labels or getattr(source.inputs, "classes", None) == []:
        raise ValueError(
            "targets: 'label' needs a data set with labels (a folder with one subfolder per "
            "class), got " + ("a tensor" if not source.has_labels else "a flat folder")
        )
    return targets


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


def _check_n_groups_list(n_groups: Any) -> List[int]:
    """``n_groups`` as a list of distinct Ks, each an int >= 2."""
    ks = list(n_groups) if isinstance(n_groups, (list, tuple)) else [n_groups]
    if not ks:
        raise ValueError("n_groups: expected an int >= 2 or a list of them, got an empty list")
    for k in ks:
        _fractions(k)  # an int >= 2, or a ValueError naming n_groups
    if len(set(ks)) < len(ks):
        raise ValueError(f"n_groups: expected distinct values, got {n_groups!r}")
    return ks


def _check_perturbations(perturbation: Any) -> List[str]:
    """``perturbation`` as a list of distinct names of the metrics' strategies."""
    names = [perturbation] if isinstance(perturbation, str) else list(perturbation)
    unknown = [p for p in names if p not in STRATEGIES]
    if not names or unknown or len(set(names)) < len(names):
        raise ValueError(
            f"perturbation: expected distinct names of {list(STRATEGIES)}, got {perturbation!r}"
        )
    return names


def _value_setting(value: Any) -> Optional[str]:
    """A baseline or further forward argument as the per-image file's settings
    record it: None when not given, a tensor by its shape and a digest of its
    values, anything else by its ``repr``."""
    if value is None:
        return None
    if isinstance(value, tuple):
        return "(" + ", ".join(str(_value_setting(v)) for v in value) + ")"
    if isinstance(value, Tensor):
        data = value.detach().cpu().contiguous().numpy().tobytes()
        return f"tensor {tuple(value.shape)} (sha256 {hashlib.sha256(data).hexdigest()[:16]})"
    return repr(value)


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


def _check_stream(resume: bool) -> None:
    """An iterable of batches is read once, in order, in this process."""
    if resume:
        raise ValueError(
            "resume: needs inputs read by position (a tensor or a map-style data set); an "
            "iterable of batches such as a DataLoader cannot skip the finished images"
        )
    if distributed.world()[1] > 1:
        raise ValueError(
            "inputs: under torch.distributed, give a tensor or a map-style data set, which "
            "evaluate shards across the processes; an iterable of batches is read whole by "
            "every process"
        )


def _device_of(model: nn.Module, fallback: torch.device) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else fallback


def _predicted(forward_func: Callable[..., Tensor], x: Tensor) -> Tensor:
    with torch.no_grad():
        return forward_func(x).argmax(dim=1)


def _per_batch(value: Any, n: int, indices: Tensor, device: torch.device) -> Any:
    """``value`` for one batch: a tensor with one row per image of the data set
    (``n`` rows, ``n`` > 1) gives the rows of the batch's images; anything else
    is the same for every batch. Tensors are moved to ``device``."""
    if not isinstance(value, Tensor):
        return value
    if value.dim() > 0 and value.shape[0] == n and n > 1:
        value = value[indices.to(value.device)]
    return value.to(device)


class _Scorer:
    """Explains and scores one batch at a time."""

    def __init__(
        self,
        model: nn.Module,
        methods: Dict[str, AttributeFn],
        metrics: List[str],
        n_groups: List[int],
        targets: Any,
        meter: CostMeter,
        baselines: BaselineType = None,
        additional_forward_args: Optional[Tuple[Any, ...]] = None,
        n_images: int = 0,
        perturbations: Sequence[str] = ("baseline",),
    ) -> None:
        self.model, self.forward_func, self.meter = model, logits_of(model), meter
        self.methods, self.metrics, self.n_groups, self.targets = (
            methods,
            metrics,
            n_groups,
            targets,
        )
        self.baselines, self.additional_forward_args = baselines, additional_forward_args
        self.n_images = n_images
        # every (perturbation, K), the perturbations outermost
        self.settings = [(p, k) for p in perturbations for k in n_groups]

    def _target(self, batch: Batch, logits: Tensor, keys: List[Any]) -> Tensor:
        if isinstance(self.targets, Tensor):
            if int(batch.indices.max()) >= self.targets.shape[0]:
                raise ValueError(
                    f"targets: {self.targets.shape[0]} classes given, but the inputs hold "
                    f"more images (image {keys[-1]!r}); expected one class per image"
                )
            target, what = self.targets[batch.indices], "class"
        elif isinstance(self.targets, str) and self.targets == "label":
            if batch.labels is None:
                raise ValueError(
                    f"targets: 'label' needs a label per image, and the batch of image "
                    f"{keys[0]!r} has none"
                )
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
        clean probabilities, every method's attributions and their scores;
        where the model's output did not change under any perturbation, the
        scores are NaN and ``unchanged`` is True."""
        for k in self.n_groups:  # before any method runs
            check_n_groups(k, n_features_of([x]))
        n = self.n_images
        baselines = _per_batch(self.baselines, n, batch.indices, x.device)
        extra = self.additional_forward_args
        if extra is not None:
            extra = tuple(_per_batch(a, n, batch.indices, x.device) for a in extra)
        with torch.no_grad(), self.meter.clean_pass():
            logits = self.forward_func(x, *(extra or ()))
        target = self._target(batch, logits, keys)
        probability = logits.double().softmax(dim=1).gather(1, target[:, None])[:, 0].cpu()
        attributions = {
            name: attribute(x, target, batch.indices, extra)
            for name, attribute in self.methods.items()
        }
        labels = [None] * len(keys) if batch.labels is None else batch.labels.tolist()
        targets, probabilities = target.tolist(), probability.tolist()
        rows: List[Row] = []
        with self.meter.scoring(len(keys)):
            scored = [
                (perturbation, n_groups)
                + _score_batch(
                    self.model,
                    x,
                    logits,
                    attributions,
                    target,
                    self.metrics,
                    n_groups,
                    baselines,
                    extra,
                    perturbation,
                )
                for perturbation, n_groups in self.settings
            ]
        self.meter.forward_backward_pass(
            lambda t: self.forward_func(t, *(extra or ())), x, target
        )
        for perturbation, n_groups, scores, unchanged in scored:
            rows += [
                {
                    "image": key,
                    "label": None if labels[j] is None or labels[j] < 0 else labels[j],
                    "target": targets[j],
                    "probability": probabilities[j],
                    "n_groups": n_groups,
                    "perturbation": perturbation,
                    "unchanged": unchanged[j],
                    "method": method,
                    **{k: math.nan if unchanged[j] else scores[method][k][j] for k in self.metrics},
                    **_curve_of(scores[method], j),
                }
                for j, key in enumerate(keys)
                for method in self.methods
            ]
        return rows


def _curve_of(scores: Dict[str, Any], j: int) -> Row:
    """Image ``j``'s deletion curve, as a per-image row keeps it, if measured."""
    curve = scores.get("deletion_curve")
    return {} if curve is None else {"deletion_curve": curve[j]}


def _done(
    stored: Dict[RowKey, Row],
    source: Source,
    methods: Sequence[str],
    metrics: Sequence[str],
    settings: Sequence[Tuple[str, int]],
) -> Set[int]:
    """The positions of the images stored for every method, metric and
    ``(perturbation, K)``."""
    return {
        i
        for i in range(len(source))
        if all(
            (row := stored.get((str(source.key(i)), m, k, p))) is not None
            and all(name in row for name in metrics)
            for m in methods
            for p, k in settings
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
    source: Union[Source, Stream],
    plan: Optional[List[List[int]]],
    device: torch.device,
    writer: Optional[PerImageFile],
    progress: bool,
) -> Tuple[List[Row], List[int]]:
    """Score the planned batches (a stream's batches: all, in order); returns
    the new rows and the positions of the skipped images."""
    rows: List[Row] = []
    skipped: List[int] = []
    groups = _WarningGroups()
    total = len(plan) if plan is not None else _length(source.inputs)
    bar = _progress_bar(total, progress and distributed.world()[0] == 0)
    try:
        for batch in source.batches() if plan is None else source.batches(plan):
            for index, reason in batch.skipped:
                skipped.append(index)
                warnings.warn(f"skipping the image {source.key(index)!r}: {reason}")
            if batch.indices.numel():
                keys = [source.key(int(i)) for i in batch.indices]
                with groups.recording(keys) as quiet:
                    new = scorer.rows(batch, batch.images.to(device), keys)
                    changed = {str(r["image"]) for r in new if not r["unchanged"]}
                    quiet.update(j for j, key in enumerate(keys) if str(key) not in changed)
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
    stored: Dict[RowKey, Row],
    new_rows: List[Row],
    source: Source,
    methods: Sequence[str],
    settings: Sequence[Tuple[str, int]],
) -> List[Row]:
    """Stored and new rows of the images of ``source``, in input order, then
    by ``(perturbation, K)`` and method."""
    by_key = dict(stored)
    by_key.update({row_key(r): r for r in new_rows})
    ordered = []
    for i in range(len(source)):
        key = str(source.key(i))
        # The image's own key: a CSV file stores an index as text.
        ordered += [
            {**by_key[(key, m, k, p)], "image": source.key(i)}
            for p, k in settings
            for m in methods
            if (key, m, k, p) in by_key
        ]
    return ordered


def _result(
    rows: List[Row],
    methods: List[str],
    metrics: List[str],
    skipped: List[Any],
    model_name: str,
    n_groups: int,
    perturbation: str = "baseline",
) -> EvaluationResult:
    """The result of one K and perturbation from its per-image rows."""
    images = list(dict.fromkeys(str(r["image"]) for r in rows))
    position = {key: i for i, key in enumerate(images)}
    # Filled as lists: a Python float is written in a fraction of a tensor item's time.
    values = {(m, k): [math.nan] * len(images) for m in methods for k in metrics}
    unchanged: Dict[str, int] = {m: 0 for m in methods}
    for r in rows:
        i = position[str(r["image"])]
        unchanged[r["method"]] += bool(r.get("unchanged"))
        for k in metrics:
            values[(r["method"], k)][i] = r[k]
    per_example = {key: torch.tensor(v, dtype=torch.float64) for key, v in values.items()}
    directions = {k: METRICS[k] for k in metrics}
    return EvaluationResult(
        model=model_name,
        n_images=len(images),
        rows=[
            summarise(m, k, values, ci95, n_groups, unchanged[m], perturbation)
            for ((m, k), values), ci95 in zip(
                per_example.items(), bootstrap_ci95s(list(per_example.values()))
            )
        ],
        per_example=per_example,
        per_image=rows,
        skipped=skipped,
        comparisons=comparisons(per_example, methods, directions),
        n_groups=n_groups,
        perturbation=perturbation,
        agreement=agreement(per_example, methods, directions),
    )


def _warn_unchanged(rows: List[Row], n_images: int) -> None:
    """One warning naming the images where the model's output did not change
    under perturbation (for any K)."""
    images = list(dict.fromkeys(r["image"] for r in rows if r.get("unchanged")))
    if images:
        shown = ", ".join(repr(i) for i in images[:5]) + (", ..." if len(images) > 5 else "")
        warnings.warn(
            f"the model's output did not change under any perturbation of the metrics on "
            f"{len(images)} of {n_images} images ({shown}): no ranking can be judged there, so "
            "their values are NaN for every method and metric (a model that ignores its input, "
            "such as a broken checkpoint or a wrong input layout, or images equal to their "
            "baseline)",
            UserWarning,
            stacklevel=3,
        )


def evaluate(
    model: nn.Module,
    inputs: Union[Tensor, Dataset],
    targets: Union[None, str, Tensor] = None,
    methods: MethodsType = DEFAULT_METHODS,
    metrics: Sequence[str] = DEFAULT_METRICS,
    n_groups: Union[int, Sequence[int]] = 10,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = False,
    model_name: Optional[str] = None,
    workers: int = 0,
    per_image_file: Optional[str] = None,
    resume: bool = False,
    baselines: BaselineType = None,
    additional_forward_args: Any = None,
    perturbation: Union[str, Sequence[str]] = "baseline",
    preprocessing: Optional[Dict[str, Any]] = None,
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
        inputs (Tensor, Dataset or iterable): ``(N, ...)`` images as the
                    model expects them (resized and normalised); a map-style
                    data set of ``(image, label)`` items such as
                    :class:`~captum_saco.datasets.ImageFiles` or torchvision's
                    ``ImageFolder`` (read batch by batch by a ``DataLoader``);
                    items may also be an image alone or ``(image,)`` (label
                    unknown) or a dict ``{"pixel_values", "labels"}``, images
                    tensors or NumPy arrays, labels integers or None
                    (unknown); or an iterable of batches, such as your own
                    ``DataLoader``: ``(images, labels)``, ``(images,)``,
                    images alone, or dicts ``{"pixel_values", "labels"}``
                    (the Hugging Face convention), read once in order (not
                    resumable, nor sharded under ``torch.distributed``; an
                    image's key is its position). Moved to the model's
                    device batch by batch.
        targets (Tensor, list of int or str, optional): ``(N,)`` class
                    per image;
                    ``"label"``, the data set's labels; or None or
                    ``"predicted"``, the model's predicted class.
                    Default: None
        methods (sequence of str, or mapping): names from
                    :data:`METHODS`, or ``{name: method}`` where a method is
                    a name, your own Captum attribution instance (called as
                    ``attribution.attribute(inputs, target=target)``; one
                    whose ``forward_func`` is a Hugging Face model is given
                    its logits), an attribution class (those of
                    :mod:`captum_saco.attr` built on the model, others on
                    its logits), or ``(any of these, {option: value})``
                    with options of its ``attribute``, e.g.
                    ``{"TA, start 1": (TransformerAttribution,
                    {"start_layer": 1})}``. Default: all of :data:`METHODS`.
        metrics (sequence of str): names from :data:`METRICS`.
                    Default: all of them.
        n_groups (int or list of int): ``K``, the number of salience
                    groups of SaCo and the number of deletion steps of the
                    cumulative metrics. Several (``[5, 10, 20]``, the
                    paper's): a result per ``K`` (the methods are run once),
                    in ``result.by_n_groups``, and the rank stability of the
                    methods across them in ``result.stability``.
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
        baselines (scalar or Tensor, optional): what removed features are
                    replaced with, as in :func:`~captum_saco.metrics.saco`: a
                    number, a tensor broadcastable to a batch, or one per
                    image (``(N, ...)``, the batch's rows taken). Default:
                    None, the per-image, per-channel mean.
        additional_forward_args (Any, optional): further arguments of the
                    model, after the images, given to the model, every
                    method and every metric; a tensor with one row per
                    image (``N`` rows) gives each batch its rows.
                    Default: None
        perturbation (str or list of str): how the metrics remove
                    features: ``"baseline"`` (the paper's), ``"blur"``,
                    ``"noisy_linear"`` or ``"token_drop"`` (see
                    :func:`~captum_saco.metrics.deletion_curve`). Several: a
                    result per perturbation in ``result.by_perturbation``
                    and the methods' rank stability across them in
                    ``result.stability``. Default: "baseline"
        resume (bool): continue the run recorded in ``per_image_file``
                    (the same inputs, model name, methods, metrics, targets,
                    n_groups, batch_size and seed, which the file's settings
                    record and a resumed run checks; of the inputs, their
                    number and names). Default: False
        preprocessing (dict, optional): how the images were prepared for the
                    model (``input_size``, ``mean``, ``std``, ...), recorded in
                    the result and in the per-image file's settings. Default: None

    An image where no perturbation of the metrics changes the model's output
    (the value the metrics read their drops from, the target's probability
    ``p``, or ``1 − p`` where ``p`` > 1/2, stays within a relative
    :data:`CHANGE_TOLERANCE` of the clean one on every perturbed input, for
    every method and metric) cannot tell a good ranking from a bad one:
    SaCo would be 1 for every method, Random included. Its values are NaN
    for every method and metric, its per-image rows say ``unchanged``, the
    rows count it in ``unchanged`` and one warning names such images (a
    model that ignores its input, or an image equal to its baseline).

    Returns:
        EvaluationResult: the rows ``{method, metric, mean, std, n, nan,
        ci95, n_groups, unchanged, perturbation}`` (methods x metrics, in
        the given order), the per-image values and rows, the paired
        comparisons of the methods, the metrics' agreement on the methods,
        with several ``n_groups`` or perturbations the result of each and
        the methods' rank stability, what each method cost
        (``result.cost``, see
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
        ['image', 'label', 'method', 'n_groups', 'perturbation', 'probability', 'saco', 'target',
         'unchanged']
    """
    builders, metric_defs = resolve_methods(methods), resolve_metrics(metrics)
    source = _check_inputs(inputs, workers)
    targets = _check_targets(targets, source)
    _check_options(batch_size, seed, per_image_file, resume)
    if isinstance(source, Stream):
        _check_stream(resume)
    ks = _check_n_groups_list(n_groups)
    perturbations = _check_perturbations(perturbation)
    extra = _format_additional_forward_args(additional_forward_args)
    warn_if_training(model, "evaluate", stacklevel=2)
    model_name = model_name or type(model).__name__
    meter = CostMeter(_device_of(model, torch.device("cpu")))
    built = meter.timed({name: build(model, seed) for name, build in builders.items()})
    scorer = _Scorer(
        model,
        built,
        metric_defs,
        ks,
        targets,
        meter,
        baselines,
        extra,
        len(source),
        perturbations,
    )
    rank, world = distributed.world()
    writer = None
    stored: Dict[RowKey, Row] = {}
    recorded_cost = None
    if per_image_file is not None:
        settings = {
            "model": model_name,
            "methods": list(built),
            "metrics": list(metric_defs),
            "images": "an iterable, read once" if isinstance(source, Stream) else _images_setting(source),
            "n_groups": ks[0] if len(ks) == 1 else ks,
            # None (not recorded) for the default, so that earlier files still resume
            "perturbation": None if perturbations == ["baseline"] else perturbations,
            "batch_size": batch_size,  # an image's values may depend on its batch
            "seed": seed,
            "targets": _targets_setting(targets),
            # None (not recorded) by default, so that earlier files still resume
            "baselines": _value_setting(baselines),
            "additional_forward_args": _value_setting(additional_forward_args),
            **({} if preprocessing is None else {"preprocessing": preprocessing}),
        }
        writer = PerImageFile(per_image_file, settings, rank, world)
        stored = writer.read() if resume else {}
        recorded_cost = writer.recorded("cost") if resume else None
        distributed.barrier()  # every process has read before any appends
        writer.open(resume)
    done = (
        set()
        if isinstance(source, Stream)
        else _done(stored, source, built, metric_defs, scorer.settings)
    )
    plan = None if isinstance(source, Stream) else _plan(len(source), batch_size, done)
    device = _device_of(model, torch.device("cpu"))
    try:
        new_rows, skipped = _run_batches(scorer, source, plan, device, writer, progress)
    finally:
        if writer is not None:
            writer.close()
    if isinstance(targets, Tensor) and targets.shape[0] != len(source):
        raise ValueError(
            f"targets: {targets.shape[0]} classes given for the {len(source)} images of "
            "inputs; expected one class per image"
        )
    parts = distributed.gather((new_rows, skipped))
    new_rows = [r for part, _ in parts for r in part]
    rows = _collect(stored, new_rows, source, list(built), scorer.settings)
    _warn_unchanged(rows, len(source))
    skipped_keys = [source.key(i) for i in sorted(i for _, part in parts for i in part)]
    results = [
        _result(
            [r for r in rows if r["n_groups"] == k and r["perturbation"] == p],
            list(built),
            list(metric_defs),
            skipped_keys,
            model_name,
            k,
            p,
        )
        for p, k in scorer.settings
    ]
    result = combine(results) if len(results) > 1 else results[0]
    result.preprocessing = preprocessing
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
