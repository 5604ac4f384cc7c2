"""The cumulative deletion metrics SaCo is compared against: AOPC, LOdds, AUC and
comprehensiveness, all read off one deletion curve.

The curve removes growing shares of the features, ranked by salience exactly
as :func:`~captum_saco.metrics.saco` ranks them, replaces them with the same
baselines and runs the same batched engine.
"""

from typing import Any, Callable, List, Literal, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from captum_saco._utils import BaselineType, TargetType, TensorOrTupleOfTensors
from captum_saco.metrics._core.perturbation import (
    CleanPass,
    FeatureRanking,
    Reduce,
    TargetProbability,
    measure_removals,
    warn_about_examples,
)
from captum_saco.metrics._core.perturbations import PerturbationType

Order = Literal["most_salient_first", "least_salient_first"]
DEFAULT_FRACTIONS: Tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class DeletionCurve(NamedTuple):
    """Target-class probability as growing shares of the features are removed.

    Point 0 is the clean input; point ``k >= 1`` removes the ``m_k =
    round(f_k · F)`` features (rounded half to even) that come first in the
    deletion order: the most salient ones for ``"most_salient_first"``, the
    least salient ones for ``"least_salient_first"``. With a per-example
    ``feature_mask`` giving example ``n`` its own ``F_n`` features, it
    removes ``round(f_k · F_n)`` of them.

    Attributes:
        fractions (Tensor): ``(S + 1,)`` ``0, f_1, ..., f_S``.
        n_removed (Tensor): ``(N, S + 1)`` ``0, m_1, ..., m_S`` of each
            example (rows differ when examples have different numbers of
            features).
        probabilities (Tensor): ``(N, S + 1)`` ``p(c | x̃_k)``; column 0 is
            ``p(c | x)``.
        target (Tensor): ``(N,)`` the target class ``c``.
    """

    fractions: Tensor
    n_removed: Tensor
    probabilities: Tensor
    target: Tensor

    def aopc(self) -> Tensor:
        """``(N,)`` AOPC ``= (1/S) Σ_{k=1..S} [p(c|x) − p(c|x̃_k)]``."""
        return (self.probabilities[:, :1] - self.probabilities[:, 1:]).mean(dim=1)

    def lodds(self) -> Tensor:
        """``(N,)`` LOdds ``= (1/S) Σ_{k=1..S} log(p(c|x̃_k) / p(c|x))``.

        Probabilities are clamped to the smallest positive normal number of
        their dtype before the logarithm, so a probability of 0 gives a large
        negative value rather than ``-inf``.
        """
        log_p = self.probabilities.clamp(min=torch.finfo(self.probabilities.dtype).tiny).log()
        return (log_p[:, 1:] - log_p[:, :1]).mean(dim=1)

    def auc(self) -> Tensor:
        """``(N,)`` the trapezoidal area under ``p(c|x̃_k)`` over the removed fraction.

        ``AUC = Σ_{k=1..S} (f_k − f_{k−1}) · (p(c|x̃_{k−1}) + p(c|x̃_k)) / 2``
        with ``f_0 = 0`` and ``x̃_0 = x``: the curve spans ``[0, f_S]``.
        """
        return torch.trapezoid(self.probabilities, self.fractions, dim=1)


