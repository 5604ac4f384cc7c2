"""The family of zero-shot classifiers (:class:`captum_saco.models.ZeroShotClassifier`):
a CLIP or SigLIP image tower whose embedding is compared with text embeddings."""

from torch import nn

from captum_saco.attr._core.families.base import TowerAdapter, ViTParts, _unsupported
from captum_saco.attr._core.families.hf_clip import HuggingFaceClipVisionAdapter
from captum_saco.attr._core.families.hf_siglip import HuggingFaceSiglipVisionAdapter
from captum_saco.attr._core.families.open_clip_vit import OpenClipVisionAdapter

#: where a classifier's image tower may sit, tried in this order
_TOWER_PATHS = (
    "model.vision_model",  # Hugging Face CLIPModel, CLIPVisionModelWithProjection, SiglipModel
    "model.visual",  # open_clip
    "model",  # an image tower such as timm's
)

#: the image-tower families, tried before the classifier families
_TOWER_FAMILIES = (
    HuggingFaceClipVisionAdapter,
    HuggingFaceSiglipVisionAdapter,
    OpenClipVisionAdapter,
)


class ZeroShotAdapter(TowerAdapter):
    """:class:`~captum_saco.models.ZeroShotClassifier` over a CLIP or SigLIP image
    tower: Hugging Face ``CLIPModel`` / ``CLIPVisionModelWithProjection``
    (``vision_model``, class token), ``SiglipModel`` (``vision_model``, whose
    attention-pooling head gives a per-example read-out, see
    :class:`~captum_saco.attr._core.families.hf_siglip.HuggingFaceSiglipVisionAdapter`),
    open_clip CLIP models (``visual``) or a timm ``VisionTransformer`` (the CLIP
    layout, ``pre_norm=True``, with the projection as its head; or SigLIP's
    ``global_pool='map'``). The tokens, blocks, attention probabilities and
    read-out are the tower's, read by the tower's own family; the output
    explained is the classifier's logit of the target prompt, so the
    gradient-weighted methods differentiate ``scale * cos(image, prompt)`` (plus
    SigLIP's bias).

    The relevance methods (the LRP family and Transformer Attribution) refuse it:
    their rules stop at a linear head, and the zero-shot head (projection, L2
    normalisation, text matrix) has no rule in them yet.
    """

    model_classes = (("captum_saco.models.zero_shot", "ZeroShotClassifier"),)
    description = (
        "captum_saco.models.ZeroShotClassifier over a CLIP or SigLIP image tower "
        "(Hugging Face CLIPModel, CLIPVisionModelWithProjection and SiglipModel, "
        "open_clip CLIP, timm VisionTransformer)"
    )

    def __init__(self, model: nn.Module) -> None:
        from captum_saco.attr._core.families import FAMILIES, _is_member

        for path in _TOWER_PATHS:
            try:
                tower = model.get_submodule(path)
            except AttributeError:
                continue
            for family in (*_TOWER_FAMILIES, *FAMILIES):
                if family is not ZeroShotAdapter and _is_member(tower, family):
                    super().__init__(model, path, family(tower))
                    return
        raise _unsupported(
            model,
            f"the image tower of this ZeroShotClassifier ({type(model.model).__name__}) is not "
            "a supported ViT",
        )

    def parts(self) -> ViTParts:
        raise ValueError(
            "model: the relevance methods (TransformerAttribution, PartialLRP, FullLRP, "
            "ConservativeLRP, AttnLRP) have no rule for a ZeroShotClassifier's head "
            "(projection, L2 normalisation, text matrix); RawAttention, AttentionRollout, "
            "GradientWeightedAttention, AttentionGradCAM and AttCAT explain it"
        )
