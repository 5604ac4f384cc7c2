"""Several metrics of several explanations of the same inputs, sharing every pass."""

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from captum_saco._utils import BaselineType, TargetType, TensorOrTupleOfTensors
from captum_saco.metrics._core.cumulative import DeletionCurve, curve_of, deletion_intervals
from captum_saco.metrics._core.perturbation import (
    CleanPass,
    FeatureRanking,
    Removal,
    TargetProbability,
    forward_removals,
    prepare_inputs,
    rank_features,
)
from captum_saco.metrics._core.saco import group_intervals, saco_details

# metric -> the removal it reads and how it reads the resulting curve
_CURVE_READERS: Dict[str, Tuple[str, Callable[[DeletionCurve], Tensor]]] = {
    "aopc": ("most_salient_first", DeletionCurve.aopc),
    "lodds": ("most_salient_first", DeletionCurve.lodds),
    "auc": ("most_salient_first", DeletionCurve.auc),
    "comprehensiveness": ("least_salient_first", DeletionCurve.aopc),
}
METRIC_NAMES: Tuple[str, ...] = ("saco",) + tuple(_CURVE_READERS)


def _check_metrics(metrics: Sequence[str]) -> List[str]:
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in names if m not in METRIC_NAMES]
    if not names or unknown:
        raise ValueError(
            f"metrics: expected a non-empty sequence of {list(METRIC_NAMES)}, got {metrics!r}"
        )
    return list(dict.fromkeys(names))


def _removals_of(
    ranking: FeatureRanking, metrics: List[str], n_groups: int, steps: Tensor
) -> Dict[str, Removal]:
    """The removals one ranking needs for ``metrics``: groups and the two curves."""
    removals = {}
    if "saco" in metrics:
        removals["saco"] = Removal(ranking, *group_intervals(ranking, n_groups))
    for order in dict.fromkeys(_CURVE_READERS[m][0] for m in metrics if m != "saco"):
        removals[order] = Removal(ranking, *deletion_intervals(ranking, steps, order))
    return removals


def score_attributions(
    forward_func: Callable[..., Any],
    inputs: TensorOrTupleOfTensors,
    attributions: Mapping[str, TensorOrTupleOfTensors],
    metrics: Sequence[str] = METRIC_NAMES,
    baselines: BaselineType = None,
    additional_forward_args: Any = None,
    target: TargetType = None,
    n_groups: int = 10,
    feature_mask: Union[None, Tensor, Tuple[Tensor, ...]] = None,
    max_examples_per_batch: Optional[int] = None,
    clean_output: Optional[Any] = None,
) -> Dict[str, Dict[str, Tensor]]:
    r"""Score several explanations of the same inputs with several metrics at once.

    The values are those of :func:`~captum_saco.metrics.saco` (with
    ``n_groups``) and of :func:`~captum_saco.metrics.aopc`,
    :func:`~captum_saco.metrics.lodds`, :func:`~captum_saco.metrics.auc` and
    :func:`~captum_saco.metrics.comprehensiveness` with the deletion fractions
    ``k / K`` for ``k = 1, ..., K − 1`` (``K = n_groups``; AOPC, LOdds and
    AUC read one most-salient-first curve, comprehensiveness is the AOPC of
    the least-salient-first curve). But the clean forward pass, the target
    (``None``: the predicted class) and the baselines are computed once for
    all methods and metrics, the perturbed inputs of all of them share
    forward batches, and a perturbed input that two metrics ask for (the
    first SaCo group and the first deletion step when ``K`` divides the
    number of features) is forwarded once.

    Args:
        forward_func, inputs, baselines, additional_forward_args, target,
        feature_mask, max_examples_per_batch: as in
                    :func:`~captum_saco.metrics.saco`.
        attributions (Mapping[str, Tensor or tuple[Tensor, ...]]): Method name
                    -> its attributions of ``inputs``, in any shape
                    :func:`~captum_saco.metrics.saco` accepts.
        metrics (sequence of str, optional): Any of ``"saco"``, ``"aopc"``,
                    ``"lodds"``, ``"auc"``, ``"comprehensiveness"``.
                    Default: all five
        n_groups (int, optional): ``K``: SaCo's groups and the deletion
                    steps. Default: 10
        clean_output (Tensor, optional): ``forward_func``'s output on
                    ``inputs`` (with ``additional_forward_args``), if you have
                    it already, e.g. from finding the predicted classes: the
                    clean inputs are then not forwarded again. Default: None

    Returns:
        dict: method -> metric -> ``(N,)`` values on the inputs' device, NaN
        where a metric is undefined for an example (with the warnings of the
        single metrics).

    Examples::

        >>> import torch
        >>> from captum_saco.metrics import score_attributions
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
        >>> images = torch.randn(2, 3, 8, 8)
        >>> maps = {"a": torch.rand(2, 8, 8), "b": torch.rand(2, 3, 8, 8)}
        >>> scores = score_attributions(model, images, maps, metrics=("saco", "aopc"))
        >>> sorted(scores["a"]), scores["b"]["saco"].shape
        (['aopc', 'saco'], torch.Size([2]))
    """
    names = _check_metrics(metrics)
    if not isinstance(attributions, Mapping) or not attributions:
        raise TypeError("attributions: expected a non-empty mapping of method name -> attributions")
    if isinstance(n_groups, bool) or not isinstance(n_groups, int) or n_groups < 2:
        raise ValueError(f"n_groups: expected an int of at least 2, got {n_groups!r}")
    prepared = prepare_inputs(
        forward_func=forward_func,
        inputs=inputs,
        baselines=baselines,
        additional_forward_args=additional_forward_args,
    )
    steps = torch.arange(1, n_groups, dtype=torch.float64) / n_groups
    rankings = {
        m: rank_features(prepared.inputs, a, feature_mask, name=f"attributions[{m!r}]")
        for m, a in attributions.items()
    }
    removals = {m: _removals_of(r, names, n_groups, steps) for m, r in rankings.items()}
    flat = [(m, kind, r) for m, per in removals.items() for kind, r in per.items()]
    with torch.no_grad():
        clean, removed = forward_removals(
            forward_func,
            prepared,
            [r for *_, r in flat],
            target=target,
            apply_softmax=True,
            max_examples_per_batch=max_examples_per_batch,
            clean_output=clean_output,
        )
    measured: Dict[str, Dict[str, TargetProbability]] = {m: {} for m in rankings}
    for (method, kind, _), probability in zip(flat, removed):
        measured[method][kind] = probability
    return {
        method: _read_scores(ranking, clean, measured[method], names, n_groups, steps)
        for method, ranking in rankings.items()
    }


def _read_scores(
    ranking: FeatureRanking,
    clean: CleanPass,
    measured: Dict[str, TargetProbability],
    names: List[str],
    n_groups: int,
    steps: Tensor,
) -> Dict[str, Tensor]:
    """The metrics ``names`` of one method from its measured removals."""
    curves = {
        kind: curve_of(ranking, clean, probability, steps, kind, stacklevel=4)
        for kind, probability in measured.items()
        if kind != "saco"
    }
    scores = {}
    for name in names:
        if name == "saco":
            details = saco_details(ranking, clean, measured[name], n_groups, "agree", stacklevel=4)
            scores[name] = details.coefficient
        else:
            order, read = _CURVE_READERS[name]
            scores[name] = read(curves[order])
    return scores
