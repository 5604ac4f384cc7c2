"""The family of zero-shot classifiers (:class:`captum_saco.models.ZeroShotClassifier`):
a CLIP image tower whose embedding is compared with text embeddings."""

from contextlib import contextmanager
from dataclasses import replace
from typing import Callable, Dict, Iterator, List, Tuple

from torch import Tensor, nn

from captum_saco.attr._core.families.base import (
    LinearMap,
    ViTAdapter,
    ViTParts,
    _inexpressible,
    _unsupported,
)
from captum_saco.attr._core.families.hf_clip import HuggingFaceClipVisionAdapter
from captum_saco.attr._core.families.open_clip_vit import OpenClipVisionAdapter

#: where a classifier's image tower may sit, tried in this order
_TOWER_PATHS = (
    "model.vision_model",  # Hugging Face CLIPModel, CLIPVisionModelWithProjection
    "model.visual",  # open_clip
    "model",  # an image tower such as timm's
)


class ZeroShotAdapter(ViTAdapter):
    """:class:`~captum_saco.models.ZeroShotClassifier` over a class-token CLIP image
    tower: Hugging Face ``CLIPModel`` / ``CLIPVisionModelWithProjection``
    (``vision_model``), open_clip CLIP models (``visual``) or a timm
    ``VisionTransformer`` (the CLIP layout, ``pre_norm=True``, with the
    projection as its head). The tokens, blocks and attention probabilities are
    the tower's, read by the tower's own family; the output explained is the
    classifier's logit of the target prompt, so the gradient-weighted methods
    differentiate ``scale * cos(image, prompt)``.

    For the relevance methods the head (:meth:`parts`) is the tower's final norm
    on the class token, its projection (Hugging Face ``visual_projection``,
    open_clip ``proj``, timm ``head``), the L2 normalisation and the linear map
    ``scale * text_embeddings`` (the normalised text embeddings, one row per
    prompt). The L2 normalisation takes the LayerNorm rule: ConservativeLRP and
    AttnLRP treat the norm ``||x||`` as a constant, under which each element's
    relevance passes on unchanged, which is also what LXT's identity rule on
    ``F.normalize`` does; Chefer's rules (TransformerAttribution, PartialLRP,
    FullLRP) pass relevance through it as through a LayerNorm, and take their
    linear rule at the projection and the text matrix. FullLRP refuses CLIP
    towers, whose ``ln_pre`` stands between the embeddings and block 0. SigLIP
    towers read the image through an attention-pooling head, not a class token,
    and are refused by the attention methods too.
    """

    model_classes = (("captum_saco.models.zero_shot", "ZeroShotClassifier"),)
    description = (
        "captum_saco.models.ZeroShotClassifier over a class-token CLIP image tower "
        "(Hugging Face CLIPModel and CLIPVisionModelWithProjection, open_clip CLIP, "
        "timm VisionTransformer with pre_norm)"
    )

    def __init__(self, model: nn.Module) -> None:
        from captum_saco.attr._core.families import FAMILIES, _is_member

        super().__init__(model)
        for path in _TOWER_PATHS:
            try:
                tower = model.get_submodule(path)
            except AttributeError:
                continue
            for family in (HuggingFaceClipVisionAdapter, OpenClipVisionAdapter, *FAMILIES):
                if family is not ZeroShotAdapter and _is_member(tower, family):
                    self.tower_path = path
                    if family is HuggingFaceClipVisionAdapter:  # the projection sits beside it
                        projection = getattr(model.model, "visual_projection", None)
                        self.tower: ViTAdapter = family(tower, projection)
                    else:
                        self.tower = family(tower)
                    self.num_prefix_tokens = self.tower.num_prefix_tokens
                    return
        raise _unsupported(
            model,
            f"the image tower of this ZeroShotClassifier ({type(model.model).__name__}) is not "
            "a supported class-token ViT (SigLIP towers pool with an attention head)",
        )

    def blocks(self) -> List[nn.Module]:
        return self.tower.blocks()

    def patch_embedding(self) -> nn.Module:
        return self.tower.patch_embedding()

    def reads_class_token(self) -> bool:
        return self.tower.reads_class_token()

    def readout(self, num_tokens: int) -> Tensor:
        return self.tower.readout(num_tokens)

    def embedding_path(self) -> Dict[str, str]:
        return {
            f"{self.tower_path}.{name}": rule for name, rule in self.tower.embedding_path().items()
        }

    def prefix_tokens(self) -> Tensor:
        return self.tower.prefix_tokens()

    def attention_sources(self) -> List[Tuple[nn.Module, Callable[[object], Tensor]]]:
        return self.tower.attention_sources()

    @contextmanager
    def attention_mode(self) -> Iterator[None]:
        with self.tower.attention_mode():
            yield

    def parts(self) -> ViTParts:
        """The tower's parts, whose head (the projection to the image embedding)
        becomes the projection of the zero-shot head, followed by the L2
        normalisation and ``LinearMap(scale * text_embeddings, bias)``."""
        parts = self.tower.parts()
        if len(parts.heads) != 1 or parts.heads[0].projection is not None:
            raise _inexpressible(self.model, "an image tower with several heads")
        scale, bias = self.model.logit_scale_and_bias()
        text = self.model.text_embeddings
        classifier = LinearMap(
            scale.detach() * text,
            None if bias is None else bias.detach().expand(text.shape[0]),
        )
        head = replace(parts.heads[0], projection=parts.heads[0].classifier, classifier=classifier)
        return replace(parts, heads=[head])
