"""The family of Hugging Face CLIP image towers (``CLIPVisionModel``, the
``vision_model`` of ``CLIPModel`` and ``CLIPVisionModelWithProjection``)."""

from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from torch import Tensor, nn

from captum_saco.attr._core.families.base import (
    BlockParts,
    HeadParts,
    ViTAdapter,
    ViTParts,
    _inexpressible,
    _joined,
    _second,
)
from captum_saco.attr._core.families.hf_vit import HuggingFaceViTAdapter, joined_qkv


class HuggingFaceClipVisionAdapter(ViTAdapter):
    """Hugging Face ``CLIPVisionModel`` (transformers >= 5): patch embedding, class and
    position embeddings, ``pre_layrnorm``, pre-norm ``encoder.layers``,
    ``post_layernorm`` on the class token (then ``visual_projection`` in the
    models that hold it).

    As for Hugging Face ViT, the attention implementation is switched to
    ``eager`` for the call (every configuration restored afterwards), so that
    each ``self_attn`` returns its probabilities.

    The tower explains a zero-shot classifier (see
    :class:`captum_saco.models.ZeroShotClassifier`); it is not a family of its
    own, as its output is an embedding, not class scores.

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

    def blocks(self) -> List[nn.Module]:
        return list(self.model.encoder.layers)

    def patch_embedding(self) -> nn.Module:
        return self.model.embeddings.patch_embedding

    def embedding_path(self) -> Dict[str, str]:
        return {
            "embeddings.patch_embedding": "linear",
            "embeddings.position_embedding": "constant",
            "pre_layrnorm": "layernorm",
        }

    def prefix_tokens(self) -> Tensor:
        return _joined([self.model.embeddings.class_embedding.view(1, 1, -1)])

    def attention_sources(self) -> List[Tuple[nn.Module, Callable[[object], Tensor]]]:
        return [(layer.self_attn, _second) for layer in self.blocks()]

    @contextmanager
    def attention_mode(self) -> Iterator[None]:
        with HuggingFaceViTAdapter.attention_mode(self):  # the same switch to eager
            yield

    def parts(self) -> ViTParts:
        """The blocks, ``post_layernorm`` and the projection on the class token: the
        tower's image embedding (no class scores: see :class:`ZeroShotAdapter`)."""
        if self.projection is None:
            raise _inexpressible(self.model, "no visual_projection to its image embedding")
        blocks = []
        for layer in self.blocks():
            attn = layer.self_attn
            qkv_weight, qkv_bias = joined_qkv(self.model, attn.q_proj, attn.k_proj, attn.v_proj)
            blocks.append(
                BlockParts(
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
            )
        return ViTParts(
            blocks=blocks,
            norm=self.model.post_layernorm,
            heads=[HeadParts((0,), self.projection)],
            num_prefix_tokens=self.num_prefix_tokens,
        )
