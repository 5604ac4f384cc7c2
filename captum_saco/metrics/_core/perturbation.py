"""The perturbation engine shared by SaCo and the cumulative deletion metrics.

Every metric in :mod:`captum_saco.metrics` works the same way: rank the
input's features by the salience an attribution gives them, replace some
contiguous stretches of that ranking with a baseline, and read the softmax
probability of the target class on each perturbed input. This module owns
those steps once:

- :func:`format_inputs` turns Captum's tensor-or-tuple arguments into tuples;
- :func:`rank_features` matches attributions of any shape Captum methods
  produce to the inputs, sums them per feature (pixel, token, scalar feature or
  ``feature_mask`` region) and ranks the features with a stable descending sort;
- :func:`resolve_baselines` turns ``baselines`` into one tensor per input;
- :func:`removal_probabilities` builds the perturbed inputs (feature ranks in
  ``[start, stop)`` replaced by the baseline) and runs them, chunked, through
  the forward function under ``no_grad``.

A metric only says which rank intervals to remove and what to compute from the
probabilities.
"""

from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from captum._utils.common import _format_additional_forward_args
from torch import Tensor

from captum_saco._utils import TargetType, resolve_target

TensorOrTupleOfTensors = Union[Tensor, Tuple[Tensor, ...]]
BaselineType = Union[None, int, float, Tensor, Tuple[Union[int, float, Tensor], ...]]

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
    """

    salience: Tensor
    order: Tensor
    feature_counts: Tensor
    element_ranks: Tuple[Tensor, ...]

    @property
    def n_features(self) -> int:
        """``F``, the number of feature ids of the batch, all examples together."""
        return self.salience.shape[1]


class RemovalProbabilities(NamedTuple):
    """Target-class probabilities of the clean and of the perturbed inputs.

    Attributes:
        clean (Tensor): ``(N,)`` probability ``p(c | x)``.
        removed (Tensor): ``(N, P)`` probability after replacing the features
            of ranks ``[starts[n, k], stops[n, k])`` of example ``n`` with the
            baseline, for each of the ``P`` removals.
        target (Tensor): ``(N,)`` the target class ``c`` of each example.
    """

    clean: Tensor
    removed: Tensor
    target: Tensor


def format_inputs(inputs: TensorOrTupleOfTensors) -> Tuple[Tensor, ...]:
    """Return ``inputs`` as a non-empty tuple of tensors sharing one batch size."""
    formatted = inputs if isinstance(inputs, tuple) else (inputs,)
    if len(formatted) == 0 or not all(isinstance(x, Tensor) for x in formatted):
        raise TypeError(
            "inputs: expected a tensor or a non-empty tuple of tensors, got "
            f"{type(inputs).__name__}"
        )
    if any(x.dim() == 0 for x in formatted):
        raise ValueError("inputs: every input needs a batch dimension, got a 0-dim tensor")
    n = formatted[0].shape[0]
    if any(x.shape[0] != n for x in formatted):
        raise ValueError(
            "inputs: all inputs must share the batch size, got shapes "
            f"{[tuple(x.shape) for x in formatted]}"
        )
    return formatted


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


def _feature_map(attribution: Tensor, x: Tensor, index: int, n_inputs: int) -> Tensor:
    """Match one attribution to its input; return its ``(N, *feature_shape)`` map."""
    feature_dims, reduced_dims = _feature_dims(x)
    feature_shape = tuple(x.shape[d] for d in feature_dims)
    n = x.shape[0]
    a = attribution.detach()
    if not a.is_floating_point():
        a = a.to(torch.get_default_dtype())
    a = a.to(x.device)

    def mismatch() -> ValueError:
        where = f"attributions[{index}]" if n_inputs > 1 else "attributions"
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
            g <= s for g, s in zip(grid, feature_shape)
        )
        if (same_grid and reduced_ok) or (not same_grid and smaller_grid):
            a = a.sum(dim=reduced_dims)
        else:
            raise mismatch()
    elif a.dim() == len(feature_shape) + 1 and len(feature_dims) > 1:
        if not all(g <= s for g, s in zip(a.shape[1:], feature_shape)):
            raise mismatch()
    elif not (a.dim() == len(feature_shape) + 1 and tuple(a.shape[1:]) == feature_shape):
        raise mismatch()
    if tuple(a.shape[1:]) != feature_shape:
        a = F.interpolate(
            a.unsqueeze(1),
            size=feature_shape,
            mode=_INTERPOLATION_MODES[len(feature_shape)],
            align_corners=False,
        ).squeeze(1)
    return a


def _feature_ids(mask: Tensor, x: Tensor, index: int, n_inputs: int) -> Tensor:
    """The ``(1 or N, *feature_shape)`` feature ids a ``feature_mask`` assigns."""
    where = f"feature_mask[{index}]" if n_inputs > 1 else "feature_mask"
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

    Returns:
        FeatureRanking: the per-feature salience, the ranking and the rank of
        every input element.
    """
    attributions_t = attributions if isinstance(attributions, tuple) else (attributions,)
    if not all(isinstance(a, Tensor) for a in attributions_t):
        raise TypeError(
            "attributions: expected a tensor or a tuple of tensors, got "
            f"{type(attributions).__name__}"
        )
    if len(attributions_t) != len(inputs):
        raise ValueError(
            f"attributions: expected one attribution per input ({len(inputs)}), "
            f"got {len(attributions_t)}"
        )
    maps = [
        _feature_map(a, x, i, len(inputs)) for i, (a, x) in enumerate(zip(attributions_t, inputs))
    ]
    if not all(bool(torch.isfinite(m).all()) for m in maps):
        raise ValueError("attributions: contain NaN or infinite values")
    n = inputs[0].shape[0]
    flat_maps = torch.cat([m.reshape(n, -1) for m in maps], dim=1)

    if feature_mask is None:
        sizes = [m[0].numel() for m in maps]
        offsets = torch.tensor([0] + sizes[:-1]).cumsum(0).tolist()
        ids = [
            (torch.arange(size, device=m.device) + offset).reshape(1, *m.shape[1:])
            for size, offset, m in zip(sizes, offsets, maps)
        ]
        salience = flat_maps
        present = torch.ones_like(salience, dtype=torch.bool)
    else:
        masks = feature_mask if isinstance(feature_mask, tuple) else (feature_mask,)
        if len(masks) != len(inputs) or not all(isinstance(m, Tensor) for m in masks):
            raise ValueError(
                f"feature_mask: expected one integer tensor per input ({len(inputs)}), "
                f"got {type(feature_mask).__name__} of length {len(masks)}"
            )
        raw_ids = [
            _feature_ids(m, x, i, len(inputs)) for i, (m, x) in enumerate(zip(masks, inputs))
        ]
        flat_ids = torch.cat([r.expand(n, *r.shape[1:]).reshape(n, -1) for r in raw_ids], 1)
        _, dense = torch.unique(flat_ids, return_inverse=True)
        n_features = int(dense.max()) + 1
        present = torch.zeros(n, n_features, device=dense.device, dtype=torch.bool)
        present.scatter_(1, dense, True)
        salience = torch.zeros(n, n_features, device=flat_maps.device, dtype=flat_maps.dtype)
        salience.scatter_add_(1, dense, flat_maps)
        ids = list(torch.split(dense, [m[0].numel() for m in maps], dim=1))
        ids = [i.reshape(n, *m.shape[1:]) for i, m in zip(ids, maps)]

    # Attributions are finite, so -inf ranks the absent features after every present one.
    sort_key = salience.masked_fill(~present, -torch.inf)
    order = torch.sort(sort_key, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    element_ranks = []
    for feature_ids, x in zip(ids, inputs):
        _, reduced_dims = _feature_dims(x)
        r = rank.gather(1, feature_ids.expand(n, *feature_ids.shape[1:]).reshape(n, -1))
        r = r.reshape(n, *feature_ids.shape[1:])
        for d in reduced_dims:
            r = r.unsqueeze(d)
        element_ranks.append(r)
    return FeatureRanking(salience, order, present.sum(dim=1), tuple(element_ranks))


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
            raise TypeError(
                f"{where}: expected None, a number or a tensor, got {type(b).__name__}"
            )
        b = torch.as_tensor(b).detach().to(device=x.device, dtype=x.dtype)
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


def _target_probabilities(
    output: Tensor, target: TargetType, apply_softmax: bool
) -> Tuple[Tensor, Tensor]:
    scores, classes = resolve_target(output, target)
    if apply_softmax:
        dtype = torch.promote_types(scores.dtype, torch.float32)
        scores = torch.softmax(scores, dim=-1, dtype=dtype)
    return scores.gather(-1, classes.unsqueeze(-1)).squeeze(-1), classes


def _forward(
    forward_func: Callable[..., Any],
    inputs: Sequence[Tensor],
    additional_args: Optional[Tuple[Any, ...]],
    rows: Tensor,
    n: int,
) -> Tensor:
    """Run ``forward_func`` on a chunk whose examples come from ``rows``."""
    args: Tuple[Any, ...] = ()
    if additional_args is not None:
        args = tuple(
            a[rows] if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == n else a
            for a in additional_args
        )
    output = forward_func(*inputs, *args)
    if not isinstance(output, Tensor) or output.dim() == 0 or output.shape[0] != len(rows):
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(
            f"forward_func: expected an output tensor with one row per example "
            f"({len(rows)}), got {shape}"
        )
    return output


def _chunk_target(target: TargetType, classes: Tensor, rows: Tensor) -> TargetType:
    """The target of the examples ``rows`` of the batch, in resolvable form."""
    if isinstance(target, tuple):
        return target
    if isinstance(target, list) and target and isinstance(target[0], tuple):
        return [target[i] for i in rows.tolist()]
    return classes[rows]


def removal_probabilities(
    forward_func: Callable[..., Any],
    inputs: Tuple[Tensor, ...],
    ranking: FeatureRanking,
    starts: Tensor,
    stops: Tensor,
    baselines: Tuple[Tensor, ...],
    additional_forward_args: Any = None,
    target: TargetType = None,
    max_examples_per_batch: Optional[int] = None,
    apply_softmax: bool = True,
) -> RemovalProbabilities:
    """Target-class probabilities with the feature ranks ``[starts, stops)`` removed.

    Runs one clean forward pass per example and one per example and removal,
    in chunks of at most ``max_examples_per_batch`` examples, under
    ``torch.no_grad()``. The target (``None``: the class the model predicts
    for the clean input) is resolved once on the clean output and kept for
    the perturbed inputs. The user's tensors are never written to.

    Args:
        forward_func (Callable): the model or any function returning scores.
        inputs (tuple of Tensor): the formatted inputs.
        ranking (FeatureRanking): from :func:`rank_features`.
        starts, stops (Tensor): ``(P,)`` rank intervals to replace, one per
            removal, shared by all examples, or ``(N, P)`` per example; rank 0
            is an example's most salient feature.
        baselines (tuple of Tensor): from :func:`resolve_baselines`.
        additional_forward_args (Any, optional): passed after the inputs; its
            tensors whose first dimension is ``N`` are indexed per example.
        target (int, tuple, Tensor, list, optional): any Captum target form.
        max_examples_per_batch (int, optional): most examples per forward call.
        apply_softmax (bool): softmax the output; ``False`` when
            ``forward_func`` already returns probabilities.

    Returns:
        RemovalProbabilities: clean ``(N,)`` and removed ``(N, P)`` probabilities.
    """
    if max_examples_per_batch is not None and (
        isinstance(max_examples_per_batch, bool)
        or not isinstance(max_examples_per_batch, int)
        or max_examples_per_batch < 1
    ):
        raise ValueError(
            "max_examples_per_batch: expected a positive int or None, got "
            f"{max_examples_per_batch!r}"
        )
    n = inputs[0].shape[0]
    device = inputs[0].device
    n_removals = starts.shape[-1]
    chunk = max_examples_per_batch or max(n * n_removals, n, 1)
    extra = _format_additional_forward_args(additional_forward_args)
    starts = starts.to(device).expand(n, n_removals)
    stops = stops.to(device).expand(n, n_removals)

    with torch.no_grad():
        outputs = [
            _forward(forward_func, [x[rows] for x in inputs], extra, rows, n)
            for rows in torch.arange(n, device=device).split(chunk)
        ]
        clean, classes = _target_probabilities(torch.cat(outputs), target, apply_softmax)

        removed_parts: List[Tensor] = []
        for flat in torch.arange(n * n_removals, device=device).split(chunk):
            rows, step = flat // n_removals, flat % n_removals
            perturbed = []
            for x, b, r in zip(inputs, baselines, ranking.element_ranks):
                shape = (-1,) + (1,) * (r.dim() - 1)
                r_rows = r[rows]
                hit = (r_rows >= starts[rows, step].view(shape)) & (
                    r_rows < stops[rows, step].view(shape)
                )
                b_rows = b[rows] if b.shape[0] == n and n > 1 else b
                perturbed.append(torch.where(hit, b_rows, x[rows]))
            output = _forward(forward_func, perturbed, extra, rows, n)
            p, _ = _target_probabilities(
                output, _chunk_target(target, classes, rows), apply_softmax
            )
            removed_parts.append(p)
        removed = (
            torch.cat(removed_parts).reshape(n, n_removals)
            if removed_parts
            else clean.new_empty(n, 0)
        )
    return RemovalProbabilities(clean, removed, classes)


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
