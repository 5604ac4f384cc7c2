"""How far a result is from the expected one, as the tests measure it."""

import torch
from torch import Tensor

_TINY = torch.finfo(torch.float64).tiny  # guards an all-zero expectation only


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """``max |actual - expected| / max |expected|`` over all elements, in float64
    (``actual`` reshaped to the shape of ``expected``)."""
    actual, expected = actual.reshape(expected.shape).double(), expected.double()
    return float((actual - expected).abs().max() / expected.abs().max().clamp(min=_TINY))


def relative_errors(actual: Tensor, expected: Tensor) -> Tensor:
    """:func:`relative_error` of each example (dimension 0), ``(N,)``."""
    actual, expected = actual.double().flatten(1), expected.double().flatten(1)
    return (actual - expected).abs().amax(dim=1) / expected.abs().amax(dim=1).clamp(min=_TINY)