def _validate_fractions(fractions: Sequence[float]) -> Tensor:
    message = (
        "fractions: expected a non-empty, strictly increasing sequence of numbers in (0, 1], "
        f"got {fractions!r}"
    )
    try:  # list() first: a string or a number would be read as a number otherwise
        values = torch.as_tensor(list(fractions), dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(message) from None
    if (
        values.dim() != 1
        or values.numel() == 0
        or not bool(((values > 0) & (values <= 1)).all())
        or not bool((values[1:] > values[:-1]).all())
    ):
        raise ValueError(message)
    return values


def deletion_curve(
    forward_func: Callable[..., Any],
    inputs: TensorOrTupleOfTensors,
    attributions: TensorOrTupleOfTensors,
    baselines: BaselineType = None,
    additional_forward_args: Any = None,
    target: TargetType = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    feature_mask: Union[None, Tensor, Tuple[Tensor, ...]] = None,
    max_examples_per_batch: Optional[int] = None,
    *,
    order: Order = "most_salient_first",
    apply_softmax: bool = True,
    perturbation: PerturbationType = "baseline",
    reduce: Reduce = "sum",
    attention_mask: Optional[Tensor] = None,
) -> DeletionCurve:
    r"""The deletion curve: the target's probability as features are removed cumulatively.

    Features are ranked by salience exactly as in
    :func:`~captum_saco.metrics.saco` (stable descending sort, ties in
    flattened-index order). For each fraction ``f_k`` the first
    ``m_k = round(f_k · F)`` features of the deletion order (``F`` features in
    all, rounded half to even) are replaced by the baseline together, and
    ``p(c | x̃_k)`` is recorded. ``order="most_salient_first"`` removes ranks
    ``[0, m_k)`` (MoRF), ``order="least_salient_first"`` ranks
    ``[F − m_k, F)`` (LeRF). With a per-example ``feature_mask`` (e.g.
    superpixels with ``F_n`` regions in example ``n``), ``F`` is each
    example's own ``F_n``.

    The AOPC, LOdds and AUC of a curve are its methods
    :meth:`DeletionCurve.aopc`, :meth:`DeletionCurve.lodds` and
    :meth:`DeletionCurve.auc`, so one curve gives all three.

    Cost: one clean forward pass and ``S`` perturbed passes per example,
    batched in chunks of ``max_examples_per_batch`` under ``torch.no_grad()``.

    Precision and half-precision models: as in :func:`~captum_saco.metrics.saco`.

    Args:
        forward_func (Callable): The model, or any function returning class
                    scores (logits) of shape ``(N, C)``.
        inputs (Tensor or tuple[Tensor, ...]): The examples, batch first.
        attributions (Tensor or tuple[Tensor, ...]): The salience maps, one
                    per input, in any shape :func:`~captum_saco.metrics.saco`
                    accepts (input-shaped, ``(N, 1, H, W)``, ``(N, H, W)``,
                    smaller grids upsampled bilinearly, ``(N, F)``,
                    ``(N, T, D)`` or ``(N, T)``).
        baselines (scalar, Tensor or tuple, optional): The value replacing
                    removed features: a number or a tensor broadcastable to
                    the input (leading dimension ``N``: per example).
                    Default: None, the per-example per-channel mean of the
                    input.
        additional_forward_args (Any, optional): Further arguments of
                    ``forward_func``, after the inputs; tensors whose first
                    dimension is ``N`` are taken per example. Default: None
        target (int, tuple, Tensor or list, optional): The class whose
                    probability is recorded, in any Captum form. Default:
                    None, the predicted class of each clean example.
        fractions (sequence of float, optional): The removed shares
                    ``f_1 < ... < f_S`` in ``(0, 1]``. Default: 0.1, ..., 0.9
        feature_mask (Tensor or tuple[Tensor, ...], optional): Integer ids
                    grouping input elements into features (regions), as in
                    :func:`~captum_saco.metrics.saco`; examples may have
                    different numbers of regions. Default: None
        max_examples_per_batch (int, optional): The most examples passed to
                    ``forward_func`` at once. Default:
                    None, chosen for throughput: on a CPU at most 64
                    rows and 2**20 input elements per call; on a GPU the
                    clean rows (at most 64) in the first call and, in the
                    others, as many rows as fill half the free memory at the
                    bytes per row the first call allocated.
        order (str, optional): Keyword-only. ``"most_salient_first"`` or
                    ``"least_salient_first"``. Default: "most_salient_first"
        apply_softmax (bool, optional): Keyword-only. Set to False when
                    ``forward_func`` already returns probabilities.
                    Default: True
        perturbation (str or Perturbation, optional): Keyword-only. How
                    features are removed: ``"baseline"`` (replaced by
                    ``baselines``; the paper's setting), ``"blur"`` (a
                    Gaussian-blurred copy of the input, :class:`Blur`),
                    ``"noisy_linear"`` (ROAD's imputation,
                    :class:`NoisyLinear`), ``"token_drop"`` (the tokens of
                    removed ViT patches dropped, :class:`TokenDrop`), or a
                    strategy object with its options (``Blur(sigma=4)``,
                    ``NoisyLinear(seed=0)``). Default: "baseline"
        reduce (str, optional): Keyword-only. How the values of one
                    feature's elements are combined into its salience:
                    ``"sum"`` (channels of a pixel, the ``D`` values of a
                    token) or ``"norm"`` (their L2 norm). ``(N, L, D)``
                    attributions of ``(N, L)`` token ids (what
                    ``LayerIntegratedGradients`` on an embedding layer
                    returns) are reduced over ``D`` this way. Default: "sum"
        attention_mask (Tensor, optional): Keyword-only. For one input of
                    tokens (``(N, L)`` ids or ``(N, L, D)`` embeddings), the
                    ``(N, L)`` mask of real tokens (1) and padding (0), the
                    Hugging Face convention: padding is neither ranked nor
                    removed, and ``F`` is each example's number of real
                    tokens. For token ids give the padding id as
                    ``baselines`` (``baselines=tokenizer.pad_token_id``), and
                    the mask to the model through
                    ``additional_forward_args``. Default: None

    Returns:
        DeletionCurve: fractions ``(S + 1,)``, removed counts ``(N, S + 1)``,
        probabilities ``(N, S + 1)`` (column 0 the clean input) and targets,
        on the inputs' device. Examples whose probabilities are not finite,
        and examples whose attributions hold NaN or infinite values, give NaN
        metrics, with one warning for each kind.

    Examples::

        >>> import torch
        >>> from captum_saco.metrics import deletion_curve
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
        >>> images, attributions = torch.randn(2, 3, 8, 8), torch.rand(2, 8, 8)
        >>> curve = deletion_curve(model, images, attributions, target=1)
        >>> curve.fractions.tolist()
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
        >>> curve.n_removed[0].tolist()
        [0, 6, 13, 19, 26, 32, 38, 45, 51, 58]
        >>> curve.probabilities.shape, curve.aopc().shape
        (torch.Size([2, 10]), torch.Size([2]))
    """
    return _deletion_curve(2, **locals())


def _deletion_curve(
    stacklevel: int,
    forward_func: Callable[..., Any],
    inputs: TensorOrTupleOfTensors,
    attributions: TensorOrTupleOfTensors,
    baselines: BaselineType,
    additional_forward_args: Any,
    target: TargetType,
    fractions: Sequence[float],
    feature_mask: Union[None, Tensor, Tuple[Tensor, ...]],
    max_examples_per_batch: Optional[int],
    order: Order,
    apply_softmax: bool,
    perturbation: PerturbationType,
    reduce: Reduce,
    attention_mask: Optional[Tensor],
    insertion: bool = False,
) -> DeletionCurve:
    """:func:`deletion_curve` (or :func:`insertion_curve` with ``insertion``),
    whose warnings point ``stacklevel`` frames up from the caller: to the
    user's call of the public metric that called it."""
    (curve,) = _curves(
        stacklevel + 1,
        [(order, insertion)],
        forward_func=forward_func,
        inputs=inputs,
        attributions=attributions,
        baselines=baselines,
        additional_forward_args=additional_forward_args,
        target=target,
        fractions=fractions,
        feature_mask=feature_mask,
        max_examples_per_batch=max_examples_per_batch,
        apply_softmax=apply_softmax,
        perturbation=perturbation,
        reduce=reduce,
        attention_mask=attention_mask,
    )
    return curve


def _curves(
    stacklevel: int,
    kinds: Sequence[Tuple[Order, bool]],
    *,
    forward_func: Callable[..., Any],
    inputs: TensorOrTupleOfTensors,
    attributions: TensorOrTupleOfTensors,
    fractions: Sequence[float],
    apply_softmax: bool,
    **arguments: Any,
) -> List[DeletionCurve]:
    """The curves of ``kinds`` (``(order, insertion)`` each) of one ranking,
    measured in one run of the engine: one clean pass, shared forward batches."""
    steps = _validate_fractions(fractions)
    for order, _ in kinds:
        _check_order(order)
    sizes: List[int] = []

    def intervals(ranking: FeatureRanking) -> Tuple[Tensor, Tensor]:
        parts = [curve_intervals(ranking, steps, order, insertion) for order, insertion in kinds]
        sizes.extend(starts.shape[1] for starts, _ in parts)
        return torch.cat([s for s, _ in parts], dim=1), torch.cat([s for _, s in parts], dim=1)

    ranking, clean, removed = measure_removals(
        forward_func,
        inputs,
        attributions,
        intervals,
        apply_softmax=apply_softmax,
        stacklevel=stacklevel + 1,
        **arguments,
    )
    ps, qs = removed.p.split(sizes, dim=1), removed.q.split(sizes, dim=1)
    curves = []
    for (order, insertion), p, q in zip(kinds, ps, qs):  # a loop: stacklevel counts frames
        probability = TargetProbability(p, q)
        curves.append(
            curve_of(ranking, clean, probability, steps, order, stacklevel + 1, insertion=insertion)
        )
    return curves


def _check_order(order: Any) -> None:
    if order not in ("most_salient_first", "least_salient_first"):
        raise ValueError(
            f"order: expected 'most_salient_first' or 'least_salient_first', got {order!r}"
        )


def deletion_intervals(
    ranking: FeatureRanking, steps: Tensor, order: Order
) -> Tuple[Tensor, Tensor]:
    """The ``(N, S)`` rank intervals removed at each fraction of ``steps``."""
    return curve_intervals(ranking, steps, order, insertion=False)


def curve_intervals(
    ranking: FeatureRanking, steps: Tensor, order: Order, insertion: bool
) -> Tuple[Tensor, Tensor]:
    """The rank intervals ``[starts, stops)`` removed at the points of a curve.

    Deletion: ``(N, S)``, at each fraction ``f_k`` of ``steps`` the ``m_k =
    round(f_k · F_n)`` ranks ``[0, m_k)`` (most salient first) or
    ``[F_n − m_k, F_n)`` (least salient first). Insertion: ``(N, S + 1)``,
    at ``0, f_1, ..., f_S`` every rank *but* those: ``[m_k, F_n)`` or
    ``[0, F_n − m_k)`` (point 0 removes every feature).
    """
    _check_order(order)
    feature_counts = ranking.feature_counts.unsqueeze(1)
    if insertion:
        steps = torch.cat([steps.new_zeros(1), steps])
    m = torch.round(steps.to(feature_counts.device) * feature_counts).long()
    zeros, counts = torch.zeros_like(m), feature_counts.expand_as(m)
    if order == "most_salient_first":
        return (m, counts) if insertion else (zeros, m)
    return (zeros, counts - m) if insertion else (counts - m, counts)


def curve_of(
    ranking: FeatureRanking,
    clean: CleanPass,
    removed: TargetProbability,
    steps: Tensor,
    order: Order,
    stacklevel: int,
    methods: Sequence[str] = (),
    insertion: bool = False,
) -> DeletionCurve:
    """The deletion (or, with ``insertion``, insertion) curve of one ranking
    from its clean pass and its removals (see :func:`curve_intervals`).

    ``methods`` names the methods of a ranking of several together, whose
    warnings then name the method (see :func:`warn_about_examples`)."""
    if insertion:
        curve = removed.p
    else:
        curve = torch.cat([clean.probability.p.unsqueeze(1), removed.p], dim=1)
    bad_map = ~ranking.finite
    not_finite = ~torch.isfinite(curve).all(dim=1) & ranking.finite
    reasons = [
        (bad_map, "the attributions of {} hold NaN or infinite values; their metrics are NaN"),
        (not_finite, "the model's probabilities are not finite for {}; their metrics are NaN"),
    ]
    metric = "insertion_curve" if insertion else "deletion_curve"
    warn_about_examples(metric, reasons, stacklevel + 1, methods)
    curve = curve.masked_fill((bad_map | not_finite).unsqueeze(1), torch.nan)
    starts, stops = curve_intervals(ranking, steps, order, insertion)
    n_removed = stops - starts
    if not insertion:
        n_removed = torch.cat([starts.new_zeros(starts.shape[0], 1), n_removed], dim=1)
    return DeletionCurve(
        fractions=torch.cat([steps.new_zeros(1), steps]).to(curve.device, curve.dtype),
        n_removed=n_removed.to(curve.device),
        probabilities=curve,
        target=clean.target,
    )


def symmetric_relevance_gain(most_first: DeletionCurve, least_first: DeletionCurve) -> Tensor:
    """``(N,)`` SRG ``= (1/S) Σ_{k=1..S} [p(c|x̃_k^LeRF) − p(c|x̃_k^MoRF)]`` of the
    most- and least-salient-first deletion curves of the same fractions."""
    return (least_first.probabilities[:, 1:] - most_first.probabilities[:, 1:]).mean(dim=1)


def aopc(
    forward_func: Callable[..., Any],
    inputs: TensorOrTupleOfTensors,
    attributions: TensorOrTupleOfTensors,
    baselines: BaselineType = None,
    additional_forward_args: Any = None,
    target: TargetType = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    feature_mask: Union[None, Tensor, Tuple[Tensor, ...]] = None,
    max_examples_per_batch: Optional[int] = None,
    *,
    order: Order = "most_salient_first",
    apply_softmax: bool = True,
    perturbation: PerturbationType = "baseline",
    reduce: Reduce = "sum",
    attention_mask: Optional[Tensor] = None,
) -> Tensor:
    r"""Area over the perturbation curve (AOPC), per example.

    ``AOPC = (1/S) Σ_{k=1..S} [p(c|x) − p(c|x̃_k)]`` over the points
    ``k = 1..S`` of :func:`deletion_curve` (by default 10%, ..., 90% of the
    features removed, most salient first). Higher is better: removing the
    most salient features should hurt the prediction most.

    Args:
        All arguments are those of :func:`deletion_curve`.

    Returns:
        Tensor: ``(N,)`` on the inputs' device.

    Examples::

        >>> import torch
        >>> from captum_saco.metrics import aopc
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
        >>> aopc(model, torch.randn(2, 3, 8, 8), torch.rand(2, 8, 8)).shape
        torch.Size([2])
    """
    return _deletion_curve(2, **locals()).aopc()


def lodds(
    forward_func: Callable[..., Any],
    inputs: TensorOrTupleOfTensors,
    attributions: TensorOrTupleOfTensors,
    baselines: BaselineType = None,
    additional_forward_args: Any = None,
    target: TargetType = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    feature_mask: Union[None, Tensor, Tuple[Tensor, ...]] = None,
    max_examples_per_batch: Optional[int] = None,
    *,
    order: Order = "most_salient_first",
    apply_softmax: bool = True,
    perturbation: PerturbationType = "baseline",
    reduce: Reduce = "sum",
    attention_mask: Optional[Tensor] = None,
) -> Tensor:
    r"""Log-odds (LOdds) of the target's probability after deletion, per example.

    ``LOdds = (1/S) Σ_{k=1..S} log(p(c|x̃_k) / p(c|x))`` over the points
    ``k = 1..S`` of :func:`deletion_curve`, probabilities clamped to the
    smallest positive normal number of their dtype. Lower is better.

    Args:
        All arguments are those of :func:`deletion_curve`.

    Returns:
        Tensor: ``(N,)`` on the inputs' device.

    Examples::

        >>> import torch
        >>> from captum_saco.metrics import lodds
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
        >>> lodds(model, torch.randn(2, 3, 8, 8), torch.rand(2, 8, 8)).shape
        torch.Size([2])
    """
    return _deletion_curve(2, **locals()).lodds()


def auc(
    forward_func: Callable[..., Any],
    inputs: TensorOrTupleOfTensors,
    attributions: TensorOrTupleOfTensors,
    baselines: BaselineType = None,
    additional_forward_args: Any = None,
    target: TargetType = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    feature_mask: Union[None, Tensor, Tuple[Tensor, ...]] = None,
    max_examples_per_batch: Optional[int] = None,
    *,
    order: Order = "most_salient_first",
    apply_softmax: bool = True,
    perturbation: PerturbationType = "baseline",
    reduce: Reduce = "sum",
    attention_mask: Optional[Tensor] = None,
) -> Tensor:
    r"""Area under the deletion curve (AUC), per example.

    ``AUC = Σ_{k=1..S} (f_k − f_{k−1}) · (p(c|x̃_{k−1}) + p(c|x̃_k)) / 2``
    (trapezoidal rule) with ``f_0 = 0`` and ``x̃_0 = x``, over the points of
    :func:`deletion_curve`; with the default fractions the curve spans
    ``[0, 0.9]``. Most salient first: lower is better.

    Args:
        All arguments are those of :func:`deletion_curve`.

    Returns:
        Tensor: ``(N,)`` on the inputs' device.

    Examples::

        >>> import torch
        >>> from captum_saco.metrics import auc
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
        >>> auc(model, torch.randn(2, 3, 8, 8), torch.rand(2, 8, 8)).shape
        torch.Size([2])
    """
    return _deletion_curve(2, **locals()).auc()


def comprehensiveness(
    forward_func: Callable[..., Any],
    inputs: TensorOrTupleOfTensors,
    attributions: TensorOrTupleOfTensors,
    baselines: BaselineType = None,
    additional_forward_args: Any = None,
    target: TargetType = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    feature_mask: Union[None, Tensor, Tuple[Tensor, ...]] = None,
    max_examples_per_batch: Optional[int] = None,
    *,
    apply_softmax: bool = True,
    perturbation: PerturbationType = "baseline",
    reduce: Reduce = "sum",
    attention_mask: Optional[Tensor] = None,
) -> Tensor:
    r"""Comprehensiveness as the SaCo paper reports it: the drop when the least
    salient features are removed, per example.

    ``Comprehensiveness = (1/S) Σ_{k=1..S} [p(c|x) − p(c|x̃_k^LeRF)]`` where
    ``x̃_k^LeRF`` replaces the ``round(f_k · F)`` *least* salient features
    (ranks ``[F − m_k, F)``) by the baseline: the AOPC of the
    least-salient-first :func:`deletion_curve`. Lower is better: features an
    explanation calls unimportant should be dispensable. (This follows the
    least-salient-first reading of Wu et al.'s comparison; DeYoung et al.'s
    ERASER comprehensiveness removes the *most* salient features, which is
    :func:`aopc` here.)

    Args:
        All arguments are those of :func:`deletion_curve` except ``order``,
        which is fixed to ``"least_salient_first"``.

    Returns:
        Tensor: ``(N,)`` on the inputs' device.

    Examples::

        >>> import torch
        >>> from captum_saco.metrics import comprehensiveness
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
        >>> comprehensiveness(model, torch.randn(2, 3, 8, 8), torch.rand(2, 8, 8)).shape
        torch.Size([2])
    """
    return _deletion_curve(2, **locals(), order="least_salient_first").aopc()


def insertion_curve(
    forward_func: Callable[..., Any],
    inputs: TensorOrTupleOfTensors,
    attributions: TensorOrTupleOfTensors,
    baselines: BaselineType = None,
    additional_forward_args: Any = None,
    target: TargetType = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    feature_mask: Union[None, Tensor, Tuple[Tensor, ...]] = None,
    max_examples_per_batch: Optional[int] = None,
    *,
    order: Order = "most_salient_first",
    apply_softmax: bool = True,
    perturbation: PerturbationType = "baseline",
    reduce: Reduce = "sum",
    attention_mask: Optional[Tensor] = None,
) -> DeletionCurve:
    r"""The insertion curve: the target's probability as features are put back
    into the baseline, most salient first.

    Features are ranked as in :func:`deletion_curve`. Point 0 is the
    all-baseline input; point ``k = 1..S`` keeps the input on the ``m_k =
    round(f_k · F)`` features that come first in ``order`` (ranks ``[0, m_k)``
    for ``"most_salient_first"``, ``[F − m_k, F)`` for
    ``"least_salient_first"``) and the baseline everywhere else. The target
    (``None``: the predicted class) is read on the clean input, which costs
    one clean forward pass as for the deletion curve.

    The natural scalar is the curve's area, :meth:`DeletionCurve.auc`:
    ``Σ_{k=1..S} (f_k − f_{k−1}) · (p_{k−1} + p_k) / 2`` with ``f_0 = 0``,
    over ``[0, f_S]`` (``[0, 0.9]`` with the default fractions); most salient
    first, higher is better. This is the metric ``"insertion"`` of
    :func:`~captum_saco.metrics.score_attributions`.

    Args:
        All arguments are those of :func:`deletion_curve`.

    Returns:
        DeletionCurve: fractions ``0, f_1, ..., f_S``; ``probabilities``
        ``(N, S + 1)`` with column 0 the all-baseline input; ``n_removed``
        ``(N, S + 1)`` the features still at the baseline, ``F − m_k``; the
        targets. On the inputs' device, NaN rows as in :func:`deletion_curve`.

    Examples::

        >>> import torch
        >>> from captum_saco.metrics import insertion_curve
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
        >>> images, attributions = torch.randn(2, 3, 8, 8), torch.rand(2, 8, 8)
        >>> curve = insertion_curve(model, images, attributions, target=1)
        >>> curve.n_removed[0].tolist()
        [64, 58, 51, 45, 38, 32, 26, 19, 13, 6]
        >>> curve.auc().shape
        torch.Size([2])
    """
    return _deletion_curve(2, **locals(), insertion=True)


def srg(
    forward_func: Callable[..., Any],
    inputs: TensorOrTupleOfTensors,
    attributions: TensorOrTupleOfTensors,
    baselines: BaselineType = None,
    additional_forward_args: Any = None,
    target: TargetType = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    feature_mask: Union[None, Tensor, Tuple[Tensor, ...]] = None,
    max_examples_per_batch: Optional[int] = None,
    *,
    apply_softmax: bool = True,
    perturbation: PerturbationType = "baseline",
    reduce: Reduce = "sum",
    attention_mask: Optional[Tensor] = None,
) -> Tensor:
    r"""Symmetric Relevance Gain (SRG), per example.

    Blücher, Vielhaben and Strodthoff (2024), "Decoupling pixel flipping and
    occlusion strategy for consistent XAI benchmarks": the area under the
    least-relevant-first (LeRF) deletion curve minus the area under the
    most-relevant-first (MoRF) one, the area being the mean over the steps:

    ``SRG = (1/S) Σ_{k=1..S} [p(c|x̃_k^LeRF) − p(c|x̃_k^MoRF)]``

    where ``x̃_k^MoRF`` replaces the ranks ``[0, m_k)`` and ``x̃_k^LeRF`` the
    ranks ``[F − m_k, F)`` of the same stable ranking by the baseline, ``m_k =
    round(f_k · F)`` as in :func:`deletion_curve`. Higher is better; about 0
    for a random ranking. Both curves and the clean pass run in one batch
    of forward calls (``2·S + 1`` passes per example).

    Args:
        All arguments are those of :func:`deletion_curve` except ``order``
        (both orders are used).

    Returns:
        Tensor: ``(N,)`` on the inputs' device, NaN where a curve is NaN.

    Examples::

        >>> import torch
        >>> from captum_saco.metrics import srg
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
        >>> srg(model, torch.randn(2, 3, 8, 8), torch.rand(2, 8, 8)).shape
        torch.Size([2])
    """
    most_first, least_first = _curves(
        2, [("most_salient_first", False), ("least_salient_first", False)], **locals()
    )
    return symmetric_relevance_gain(most_first, least_first)
