"""Several metrics of several explanations of the same inputs, sharing every pass."""

from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from captum_saco._utils import BaselineType, TargetType, TensorOrTupleOfTensors
from captum_saco.metrics._core.cumulative import (
    DeletionCurve,
    Order,
    curve_intervals,
    curve_of,
    symmetric_relevance_gain,
)
from captum_saco.metrics._core.perturbation import (
    CleanPass,
    FeatureRanking,
    MatchedMaps,
    Reduce,
    Removal,
    TargetProbability,
    forward_removals,
    match_attributions,
    n_features_of,
    prepare_inputs,
    rank_matched,
)
from captum_saco.metrics._core.perturbations import PerturbationType
from captum_saco.metrics._core.saco import group_intervals, saco_details

CurveKind = Tuple[Order, bool]  # (order, insertion)
_MORF: CurveKind = ("most_salient_first", False)
_LERF: CurveKind = ("least_salient_first", False)
_INSERTION: CurveKind = ("most_salient_first", True)

# metric -> the curves it reads and how it reads them
_CURVE_READERS: Dict[str, Tuple[Tuple[CurveKind, ...], Callable[..., Tensor]]] = {
    "aopc": ((_MORF,), DeletionCurve.aopc),
    "lodds": ((_MORF,), DeletionCurve.lodds),
    "auc": ((_MORF,), DeletionCurve.auc),
    "comprehensiveness": ((_LERF,), DeletionCurve.aopc),
    "insertion": ((_INSERTION,), DeletionCurve.auc),
    "srg": ((_MORF, _LERF), symmetric_relevance_gain),
}
METRIC_NAMES: Tuple[str, ...] = ("saco",) + tuple(_CURVE_READERS)
DEFAULT_METRIC_NAMES: Tuple[str, ...] = ("saco", "aopc", "lodds", "auc", "comprehensiveness")
"""The metrics :func:`score_attributions` computes by default: the paper's five
(``insertion`` costs ``K`` more passes per example, ``srg`` none once both
deletion curves are measured)."""


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
) -> Dict[Union[str, CurveKind], Removal]:
    """The removals one ranking needs for ``metrics``: groups and the curves."""
    removals: Dict[Union[str, CurveKind], Removal] = {}
    if "saco" in metrics:
        removals["saco"] = Removal(ranking, *group_intervals(ranking, n_groups))
    kinds = [kind for m in metrics if m != "saco" for kind in _CURVE_READERS[m][0]]
    for order, insertion in dict.fromkeys(kinds):
        intervals = curve_intervals(ranking, steps, order, insertion)
        removals[(order, insertion)] = Removal(ranking, *intervals)
    return removals


