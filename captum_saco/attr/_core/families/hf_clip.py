"""The family of Hugging Face CLIP image towers (``CLIPVisionModel``, the
``vision_model`` of ``CLIPModel`` and ``CLIPVisionModelWithProjection``) and of
``CLIPForImageClassification``."""

from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Type

from torch import Tensor, nn

from captum_saco.attr._core.families.base import (
    BlockParts,
    HeadParts,
    TowerAdapter,
    ViTAdapter,
    ViTParts,
    _inexpressible,
    _joined,
    _second,
    mean_readout,
)
from captum_saco.attr._core.families.hf_vit import HuggingFaceViTAdapter, joined_qkv


class ClipStyleTowerAdapter(ViTAdapter):
    """What the Hugging Face CLIP and SigLIP image towers share: the patch embedding
    at ``embeddings.patch_embedding``, pre-norm ``encoder.layers`` whose
    ``self_attn`` returns its probabilities once the attention implementation is
    switched to ``eager`` for the call (every configuration restored afterwards,
    as for Hugging Face ViT)."""

    def blocks(self) -> List[nn.Module]:
        return list(self.model.encoder.layers)

    def patch_embedding(self) -> nn.Module:
        return self.model.embeddings.patch_embedding

    def attention_sources(self) -> List[Tuple[nn.Module, Callable[[object], Tensor]]]:
        return [(layer.self_attn, _second) for layer in self.blocks()]

    @contextmanager
    def attention_mode(self) -> Iterator[None]:
        with HuggingFaceViTAdapter.attention_mode(self):  # the same switch to eager
            yield


class HuggingFaceClipVisionAdapter(ClipStyleTowerAdapter):
    """Hugging Face ``CLIPVisionModel`` (transformers >= 5): patch embedding, class and
    position embeddings, ``pre_layrnorm``, pre-norm ``encoder.layers``,
    ``post_layernorm`` on the class token (then ``visual_projection`` in the
    models that hold it).

    As for Hugging Face ViT, the attention implementation is switched to
    ``eager`` for the call (every configuration restored afterwards), so that
    each ``self_attn`` returns its probabilities.

    The tower explains a zero-shot classifier (see
    :class:`captum_saco.models.ZeroShotClassifier`) or, through
    :class:`HuggingFaceClipClassifierAdapter`, ``CLIPForImageClassification``;
    it is not a family of its own, as its output is an embedding, not class
    scores.

    Args:
        model (nn.Module): the tower (``vision_model`` of the CLIP model).
        projection (nn.Linear, optional): the ``visual_projection`` of the model
            holding the tower, the head of :meth:`parts`. Default: None (the
            relevance methods then refuse the tower).
    """

    model_classes = (("transformers.models.clip.modeling_clip", "CLIPVisionModel"),)
    description = "Hugging Face CLIP image towers (CLIPModel, CLIPVisionModelWithProjection)"

    num_prefix_tokens = 1

    def __init__(self, model: nn.Module, projection: Optional[nn.Linear] = None) -> None:
        super().__init__(model)
        self.projection = projection

    def embedding_path(self) -> Dict[str, str]:
        return {
            "embeddings.patch_embedding": "linear",
            "embeddings.position_embedding": "constant",
            "pre_layrnorm": "layernorm",
        }

    def prefix_tokens(self) -> Tensor:
        return _joined([self.model.embeddings.class_embedding.view(1, 1, -1)])

    def parts(self) -> ViTParts:
        """The blocks, ``post_layernorm`` and the projection on the class token: the
        tower's image embedding (no class scores: see :class:`ZeroShotAdapter`)."""
        if self.projection is None:
            raise _inexpressible(self.model, "no visual_projection to its image embedding")
        return ViTParts(
            blocks=[clip_layer_parts(self.model, layer) for layer in self.blocks()],
            norm=self.model.post_layernorm,
            heads=[HeadParts((0,), self.projection)],
            num_prefix_tokens=self.num_prefix_tokens,
        )


def clip_layer_parts(model: nn.Module, layer: nn.Module) -> BlockParts:
    """One CLIP-style encoder layer (``layer_norm1``, ``self_attn`` with
    ``q_proj``/``k_proj``/``v_proj``/``out_proj``, ``layer_norm2``,
    ``mlp.fc1``/``activation_fn``/``fc2``; CLIP and SigLIP) as a :class:`BlockParts`
    of ``model``."""
    attn = layer.self_attn
    qkv_weight, qkv_bias = joined_qkv(model, attn.q_proj, attn.k_proj, attn.v_proj)
    return BlockParts(
        norm1=layer.layer_norm1,
        qkv_weight=qkv_weight,
        qkv_bias=qkv_bias,
        num_heads=attn.num_heads,
        proj=attn.out_proj,
        norm2=layer.layer_norm2,
        fc1=layer.mlp.fc1,
        act=layer.mlp.activation_fn,
        fc2=layer.mlp.fc2,
    )


class HuggingFaceClipClassifierAdapter(TowerAdapter):
    """Hugging Face ``CLIPForImageClassification``: its classifier reads the mean of
    the patch tokens leaving the last encoder layer (the tokens after the class
    token, not normalised: ``post_layernorm`` acts on the class token only, which
    this head does not read), so its read-out vector is the uniform average over
    the patch tokens and its canonical parts have no final norm. The tower is
    :class:`HuggingFaceClipVisionAdapter`'s (``vision_model``)."""

    model_classes = (("transformers.models.clip.modeling_clip", "CLIPForImageClassification"),)
    description = "Hugging Face CLIPForImageClassification (mean of the patch tokens)"

    #: the adapter of the ``vision_model`` tower
    tower_family: Type[ViTAdapter] = HuggingFaceClipVisionAdapter

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, "vision_model", self.tower_family(model.vision_model))

    def reads_class_token(self) -> bool:
        return False

    def readout(self, num_tokens: int) -> Tensor:
        """The uniform average over the tokens after the prefix tokens, the tokens
        the classifier averages."""
        return mean_readout(num_tokens, self.num_prefix_tokens)

    def readout_source(self) -> None:
        return None  # the classifier does not read the tower's pooling head

    def final_norm(self) -> nn.Module:
        """The norm between the last encoder layer and the mean (none for CLIP)."""
        return nn.Identity()

    def parts(self) -> ViTParts:
        model = self.model
        if not isinstance(model.classifier, nn.Linear):
            raise _inexpressible(model, "no linear classifier head (num_labels=0?)")
        head = HeadParts.class_token_or_mean(
            model.classifier, False, self.num_prefix_tokens, nn.Identity()
        )
        return ViTParts(
            blocks=[clip_layer_parts(model, layer) for layer in self.blocks()],
            norm=self.final_norm(),
            heads=[head],
            num_prefix_tokens=self.num_prefix_tokens,
        )
