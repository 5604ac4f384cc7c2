"""The family of open_clip image towers (``model.visual`` of
``open_clip.create_model_and_transforms``), the OpenAI CLIP layout."""

from typing import Callable, ContextManager, Dict, List, Tuple

from torch import Tensor, nn

from captum_saco.attr._core.families.base import (
    BlockParts,
    HeadParts,
    LinearMap,
    ViTAdapter,
    ViTParts,
    _inexpressible,
    _joined,
    _second,
    _unsupported,
)
from captum_saco.attr._core.families.torchvision_vit import explicit_attention


class OpenClipVisionAdapter(ViTAdapter):
    """open_clip ``VisionTransformer`` with class-token pooling (``pool_type='tok'``,
    no attention pooler): ``conv1``, class and position embeddings, ``ln_pre``,
    pre-norm blocks of ``nn.MultiheadAttention``, ``ln_post`` on the class token,
    then the projection ``proj``.

    Its blocks call ``nn.MultiheadAttention`` with ``need_weights=False``: for the
    call each attention module's ``forward`` is replaced on the instance by the
    explicit computation of torchvision's family, which returns the
    probabilities it used; the original ``forward`` is restored afterwards.

    The tower explains a zero-shot classifier (see
    :class:`captum_saco.models.ZeroShotClassifier`); it is not a family of its
    own, as its output is an embedding, not class scores.
    """

    model_classes = (("open_clip.transformer", "VisionTransformer"),)
    description = "open_clip VisionTransformer image towers with class-token pooling"

    num_prefix_tokens = 1

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        if model.attn_pool is not None or model.pool_type != "tok" or model.final_ln_after_pool:
            raise _unsupported(
                model,
                f"open_clip VisionTransformer with pool_type={model.pool_type!r}, an attention "
                "pooler or final_ln_after_pool does not embed the image from the class token, "
                "so its class-token attention row does not explain the embedding",
            )
        for index, block in enumerate(model.transformer.resblocks):
            mha = getattr(block, "attn", None)
            if not (
                isinstance(mha, nn.MultiheadAttention)
                and mha.batch_first
                and mha._qkv_same_embed_dim
                and mha.bias_k is None
                and not mha.add_zero_attn
            ):
                raise _unsupported(
                    model,
                    f"block {index} of the open_clip tower has no batch-first, packed "
                    "nn.MultiheadAttention at .attn",
                )

    def blocks(self) -> List[nn.Module]:
        return list(self.model.transformer.resblocks)

    def patch_embedding(self) -> nn.Module:
        return self.model.conv1

    def embedding_path(self) -> Dict[str, str]:
        return {"conv1": "linear", "patch_dropout": "identity", "ln_pre": "layernorm"}

    def prefix_tokens(self) -> Tensor:
        return _joined([self.model.class_embedding.view(1, 1, -1)])

    def attention_sources(self) -> List[Tuple[nn.Module, Callable[[object], Tensor]]]:
        return [(block.attn, _second) for block in self.blocks()]

    def attention_mode(self) -> ContextManager[None]:
        return explicit_attention([block.attn for block in self.blocks()])

    def parts(self) -> ViTParts:
        """The blocks, ``ln_post`` and the projection ``proj`` on the class token: the
        tower's image embedding (no class scores: see :class:`ZeroShotAdapter`)."""
        from open_clip.transformer import LayerScale

        model = self.model
        if model.proj is None:
            raise _inexpressible(model, "no projection (proj=None) to its image embedding")
        blocks = []
        for block in self.blocks():
            mha = block.attn
            blocks.append(
                BlockParts(
                    norm1=block.ln_1,
                    qkv_weight=mha.in_proj_weight,
                    qkv_bias=mha.in_proj_bias,
                    num_heads=mha.num_heads,
                    proj=mha.out_proj,
                    norm2=block.ln_2,
                    fc1=block.mlp.c_fc,
                    act=block.mlp.gelu,
                    fc2=block.mlp.c_proj,
                    ls1=block.ls_1.gamma if isinstance(block.ls_1, LayerScale) else None,
                    ls2=block.ls_2.gamma if isinstance(block.ls_2, LayerScale) else None,
                )
            )
        return ViTParts(
            blocks=blocks,
            norm=model.ln_post,
            heads=[HeadParts((0,), LinearMap(model.proj.t()))],
            num_prefix_tokens=self.num_prefix_tokens,
        )
