"""captum-saco: the SaCo faithfulness metric and Vision Transformer attribution
methods for Captum."""

__version__ = "0.1.0"

from captum_saco.attr import (  # noqa: E402
    AttentionAttribution,
    AttentionRollout,
    GradientWeightedAttention,
    RandomAttribution,
    RawAttention,
    TransformerAttribution,
)
from captum_saco.evaluation import EvaluationResult, evaluate  # noqa: E402
from captum_saco.metrics import (  # noqa: E402
    aopc,
    auc,
    comprehensiveness,
    deletion_curve,
    lodds,
    saco,
)

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
