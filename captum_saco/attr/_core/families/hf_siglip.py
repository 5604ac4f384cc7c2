"""The family of Hugging Face SigLIP image towers (``SiglipVisionModel``, the
``vision_model`` of ``SiglipModel``) and of ``SiglipForImageClassification``."""

from typing import Callable, Dict, Optional, Tuple

from torch import Tensor, nn

from captum_saco.attr._core.families.base import (
    AttentionPool,
    HeadParts,
    LinearMap,
    ViTParts,
    _inexpressible,
    _inexpressible_pool,
)
from captum_saco.attr._core.families.hf_clip import (
    ClipStyleTowerAdapter,
    HuggingFaceClipClassifierAdapter,
    clip_layer_parts,
)


class HuggingFaceSiglipVisionAdapter(ClipStyleTowerAdapter):
    """Hugging Face ``SiglipVisionModel`` (transformers >= 5): patch embedding plus
    position embedding (no class token), pre-norm ``encoder.layers``,
    ``post_layernorm`` on every token, then the attention-pooling (MAP) ``head``:
    a learned probe attends to the tokens through an ``nn.MultiheadAttention``.

    Its read-out vector is that head's attention over the tokens, averaged over
    its heads (the probabilities ``nn.MultiheadAttention`` returns with its
    default ``need_weights=True``), per example (:meth:`readout_source`). The
    attention implementation of the blocks is switched to ``eager`` for the call,
    as for Hugging Face ViT. The tower explains a zero-shot classifier (see
    :class:`captum_saco.models.ZeroShotClassifier`) or, through
    :class:`HuggingFaceSiglipClassifierAdapter`, ``SiglipForImageClassification``.
    For the relevance methods the pooling head is an attention layer (see
    :meth:`parts`).
    """

    model_classes = (("transformers.models.siglip.modeling_siglip", "SiglipVisionModel"),)
    description = "Hugging Face SigLIP image towers (SiglipModel)"

    num_prefix_tokens = 0

    def reads_class_token(self) -> bool:
        return False

    def readout(self, num_tokens: int) -> Tensor:
        raise ValueError(
            f"model: {type(self.model).__name__} has no pooling head "
            "(vision_use_head=False), so nothing reads its tokens"
        )

    def readout_source(self) -> Optional[Tuple[nn.Module, Callable[[object], Tensor]]]:
        """The pooling head's ``nn.MultiheadAttention``, whose second output is its
        probe's attention over the tokens, averaged over heads, ``(N, 1, T)``."""
        if not self.model.use_head:
            return None
        return self.model.head.attention, lambda output: output[1][:, 0]  # type: ignore[index]

    def embedding_path(self) -> Dict[str, str]:
        return {
            "embeddings.patch_embedding": "linear",
            "embeddings.position_embedding": "constant",
        }

    def prefix_tokens(self) -> Tensor:
        weight = self.model.embeddings.patch_embedding.weight
        return weight.new_zeros(1, 0, weight.shape[0]).detach()

    def parts(self) -> ViTParts:
        """The layers, ``post_layernorm`` and the pooling head as an
        :class:`~captum_saco.attr._core.families.base.AttentionPool` (the probe the
        latent query, the ``nn.MultiheadAttention``'s input projection split into
        the query's and the keys' and values', its ``out_proj``, then the
        ``layernorm`` and the MLP added residually), whose latent is the output: the
        tower's image embedding (no class scores: see :class:`ZeroShotAdapter`)."""
        model = self.model
        if not model.use_head:
            raise _inexpressible(model, "no pooling head (vision_use_head=False)")
        head = model.head
        attention = head.attention
        if (
            not attention._qkv_same_embed_dim
            or attention.bias_k is not None
            or attention.add_zero_attn
            or not attention.batch_first
        ):
            raise _inexpressible_pool(
                model, "an nn.MultiheadAttention with key/value widths of their own, "
                "key/value biases or a zero attention"
            )  # fmt: skip
        dim = attention.embed_dim
        weight, bias = attention.in_proj_weight, attention.in_proj_bias
        pool = AttentionPool(
            latent=head.probe[0],
            q=LinearMap(weight[:dim], None if bias is None else bias[:dim]),
            kv_weight=weight[dim:],
            kv_bias=None if bias is None else bias[dim:],
            num_heads=attention.num_heads,
            proj=attention.out_proj,
            norm=head.layernorm,
            fc1=head.mlp.fc1,
            act=head.mlp.activation_fn,
            fc2=head.mlp.fc2,
        )
        return ViTParts(
            blocks=[clip_layer_parts(model, layer) for layer in self.blocks()],
            norm=model.post_layernorm,
            heads=[HeadParts((0,), None, pool=pool)],
            num_prefix_tokens=self.num_prefix_tokens,
        )


class HuggingFaceSiglipClassifierAdapter(HuggingFaceClipClassifierAdapter):
    """Hugging Face ``SiglipForImageClassification``: its classifier reads the mean
    of all tokens after ``post_layernorm`` (SigLIP has no class token; the
    tower's attention-pooling head runs but the classifier does not read it), so
    its read-out vector is the uniform average over the tokens, and its canonical
    parts end with ``post_layernorm``, the mean and the classifier."""

    model_classes = (
        ("transformers.models.siglip.modeling_siglip", "SiglipForImageClassification"),
    )
    description = "Hugging Face SiglipForImageClassification (mean of the tokens)"
    tower_family = HuggingFaceSiglipVisionAdapter

    def final_norm(self) -> nn.Module:
        return self.model.vision_model.post_layernorm
