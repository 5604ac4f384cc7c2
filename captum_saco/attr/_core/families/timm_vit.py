"""The family of timm ``VisionTransformer``."""

from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from captum_saco.attr._core.families.base import (
    AttentionPool,
    BlockParts,
    HeadParts,
    ViTAdapter,
    ViTParts,
    _check_square_attention,
    _identity,
    _inexpressible,
    _inexpressible_pool,
    _joined,
    _unfused,
    _unsupported,
    mean_readout,
)

#: the timm poolings with a read-out vector (see :meth:`TimmViTAdapter.readout`)
_POOLS = ("token", "avg", "map")


class TimmAdapter(ViTAdapter):
    """What the timm ViT families (``VisionTransformer``, ``Eva``, ``Beit``) share:
    the blocks at ``blocks``, the patch embedding's convolution at
    ``patch_embed.proj``, class-token (``global_pool='token'``) or mean
    (``'avg'``) pooling, the prefix tokens ``cls_token``, ``dist_token`` and
    ``reg_token`` (those the model has), and the attention probabilities at each
    block's ``attn.attn_drop`` with fused attention switched off for the call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
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
        tokens timm averages."""
        if self.reads_class_token():
            return super().readout(num_tokens)
        return mean_readout(num_tokens, self.num_prefix_tokens)

    def prefix_tokens(self) -> Tensor:
        model = self.model
        tokens = [getattr(model, name, None) for name in ("cls_token", "dist_token", "reg_token")]
        if all(token is None for token in tokens):
            return model.patch_embed.proj.weight.new_zeros(1, 0, model.embed_dim).detach()
        return _joined(tokens)

    def attention_sources(self) -> List[Tuple[nn.Module, Callable[[object], Tensor]]]:
        return [(block.attn.attn_drop, _identity) for block in self.model.blocks]

    @contextmanager
    def attention_mode(self) -> Iterator[None]:
        with _unfused([block.attn for block in self.model.blocks] + self._other_attentions()):
            yield

    def _other_attentions(self) -> List[nn.Module]:
        """timm attention modules outside the blocks whose fused attention is
        switched off too (an attention-pooling head's)."""
        return []

    def _one_head_parts(self, blocks: List[BlockParts]) -> ViTParts:
        """The canonical form over ``blocks`` of a model whose linear ``head`` reads
        the class token or the mean of the patch tokens, through ``fc_norm``."""
        model = self.model
        if not isinstance(model.head, nn.Linear):
            raise _inexpressible(model, "no linear classifier head (num_classes=0?)")
        fc_norm = head_norm(model, model.fc_norm, "the norm after pooling")
        head = HeadParts.class_token_or_mean(
            model.head, self.reads_class_token(), self.num_prefix_tokens, fc_norm
        )
        return ViTParts(
            blocks=blocks,
            norm=head_norm(model, model.norm, "the final norm"),
            heads=[head],
            num_prefix_tokens=self.num_prefix_tokens,
        )


