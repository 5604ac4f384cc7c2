"""captum-saco: the SaCo faithfulness metric and Vision Transformer attribution
methods for Captum."""

from captum_saco.attr import (
    AttentionAttribution,
    AttentionRollout,
    GradientWeightedAttention,
    RandomAttribution,
    RawAttention,
    TransformerAttribution,
)
from captum_saco.evaluation import EvaluationResult, evaluate
from captum_saco.metrics import (
    aopc,
    auc,
    comprehensiveness,
    deletion_curve,
    lodds,
    saco,
)

__version__ = "0.1.0"

__all__ = [
    "AttentionAttribution",
    "AttentionRollout",
    "EvaluationResult",
    "GradientWeightedAttention",
    "RandomAttribution",
    "RawAttention",
    "TransformerAttribution",
    "aopc",
    "auc",
    "comprehensiveness",
    "deletion_curve",
    "evaluate",
    "lodds",
    "saco",
]
