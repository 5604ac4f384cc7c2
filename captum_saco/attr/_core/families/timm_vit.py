"""The family of timm ``VisionTransformer``."""

from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_saco.attr._core.families.base import (
    BlockParts,
    ViTAdapter,
    ViTParts,
    _check_square_attention,
    _identity,
    _inexpressible,
    _joined,
    _unsupported,
    mean_readout,
)

#: the timm poolings with a read-out vector (see :meth:`TimmViTAdapter.readout`)
_POOLS = ("token", "avg", "map")


class TimmViTAdapter(ViTAdapter):
    """timm ``VisionTransformer`` (and subclasses such as ``VisionTransformerDistilled``).

    Fused attention (``scaled_dot_product_attention``) never materialises the
    probabilities, so each ``Attention.fused_attn`` is switched off for the call;
    the probabilities are then the output of ``attn.attn_drop``.

    Between the patch embedding's convolution and block 0 the tokens may pass a
    norm inside the patch embedding (``embed_norm_layer``, ``patch_embed.norm``)
    and a norm before the first block (``pre_norm=True``, the CLIP layout,
    ``norm_pre``): both are :meth:`embedding_norms`. Without a final norm
    (``final_norm=False``) ``norm`` is an ``nn.Identity``.

    With ``global_pool='map'`` (SigLIP) the head is an attention pool
    (``attn_pool``, timm ``AttentionPoolLatent``): a learned latent query attends
    to the tokens leaving the last block (after the prefix tokens, unless
    ``pool_include_prefix``). Its read-out is the pool's attention over the
    tokens, per example (:meth:`readout_source`); its fused attention is switched
    off for the call too. The relevance methods refuse it.
    """

    model_classes = (("timm.models.vision_transformer", "VisionTransformer"),)
    description = (
        "timm VisionTransformer with class-token, mean or attention pooling "
        "(global_pool='token', 'avg' or 'map'; DeiT distilled models, register tokens, "
        "pre_norm, embed_norm_layer and final_norm=False included)"
    )

    def __init__(self, model: nn.Module) -> None:
        from timm.layers import AttentionPoolLatent
        from timm.models.vision_transformer import Attention

        super().__init__(model)
        pool = getattr(model, "attn_pool", None)
        map_pool = isinstance(pool, AttentionPoolLatent) and pool.pool in ("token", "avg")
        if model.global_pool not in _POOLS or (pool is not None and not map_pool):
            raise _unsupported(
                model,
                f"timm VisionTransformer with global_pool={model.global_pool!r} reads its "
                "tokens in a way no read-out vector over the tokens is defined for here; "
                "global_pool='token' (class token), 'avg' (mean of the patch tokens) and "
                "'map' (attention pooling) are supported",
            )
        if model.global_pool == "token" and model.cls_token is None:
            raise _unsupported(model, "timm VisionTransformer without a class token")
        for index, block in enumerate(model.blocks):
            if not isinstance(getattr(block, "attn", None), Attention):
                raise _unsupported(
                    model,
                    f"block {index} ({type(block).__name__}) has no timm "
                    "vision_transformer.Attention module at .attn",
                )
        self.num_prefix_tokens = int(model.num_prefix_tokens)

    def blocks(self) -> List[nn.Module]:
        return list(self.model.blocks)

    def patch_embedding(self) -> nn.Module:
        return self.model.patch_embed.proj

    def reads_class_token(self) -> bool:
        return self.model.global_pool == "token"

    def readout(self, num_tokens: int) -> Tensor:
        """``global_pool='token'``: the class token; ``'avg'``: the uniform average
        over the tokens after the prefix tokens (class and register tokens), the
        tokens timm averages (``'map'``: see :meth:`readout_source`)."""
        if self.reads_class_token():
            return super().readout(num_tokens)
        return mean_readout(num_tokens, self.num_prefix_tokens)

    def readout_source(self) -> Optional[Tuple[nn.Module, Callable[[object], Tensor]]]:
        """``global_pool='map'``: the attention pool's probabilities
        ``softmax(q k^T / sqrt(head_dim))`` of its latent queries over the tokens,
        averaged over its heads and over the latent queries it pools (the first for
        its ``pool='token'``, all for ``'avg'``); zero on the prefix tokens it does
        not see. They are read from the pool's normalised keys (``k_norm``'s output)
        and its latent queries, as its unfused forward computes them."""
        pool = self.model.attn_pool
        if pool is None:
            return None
        skipped = 0 if self.model.pool_include_prefix else self.num_prefix_tokens

        def read(keys: Tensor) -> Tensor:  # (N, heads, T', head_dim)
            latent = pool.q(pool.latent.to(keys.dtype))
            queries = pool.q_norm(latent.reshape(1, pool.latent_len, pool.num_heads, -1))
            scores = (queries.transpose(1, 2) * pool.scale) @ keys.transpose(-2, -1)
            probabilities = scores.softmax(dim=-1).mean(dim=1)  # (N, latents, T')
            pooled = probabilities[:, 0] if pool.pool == "token" else probabilities.mean(dim=1)
            return F.pad(pooled, (skipped, 0))

        return pool.k_norm, read

    def embedding_path(self) -> Dict[str, str]:
        return {
            "patch_embed.proj": "linear",
            "patch_embed.norm": "layernorm",
            "pos_drop": "identity",
            "patch_drop": "identity",
            "norm_pre": "layernorm",
        }

    def prefix_tokens(self) -> Tensor:
        norms = self.embedding_norms()
        if norms:
            raise ValueError(
                f"model: the tokens entering block 0 are not the patch and prefix "
                f"embeddings plus the position embedding: this model applies {norms[0][0]} "
                "in between"
            )
        model = self.model
        tokens = [model.cls_token, getattr(model, "dist_token", None), model.reg_token]
        if all(token is None for token in tokens):
            return model.patch_embed.proj.weight.new_zeros(1, 0, model.embed_dim).detach()
        return _joined(tokens)

    def attention_sources(self) -> List[Tuple[nn.Module, Callable[[object], Tensor]]]:
        return [(block.attn.attn_drop, _identity) for block in self.model.blocks]

    @contextmanager
    def attention_mode(self) -> Iterator[None]:
        attentions = [block.attn for block in self.model.blocks]
        if self.model.attn_pool is not None:
            attentions.append(self.model.attn_pool)
        saved = [attn.fused_attn for attn in attentions]
        try:
            for attn in attentions:
                attn.fused_attn = False
            yield
        finally:
            for attn, fused in zip(attentions, saved):
                attn.fused_attn = fused

    def parts(self) -> ViTParts:
        from timm.layers import LayerScale, Mlp

        model = self.model
        if self.reads_class_token() and not isinstance(model.fc_norm, nn.Identity):
            raise _inexpressible(model, "a norm after pooling (fc_norm)")
        if not isinstance(model.fc_norm, (nn.Identity, nn.LayerNorm)):
            raise _inexpressible(model, f"a {type(model.fc_norm).__name__} after pooling")
        blocks = []
        for block in model.blocks:
            attn = block.attn
            if not (isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity)):
                raise _inexpressible(model, "query/key normalisation (qk_norm)")
            # ``norm`` (scale_norm) and ``gate`` exist only in recent timm releases
            if not isinstance(getattr(attn, "norm", nn.Identity()), nn.Identity) or (
                getattr(attn, "gate", None) is not None
            ):
                raise _inexpressible(model, "a normalised or gated attention output")
            _check_square_attention(model, attn.qkv.in_features, attn.num_heads * attn.head_dim)
            if not isinstance(block.mlp, Mlp) or not isinstance(block.mlp.norm, nn.Identity):
                raise _inexpressible(model, f"an MLP of type {type(block.mlp).__name__}")
            for norm in (block.norm1, block.norm2):
                if not isinstance(norm, nn.LayerNorm):
                    raise _inexpressible(model, f"a {type(norm).__name__} block norm")
            blocks.append(
                BlockParts(
                    norm1=block.norm1,
                    qkv_weight=attn.qkv.weight,
                    qkv_bias=attn.qkv.bias,
                    num_heads=attn.num_heads,
                    proj=attn.proj,
                    norm2=block.norm2,
                    fc1=block.mlp.fc1,
                    act=block.mlp.act,
                    fc2=block.mlp.fc2,
                    ls1=block.ls1.gamma if isinstance(block.ls1, LayerScale) else None,
                    ls2=block.ls2.gamma if isinstance(block.ls2, LayerScale) else None,
                )
            )
        classifiers = [model.head] + ([model.head_dist] if hasattr(model, "head_dist") else [])
        if not all(isinstance(head, nn.Linear) for head in classifiers):
            raise _inexpressible(model, "no linear classifier head (num_classes=0?)")
        return ViTParts(
            blocks=blocks,
            norm=model.norm,
            heads=list(enumerate(classifiers)),
            num_prefix_tokens=self.num_prefix_tokens,
            mean_pooled=not self.reads_class_token(),
            fc_norm=model.fc_norm,
        )
