"""The perturbation engine shared by SaCo and the cumulative deletion metrics.

Every metric in :mod:`captum_saco.metrics` works the same way: rank the
input's features by the salience an attribution gives them, replace some
contiguous stretches of that ranking with a baseline, and read the softmax
probability of the target class on each perturbed input. This module owns
those steps once:

- :func:`prepare_inputs` formats the inputs, baselines and further arguments
  (with :mod:`captum_saco._utils`);
- :func:`rank_features` matches attributions of any shape Captum methods
  produce to the inputs, sums them per feature (pixel, token, scalar feature or
  ``feature_mask`` region) and ranks the features with a stable descending sort;
- :func:`resolve_baselines` turns ``baselines`` into one tensor per input;
- :func:`forward_removals` builds the perturbed inputs (feature ranks in
  ``[start, stop)`` replaced by the baseline) of any number of removals and
  rankings and runs them, chunked, through the forward function together with
  the clean inputs, whose pass resolves the target.

:func:`measure_removals` chains these steps for one metric; a metric only
says which rank intervals to remove and what to compute from the
probabilities. :func:`~captum_saco.metrics.score_attributions` shares the
clean pass and the forward batches among several metrics and methods.
"""

import functools
import math
import warnings
from typing import (
    Any,
    Callable,
    Iterator,
    List,
    Literal,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import torch
import torch.nn.functional as F
from captum._utils.common import _format_additional_forward_args
from torch import Tensor

from captum_saco._utils import (
    BaselineType,
    TargetType,
    TensorOrTupleOfTensors,
    check_dense,
    check_flag,
    check_forward_func,
    check_max_examples_per_batch,
    format_inputs,
    forward_scores,
    model_output,
    resolve_target,
    warn_if_training,
)
from captum_saco.metrics._core.perturbations import (
    Baseline,
    Perturbation,
    PerturbationType,
    resolve_perturbation,
)

_INTERPOLATION_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


class FeatureRanking(NamedTuple):
    """The features of a batch, their salience and their rank.

    Attributes:
        salience (Tensor): ``(N, F)`` salience of each of the ``F`` features
            (pixels, tokens, scalar features or ``feature_mask`` regions, all
            inputs together).
        order (Tensor): ``(N, F)`` feature indices sorted by descending
            salience, ties in feature-index order (position 0 is the most
            salient feature). Features absent from an example (a per-example
            ``feature_mask`` that does not use every id) come after all its
            present ones, with salience 0.
        feature_counts (Tensor): ``(N,)`` the number ``F_n`` of features
            present in each example (``F`` for all examples unless a
            per-example ``feature_mask`` uses different ids); example ``n``'s
            features are the ranks ``[0, F_n)``.
        element_ranks (tuple of Tensor): for each input, the rank (position in
            ``order``) of the feature each input element belongs to, shaped to
            broadcast against that input (for an image ``(N, 1, H, W)``).
        constant (Tensor): ``(N,)`` bool, True where the example's maps, as
            given (channels summed, before any upsampling, all inputs
            together), hold one value: they carry no ranking.
        finite (Tensor): ``(N,)`` bool, False where the example's attributions
            hold NaN or infinite values. Such an example is ranked as a map of
            zeros (so it is also ``constant``), and its metrics are NaN.
    """

    salience: Tensor
    order: Tensor
    feature_counts: Tensor
    element_ranks: Tuple[Tensor, ...]
    constant: Tensor
    finite: Tensor

    @property
    def n_features(self) -> int:
        """``F``, the number of feature ids of the batch, all examples together."""
        return self.salience.shape[1]


def warn_about_examples(
    metric: str,
    reasons: Sequence[Tuple[Tensor, str]],
    stacklevel: int,
    methods: Sequence[str] = (),
) -> None:
    """Warn once for each reason that holds for some examples, naming them.

    ``reasons`` pairs an ``(N,)`` bool mask with a message whose ``{}`` the
    examples fill: ``"k of N examples (indices [...])"``; ``metric`` opens
    it. The examples of several methods ranked together (``methods``: their
    names, ``N / M`` examples each, method by method; see
    :func:`rank_matched`) are named per method, one warning per method and
    reason that opens ``"metric of attributions['name']: "``. All masks reach
    the host in one copy, one device sync.
    """
    names: Sequence[Optional[str]] = methods or [None]
    n = reasons[0][0].shape[0] // len(names)
    # (reason, method, example) as nested lists of bools
    masks = torch.stack([mask for mask, _ in reasons]).view(len(reasons), len(names), n).tolist()
    for j, name in enumerate(names):
        opening = metric if name is None else f"{metric} of attributions[{name!r}]"
        for mask, (_, message) in zip(masks, reasons):
            indices = [i for i, hit in enumerate(mask[j]) if hit]
            if indices:
                examples = f"{len(indices)} of {len(mask[j])} examples (indices {indices})"
                warnings.warn(
                    f"{opening}: {message.format(examples)}",
                    UserWarning,
                    stacklevel=stacklevel + 1,
                )


def _feature_dims(x: Tensor) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Which dimensions of an input index its features and which are summed.

    ``(N, F)``: each scalar is a feature. ``(N, T, D)``: each token (index of
    dimension 1) is a feature, its ``D`` values are summed. ``(N, C, H, W)``
    (and more spatial dimensions): each pixel is a feature, channels are summed.
    """
    if x.dim() <= 2:
        return tuple(range(1, x.dim())), ()
    if x.dim() == 3:
        return (1,), (2,)
    return tuple(range(2, x.dim())), (1,)


def n_features_of(inputs: Sequence[Tensor]) -> int:
    """The number of features of an example of ``inputs`` without a ``feature_mask``
    (see :func:`rank_features`)."""
    return sum(math.prod(x.shape[d] for d in _feature_dims(x)[0]) for x in inputs)


def _per_example(values: Tensor) -> Tensor:
    """``values`` as ``(N, elements per example)``: a 1-D input is one scalar each."""
    return values.reshape(values.shape[0], math.prod(values.shape[1:]))


Reduce = Literal["sum", "norm"]


def _reduced(a: Tensor, dims: Tuple[int, ...], reduce: Reduce) -> Tensor:
    """``a`` summed (``"sum"``) or its L2 norm (``"norm"``) over ``dims``."""
    return a.sum(dim=dims) if reduce == "sum" else torch.linalg.vector_norm(a, dim=dims)


def _feature_map(
    attribution: Tensor, x: Tensor, where: str, reduce: Reduce = "sum"
) -> Tuple[Tensor, Tensor]:
    """Match one attribution to its input (``where`` names it in errors).

    Returns its ``(N, *feature_shape)`` map and the ``(N, -1)`` map as given
    (channels summed, before upsampling), both in float32 or wider whatever
    the attribution's dtype (float16 sums overflow).
    """
    feature_dims, reduced_dims = _feature_dims(x)
    feature_shape = tuple(x.shape[d] for d in feature_dims)
    n = x.shape[0]
    if attribution.is_complex():
        raise TypeError(f"{where}: expected real values, got dtype {attribution.dtype}")
    dtype = (
        torch.promote_types(attribution.dtype, torch.float32)
        if attribution.is_floating_point()
        else torch.get_default_dtype()
    )
    a = attribution.detach().to(device=x.device, dtype=dtype)

    def mismatch() -> ValueError:
        expected = f"the input's shape or (N, {', '.join(map(str, feature_shape))})"
        if len(feature_dims) > 1:
            expected += ", (N, 1, H, W) or a smaller (N, [C,] h, w) grid"
        return ValueError(
            f"{where}: cannot match an attribution of shape {tuple(attribution.shape)} "
            f"to the input of shape {tuple(x.shape)}; expected {expected}"
        )

    if a.dim() == 0 or a.shape[0] != n:
        raise mismatch()
    if a.dim() == x.dim() and reduced_dims:
        grid = tuple(a.shape[d] for d in feature_dims)
        same_grid = grid == feature_shape
        reduced_ok = all(a.shape[d] in (1, x.shape[d]) for d in reduced_dims)
        smaller_grid = len(feature_dims) > 1 and all(
            0 < g <= s for g, s in zip(grid, feature_shape)
        )
        channels_last = tuple(a.shape[1:]) == tuple(x.shape[2:]) + (x.shape[1],)
        if not same_grid and channels_last and len(feature_dims) > 1:
            raise ValueError(
                f"{where}: an attribution of shape {tuple(attribution.shape)} is the input's "
                f"shape {tuple(x.shape)} with the channels last; give it channels first "
                "(e.g. attribution.movedim(-1, 1))"
            )
        if (same_grid and reduced_ok) or (not same_grid and smaller_grid):
            a = _reduced(a, reduced_dims, reduce)
        else:
            raise mismatch()
    elif a.dim() == 3 and x.dim() == 2 and tuple(a.shape[:2]) == tuple(x.shape):
        # (N, L, D) attributions of (N, L) token ids: an embedding layer's, reduced over D
        a = _reduced(a, (2,), reduce)
    elif a.dim() == len(feature_shape) + 1 and len(feature_dims) > 1:
        if not all(0 < g <= s for g, s in zip(a.shape[1:], feature_shape)):
            raise mismatch()
    elif not (a.dim() == len(feature_shape) + 1 and tuple(a.shape[1:]) == feature_shape):
        raise mismatch()
    given = _per_example(a)
    if tuple(a.shape[1:]) != feature_shape:
        if len(feature_shape) not in _INTERPOLATION_MODES:
            raise ValueError(
                f"{where}: a map of shape {tuple(attribution.shape)} would need upsampling "
                f"over {len(feature_shape)} spatial dimensions (at most 3 are supported) to "
                f"the input of shape {tuple(x.shape)}; give an attribution on the input's grid"
            )
        a = F.interpolate(
            a.unsqueeze(1),
            size=feature_shape,
            mode=_INTERPOLATION_MODES[len(feature_shape)],
            align_corners=False,
        ).squeeze(1)
    return a, given


def _feature_ids(mask: Tensor, x: Tensor, index: int, n_inputs: int) -> Tensor:
    """The ``(1 or N, *feature_shape)`` feature ids a ``feature_mask`` assigns."""
    where = f"feature_mask[{index}]" if n_inputs > 1 else "feature_mask"
    check_dense(mask, where)
    if mask.is_floating_point() or mask.is_complex() or mask.dtype == torch.bool:
        raise TypeError(f"{where}: expected an integer tensor, got dtype {mask.dtype}")
    if mask.dim() > x.dim():
        raise ValueError(
            f"{where}: a mask of shape {tuple(mask.shape)} has more dimensions than "
            f"the input of shape {tuple(x.shape)}"
        )
    mask = mask.reshape((1,) * (x.dim() - mask.dim()) + tuple(mask.shape))
    try:
        expanded = mask.expand(mask.shape[0], *x.shape[1:])
    except RuntimeError:
        expanded = None
    if expanded is None or mask.shape[0] not in (1, x.shape[0]):
        raise ValueError(
            f"{where}: expected a mask broadcastable to the input of shape "
            f"{tuple(x.shape)} with a batch dimension of 1 or {x.shape[0]}, got "
            f"{tuple(mask.shape)}"
        )
    _, reduced_dims = _feature_dims(x)
    ids = expanded.to(x.device).long()
    if reduced_dims:
        if not torch.equal(ids.amax(dim=reduced_dims), ids.amin(dim=reduced_dims)):
            raise ValueError(
                f"{where}: a feature must contain whole pixels (all channels) of an "
                "image or whole tokens of a (N, T, D) input; the mask varies along "
                f"dimension {reduced_dims[0]}"
            )
        ids = ids.amax(dim=reduced_dims)
    return ids


def rank_features(
    inputs: Tuple[Tensor, ...],
    attributions: TensorOrTupleOfTensors,
    feature_mask: Union[None, Tensor, Tuple[Tensor, ...]] = None,
    name: str = "attributions",
    reduce: Reduce = "sum",
    attention_mask: Optional[Tensor] = None,
) -> FeatureRanking:
    """Sum the attributions per feature and rank the features, most salient first.

    The features are the pixels of image inputs ``(N, C, H, W)`` (channels
    summed), the tokens of ``(N, T, D)`` inputs (``D`` summed) and the scalars
    of ``(N, F)`` inputs, or the regions of ``feature_mask`` (one id may span
    several inputs, as in Captum's ``FeatureAblation``); the features of all
    inputs are ranked together. A per-example ``feature_mask`` may give the
    examples different ids (superpixels with a different number of regions
    per image): each example ranks only the ids it uses, and the ids it does
    not use are ranked after them. Attributions on a grid smaller than the image
    are upsampled bilinearly (``align_corners=False``).

    Args:
        inputs (tuple of Tensor): the formatted inputs.
        attributions (Tensor or tuple of Tensor): one attribution per input.
        feature_mask (Tensor or tuple of Tensor, optional): integer feature
            ids, one tensor per input, broadcastable to it.
        name (str, optional): what errors call the attributions.
            Default: "attributions"
        reduce (str, optional): how the values of a feature's elements are
            combined: ``"sum"`` or ``"norm"`` (L2). Default: "sum"
        attention_mask (Tensor, optional): ``(N, L)``, for one input of
            ``L`` tokens: 0 marks padding, which is ranked after every real
            token and never removed. Default: None

    Returns:
        FeatureRanking: the per-feature salience, the ranking and the rank of
        every input element.
    """
    matched = match_attributions(inputs, attributions, name, reduce)
    return rank_matched(inputs, [matched], feature_mask, attention_mask)


class MatchedMaps(NamedTuple):
    """One explanation's attributions matched to the inputs' features.

    Attributes:
        maps (tuple of Tensor): per input, the ``(N, *feature_shape)`` map
            (channels summed, upsampled to the input's grid), float32 or
            wider, zero for the examples that are not ``finite``.
        constant (Tensor): ``(N,)`` see :class:`FeatureRanking`.
        finite (Tensor): ``(N,)`` see :class:`FeatureRanking`.
    """

    maps: Tuple[Tensor, ...]
    constant: Tensor
    finite: Tensor

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the maps, wherein they are ranked."""
        return self.maps[0].dtype


def match_attributions(
    inputs: Tuple[Tensor, ...],
    attributions: TensorOrTupleOfTensors,
    name: str,
    reduce: Reduce = "sum",
) -> MatchedMaps:
    """Check the attributions against the inputs (``name`` names them in
    errors) and match them to the inputs' features (see :func:`rank_features`)."""
    if reduce not in ("sum", "norm"):
        raise ValueError(f"reduce: expected 'sum' or 'norm', got {reduce!r}")
    with torch.autocast(inputs[0].device.type, enabled=False):
        attributions_t = format_inputs(attributions, name=name)
        if len(attributions_t) != len(inputs):
            raise ValueError(
                f"{name}: expected one attribution per input ({len(inputs)}), "
                f"got {len(attributions_t)}"
            )
        maps, given = zip(
            *(
                _feature_map(a, x, f"{name}[{i}]" if len(inputs) > 1 else name, reduce)
                for i, (a, x) in enumerate(zip(attributions_t, inputs))
            )
        )
        dtype = functools.reduce(torch.promote_types, (m.dtype for m in maps))
        # One example's NaN or infinite attributions must not cost the others theirs:
        # it is ranked as zeros, and the metrics give it NaN (see FeatureRanking.finite).
        finite = torch.stack([torch.isfinite(g).all(dim=1) for g in given]).all(dim=0)
        maps = tuple(
            m.masked_fill(~finite.view(-1, *(1,) * (m.dim() - 1)), 0).to(dtype) for m in maps
        )
        given_flat = torch.cat([g.masked_fill(~finite.unsqueeze(1), 0) for g in given], dim=1)
        constant = (given_flat == given_flat[:, :1]).all(dim=1)
        return MatchedMaps(maps, constant, finite)


def _joined(parts: Sequence[Tensor], dim: int = 0) -> Tensor:
    """``torch.cat(parts, dim)``, without a copy of a single part."""
    return parts[0] if len(parts) == 1 else torch.cat(list(parts), dim=dim)


def rank_matched(
    inputs: Tuple[Tensor, ...],
    matched: Sequence[MatchedMaps],
    feature_mask: Union[None, Tensor, Tuple[Tensor, ...]],
    attention_mask: Optional[Tensor] = None,
) -> FeatureRanking:
    """Rank the features of ``M`` explanations of the same ``N`` inputs together.

    Returns one :class:`FeatureRanking` of ``M·N`` rows, explanation by
    explanation (row ``r`` explains example ``r % N``; :func:`forward_removals`
    takes such rankings as they are): the operations of one ranking for all of
    them, each example ranked as :func:`rank_features` ranks it alone. The maps
    must share a dtype (:attr:`MatchedMaps.dtype`), so that none is summed in
    another precision.
    """
    if len({m.dtype for m in matched}) != 1:
        raise ValueError("rank_matched: expected maps of one dtype")
    with torch.autocast(inputs[0].device.type, enabled=False):
        maps = tuple(_joined(per_input) for per_input in zip(*(m.maps for m in matched)))
        n = maps[0].shape[0]
        sizes = [math.prod(m.shape[1:]) for m in maps]
        flat_maps = _joined([_per_example(m) for m in maps], dim=1)
        if attention_mask is not None:  # each token is a feature, padding absent
            present = _real_tokens(inputs, attention_mask, feature_mask, n)
            salience, ids = flat_maps.masked_fill(~present, 0), None
        elif feature_mask is None:  # each element is a feature, all present
            salience, present, ids = flat_maps, None, None
        else:
            salience, present, ids = _mask_salience(inputs, sizes, flat_maps, feature_mask)
        # Attributions are finite, so -inf ranks the absent features after every present one.
        order = torch.argsort(
            salience if present is None else salience.masked_fill(~present, -torch.inf),
            dim=1,
            descending=True,
            stable=True,
        )
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
        # Without a mask the features are the elements: their ranks are rank's columns.
        per_input = rank.split(sizes, dim=1) if ids is None else [rank.gather(1, i) for i in ids]
        element_ranks = []
        for r, m, x in zip(per_input, maps, inputs):
            r = r.reshape(n, *m.shape[1:])
            for d in _feature_dims(x)[1]:
                r = r.unsqueeze(d)
            element_ranks.append(r)
        if present is None:
            feature_counts = torch.full((n,), order.shape[1], device=order.device)
        else:
            feature_counts = present.sum(dim=1)
        return FeatureRanking(
            salience,
            order,
            feature_counts,
            tuple(element_ranks),
            _joined([m.constant for m in matched]),
            _joined([m.finite for m in matched]),
        )


def _real_tokens(
    inputs: Tuple[Tensor, ...],
    attention_mask: Tensor,
    feature_mask: Union[None, Tensor, Tuple[Tensor, ...]],
    rows: int,
) -> Tensor:
    """``attention_mask`` as the ``(rows, L)`` bool presence of each token (the
    rows may stack several explanations of the inputs: the mask repeats)."""
    if feature_mask is not None:
        raise ValueError("attention_mask, feature_mask: give at most one of them")
    if len(inputs) != 1 or inputs[0].dim() not in (2, 3):
        raise ValueError(
            "attention_mask: expected one input of tokens, (N, L) ids or (N, L, D) "
            f"embeddings, got {[tuple(x.shape) for x in inputs]}"
        )
    if not isinstance(attention_mask, Tensor):
        raise TypeError(f"attention_mask: expected a tensor, got {type(attention_mask).__name__}")
    x = inputs[0]
    if tuple(attention_mask.shape) != tuple(x.shape[:2]):
        raise ValueError(
            f"attention_mask: expected shape {tuple(x.shape[:2])} (1 for real tokens, 0 for "
            f"padding), got {tuple(attention_mask.shape)}"
        )
    present = attention_mask.to(device=x.device) != 0
    return present.repeat(rows // x.shape[0], 1)


def _mask_salience(
    inputs: Tuple[Tensor, ...],
    sizes: Sequence[int],
    flat_maps: Tensor,
    feature_mask: Union[Tensor, Tuple[Tensor, ...]],
) -> Tuple[Tensor, Tensor, List[Tensor]]:
    """Salience ``(N, F)`` and presence ``(N, F)`` of each id of ``feature_mask``,
    and the ``(N, sizes[i])`` ids of the map elements of each input. The maps
    may stack several explanations of the inputs (``N`` a multiple of theirs):
    a per-example mask repeats."""
    n = flat_maps.shape[0]
    masks = feature_mask if isinstance(feature_mask, tuple) else (feature_mask,)
    if len(masks) != len(inputs) or not all(isinstance(m, Tensor) for m in masks):
        raise ValueError(
            f"feature_mask: expected one integer tensor per input ({len(inputs)}), "
            f"got {type(feature_mask).__name__} of length {len(masks)}"
        )
    raw_ids = [_feature_ids(m, x, i, len(inputs)) for i, (m, x) in enumerate(zip(masks, inputs))]
    raw_ids = [
        r if r.shape[0] in (1, n) else r.repeat(n // r.shape[0], *(1,) * (r.dim() - 1))
        for r in raw_ids
    ]
    flat_ids = torch.cat([_per_example(r.expand(n, *r.shape[1:])) for r in raw_ids], 1)
    _, dense = torch.unique(flat_ids, return_inverse=True)
    n_features = int(dense.max()) + 1 if dense.numel() else 0
    present = torch.zeros(n, n_features, device=dense.device, dtype=torch.bool)
    present.scatter_(1, dense, True)
    salience = torch.zeros(n, n_features, device=flat_maps.device, dtype=flat_maps.dtype)
    salience.scatter_add_(1, dense, flat_maps)
    return salience, present, list(torch.split(dense, list(sizes), dim=1))


def _check_integer_baseline(b: Tensor, dtype: torch.dtype, where: str) -> None:
    """Reject values that an integer input's dtype would silently change (-1 -> 255)."""
    info = torch.iinfo(dtype) if dtype != torch.bool else None
    low, high = (info.min, info.max) if info is not None else (0, 1)
    values = b.double()
    if not bool((values == values.round()).all()) or not bool(
        ((values >= low) & (values <= high)).all()
    ):
        raise ValueError(
            f"{where}: an input of dtype {dtype} needs integer baselines in [{low}, {high}], "
            f"got values from {values.min().item()} to {values.max().item()}"
        )


def resolve_baselines(inputs: Tuple[Tensor, ...], baselines: BaselineType) -> Tuple[Tensor, ...]:
    """One baseline per input, with the input's number of dimensions.

    ``None`` gives the per-example mean of each input over its feature
    dimensions: the per-channel mean of an image, the mean token of a
    ``(N, T, D)`` input, the mean feature of an ``(N, F)`` input. A number gives
    a constant; a tensor must broadcast to the input (a leading dimension of
    ``N`` makes it per-example).

    Returns:
        tuple of Tensor: baselines of shape ``(1 or N, ...)`` broadcastable to
        each input, on its device and in its dtype.
    """
    per_input = baselines if isinstance(baselines, tuple) else (baselines,) * len(inputs)
    if isinstance(baselines, tuple) and len(baselines) != len(inputs):
        raise ValueError(
            f"baselines: expected one baseline per input ({len(inputs)}), got {len(baselines)}"
        )
    resolved = []
    for i, (b, x) in enumerate(zip(per_input, inputs)):
        where = f"baselines[{i}]" if len(inputs) > 1 else "baselines"
        if b is None:
            if not x.is_floating_point():
                raise ValueError(
                    f"{where}: the default baseline, the per-example mean of the input, "
                    f"needs a floating-point input, got dtype {x.dtype}; pass a baseline "
                    "(for token ids, e.g. the padding id)"
                )
            feature_dims, _ = _feature_dims(x)
            resolved.append(
                x.detach().mean(dim=feature_dims, keepdim=True) if feature_dims else x.detach()
            )
            continue
        if isinstance(b, bool) or not isinstance(b, (int, float, Tensor)):
            raise TypeError(f"{where}: expected None, a number or a tensor, got {type(b).__name__}")
        b = torch.as_tensor(b)
        check_dense(b, where)
        if b.is_complex():
            raise TypeError(f"{where}: expected real values, got dtype {b.dtype}")
        b = b.detach().to(x.device)
        if not x.is_floating_point():
            _check_integer_baseline(b, x.dtype, where)
        b = b.to(x.dtype)
        if b.dim() > x.dim():
            b_ok = False
        else:
            b = b.reshape((1,) * (x.dim() - b.dim()) + tuple(b.shape))
            b_ok = b.shape[0] in (1, x.shape[0]) and all(
                bs in (1, xs) for bs, xs in zip(b.shape[1:], x.shape[1:])
            )
        if not b_ok:
            raise ValueError(
                f"{where}: expected a number or a tensor broadcastable to the input of "
                f"shape {tuple(x.shape)}, got shape {tuple(torch.as_tensor(per_input[i]).shape)}"
            )
        resolved.append(b)
    return tuple(resolved)


class TargetProbability(NamedTuple):
    """The target's probability ``p`` and its complement ``q = 1 − p``.

    Both are computed from the logits in log space (``q`` as
    ``exp(logsumexp of the other classes − logsumexp of all)``), so that ``q``
    stays exact where ``p`` rounds to 1: differences of saturated
    probabilities are read off ``q``. Float32 or wider whatever the model's
    dtype.
    """

    p: Tensor
    q: Tensor

    def drop_from(self, clean: "TargetProbability") -> Tensor:
        """``clean.p − self.p`` computed from whichever of ``p`` or ``q`` is exact.

        Per example, from ``q`` (``self.q − clean.q``) where the clean
        probability exceeds 1/2 and from ``p`` elsewhere: the same value
        today's ``p(x) − p(x̃)`` gives wherever ``p`` is not saturated, and
        distinct drops where ``p`` rounds to 1.
        """
        from_q = (clean.p > 0.5).unsqueeze(-1)
        by_q = self.q - clean.q.unsqueeze(-1)
        by_p = clean.p.unsqueeze(-1) - self.p
        return torch.where(from_q, by_q, by_p)


class CleanPass(NamedTuple):
    """What every metric of an example shares: its target and clean probability."""

    probability: TargetProbability
    target: Tensor


class PreparedInputs(NamedTuple):
    """The formatted inputs, what their removed elements take (the baselines, or
    the values the perturbation strategy gives), the additional arguments and
    the strategy."""

    inputs: Tuple[Tensor, ...]
    baselines: Tuple[Tensor, ...]
    additional_forward_args: Optional[Tuple[Any, ...]]
    perturbation: Perturbation = Baseline()

    @property
    def n(self) -> int:
        return self.inputs[0].shape[0]


class Removal(NamedTuple):
    """Rank intervals ``[starts, stops)`` to remove under one ranking, ``(R, P)``
    for its ``R`` rows (or ``(P,)`` for all of them).

    A ranking may rank several maps of the same ``N`` inputs as one batch of
    ``R = M·N`` rows, map by map (see :func:`rank_matched`): row ``r`` is an
    explanation of example ``r % N``.
    """

    ranking: FeatureRanking
    starts: Tensor
    stops: Tensor


def prepare_inputs(
    *,
    forward_func: Callable[..., Any],
    inputs: TensorOrTupleOfTensors,
    baselines: BaselineType,
    additional_forward_args: Any,
    stacklevel: int,
    perturbation: PerturbationType = "baseline",
) -> PreparedInputs:
    """Check ``forward_func`` and format the inputs, baselines and further
    arguments; resolve and check the ``perturbation`` strategy, and the values
    its removed elements take.

    A model in training mode is warned about (``stacklevel`` counts from the caller)."""
    check_forward_func(forward_func)
    strategy = resolve_perturbation(perturbation)
    warn_if_training(forward_func, "forward_func", stacklevel + 1)
    inputs_t = format_inputs(inputs)
    strategy.check(forward_func, inputs_t)
    return PreparedInputs(
        inputs_t,
        strategy.fill_values(inputs_t, resolve_baselines(inputs_t, baselines)),
        _format_additional_forward_args(additional_forward_args),
        strategy,
    )


def target_probability(
    output: Tensor, target: TargetType, apply_softmax: bool
) -> Tuple[TargetProbability, Tensor]:
    """The target's probability in ``output`` and the ``(N,)`` target classes.

    Computed in float32 or wider, outside any ``torch.autocast`` region.
    """
    scores, classes = resolve_target(output, target)
    return _probability(scores, classes, apply_softmax), classes


def _probability(scores: Tensor, classes: Tensor, apply_softmax: bool) -> TargetProbability:
    """The probability of ``classes`` in the ``(N, C)`` class ``scores``."""
    with torch.autocast(scores.device.type, enabled=False):
        scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
        if not apply_softmax:
            p = scores.gather(-1, classes.unsqueeze(-1)).squeeze(-1)
            return TargetProbability(p, 1 - p)
        if scores.shape[-1] == 1:
            raise ValueError(
                "forward_func: the model has one output, and the softmax over one class is "
                "always 1; pass apply_softmax=False if that output is a probability"
            )
        log_total = torch.logsumexp(scores, dim=-1)
        p = torch.softmax(scores, dim=-1).gather(-1, classes.unsqueeze(-1)).squeeze(-1)
        others = scores.scatter(-1, classes.unsqueeze(-1), -torch.inf)
        q = torch.exp(torch.logsumexp(others, dim=-1) - log_total)
        return TargetProbability(p, q)


def _rows_probability(
    output: Tensor, target: TargetType, clean: CleanPass, rows: Tensor, apply_softmax: bool
) -> TargetProbability:
    """The target's probability in the ``output`` of the batch's examples ``rows``.

    The classes are the clean pass's, resolved and checked there; only a
    tuple target (a position in a higher-dimensional output) is resolved again.
    """
    if isinstance(target, tuple):
        return target_probability(output, target, apply_softmax)[0]
    if isinstance(target, list) and target and isinstance(target[0], tuple):
        return target_probability(output, [target[i] for i in rows.tolist()], apply_softmax)[0]
    return _probability(output, clean.target[rows], apply_softmax)


def _forward_rows(
    forward_func: Callable[..., Any],
    prepared: PreparedInputs,
    inputs: Sequence[Tensor],
    rows: Tensor,
) -> Tensor:
    """Class scores of ``inputs``, whose examples are the batch's ``rows``."""
    args = prepared.additional_forward_args
    if args is not None:
        args = tuple(
            a[rows] if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == prepared.n else a
            for a in args
        )
    return forward_scores(forward_func, inputs, args, len(rows))


def _removed(
    prepared: PreparedInputs,
    rankings: Sequence[FeatureRanking],
    jobs: Tensor,
    which: Tensor,
    examples: Tensor,
) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
    """Per input, the clean rows of ``jobs`` (rows ``ranking, row, start, stop``,
    sorted by ranking), which explain ``examples``, the bool masks of their
    removed elements and the rows of what removed elements take; ``which`` is
    the jobs' ranking column on the CPU (so that no step waits for the device)."""
    _, rows, starts, stops = jobs.unbind(1)
    # A clean row (ranking -1, interval [0, 0)) removes nothing under any ranking.
    used, counts = torch.unique_consecutive(which.clamp(min=0), return_counts=True)
    per_ranking = list(zip(used.tolist(), rows.split(counts.tolist())))
    xs, hits, fills = [], [], []
    for i, (x, b) in enumerate(zip(prepared.inputs, prepared.baselines)):
        ranks = _joined([rankings[m].element_ranks[i][r] for m, r in per_ranking])
        shape = (-1,) + (1,) * (ranks.dim() - 1)
        hits.append((ranks >= starts.view(shape)) & (ranks < stops.view(shape)))
        fills.append(b[examples] if b.shape[0] == prepared.n and prepared.n > 1 else b)
        xs.append(x[examples])
    return xs, hits, fills


CPU_MAX_ROWS = 64
"""The most rows per forward call on a CPU when ``max_examples_per_batch`` is None."""
CPU_MAX_ELEMENTS = 1 << 20
"""The most input elements per forward call on a CPU (6 rows of 3 x 224 x 224).

Measured with benchmarks/bench_batching.py (1 thread): ViT-S/16 and ResNet-18 at
224 px run fastest at 4 to 8 rows per call (27 rows: 1.15x to 1.5x slower), the
embedded ViT and a small CNN at 48 to 576 rows (64 rows: within 1.09x of the best),
and one batch of all rows is 1.5x slower than 64 on the embedded ViT.
"""
GPU_MEMORY_SHARE = 0.5
"""The share of the free GPU memory the default chunk may fill."""
GPU_FIRST_ROWS = 64
"""The most rows of the first forward call on a GPU, which sizes the others: the
clean inputs of the batch (which the user has run through the model already),
or, when their output is given, the first perturbed inputs."""


def cpu_chunk_rows(prepared: PreparedInputs) -> int:
    """The default rows per forward call on a CPU: at most :data:`CPU_MAX_ROWS`
    rows and :data:`CPU_MAX_ELEMENTS` input elements."""
    elements = max(sum(math.prod(x.shape[1:]) for x in prepared.inputs), 1)
    return max(1, min(CPU_MAX_ROWS, CPU_MAX_ELEMENTS // elements))


def _forward_jobs(
    forward_func: Callable[..., Any],
    prepared: PreparedInputs,
    rankings: Sequence[FeatureRanking],
    jobs: Tensor,
    max_examples_per_batch: Optional[int],
) -> Iterator[Tuple[Tensor, Tensor]]:
    """Forward the inputs of ``jobs`` in chunks; yield each chunk's examples and class scores.

    The chunk is ``max_examples_per_batch`` when given. Otherwise, for
    throughput, on a CPU :func:`cpu_chunk_rows`; on a GPU the first call
    forwards the first rows (the clean ones, unless their output was given;
    at most :data:`GPU_FIRST_ROWS`), and the others
    as many rows as fill :data:`GPU_MEMORY_SHARE` of the free memory
    (``torch.cuda.mem_get_info``) at the bytes per row that first call
    allocated in all. That count is the allocator's cumulative one, kept on
    the host as memory is handed out: it needs neither a reset (the caller's
    ``torch.cuda.max_memory_allocated`` is left as it was) nor to wait for the
    kernels, which keep running while the next calls are queued.
    """
    which = jobs[:, 0].cpu()

    def forward(start: int, stop: int) -> Tuple[Tensor, Tensor]:
        part = jobs[start:stop]
        examples = part[:, 1] % prepared.n
        xs, hits, fills = _removed(prepared, rankings, part, which[start:stop], examples)
        scores = prepared.perturbation.forward(
            lambda inputs, rows: _forward_rows(forward_func, prepared, inputs, rows),
            xs,
            hits,
            fills,
            examples,
        )
        return examples, scores

    chunk, done = max_examples_per_batch, 0
    device = prepared.inputs[0].device
    if chunk is None and device.type == "cuda":
        done = min(prepared.n, GPU_FIRST_ROWS)
        counter = "allocated_bytes.all.allocated"
        before = torch.cuda.memory_stats(device).get(counter, 0)
        first = forward(0, done)
        allocated = torch.cuda.memory_stats(device).get(counter, 0) - before
        yield first
        free, _ = torch.cuda.mem_get_info(device)
        chunk = max(1, int(GPU_MEMORY_SHARE * free / max(allocated / done, 1.0)))
    elif chunk is None:
        chunk = cpu_chunk_rows(prepared)
    for start in range(done, len(jobs), chunk):
        yield forward(start, start + chunk)


JOB_KEY_LIMIT = 2**63
"""Job tables whose packed keys stay below this are deduplicated by one integer key."""


def _job_table(removals: Sequence[Removal], n: int, device: torch.device) -> Tuple[Tensor, Tensor]:
    """The distinct jobs of the clean rows and of all removals, and where each went.

    A job is a row ``(ranking, row, start, stop)``: the ranks ``[start, stop)``
    of row ``row`` of ranking ``ranking`` (the index of one of its removals)
    replaced in example ``row % n``. The table holds first the ``n`` clean
    rows ``(-1, e, 0, 0)``, then each removal's intervals, row by row; an empty
    interval is the example's clean row. Returns the distinct jobs, sorted (so
    by ranking, the clean rows first, in example order), and for each row of
    the table its job.
    """
    index = {id(r.ranking): i for i, r in enumerate(removals)}
    blocks = []
    for r in removals:
        rows, k = r.ranking.salience.shape[0], r.starts.shape[-1]
        starts, stops = r.starts.to(device).expand(rows, k), r.stops.to(device).expand(rows, k)
        empty = starts >= stops
        row = torch.arange(rows, device=device).unsqueeze(1).expand(rows, k)
        columns = [
            torch.full_like(starts, index[id(r.ranking)]).masked_fill(empty, -1),
            torch.where(empty, row % n, row),
            starts.masked_fill(empty, 0),
            stops.masked_fill(empty, 0),
        ]
        blocks.append(torch.stack(columns, 2).view(-1, 4))
    examples = torch.arange(n, device=device)
    zeros = torch.zeros_like(examples)
    table = torch.cat([torch.stack([zeros - 1, examples, zeros, zeros], 1)] + blocks)
    most_rows = max(r.ranking.salience.shape[0] for r in removals)
    span = max(r.ranking.n_features for r in removals) + 1
    if (len(removals) + 1) * most_rows * span * span >= JOB_KEY_LIMIT:
        return torch.unique(table, dim=0, return_inverse=True)
    # The rows in one int64 each, ordered as the rows are: one sort of integers
    # instead of a sort of rows, several times faster.
    key = (((table[:, 0] + 1) * most_rows + table[:, 1]) * span + table[:, 2]) * span + table[:, 3]
    keys, inverse = torch.unique(key, return_inverse=True)
    jobs = table.new_empty(len(keys), 4)
    jobs[inverse] = table
    return jobs, inverse


def forward_removals(
    forward_func: Callable[..., Any],
    prepared: PreparedInputs,
    removals: Sequence[Removal],
    *,
    target: TargetType,
    apply_softmax: bool,
    max_examples_per_batch: Optional[int],
    clean_output: Optional[Any] = None,
) -> Tuple[CleanPass, List[TargetProbability]]:
    """The clean pass and the probabilities with each removal's rank intervals replaced.

    The clean inputs and the perturbed inputs of all removals (of any metric
    and any ranking of the same inputs) are forwarded together, in the
    chunks :func:`_forward_jobs` chooses, under the caller's ``no_grad``. The
    clean rows come first: once they are through, the target (``None``: the
    predicted class) is resolved, and the probabilities of the perturbed rows
    are read for it. An input asked for twice (the same ranking and interval,
    or an empty interval, which is the clean input) is forwarded once. Given
    ``clean_output``, ``forward_func``'s output on the clean inputs, the clean
    rows are not forwarded at all. The user's tensors are never written to.

    Returns:
        tuple: the :class:`CleanPass` and, per removal ``j``, the ``(R_j, P_j)``
        :class:`TargetProbability` of its ranking's ``R_j`` rows.
    """
    check_max_examples_per_batch(max_examples_per_batch)
    n = prepared.n
    device = prepared.inputs[0].device
    steps = [r.starts.shape[-1] for r in removals]
    if n == 0:
        empty = torch.zeros(0, device=device)
        none = TargetProbability(empty, empty)
        return CleanPass(none, empty.long()), [
            TargetProbability(empty.view(0, k), empty.view(0, k)) for k in steps
        ]
    jobs, inverse = _job_table(removals, n, device)
    rankings = [r.ranking for r in removals]
    clean_scores: List[Tensor] = []
    probabilities: List[TargetProbability] = []

    def clean_pass(scores: Tensor) -> CleanPass:
        """Resolve the target on the clean rows' ``scores``; their probability first."""
        resolved = CleanPass(*target_probability(scores, target, apply_softmax))
        probabilities.append(resolved.probability)
        return resolved

    clean: Optional[CleanPass] = None
    if clean_output is not None:  # the n clean rows, first in the table, are not run again
        scores = model_output(clean_output, "clean_output").detach()
        if scores.dim() == 0 or scores.shape[0] != n:
            raise ValueError(
                f"clean_output: expected forward_func's output on the {n} inputs, got shape "
                f"{tuple(scores.shape)}"
            )
        clean = clean_pass(scores)
        jobs = jobs[n:]
    for examples, output in _forward_jobs(
        forward_func, prepared, rankings, jobs, max_examples_per_batch
    ):
        if clean is None:  # the chunk starts with clean rows
            n_clean = min(n - sum(map(len, clean_scores)), len(examples))
            clean_scores.append(output[:n_clean])
            examples, output = examples[n_clean:], output[n_clean:]
            if sum(map(len, clean_scores)) == n:
                clean = clean_pass(torch.cat(clean_scores))
        if len(examples):
            assert clean is not None
            probabilities.append(_rows_probability(output, target, clean, examples, apply_softmax))
    assert clean is not None
    # The table's rows after its n clean ones: each removal's (R_j, P_j) in turn.
    shapes = [(r.ranking.salience.shape[0], k) for r, k in zip(removals, steps)]
    jobs_of = inverse[n:].split([rows * k for rows, k in shapes])
    p = torch.cat([t.p for t in probabilities])
    q = torch.cat([t.q for t in probabilities])
    return clean, [
        TargetProbability(p[j].view(shape), q[j].view(shape)) for j, shape in zip(jobs_of, shapes)
    ]


def measure_removals(
    forward_func: Callable[..., Any],
    inputs: TensorOrTupleOfTensors,
    attributions: TensorOrTupleOfTensors,
    intervals: Callable[[FeatureRanking], Tuple[Tensor, Tensor]],
    *,
    baselines: BaselineType,
    additional_forward_args: Any,
    target: TargetType,
    feature_mask: Union[None, Tensor, Tuple[Tensor, ...]],
    max_examples_per_batch: Optional[int],
    apply_softmax: bool,
    stacklevel: int,
    perturbation: PerturbationType = "baseline",
    reduce: Reduce = "sum",
    attention_mask: Optional[Tensor] = None,
) -> Tuple[FeatureRanking, CleanPass, TargetProbability]:
    """The one preparation of every metric: format, rank, baselines, removal.

    ``intervals`` turns the ranking into the ``(N, P)`` rank intervals
    ``[starts, stops)`` the metric removes (it validates the metric's own
    arguments). Returns the ranking, the clean pass and the ``(N, P)``
    probabilities with each interval removed. ``stacklevel`` places the
    warnings, counted from the caller.
    """
    check_flag("apply_softmax", apply_softmax)
    prepared = prepare_inputs(
        forward_func=forward_func,
        inputs=inputs,
        baselines=baselines,
        additional_forward_args=additional_forward_args,
        stacklevel=stacklevel + 1,
        perturbation=perturbation,
    )
    attributions, feature_mask = prepared.perturbation.features(
        forward_func, prepared.inputs, attributions, feature_mask
    )
    ranking = rank_features(
        prepared.inputs, attributions, feature_mask, reduce=reduce, attention_mask=attention_mask
    )
    starts, stops = intervals(ranking)
    with torch.no_grad():
        clean, (removed,) = forward_removals(
            forward_func,
            prepared,
            [Removal(ranking, starts, stops)],
            target=target,
            apply_softmax=apply_softmax,
            max_examples_per_batch=max_examples_per_batch,
        )
    return ranking, clean, removed


def rank_intervals_of_groups(
    n_features: Union[int, Tensor], n_groups: int
) -> Tuple[Tensor, Tensor]:
    """Rank intervals ``[start, stop)`` of the groups ``torch.tensor_split`` makes.

    The first ``n_features % n_groups`` groups hold one feature more; with
    fewer features than groups the last groups are empty.

    Args:
        n_features (int or Tensor): ``F``, or the ``(N,)`` feature counts of
            the examples.
        n_groups (int): ``K``.

    Returns:
        tuple of Tensor: ``starts`` and ``stops``, ``(K,)`` for an int
        ``n_features``, ``(N, K)`` for a tensor.

    Examples::

        >>> starts, stops = rank_intervals_of_groups(11, 4)
        >>> starts.tolist(), stops.tolist()
        ([0, 3, 6, 9], [3, 6, 9, 11])
        >>> starts, stops = rank_intervals_of_groups(torch.tensor([11, 5]), 4)
        >>> starts.tolist(), stops.tolist()
        ([[0, 3, 6, 9], [0, 2, 3, 4]], [[3, 6, 9, 11], [2, 3, 4, 5]])
    """
    counts = torch.as_tensor(n_features).unsqueeze(-1)
    group = torch.arange(n_groups, device=counts.device)
    size, larger = counts // n_groups, counts % n_groups
    starts = group * size + torch.minimum(group, larger)
    stops = starts + size + (group < larger).long()
    return starts, stops
