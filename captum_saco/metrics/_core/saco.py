"""SaCo, the Salience-guided Faithfulness Coefficient (Wu et al., CVPR 2024)."""

from typing import Any, Callable, Literal, NamedTuple, Optional, Sequence, Tuple, Union, overload

import torch
from torch import Tensor

from captum_saco._utils import BaselineType, TargetType, TensorOrTupleOfTensors, check_flag
from captum_saco.metrics._core.perturbation import (
    CleanPass,
    FeatureRanking,
    Reduce,
    TargetProbability,
    measure_removals,
    rank_intervals_of_groups,
    warn_about_examples,
)
from captum_saco.metrics._core.perturbations import PerturbationType

Ties = Literal["agree", "ignore"]


class SacoDetails(NamedTuple):
    """Everything SaCo measured, per example, for plots and inspection.

    Attributes:
        coefficient (Tensor): ``(N,)`` the SaCo coefficient ``F`` (NaN where
            undefined).
        group_salience (Tensor): ``(N, K)`` ``s(G_i)``, the summed salience of
            each group, most salient group first.
        group_size (Tensor): ``(N, K)`` the number of features (pixels, tokens,
            scalar features or ``feature_mask`` regions) in each group.
        probability_drop (Tensor): ``(N, K)`` ``Δ_i = p(c|x) − p(c|x with G_i
            replaced by the baseline)``.
        clean_probability (Tensor): ``(N,)`` ``p(c|x)``.
        target (Tensor): ``(N,)`` the target class ``c``.
        tied_fraction (Tensor): ``(N,)`` the fraction of the ``K(K−1)/2``
            group pairs whose drops are exactly equal (a saturated or
            input-blind model); under ``ties="agree"`` each counts as
            agreement.
    """

    coefficient: Tensor
    group_salience: Tensor
    group_size: Tensor
    probability_drop: Tensor
    clean_probability: Tensor
    target: Tensor
    tied_fraction: Tensor


def saco_coefficient(
    group_salience: Tensor, probability_drop: Tensor, ties: Ties = "agree"
) -> Tensor:
    """The SaCo coefficient from group saliences and probability drops.

    For every pair of groups ``i < j``: ``w = s(G_i) − s(G_j)`` if
    ``Δ_i >= Δ_j``, else ``w = −(s(G_i) − s(G_j))``; ``F = Σ w / Σ |w|``.
    The pairs are compared with tensor operations, all examples at once.

    Args:
        group_salience (Tensor): ``(N, K)`` ``s(G_1), ..., s(G_K)``.
        probability_drop (Tensor): ``(N, K)`` ``Δ_1, ..., Δ_K``.
        ties (str, optional): ``"agree"``, the paper's rule: a pair with
            ``Δ_i == Δ_j`` counts as agreement. ``"ignore"``: such pairs are
            left out of both sums. Default: "agree"

    Returns:
        Tensor: ``(N,)``; NaN where ``Σ |w| = 0`` or a drop is not finite.

    Raises:
        TypeError: ``group_salience`` or ``probability_drop`` not a tensor.
        ValueError: the two are not ``(N, K)`` tensors of one shape, or an
            unknown ``ties``.

    Examples::

        >>> import torch
        >>> saco_coefficient(torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([[0.5, 0.2, 0.1]]))
        tensor([1.])
        >>> saco_coefficient(torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([[0.1, 0.2, 0.5]]))
        tensor([-1.])
        >>> saco_coefficient(torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([[0.1, 0.1, 0.5]]))
        tensor([-0.5000])
        >>> saco_coefficient(
        ...     torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([[0.1, 0.1, 0.5]]), ties="ignore")
        tensor([-1.])
    """
    if ties not in ("agree", "ignore"):
        raise ValueError(f"ties: expected 'agree' or 'ignore', got {ties!r}")
    for name, value in (("group_salience", group_salience), ("probability_drop", probability_drop)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name}: expected an (N, K) tensor, got {type(value).__name__}")
    if group_salience.dim() != 2 or group_salience.shape != probability_drop.shape:
        raise ValueError(
            "group_salience, probability_drop: expected two (N, K) tensors of the same "
            f"shape, got {tuple(group_salience.shape)} and {tuple(probability_drop.shape)}"
        )
    difference = group_salience.unsqueeze(2) - group_salience.unsqueeze(1)
    agrees = probability_drop.unsqueeze(2) >= probability_drop.unsqueeze(1)
    weight = torch.where(agrees, difference, -difference)
    pairs = _pairs(group_salience.shape[1], group_salience.device)
    if ties == "ignore":
        pairs = pairs & (probability_drop.unsqueeze(2) != probability_drop.unsqueeze(1))
    numerator = (weight * pairs).sum(dim=(1, 2))
    denominator = (difference.abs() * pairs).sum(dim=(1, 2))
    defined = (denominator > 0) & torch.isfinite(probability_drop).all(dim=1)
    return torch.where(defined, numerator / denominator, torch.full_like(numerator, torch.nan))


