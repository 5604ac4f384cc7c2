"""captum-saco: the SaCo faithfulness metric and Vision Transformer attribution
methods for Captum."""

from captum_saco.attr import (
    AttCAT,
    AttentionAttribution,
    AttentionGradCAM,
    AttentionRollout,
    AttnLRP,
    ConservativeLRP,
    FullLRP,
    GradientWeightedAttention,
    PartialLRP,
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
    insertion_curve,
    lodds,
    saco,
    score_attributions,
    srg,
)

__version__ = "0.1.0"

__all__ = [
    "AttCAT",
    "AttentionAttribution",
    "AttentionGradCAM",
    "AttentionRollout",
    "AttnLRP",
    "ConservativeLRP",
    "EvaluationResult",
    "FullLRP",
    "GradientWeightedAttention",
    "PartialLRP",
    "RandomAttribution",
    "RawAttention",
    "TransformerAttribution",
    "aopc",
    "auc",
    "comprehensiveness",
    "deletion_curve",
    "evaluate",
    "insertion_curve",
    "lodds",
    "saco",
    "score_attributions",
    "srg",
]
