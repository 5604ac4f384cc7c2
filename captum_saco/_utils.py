"""Helpers shared by the metrics and the attribution methods."""

from typing import List, Tuple, Union

import torch
from torch import Tensor

# The target forms Captum accepts (see ``captum._utils.typing.TargetType``).
TargetType = Union[None, int, Tuple[int, ...], Tensor, List[int], List[Tuple[int, ...]]]


def _class_rows(output: Tensor, index: Tuple[int, ...], example: int) -> Tensor:
    """The class-score vector of one example selected by the leading indices."""
    return output[(example,) + tuple(index)]


def resolve_target(output: Tensor, target: TargetType) -> Tuple[Tensor, Tensor]:
    """Turn any Captum ``target`` into class scores and one class per example.

    Args:
        output (Tensor): the forward function's output, ``(N, C)`` or
            ``(N, d_1, ..., d_k, C)`` when tuple targets pick a position
            before the class dimension.
        target (int, tuple, Tensor, list or None): a target in any form
            Captum's attribution methods accept. ``None`` takes the predicted
            class (argmax over the last dimension) of a 2D output.

    Returns:
        tuple of Tensor: ``scores`` of shape ``(N, C)``, the class-score rows
        the target points into, and ``classes``, a ``LongTensor`` of shape
        ``(N,)`` on ``output``'s device.

    Raises:
        ValueError: if the target's form does not fit the output, or a class
            index lies outside ``[0, C)``.

    Examples::

        >>> import torch
        >>> scores, classes = resolve_target(torch.tensor([[0.1, 2.0], [3.0, 0.0]]), None)
        >>> classes.tolist()
        [1, 0]
        >>> resolve_target(torch.zeros(2, 3), [2, 0])[1].tolist()
        [2, 0]
    """
    n = output.shape[0]
    device = output.device
    if isinstance(target, tuple) or (
        isinstance(target, list) and len(target) > 0 and isinstance(target[0], tuple)
    ):
        per_example = [target] * n if isinstance(target, tuple) else list(target)
        if len(per_example) != n:
            raise ValueError(
                f"target: expected one tuple per example ({n}), got {len(per_example)}"
            )
        if any(len(t) != output.dim() - 1 for t in per_example):
            raise ValueError(
                f"target: a tuple target must index all {output.dim() - 1} non-batch "
                f"dimensions of the output of shape {tuple(output.shape)}, got {target!r}"
            )
        scores = torch.stack(
            [_class_rows(output, t[:-1], i) for i, t in enumerate(per_example)]
        )
        classes = torch.tensor([t[-1] for t in per_example], device=device)
    else:
        if output.dim() != 2:
            raise ValueError(
                "target: an int, list or tensor target needs a forward_func output of "
                f"shape (N, C), got {tuple(output.shape)}; use a tuple target to pick a "
                "position in a higher-dimensional output"
            )
        scores = output
        if target is None:
            classes = output.argmax(dim=1)
        elif isinstance(target, int) and not isinstance(target, bool):
            classes = torch.full((n,), target, dtype=torch.long, device=device)
        elif isinstance(target, list):
            if len(target) != n:
                raise ValueError(
                    f"target: a list target needs one entry per example ({n}), got {len(target)}"
                )
            classes = torch.tensor(target, dtype=torch.long, device=device)
        elif isinstance(target, Tensor):
            if target.is_floating_point() or target.is_complex():
                raise ValueError(f"target: expected an integer tensor, got dtype {target.dtype}")
            if target.numel() == 1:
                classes = target.reshape(1).to(device=device, dtype=torch.long).expand(n)
            elif target.dim() == 1 and target.numel() == n:
                classes = target.to(device=device, dtype=torch.long)
            else:
                raise ValueError(
                    f"target: a tensor target must be a scalar or of shape ({n},), "
                    f"got {tuple(target.shape)}"
                )
        else:
            raise ValueError(
                "target: expected None, an int, a tuple, a list or an integer tensor, "
                f"got {type(target).__name__}"
            )
    n_classes = scores.shape[-1]
    if classes.numel() and (classes.min() < 0 or classes.max() >= n_classes):
        raise ValueError(
            f"target: class indices must lie in [0, {n_classes}) for a forward_func "
            f"with {n_classes} outputs, got {classes.tolist()}"
        )
    return scores, classes.contiguous()
