"""Faithfulness metrics for attributions: SaCo and the cumulative deletion
metrics it is compared against, all driven by one perturbation engine."""

from captum_saco.metrics._core.saco import SacoDetails, saco

__all__ = ["SacoDetails", "saco"]