def _pairs(k: int, device: torch.device) -> Tensor:
    """``(K, K)`` bool, True for the pairs ``i < j``."""
    return torch.ones(k, k, dtype=torch.bool, device=device).triu(1)


def tied_fraction(probability_drop: Tensor) -> Tensor:
    """``(N,)`` the fraction of group pairs ``i < j`` with exactly equal drops."""
    k = probability_drop.shape[1]
    tied = (probability_drop.unsqueeze(2) == probability_drop.unsqueeze(1)) & _pairs(
        k, probability_drop.device
    )
    return tied.sum(dim=(1, 2)) / max(k * (k - 1) // 2, 1)


def check_n_groups(n_groups: Any, n_features: int) -> None:
    """Refuse an ``n_groups`` that is not an int between 2 and ``n_features``."""
    if (
        isinstance(n_groups, bool)
        or not isinstance(n_groups, int)
        or not (2 <= n_groups <= n_features)
    ):
        raise ValueError(
            f"n_groups: expected an int between 2 and the number of features "
            f"({n_features}), got {n_groups!r}"
        )


def group_intervals(ranking: FeatureRanking, n_groups: int) -> Tuple[Tensor, Tensor]:
    """The ``(N, K)`` rank intervals of the ``K = n_groups`` groups of each example."""
    counts = ranking.feature_counts
    check_n_groups(n_groups, int(counts.max()) if counts.numel() else ranking.n_features)
    return rank_intervals_of_groups(counts, n_groups)


def saco_details(
    ranking: FeatureRanking,
    clean: CleanPass,
    removed: TargetProbability,
    n_groups: int,
    ties: Ties,
    stacklevel: int,
    methods: Sequence[str] = (),
) -> SacoDetails:
    """SaCo of one ranking from its clean pass and its ``(N, K)`` group removals.

    ``methods`` names the methods of a ranking of several together, whose
    warnings then name the method (see :func:`warn_about_examples`)."""
    starts, stops = rank_intervals_of_groups(ranking.feature_counts, n_groups)
    n, n_features = ranking.salience.shape
    ranks = torch.arange(n_features, device=stops.device).expand(n, -1).contiguous()
    # Group n_groups collects the ranks past an example's own features.
    group_of_rank = torch.searchsorted(stops, ranks, right=True)
    sorted_salience = ranking.salience.gather(1, ranking.order)
    group_salience = sorted_salience.new_zeros(n, n_groups + 1).scatter_add_(
        1, group_of_rank, sorted_salience
    )[:, :n_groups]
    drop = removed.drop_from(clean.probability)
    coefficient = saco_coefficient(group_salience, drop, ties)
    own_feature = ranks < ranking.feature_counts.unsqueeze(1)
    constant = ((sorted_salience == sorted_salience[:, :1]) | ~own_feature).all(dim=1)
    constant = constant | ranking.constant | (ranking.feature_counts < n_groups)
    coefficient = coefficient.masked_fill(constant, torch.nan)
    ties_found = tied_fraction(drop)
    _warn_about(coefficient, ~ranking.finite, ties_found, stacklevel + 1, methods)
    return SacoDetails(
        coefficient=coefficient,
        group_salience=group_salience,
        group_size=stops - starts,
        probability_drop=drop,
        clean_probability=clean.probability.p,
        target=clean.target,
        tied_fraction=ties_found,
    )


def _warn_about(
    coefficient: Tensor,
    not_finite: Tensor,
    ties_found: Tensor,
    stacklevel: int,
    methods: Sequence[str],
) -> None:
    undefined = torch.isnan(coefficient) & ~not_finite
    reasons = [
        (not_finite, "the attributions of {} hold NaN or infinite values; returning NaN for them"),
        (
            undefined,
            "the coefficient is undefined for {}: their attribution map is constant, they "
            "have fewer features than n_groups, their group saliences are all equal, or the "
            "model's probabilities are not finite; returning NaN for them",
        ),
        (
            ties_found > 0.5,
            "{} have more than half of their group pairs with exactly equal probability "
            "drops (a saturated or input-blind model); ties='agree' counts each as "
            "agreement, ties='ignore' leaves them out",
        ),
    ]
    warn_about_examples("saco", reasons, stacklevel + 1, methods)


@overload
def saco(
    forward_func: Callable[..., Any],
    inputs: TensorOrTupleOfTensors,
    attributions: TensorOrTupleOfTensors,
    baselines: BaselineType = None,
    additional_forward_args: Any = None,
    target: TargetType = None,
    n_groups: int = 10,
    feature_mask: Union[None, Tensor, Tuple[Tensor, ...]] = None,
    max_examples_per_batch: Optional[int] = None,
    *,
    apply_softmax: bool = True,
    return_details: Literal[False] = False,
    ties: Ties = "agree",
    perturbation: PerturbationType = "baseline",
    reduce: Reduce = "sum",
    attention_mask: Optional[Tensor] = None,
) -> Tensor: ...


@overload
def saco(
    forward_func: Callable[..., Any],
    inputs: TensorOrTupleOfTensors,
    attributions: TensorOrTupleOfTensors,
    baselines: BaselineType = None,
    additional_forward_args: Any = None,
    target: TargetType = None,
    n_groups: int = 10,
    feature_mask: Union[None, Tensor, Tuple[Tensor, ...]] = None,
    max_examples_per_batch: Optional[int] = None,
    *,
    apply_softmax: bool = True,
    return_details: Literal[True],
    ties: Ties = "agree",
    perturbation: PerturbationType = "baseline",
    reduce: Reduce = "sum",
    attention_mask: Optional[Tensor] = None,
) -> SacoDetails: ...


def saco(
    forward_func: Callable[..., Any],
    inputs: TensorOrTupleOfTensors,
    attributions: TensorOrTupleOfTensors,
    baselines: BaselineType = None,
    additional_forward_args: Any = None,
    target: TargetType = None,
    n_groups: int = 10,
    feature_mask: Union[None, Tensor, Tuple[Tensor, ...]] = None,
    max_examples_per_batch: Optional[int] = None,
    *,
    apply_softmax: bool = True,
    return_details: bool = False,
    ties: Ties = "agree",
    perturbation: PerturbationType = "baseline",
    reduce: Reduce = "sum",
    attention_mask: Optional[Tensor] = None,
) -> Union[Tensor, SacoDetails]:
    r"""The Salience-guided Faithfulness Coefficient (SaCo) of attributions.

    SaCo (Wu et al., "On the Faithfulness of Vision Transformer Explanations",
    CVPR 2024) asks whether features with more salience also matter more to
    the model. For each example ``x`` with target class ``c``:

    1. Rank the features by salience, descending, with a stable sort (ties
       keep flattened-index order), and split the ranking into ``K`` groups
       ``G_1, ..., G_K`` as ``torch.tensor_split(ranking, K)`` does (the first
       ``F % K`` groups hold one feature more). ``G_1`` is the most salient.
    2. ``s(G_i)`` is the sum of the salience of the features in ``G_i``.
    3. For each group alone, replace its features by the baseline and measure
       ``Δ_i = p(c|x) − p(c|x with G_i replaced)``, ``p`` the softmax of
       ``forward_func``'s output.
    4. For every pair ``i < j``: ``w = s(G_i) − s(G_j)`` if ``Δ_i >= Δ_j``,
       else ``w = −(s(G_i) − s(G_j))``. The coefficient is
       ``F = Σ w / Σ |w|`` in ``[−1, 1]``: 1 when every more salient group
       also hurts the prediction more, about 0 for random attributions, −1
       when the order is inverted.

    The coefficient is undefined, and NaN is returned for that example with
    one warning for the call, when the example's map as given (channels
    summed, before any upsampling) or its feature saliences hold one value
    (the map carries no ranking), when it has fewer features than ``K``,
    when ``Σ |w| = 0``, or when the model's probabilities are not finite;
    and when its attributions hold NaN or infinite values (the other examples
    of the batch are scored as usual).
    The dataset-level score is the mean of the defined coefficients (e.g.
    ``torch.nanmean``). An empty batch (``N = 0``) gives an empty result
    without calling ``forward_func``.

    Saturation and ties: the drops are computed from the logits so that a
    saturated model keeps them apart: where ``p(c|x) > 1/2`` as
    ``Δ_i = q(x̃_i) − q(x)`` with ``q = 1 − p = exp(logsumexp of the other
    classes − logsumexp of all)``, which stays exact where ``p`` rounds to 1,
    elsewhere as ``p(x) − p(x̃_i)`` (the two agree to rounding wherever ``p``
    is not saturated). Drops that are still exactly equal (an input-blind
    model) count as agreement under the paper's rule (``ties="agree"``), so
    that every map would look faithful: ``SacoDetails.tied_fraction`` reports
    the share of tied pairs, a warning names the examples with more than half
    their pairs tied, and ``ties="ignore"`` leaves tied pairs out of both
    sums. Salience is ranked and summed, and probabilities computed, in
    float32 or wider whatever the dtype of the attributions or the model.

    Features: the pixels of ``(N, C, H, W)`` image inputs (a pixel's channels
    are replaced together), the tokens of ``(N, T, D)`` inputs, the scalars of
    ``(N, F)`` inputs, or the regions of ``feature_mask``. The features of all
    inputs of a multi-input model are ranked together. With a per-example
    ``feature_mask`` (superpixels, e.g. SLIC, with ``F_n`` regions in example
    ``n``) each example ranks and splits its own ``F_n`` features.

    Cost: one clean forward pass and ``K`` perturbed forward passes per
    example, batched together in chunks of ``max_examples_per_batch`` under
    ``torch.no_grad()``.

    Precision: float16 and bfloat16 models and ``torch.autocast`` work;
    salience is ranked and summed and probabilities are computed in float32
    or wider (outside autocast), and results are float32. On the embedded
    Fashion-MNIST ViT (32 images, random maps) a float16 or bfloat16 model
    moves SaCo by at most 0.026 per image (mean 0.001 and 0.004), bfloat16
    autocast by at most 0.11 (mean 0.014), and AOPC, AUC and
    comprehensiveness by at most 0.007, LOdds by at most 0.07 (bfloat16).

    Args:
        forward_func (Callable): The model, or any function that takes the
                    inputs (followed by ``additional_forward_args``) and returns
                    class scores (logits) of shape ``(N, C)``, or a
                    higher-dimensional output together with a tuple target.
                    A model in training mode is warned about: dropout and
                    batch statistics would make the results random.
        inputs (Tensor or tuple[Tensor, ...]): The examples, as passed to
                    ``forward_func``, batch dimension first.
        attributions (Tensor or tuple[Tensor, ...]): The salience maps to
                    evaluate, one per input. Accepted shapes for an image
                    input ``(N, C, H, W)``: ``(N, C, H, W)`` (channels summed
                    into a pixel map), ``(N, 1, H, W)``, ``(N, H, W)``, or a
                    smaller grid ``(N, [C', ] h, w)`` (patch maps, layer
                    attributions such as ``LayerGradCam``; channels summed)
                    upsampled bilinearly with ``align_corners=False``. For an
                    input ``(N, T, D)``: ``(N, T, D)`` (summed over ``D``) or
                    ``(N, T)``. For an input ``(N, F)``: ``(N, F)``. Must be
                    finite.
        baselines (scalar, Tensor or tuple, optional): The value replacing
                    removed features, per input: a number, a tensor
                    broadcastable to the input (a leading dimension of ``N``
                    makes it per-example). Default: None, the per-example
                    per-channel mean of the input (for ``(N, T, D)`` inputs
                    the mean token, for ``(N, F)`` inputs the mean feature).
        additional_forward_args (Any, optional): Further arguments of
                    ``forward_func``, passed after the inputs. Tensors whose
                    first dimension is ``N`` are taken per example.
                    Default: None
        target (int, tuple, Tensor or list, optional): The class whose
                    probability is measured, in any form Captum accepts.
                    Default: None, the class the model predicts for each
                    clean example.
        n_groups (int, optional): ``K``, the number of salience groups;
                    ``2 <= K <= F`` for ``F`` features (with a per-example
                    ``feature_mask``, ``F`` of the example with most
                    features; an example with fewer than ``K`` gives NaN).
                    Default: 10
        feature_mask (Tensor or tuple[Tensor, ...], optional): Integer feature
                    ids, one tensor per input, broadcastable to it (batch
                    dimension 1 or ``N``), as in Captum's ``FeatureAblation``.
                    A feature's salience is the sum of the attribution over
                    its region and a group replaces whole regions. A region
                    must hold whole pixels (all channels) or whole tokens.
                    Examples may use different ids, e.g. ``(N, 1, H, W)``
                    superpixels with a different number of regions each.
                    Default: None, every pixel, token or scalar is a feature.
        max_examples_per_batch (int, optional): The most examples (clean or
                    perturbed) passed to ``forward_func`` at once. Default:
                    None, chosen for throughput: on a CPU at most 64
                    rows and 2**20 input elements per call; on a GPU the
                    clean rows (at most 64) in the first call and, in the
                    others, as many rows as fill half the free memory at the
                    bytes per row the first call allocated.
        apply_softmax (bool, optional): Keyword-only. Set to False when
                    ``forward_func`` already returns probabilities.
                    Default: True
        return_details (bool, optional): Keyword-only. Return a
                    :class:`SacoDetails` with the group saliences, group sizes,
                    probability drops, clean probabilities, targets and tied
                    fractions as well as the coefficient. Default: False
        ties (str, optional): Keyword-only. How a pair of groups with
                    exactly equal drops counts: ``"agree"`` (the paper's rule:
                    as agreement, ``w = s(G_i) − s(G_j)``) or ``"ignore"``
                    (left out of both sums). Default: "agree"
        perturbation (str or Perturbation, optional): Keyword-only. How a
                    group's features are removed, as in
                    :func:`~captum_saco.metrics.deletion_curve`: ``"baseline"``
                    (the paper's setting), ``"blur"``, ``"noisy_linear"``,
                    ``"token_drop"`` or a strategy object.
                    Default: "baseline"
        reduce, attention_mask (optional): Keyword-only. As in
                    :func:`~captum_saco.metrics.deletion_curve`: ``"sum"`` or
                    ``"norm"`` over a feature's elements (and the ``D`` of
                    ``(N, L, D)`` attributions of token ids); the ``(N, L)``
                    mask whose 0s mark padding, never ranked nor removed.
                    Defaults: "sum", None

    Returns:
        Tensor or SacoDetails: the coefficient of each example, shape ``(N,)``,
        on the inputs' device; with ``return_details=True`` a
        :class:`SacoDetails`.

    Raises:
        ValueError: an attribution whose shape cannot be matched to its input,
            ``n_groups`` outside ``[2, F]`` (``F``
            the most features any example has), a target out of range or
            of a wrong form, a baseline or feature mask of the wrong shape, a
            baseline an integer input cannot hold, meta-device or sparse
            tensors, a model with one output unless ``apply_softmax=False``,
            ``max_examples_per_batch`` below 1.
        TypeError: a ``forward_func`` that is not callable or returns no
            scores, complex attributions, non-bool ``apply_softmax`` or
            ``return_details``, a ``max_examples_per_batch`` that is not an int.

    Examples::

        >>> import torch
        >>> from captum.attr import Saliency
        >>> from captum_saco.metrics import saco
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(
        ...     torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
        ...     torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 5)).eval()
        >>> images = torch.randn(2, 3, 8, 8, requires_grad=True)
        >>> attributions = Saliency(model).attribute(images, target=0)
        >>> coefficient = saco(model, images, attributions, target=0)
        >>> coefficient.shape
        torch.Size([2])
        >>> details = saco(model, images, attributions, target=0, return_details=True)
        >>> details.probability_drop.shape
        torch.Size([2, 10])
    """
    check_flag("return_details", return_details)
    if ties not in ("agree", "ignore"):
        raise ValueError(f"ties: expected 'agree' or 'ignore', got {ties!r}")
    ranking, clean, removed = measure_removals(
        forward_func,
        inputs,
        attributions,
        lambda ranking: group_intervals(ranking, n_groups),
        baselines=baselines,
        additional_forward_args=additional_forward_args,
        target=target,
        feature_mask=feature_mask,
        max_examples_per_batch=max_examples_per_batch,
        apply_softmax=apply_softmax,
        stacklevel=2,
        perturbation=perturbation,
        reduce=reduce,
        attention_mask=attention_mask,
    )
    details = saco_details(ranking, clean, removed, n_groups, ties, stacklevel=2)
    return details if return_details else details.coefficient