class TimmViTAdapter(TimmAdapter):
    """timm ``VisionTransformer`` (and subclasses such as ``VisionTransformerDistilled``).

    Fused attention (``scaled_dot_product_attention``) never materialises the
    probabilities, so each ``Attention.fused_attn`` is switched off for the call;
    the probabilities are then the output of ``attn.attn_drop``.

    Between the patch embedding's convolution and block 0 the tokens may pass a
    norm inside the patch embedding (``embed_norm_layer``, ``patch_embed.norm``)
    and a norm before the first block (``pre_norm=True``, the CLIP layout,
    ``norm_pre``): both are :meth:`embedding_norms`. Without a final norm
    (``final_norm=False``) ``norm`` is an ``nn.Identity``.

    The canonical form (:meth:`parts`) takes the query/key norms (``qk_norm``),
    the attention output's norm (``scale_attn_norm``), SwiGLU and GluMlp MLPs and
    the MLP's norm (``scale_mlp_norm``), LayerNorm or RmsNorm; blocks other than
    timm's pre-norm ``Block`` (``ResPostBlock``, parallel blocks) are refused by
    name.

    With ``global_pool='map'`` (SigLIP) the head is an attention pool
    (``attn_pool``, timm ``AttentionPoolLatent``): a learned latent query attends
    to the tokens leaving the last block (after the prefix tokens, unless
    ``pool_include_prefix``). Its read-out is the pool's attention over the
    tokens, per example (:meth:`readout_source`); its fused attention is switched
    off for the call too. In the canonical form it is the head's
    :class:`~captum_saco.attr._core.families.base.AttentionPool`, whose latent
    the head reads (the first for the pool's ``pool='token'``, their mean for
    ``'avg'``).
    """

    model_classes = (("timm.models.vision_transformer", "VisionTransformer"),)
    description = (
        "timm VisionTransformer with class-token, mean or attention pooling "
        "(global_pool='token', 'avg' or 'map'; DeiT distilled models, register tokens, "
        "pre_norm, embed_norm_layer, final_norm=False, qk_norm, SwiGLU and "
        "sub-LayerNorms included)"
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
            "patch_embed.norm": "patch_layernorm",
            "pos_drop": "identity",
            "patch_drop": "identity",
            "norm_pre": "layernorm",
        }

    def _other_attentions(self) -> List[nn.Module]:
        pool = self.model.attn_pool
        return [] if pool is None else [pool]

    def parts(self) -> ViTParts:
        from timm.layers import LayerScale
        from timm.models.vision_transformer import Block

        model = self.model
        blocks = []
        for block in model.blocks:
            attn = block.attn
            if type(block) is not Block:
                raise _inexpressible(model, f"a block of type {type(block).__name__}")
            # ``gate`` exists only in recent timm releases
            if getattr(attn, "gate", None) is not None:
                raise _inexpressible(model, "a gated attention output")
            _check_square_attention(model, attn.qkv.in_features, attn.num_heads * attn.head_dim)
            blocks.append(
                BlockParts(
                    norm1=block_norm(model, block.norm1, "norm1"),
                    qkv_weight=attn.qkv.weight,
                    qkv_bias=attn.qkv.bias,
                    num_heads=attn.num_heads,
                    proj=attn.proj,
                    norm2=block_norm(model, block.norm2, "norm2"),
                    ls1=block.ls1.gamma if isinstance(block.ls1, LayerScale) else None,
                    ls2=block.ls2.gamma if isinstance(block.ls2, LayerScale) else None,
                    q_norm=optional_norm(model, attn.q_norm, "the query norm (qk_norm)"),
                    k_norm=optional_norm(model, attn.k_norm, "the key norm (qk_norm)"),
                    attn_norm=optional_norm(
                        model, getattr(attn, "norm", nn.Identity()), "the attention output norm"
                    ),
                    **mlp_parts(model, block.mlp),
                )
            )
        classifiers = [model.head] + ([model.head_dist] if hasattr(model, "head_dist") else [])
        if not all(isinstance(head, (nn.Linear, nn.Identity)) for head in classifiers):
            raise _inexpressible(model, "a classifier head other than a Linear layer")
        # an nn.Identity head (num_classes=0, an image tower) outputs the features
        classifiers = [None if isinstance(head, nn.Identity) else head for head in classifiers]
        fc_norm = head_norm(model, model.fc_norm, "the norm after pooling")
        if self.reads_class_token():  # one head per token: class (and distillation) token
            heads = [HeadParts((i,), head, fc_norm) for i, head in enumerate(classifiers)]
        elif model.attn_pool is not None:
            pool = model.attn_pool
            reads = (0,) if pool.pool == "token" else (slice(None),)
            skip = 0 if model.pool_include_prefix else self.num_prefix_tokens
            heads = [HeadParts(reads, classifiers[0], fc_norm, pool=attention_pool(model, skip))]
        else:
            prefix = self.num_prefix_tokens
            heads = [HeadParts.class_token_or_mean(classifiers[0], False, prefix, fc_norm)]
        return ViTParts(
            blocks=blocks,
            norm=head_norm(model, model.norm, "the final norm"),
            heads=heads,
            num_prefix_tokens=self.num_prefix_tokens,
        )


def attention_pool(model: nn.Module, skip: int) -> AttentionPool:
    """The timm ``AttentionPoolLatent`` of ``model`` (``attn_pool``) as an
    :class:`AttentionPool` seeing the tokens after the first ``skip``; a pool with
    a position embedding, an attention width other than the tokens' or an MLP other
    than timm's ``Mlp`` refuses the relevance methods by name."""
    from timm.layers import Mlp

    pool = model.attn_pool
    if pool.pos_embed is not None:
        raise _inexpressible_pool(model, "a position embedding")
    if pool.kv.in_features != pool.num_heads * pool.head_dim:
        raise _inexpressible_pool(model, "an attention width other than the tokens'")
    mlp = pool.mlp
    if not isinstance(pool.proj, nn.Linear) or type(mlp) is not Mlp:
        raise _inexpressible_pool(model, "no output projection or an MLP other than timm's Mlp")
    if not isinstance(mlp.norm, nn.Identity) or not isinstance(mlp.fc1, nn.Linear):
        raise _inexpressible_pool(model, "an Mlp with a norm or convolutions")
    return AttentionPool(
        latent=pool.latent[0],
        q=None if isinstance(pool.q, nn.Identity) else pool.q,
        kv_weight=pool.kv.weight,
        kv_bias=pool.kv.bias,
        num_heads=pool.num_heads,
        proj=pool.proj,
        norm=head_norm(model, pool.norm, "the attention pool's norm"),
        fc1=mlp.fc1,
        act=mlp.act,
        fc2=mlp.fc2,
        q_norm=optional_norm(model, pool.q_norm, "the attention pool's query norm"),
        k_norm=optional_norm(model, pool.k_norm, "the attention pool's key norm"),
        skip=skip,
    )