def score_attributions(
    forward_func: Callable[..., Any],
    inputs: TensorOrTupleOfTensors,
    attributions: Mapping[str, TensorOrTupleOfTensors],
    metrics: Sequence[str] = DEFAULT_METRIC_NAMES,
    baselines: BaselineType = None,
    additional_forward_args: Any = None,
    target: TargetType = None,
    n_groups: int = 10,
    feature_mask: Union[None, Tensor, Tuple[Tensor, ...]] = None,
    max_examples_per_batch: Optional[int] = None,
    clean_output: Optional[Any] = None,
    *,
    perturbation: PerturbationType = "baseline",
    reduce: Reduce = "sum",
    attention_mask: Optional[Tensor] = None,
    return_curves: bool = False,
) -> Dict[str, Dict[str, Tensor]]:
    r"""Score several explanations of the same inputs with several metrics at once.

    The values are those of :func:`~captum_saco.metrics.saco` (with
    ``n_groups``) and of :func:`~captum_saco.metrics.aopc`,
    :func:`~captum_saco.metrics.lodds`, :func:`~captum_saco.metrics.auc` and
    :func:`~captum_saco.metrics.comprehensiveness` with the deletion fractions
    ``k / K`` for ``k = 1, ..., K − 1`` (``K = n_groups``; AOPC, LOdds and
    AUC read one most-salient-first curve, comprehensiveness is the AOPC of
    the least-salient-first curve), ``"insertion"``, the area
    (:meth:`~captum_saco.metrics.DeletionCurve.auc`) of the most-salient-first
    :func:`~captum_saco.metrics.insertion_curve` at the same fractions, and
    ``"srg"``, :func:`~captum_saco.metrics.srg` of the two deletion curves.
    But the clean forward pass, the target
    (``None``: the predicted class) and the baselines are computed once for
    all methods and metrics, the perturbed inputs of all of them share
    forward batches, and a perturbed input that two metrics ask for (the
    first SaCo group and the first deletion step when ``K`` divides the
    number of features) is forwarded once. The methods' maps are ranked and
    their scores read as one batch of methods × examples (split by the dtype
    of the maps, each ranked in its own precision, and into batches of at
    most 2**24 features in all, which bounds their memory): the work besides
    the forward passes grows little with the number of methods.

    Args:
        forward_func, inputs, baselines, additional_forward_args, target,
        feature_mask, max_examples_per_batch: as in
                    :func:`~captum_saco.metrics.saco`.
        attributions (Mapping[str, Tensor or tuple[Tensor, ...]]): Method name
                    -> its attributions of ``inputs``, in any shape
                    :func:`~captum_saco.metrics.saco` accepts.
        metrics (sequence of str, optional): Any of ``"saco"``, ``"aopc"``,
                    ``"lodds"``, ``"auc"``, ``"comprehensiveness"``,
                    ``"insertion"``, ``"srg"``. Default: the first five
        n_groups (int, optional): ``K``: SaCo's groups and the deletion
                    steps. Default: 10
        clean_output (Tensor, optional): ``forward_func``'s output on
                    ``inputs`` (with ``additional_forward_args``), if you have
                    it already, e.g. from finding the predicted classes: the
                    clean inputs are then not forwarded again. Default: None
        perturbation (str or Perturbation, optional): Keyword-only. How
                    features are removed, for every metric: as in
                    :func:`~captum_saco.metrics.deletion_curve`.
                    Default: "baseline"
        reduce, attention_mask (optional): Keyword-only. As in
                    :func:`~captum_saco.metrics.deletion_curve`.
                    Defaults: "sum", None
        return_curves (bool, optional): Keyword-only. Also return, under the key
                    ``"deletion_curve"``, the ``(N, K)`` probabilities of the
                    target after removing the fractions ``0, 1/K, ...,
                    (K − 1)/K`` of the features, most salient first (NaN
                    where undefined), when a metric reads that curve
                    (AOPC, LOdds or AUC). Default: False

    Returns:
        dict: method -> metric -> ``(N,)`` values on the inputs' device, NaN
        where a metric is undefined for an example (with the warnings of the
        single metrics, which name the method: ``"saco of
        attributions['name']: ..."``).

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
        stacklevel=2,
        perturbation=perturbation,
    )
    steps = torch.arange(1, n_groups, dtype=torch.float64) / n_groups
    features = {
        m: prepared.perturbation.features(forward_func, prepared.inputs, a, feature_mask)
        for m, a in attributions.items()
    }
    if features:  # the strategy's features (token_drop: patches) are the same for all maps
        feature_mask = next(iter(features.values()))[1]
    matched = {
        m: match_attributions(prepared.inputs, a, f"attributions[{m!r}]", reduce)
        for m, (a, _) in features.items()
    }
    stacks = [
        _Stack.of(
            prepared.inputs,
            {m: matched[m] for m in same},
            (feature_mask, attention_mask),
            names,
            n_groups,
            steps,
        )
        for same in _stacks(matched, prepared.n * n_features_of(prepared.inputs))
    ]
    del matched  # the stacks hold the maps now, in one copy
    with torch.no_grad():
        clean, removed = forward_removals(
            forward_func,
            prepared,
            [r for stack in stacks for r in stack.removals.values()],
            target=target,
            apply_softmax=True,
            max_examples_per_batch=max_examples_per_batch,
            clean_output=clean_output,
        )
    results = iter(removed)  # stack by stack, each in the order of its removals
    scores: Dict[str, Dict[str, Tensor]] = {}
    for stack in stacks:
        mine = dict(zip(stack.removals, results))
        scores.update(stack.read(clean, mine, names, n_groups, steps, return_curves))
    return {method: scores[method] for method in attributions}


STACK_ELEMENTS = 1 << 24
"""The most rank positions (methods × examples × features of each) ranked and
read as one stack. Ranking and reading hold a few tensors of that many
elements at once (128 MiB each in int64), so this bounds their memory, while
the methods of small inputs still share one set of operations: 13 methods of
64 images at 224 x 224 pixels make three stacks, of 28 x 28 pixels one."""


def _stacks(matched: Dict[str, MatchedMaps], positions: int) -> List[List[str]]:
    """The methods in stacks, in order of appearance: maps of one dtype, at
    most :data:`STACK_ELEMENTS` rank positions each (``positions`` per
    method: examples × features, without a ``feature_mask``, which only
    merges features)."""
    by_dtype: Dict[torch.dtype, List[str]] = {}
    for method, maps in matched.items():
        by_dtype.setdefault(maps.dtype, []).append(method)
    size = max(1, STACK_ELEMENTS // max(positions, 1))
    return [
        methods[start : start + size]
        for methods in by_dtype.values()
        for start in range(0, len(methods), size)
    ]


class _Stack(NamedTuple):
    """Methods whose maps share a dtype, ranked and read as one batch of
    ``M·N`` examples (method by method): one set of operations for all
    (see :func:`_stacks`)."""

    methods: List[str]
    ranking: FeatureRanking
    removals: Dict[Union[str, CurveKind], Removal]

    @classmethod
    def of(
        cls,
        inputs: Tuple[Tensor, ...],
        matched: Dict[str, MatchedMaps],
        masks: Tuple[Union[None, Tensor, Tuple[Tensor, ...]], Optional[Tensor]],
        metrics: List[str],
        n_groups: int,
        steps: Tensor,
    ) -> "_Stack":
        ranking = rank_matched(inputs, list(matched.values()), *masks)
        return cls(list(matched), ranking, _removals_of(ranking, metrics, n_groups, steps))

    def read(
        self,
        clean: CleanPass,
        measured: Dict[Union[str, CurveKind], TargetProbability],
        names: List[str],
        n_groups: int,
        steps: Tensor,
        return_curves: bool = False,
    ) -> Dict[str, Dict[str, Tensor]]:
        """Method -> metric -> ``(N,)`` scores, from the clean pass and the
        ``(M·N, P)`` probabilities of each of :attr:`removals` (and the
        ``(N, K)`` ``"deletion_curve"`` if ``return_curves``)."""
        m, n = len(self.methods), clean.target.shape[0]
        # The clean pass, stacked like the examples.
        clean = CleanPass(
            TargetProbability(clean.probability.p.repeat(m), clean.probability.q.repeat(m)),
            clean.target.repeat(m),
        )
        # Plain loops, not comprehensions: a comprehension is a frame of its own
        # before Python 3.12, and the warnings' stacklevel counts frames.
        curves = {}
        for kind, probability in measured.items():
            if kind != "saco":
                order, insertion = kind
                curves[kind] = curve_of(
                    self.ranking,
                    clean,
                    probability,
                    steps,
                    order,
                    stacklevel=3,
                    methods=self.methods,
                    insertion=insertion,
                )
        scores = {}
        for name in names:
            if name == "saco":
                details = saco_details(
                    self.ranking,
                    clean,
                    measured[name],
                    n_groups,
                    "agree",
                    stacklevel=3,
                    methods=self.methods,
                )
                scores[name] = details.coefficient
            else:
                kinds, read = _CURVE_READERS[name]
                scores[name] = read(*(curves[kind] for kind in kinds))
        if return_curves and _MORF in curves:
            scores["deletion_curve"] = curves[_MORF].probabilities
        return {
            method: {name: values[i * n : (i + 1) * n] for name, values in scores.items()}
            for i, method in enumerate(self.methods)
        }
