"""Faithfulness metrics for attributions: SaCo and the cumulative deletion
metrics it is compared against, insertion and SRG, all driven by one
perturbation engine with interchangeable perturbation strategies."""

from captum_saco.metrics._core.cumulative import (
    DeletionCurve,
    aopc,
    auc,
    comprehensiveness,
    deletion_curve,
    insertion_curve,
    lodds,
    srg,
)
from captum_saco.metrics._core.perturbations import (
    PERTURBATIONS,
    Baseline,
    Blur,
    NoisyLinear,
    Perturbation,
    TokenDrop,
    gaussian_blur,
    noisy_linear_impute,
)
from captum_saco.metrics._core.saco import SacoDetails, saco, saco_coefficient
from captum_saco.metrics._core.scoring import score_attributions

__all__ = [
    "PERTURBATIONS",
    "Baseline",
    "Blur",
    "DeletionCurve",
    "NoisyLinear",
    "Perturbation",
    "TokenDrop",
    "SacoDetails",
    "aopc",
    "auc",
    "comprehensiveness",
    "deletion_curve",
    "gaussian_blur",
    "insertion_curve",
    "lodds",
    "noisy_linear_impute",
    "saco",
    "saco_coefficient",
    "score_attributions",
    "srg",
]
