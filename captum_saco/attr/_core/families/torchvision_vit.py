"""The family of torchvision ``VisionTransformer``."""

from contextlib import contextmanager
from typing import Callable, ContextManager, Dict, Iterator, List, Optional, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from captum_saco.attr._core.families.base import (
    BlockParts,
    HeadParts,
    ViTAdapter,
    ViTParts,
    _inexpressible,
    _joined,
    _second,
    _unsupported,
)


class TorchvisionViTAdapter(ViTAdapter):
    """torchvision ``VisionTransformer``.

    Its blocks call ``nn.MultiheadAttention`` with ``need_weights=False``, and the
    weights that module can return are a copy outside the autograd graph. For the
    call, each attention module's ``forward`` is replaced on the instance by the
    explicit computation from its own ``in_proj``/``out_proj`` weights, which returns
    the probabilities it used; the original ``forward`` is restored afterwards.
    """

    model_classes = (("torchvision.models.vision_transformer", "VisionTransformer"),)
    description = "torchvision VisionTransformer"

    num_prefix_tokens = 1

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        for index, block in enumerate(model.encoder.layers):
            mha = block.self_attention
            if not (
                mha.batch_first
                and mha._qkv_same_embed_dim
                and mha.bias_k is None
                and not mha.add_zero_attn
            ):
                raise _unsupported(
                    model,
                    f"block {index} uses a MultiheadAttention configuration other than "
                    "torchvision's (batch_first, packed in_proj, no bias_k/bias_v, no zero "
                    "attention)",
                )

    def blocks(self) -> List[nn.Module]:
        return list(self.model.encoder.layers)

    def patch_embedding(self) -> nn.Module:
        return self.model.conv_proj

    def embedding_path(self) -> Dict[str, str]:
        return {"conv_proj": "linear", "encoder.dropout": "identity"}

    def prefix_tokens(self) -> Tensor:
        return _joined([self.model.class_token])

    def attention_sources(self) -> List[Tuple[nn.Module, Callable[[object], Tensor]]]:
        return [(block.self_attention, _second) for block in self.model.encoder.layers]

    def attention_mode(self) -> ContextManager[None]:
        return explicit_attention([block.self_attention for block in self.model.encoder.layers])

    def parts(self) -> ViTParts:
        model = self.model
        if [name for name, _ in model.heads.named_children()] != ["head"]:
            raise _inexpressible(model, "a pre-logits layer in its heads (representation_size)")
        blocks = []
        for block in model.encoder.layers:
            mha = block.self_attention
            fc1, act, _, fc2, _ = block.mlp
            blocks.append(
                BlockParts(
                    norm1=block.ln_1,
                    qkv_weight=mha.in_proj_weight,
                    qkv_bias=mha.in_proj_bias,
                    num_heads=mha.num_heads,
                    proj=mha.out_proj,
                    norm2=block.ln_2,
                    fc1=fc1,
                    act=act,
                    fc2=fc2,
                )
            )
        return ViTParts(
            blocks=blocks,
            norm=model.encoder.ln,
            heads=[HeadParts((0,), model.heads.head)],
            num_prefix_tokens=self.num_prefix_tokens,
        )


@contextmanager
def explicit_attention(modules: List[nn.MultiheadAttention]) -> Iterator[None]:
    """Each ``nn.MultiheadAttention`` of ``modules`` computing its self-attention
    step by step (:func:`_explicit_attention`) for the duration of the block;
    the instances' own ``forward`` restored afterwards, also on exceptions."""
    saved = [module.__dict__.get("forward") for module in modules]
    try:
        for module in modules:
            module.forward = _explicit_attention(module)
        yield
    finally:
        for module, forward in zip(modules, saved):
            if forward is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = forward


def _explicit_attention(mha: nn.MultiheadAttention) -> Callable[..., Tuple[Tensor, Tensor]]:
    """Self-attention of ``mha`` computed step by step; returns the output and the
    per-head probabilities ``(N, heads, T, T)`` it used."""

    def forward(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Optional[Tensor] = None,
        need_weights: bool = True,
        attn_mask: Optional[Tensor] = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> Tuple[Tensor, Tensor]:
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            raise ValueError("attention masks are not supported while attributing")
        if not (query is key and key is value):
            raise ValueError("only self-attention (query is key is value) is supported")
        n, t, d = query.shape
        heads = mha.num_heads
        q, k, v = (
            F.linear(query, mha.in_proj_weight, mha.in_proj_bias)
            .reshape(n, t, 3, heads, d // heads)
            .permute(2, 0, 3, 1, 4)
        )
        probs = ((q * (d // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        probs = F.dropout(probs, p=mha.dropout, training=mha.training)
        out = (probs @ v).transpose(1, 2).reshape(n, t, d)
        return mha.out_proj(out), probs

    return forward