# --- the parts shared by the timm families (ViT, Eva, BEiT) --------------------------------
def optional_norm(model: nn.Module, norm: nn.Module, where: str) -> Optional[nn.Module]:
    """``None`` for an ``nn.Identity`` (the model does not have that norm), else
    :func:`block_norm`."""
    if isinstance(norm, nn.Identity):
        return None
    return block_norm(model, norm, where)


def head_norm(model: nn.Module, norm: nn.Module, where: str) -> nn.Module:
    """:func:`optional_norm` with ``nn.Identity`` for none (the final norm and the
    norm after pooling of :class:`ViTParts`)."""
    return optional_norm(model, norm, where) or nn.Identity()


def block_norm(model: nn.Module, norm: nn.Module, where: str) -> nn.Module:
    """``norm`` if it is a LayerNorm or an ``nn.RMSNorm``, timm's ``RmsNorm`` as an
    ``nn.RMSNorm`` sharing its weight; any other module refuses the model by name."""
    from timm.layers import RmsNorm

    if isinstance(norm, (nn.LayerNorm, nn.RMSNorm)):
        return norm
    if type(norm) is RmsNorm and len(norm.normalized_shape) == 1:
        rms = nn.RMSNorm(norm.normalized_shape, norm.eps, norm.elementwise_affine, device="meta")
        if norm.weight is not None:
            rms.weight = norm.weight
        return rms
    raise _inexpressible(model, f"a {type(norm).__name__} as {where}")


def _half_of(linear: nn.Linear, second: bool) -> nn.Linear:
    """A linear layer computing the first or second half of ``linear``'s outputs,
    sharing its weights (views, not copies)."""
    rows = slice(linear.out_features // 2, None) if second else slice(0, linear.out_features // 2)
    half = nn.Linear(linear.in_features, linear.out_features // 2, linear.bias is not None, "meta")
    half.weight = nn.Parameter(linear.weight[rows], linear.weight.requires_grad)
    if linear.bias is not None:
        half.bias = nn.Parameter(linear.bias[rows], linear.bias.requires_grad)
    return half


def mlp_parts(model: nn.Module, mlp: nn.Module) -> Dict[str, Any]:
    """The MLP fields of :class:`BlockParts` (``fc1``, ``act``, ``fc2``,
    ``fc_value``, ``mlp_norm``) of a timm ``Mlp`` (``act(fc1(x))``), ``SwiGLU``
    (gate ``fc1_g``, value ``fc1_x``) or ``GluMlp`` (one ``fc1`` whose output halves
    are the gate and the value, the gate second if ``gate_last``), each with its
    optional norm before ``fc2`` (``scale_mlp``). Any other MLP refuses the model."""
    from timm.layers import GluMlp, Mlp, SwiGLU

    kind = type(mlp)
    if kind is Mlp:
        fc1, fc_value = mlp.fc1, None
    elif kind is SwiGLU:
        fc1, fc_value = mlp.fc1_g, mlp.fc1_x
    elif kind is GluMlp and isinstance(mlp.fc1, nn.Linear) and mlp.chunk_dim == -1:
        fc1, fc_value = _half_of(mlp.fc1, mlp.gate_last), _half_of(mlp.fc1, not mlp.gate_last)
    else:
        raise _inexpressible(model, f"an MLP of type {kind.__name__}")
    if not all(isinstance(fc, (nn.Linear, type(None))) for fc in (fc1, fc_value, mlp.fc2)):
        raise _inexpressible(model, f"a {kind.__name__} with convolutions")
    return dict(
        fc1=fc1,
        act=mlp.act,
        fc2=mlp.fc2,
        fc_value=fc_value,
        mlp_norm=optional_norm(model, mlp.norm, "the MLP's norm (scale_mlp)"),
    )
