"""The interface every perturbation strategy implements.

A perturbation metric ranks the features, then asks for the model's output
on the input with some features *removed*. How a removed feature is removed
is the strategy: replaced by a baseline (:class:`Baseline`), by a blurred copy
of the input (:class:`Blur`), imputed from the remaining pixels
(:class:`NoisyLinear`), or dropped from a ViT's token sequence
(:class:`TokenDrop`). The engine (:mod:`..perturbation`) calls the strategy at
three points: once per call to resolve what removed features take
(:meth:`Perturbation.fill_values`), once to define the features
(:meth:`Perturbation.features`), and for each chunk of perturbed rows
(:meth:`Perturbation.forward`).
"""

from typing import Any, Callable, Sequence, Tuple, Union

import torch
from torch import Tensor

ForwardRows = Callable[[Sequence[Tensor], Tensor], Tensor]
"""``(inputs, rows) -> class scores``: the forward function on ``inputs``, whose
rows explain the examples ``rows`` of the batch (their further arguments are
taken per example)."""


class Perturbation:
    """How removed features are removed; the default replaces them by the baseline.

    Subclasses override one or more of the steps; each step's default is the
    baseline replacement that the paper's metrics use.
    """

    name: str = "baseline"

    def check(self, forward_func: Callable[..., Any], inputs: Tuple[Tensor, ...]) -> None:
        """Refuse, by name, a model or inputs the strategy cannot perturb."""

    def fill_values(
        self, inputs: Tuple[Tensor, ...], baselines: Tuple[Tensor, ...]
    ) -> Tuple[Tensor, ...]:
        """Per input, the ``(1 or N, ...)`` values removed elements take
        (broadcastable to the input); ``baselines`` are the resolved
        ``baselines=``."""
        return baselines

    def features(
        self,
        forward_func: Callable[..., Any],
        inputs: Tuple[Tensor, ...],
        attributions: Any,
        feature_mask: Union[None, Tensor, Tuple[Tensor, ...]],
    ) -> Tuple[Any, Union[None, Tensor, Tuple[Tensor, ...]]]:
        """The attributions and ``feature_mask`` the features are ranked by."""
        return attributions, feature_mask

    def perturb(self, x: Tensor, removed: Tensor, fill: Tensor) -> Tensor:
        """Rows ``x`` of one input with the elements where ``removed`` (a bool
        tensor broadcastable to ``x``) is True removed; ``fill``: those rows'
        :meth:`fill_values`. Never writes to ``x``."""
        return torch.where(removed, fill, x)

    def forward(
        self,
        forward_rows: ForwardRows,
        inputs: Sequence[Tensor],
        removed: Sequence[Tensor],
        fills: Sequence[Tensor],
        rows: Tensor,
    ) -> Tensor:
        """Class scores of the rows ``inputs`` (examples ``rows``) with ``removed``
        removed from each input."""
        perturbed = [self.perturb(x, r, f) for x, r, f in zip(inputs, removed, fills)]
        return forward_rows(perturbed, rows)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


PerturbationType = Union[str, Perturbation]


def check_images(name: str, inputs: Tuple[Tensor, ...]) -> None:
    """Refuse inputs that are not floating-point images ``(N, C, H, W)``,
    naming the strategy ``name``."""
    for i, x in enumerate(inputs):
        if x.dim() != 4 or not x.is_floating_point():
            raise ValueError(
                f"perturbation={name!r}: expected floating-point images (N, C, H, W), "
                f"got input {i} of shape {tuple(x.shape)} and dtype {x.dtype}"
            )
