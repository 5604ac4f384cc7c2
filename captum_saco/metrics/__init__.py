"""Faithfulness metrics for attributions: SaCo and the cumulative deletion
metrics it is compared against, all driven by one perturbation engine."""

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
from captum_saco.metrics._core.saco import SacoDetails, saco, saco_coefficient
from captum_saco.metrics._core.scoring import score_attributions

__all__ = [
    "DeletionCurve",
    "SacoDetails",
    "aopc",
    "auc",
    "comprehensiveness",
    "deletion_curve",
    "insertion_curve",
    "lodds",
    "saco",
    "saco_coefficient",
    "score_attributions",
    "srg",
]
