"""Attribution methods for Vision Transformers, as Captum ``Attribution`` classes."""

from captum_saco.attr._core.attcat import AttCAT
from captum_saco.attr._core.attention_gradcam import AttentionGradCAM
from captum_saco.attr._core.attention_rollout import AttentionRollout
from captum_saco.attr._core.attn_lrp import AttnLRP
from captum_saco.attr._core.conservative_lrp import ConservativeLRP
from captum_saco.attr._core.engine import AttentionAttribution, AttentionTrace, Needs
from captum_saco.attr._core.full_lrp import FullLRP
from captum_saco.attr._core.gradient_weighted_attention import GradientWeightedAttention
from captum_saco.attr._core.partial_lrp import PartialLRP
from captum_saco.attr._core.random_attribution import RandomAttribution
from captum_saco.attr._core.raw_attention import RawAttention
from captum_saco.attr._core.transformer_attribution import TransformerAttribution

__all__ = [
    "AttCAT",
    "AttentionAttribution",
    "AttentionGradCAM",
    "AttentionRollout",
    "AttentionTrace",
    "AttnLRP",
    "ConservativeLRP",
    "FullLRP",
    "GradientWeightedAttention",
    "Needs",
    "PartialLRP",
    "RandomAttribution",
    "RawAttention",
    "TransformerAttribution",
]
