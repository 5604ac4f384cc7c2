"""Perturbation strategies: how a perturbation metric removes features.

Every perturbation metric takes ``perturbation=``: a name or a strategy
object (:class:`Perturbation`). Each strategy lives in its own file.
"""

from typing import Any, Dict, Type

from captum_saco.metrics._core.perturbations.base import Perturbation, PerturbationType
from captum_saco.metrics._core.perturbations.baseline import Baseline
from captum_saco.metrics._core.perturbations.blur import Blur, gaussian_blur
from captum_saco.metrics._core.perturbations.noisy_linear import NoisyLinear, noisy_linear_impute
from captum_saco.metrics._core.perturbations.token_drop import TokenDrop

PERTURBATIONS: Dict[str, Type[Perturbation]] = {
    "baseline": Baseline,
    "blur": Blur,
    "noisy_linear": NoisyLinear,
    "token_drop": TokenDrop,
}
"""The named strategies; a name gives the strategy with its default options."""


def resolve_perturbation(perturbation: Any) -> Perturbation:
    """``perturbation=`` as a strategy object: a name of :data:`PERTURBATIONS`
    (with default options) or a :class:`Perturbation` instance, as it is."""
    if isinstance(perturbation, Perturbation):
        return perturbation
    if isinstance(perturbation, str) and perturbation in PERTURBATIONS:
        return PERTURBATIONS[perturbation]()
    raise ValueError(
        f"perturbation: expected one of {list(PERTURBATIONS)} or a Perturbation instance, "
        f"got {perturbation!r}"
    )


__all__ = [
    "PERTURBATIONS",
    "Baseline",
    "Blur",
    "NoisyLinear",
    "Perturbation",
    "PerturbationType",
    "TokenDrop",
    "gaussian_blur",
    "noisy_linear_impute",
    "resolve_perturbation",
]
