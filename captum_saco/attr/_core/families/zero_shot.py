"""The family of zero-shot classifiers (:class:`captum_saco.models.ZeroShotClassifier`):
a CLIP or SigLIP image tower whose embedding is compared with text embeddings."""

from dataclasses import replace

from torch import nn

from captum_saco.attr._core.families.base import (
    LinearMap,
    TowerAdapter,
    ViTAdapter,
    ViTParts,
    _inexpressible,
    _unsupported,
)
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

    For the relevance methods the head (:meth:`parts`) is the tower's final norm
    on the class token, its projection (Hugging Face ``visual_projection``,
    open_clip ``proj``, timm ``head``), the L2 normalisation and the linear map
    ``scale * text_embeddings`` (the normalised text embeddings, one row per
    prompt). The L2 normalisation takes the LayerNorm rule: ConservativeLRP and
    AttnLRP treat the norm ``||x||`` as a constant, under which each element's
    relevance passes on unchanged, which is also what LXT's identity rule on
    ``F.normalize`` does; Chefer's rules (TransformerAttribution, PartialLRP,
    FullLRP) pass relevance through it as through a LayerNorm, and take their
    linear rule at the projection and the text matrix. A SigLIP tower's head is
    its attention-pooling head (an
    :class:`~captum_saco.attr._core.families.base.AttentionPool`, which takes the
    attention rules), whose output is the image embedding (Hugging Face: no
    projection), then the L2 normalisation and the text matrix, SigLIP's
    ``logit_bias`` the bias of that linear map.
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
                    if family is HuggingFaceClipVisionAdapter:  # the projection sits beside it
                        projection = getattr(model.model, "visual_projection", None)
                        adapter: ViTAdapter = family(tower, projection)
                    else:
                        adapter = family(tower)
                    super().__init__(model, path, adapter)
                    return
        raise _unsupported(
            model,
            f"the image tower of this ZeroShotClassifier ({type(model.model).__name__}) is not "
            "a supported ViT",
        )

    def parts(self) -> ViTParts:
        """The tower's parts, whose head's output layer (the projection to the
        image embedding; none for a Hugging Face SigLIP tower) becomes the
        projection of the zero-shot head, followed by the L2 normalisation and
        ``LinearMap(scale * text_embeddings, bias)``."""
        parts = self.tower.parts()
        tower_head = parts.heads[0]
        if len(parts.heads) != 1 or tower_head.projection is not None or tower_head.normalize:
            raise _inexpressible(self.model, "an image tower with several heads")
        scale, bias = self.model.logit_scale_and_bias()
        text = self.model.text_embeddings
        classifier = LinearMap(
            scale.detach() * text,
            None if bias is None else bias.detach().expand(text.shape[0]),
        )
        head = replace(
            parts.heads[0],
            projection=parts.heads[0].classifier,
            normalize=True,
            classifier=classifier,
        )
        return replace(parts, heads=[head])
