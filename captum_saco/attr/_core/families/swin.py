"""Swin Transformers (timm, Hugging Face, torchvision): hierarchical models with
windowed and shifted-window attention and patch merging.

Their attention is local to windows that move from block to block, so there is no
token-by-token attention matrix for the attention-map methods to read, and no
canonical pre-norm ViT for the LRP relevance pass to replay; the gradient-rule
methods (``ConservativeLRP``, ``AttnLRP``) explain them by running the model's own
forward pass with the rules put into its modules
(:mod:`captum_saco.attr._core.swin_rules`). This file says, per library, where the
patch embedding, blocks, attention layers and activations are, and writes each
library's windowed attention once, faithfully, with the places where the rules go
(:class:`AttentionRules`).
"""

import math
import sys
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Type

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: the methods that explain Swin models, named in the other methods' refusal
WORKING_METHODS = "ConservativeLRP and AttnLRP"


def _unchanged(values: Tensor) -> Tensor:
    return values


def _operands_unchanged(q: Tensor, k: Tensor, v: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    return q, k, v


def _unit(values: Tensor) -> Tensor:
    return F.normalize(values, dim=-1)


@dataclass(frozen=True)
class AttentionRules:
    """Where gradient rules enter windowed attention; each is the identity of the
    forward values. By default, the plain gradient.

    Attributes:
        operands: ``(q, k, v) -> (q, k, v)`` before the products (AttnLRP's uniform
            rule scales their gradients).
        probabilities: applied to the softmax output (the AH rule detaches it).
        unit: the L2 normalisation of q and k in cosine attention (Swin v2), over
            the last dimension (the LayerNorm rule treats the norm as a constant).
    """

    operands: Callable[[Tensor, Tensor, Tensor], Tuple[Tensor, Tensor, Tensor]] = (
        _operands_unchanged
    )
    probabilities: Callable[[Tensor], Tensor] = _unchanged
    unit: Callable[[Tensor], Tensor] = _unit


def windowed_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: Tensor,
    mask: Optional[Tensor],
    rules: AttentionRules,
    *,
    scale: float,
    logit_scale: Optional[Tensor] = None,
    dropout: Callable[[Tensor], Tensor] = _unchanged,
) -> Tuple[Tensor, Tensor]:
    """Multi-head attention within windows, with ``rules``.

    Args:
        q, k, v (Tensor): ``(B * windows, heads, n, d)``, windows of one image
            consecutive.
        bias (Tensor): ``(1, heads, n, n)`` the relative position bias.
        mask (Tensor, optional): ``(windows, n, n)`` the shifted windows' additive
            mask, or ``None``.
        rules (AttentionRules): where the gradient rules enter.
        scale (float): the factor of ``q`` in dot-product attention.
        logit_scale (Tensor, optional): if given, cosine attention (Swin v2):
            ``unit(q) @ unit(k)^T * logit_scale`` replaces ``scale * q @ k^T``.
        dropout (Callable): applied to the probabilities before the value product.

    Returns:
        ``(probabilities, context)``: ``(B * windows, heads, n, n)`` and
        ``(B * windows, heads, n, d)``.
    """
    q, k, v = rules.operands(q, k, v)
    if logit_scale is None:
        logits = (q * scale) @ k.transpose(-2, -1)
    else:
        logits = rules.unit(q) @ rules.unit(k).transpose(-2, -1) * logit_scale
    logits = logits + bias
    if mask is not None:
        windows, n = mask.shape[0], q.shape[-2]
        logits = (logits.view(-1, windows, q.shape[1], n, n) + mask[:, None]).view(logits.shape)
    probabilities = rules.probabilities(logits.softmax(dim=-1))
    return probabilities, dropout(probabilities) @ v


def _projected(values: Tensor, layer: nn.Linear, bias: Optional[Tensor] = None) -> Tensor:
    """``layer(values)`` in the dtype of ``values`` (``bias`` replaces the layer's)."""
    bias = layer.bias if bias is None else bias
    return F.linear(
        values, layer.weight.to(values.dtype), None if bias is None else bias.to(values.dtype)
    )


def _heads(values: Tensor, parts: int, heads: int) -> List[Tensor]:
    """``(B, n, parts * D)`` -> ``parts`` tensors ``(B, heads, n, D // heads)``."""
    b, n, _ = values.shape
    return list(values.reshape(b, n, parts, heads, -1).permute(2, 0, 3, 1, 4).unbind(0))


def _merged(context: Tensor) -> Tensor:
    """``(B, heads, n, d)`` -> ``(B, n, heads * d)``."""
    return context.transpose(1, 2).reshape(context.shape[0], context.shape[2], -1)


class SwinAdapter:
    """Where one library's Swin Transformer keeps its parts, and its windowed
    attention written with :class:`AttentionRules`.

    Every module of the model is one of: an ``nn.LayerNorm``, an ``nn.Linear``,
    the patch embedding's ``Conv2d``, a block's MLP activation, an attention layer
    (:meth:`attention_forward`, with everything inside it) or a module of
    :meth:`passed_through`; :meth:`check_rules` refuses any other by name.
    """

    #: the model classes, as (library module, class name)
    model_classes: Tuple[Tuple[str, str], ...]
    #: the library module of the blocks and attention layers
    library: str
    #: the class names of the blocks there
    block_classes: Tuple[str, ...]
    #: the class names of the attention layers there
    attention_classes: Tuple[str, ...]

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def blocks(self) -> List[nn.Module]:
        """The Swin blocks, in the order the forward pass runs them."""
        return [m for m in self.model.modules() if _any_of(m, self.library, self.block_classes)]

    def attention_modules(self) -> List[nn.Module]:
        """The windowed attention layers, one per block."""
        return [m for m in self.model.modules() if _any_of(m, self.library, self.attention_classes)]

    def patch_embedding(self) -> nn.Conv2d:
        """The convolution whose output ``(N, D, h, w)`` is on the input patch grid."""
        raise NotImplementedError

    def activations(self) -> List[nn.Module]:
        """The element-wise activation of every block's MLP (of the library's own
        MLP class: :meth:`check_rules` refuses any other by name)."""
        raise NotImplementedError

    def passed_through(self) -> Tuple[Type[nn.Module], ...]:
        """The module types (exact) that the rules reach through unchanged: the
        library's containers (model, embedding, stages, blocks, MLPs, patch
        merging, head), whose own code composes their children with reshapes,
        shifts, padding, residual sums and means, and the leaves that are linear
        or the identity in evaluation (pooling, reshaping, dropout, drop path)."""
        raise NotImplementedError

    def attention_forward(self, module: nn.Module, rules: AttentionRules) -> Callable:
        """A function with the signature of ``module.forward`` that computes the same
        values, with ``rules`` in the attention."""
        raise NotImplementedError

    def check_rules(self) -> None:
        """Refuse the model by name if a module outside the attention layers has no
        rule (see the class docstring)."""
        inside = {id(m) for a in self.attention_modules() for m in a.modules()}
        known = {id(self.patch_embedding())} | {id(m) for m in self.activations()}
        types = (nn.LayerNorm, nn.Linear) + self.passed_through()
        for name, module in self.model.named_modules():
            if id(module) in inside or id(module) in known:
                continue
            if type(module) not in types:
                raise ValueError(
                    f"model: {type(self.model).__name__} runs {name} ({type(module).__name__}), "
                    f"a module the relevance rules have no rule for, so {WORKING_METHODS} "
                    "refuse this model"
                )


def _classes(library: str, *names: str) -> Tuple[Type[nn.Module], ...]:
    return tuple(getattr(sys.modules[library], name) for name in names)


def _any_of(module: nn.Module, library: str, class_names: Sequence[str]) -> bool:
    namespace = sys.modules.get(library)
    return namespace is not None and any(
        isinstance(module, getattr(namespace, name)) for name in class_names
    )


class TimmSwinAdapter(SwinAdapter):
    model_classes = (("timm.models.swin_transformer", "SwinTransformer"),)
    library = "timm.models.swin_transformer"
    block_classes = ("SwinTransformerBlock",)
    attention_classes = ("WindowAttention",)

    def passed_through(self) -> Tuple[Type[nn.Module], ...]:
        from timm.layers import ClassifierHead, DropPath, Mlp, PatchEmbed, SelectAdaptivePool2d
        from timm.layers.adaptive_avgmax_pool import FastAdaptiveAvgPool

        containers = _classes(self.library, "SwinTransformer", "SwinTransformerStage")
        containers += _classes(self.library, "SwinTransformerBlock", "PatchMerging")
        containers += (PatchEmbed, Mlp, ClassifierHead, SelectAdaptivePool2d, nn.Sequential)
        return containers + (nn.Dropout, nn.Identity, DropPath, FastAdaptiveAvgPool, nn.Flatten)

    def patch_embedding(self) -> nn.Conv2d:
        return self.model.patch_embed.proj

    def activations(self) -> List[nn.Module]:
        from timm.layers import Mlp

        return [block.mlp.act for block in self.blocks() if type(block.mlp) is Mlp]

    def attention_forward(self, module: nn.Module, rules: AttentionRules) -> Callable:
        # timm's WindowAttention.forward on windows (B * windows, n, C)
        def forward(x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
            q, k, v = _heads(_projected(x, module.qkv), 3, module.num_heads)
            _, context = windowed_attention(
                q,
                k,
                v,
                module._get_rel_pos_bias().to(x.dtype),
                None if mask is None else mask.to(x.dtype),
                rules,
                scale=module.scale,
                dropout=module.attn_drop,
            )
            return module.proj_drop(_projected(_merged(context), module.proj))

        return forward


class HuggingFaceSwinAdapter(SwinAdapter):
    model_classes = (("transformers.models.swin.modeling_swin", "SwinForImageClassification"),)
    library = "transformers.models.swin.modeling_swin"
    block_classes = ("SwinLayer",)
    attention_classes = ("SwinAttention",)

    def passed_through(self) -> Tuple[Type[nn.Module], ...]:
        containers = _classes(
            self.library,
            "SwinForImageClassification",
            "SwinModel",
            "SwinEmbeddings",
            "SwinPatchEmbeddings",
            "SwinEncoder",
            "SwinStage",
            "SwinLayer",
            "SwinMLP",
            "SwinPatchMerging",
        )
        leaves = _classes(self.library, "SwinDropPath")
        return (
            containers + (nn.ModuleList,) + leaves + (nn.Dropout, nn.Identity, nn.AdaptiveAvgPool1d)
        )

    def patch_embedding(self) -> nn.Conv2d:
        return self.model.swin.embeddings.patch_embeddings.projection

    def activations(self) -> List[nn.Module]:
        (mlp,) = _classes(self.library, "SwinMLP")
        return [layer.mlp.activation_fn for layer in self.blocks() if type(layer.mlp) is mlp]

    def attention_forward(self, module: nn.Module, rules: AttentionRules) -> Callable:
        if not all(hasattr(module, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj")):
            raise ValueError(
                f"model: {type(self.model).__name__}'s SwinAttention lacks q_proj, k_proj, "
                "v_proj and o_proj (an older transformers version?), so "
                f"{WORKING_METHODS} refuse it; transformers >= 5 is supported"
            )

        # transformers' SwinAttention.forward on windows (B * windows, n, C)
        def forward(
            hidden_states: Tensor, attention_mask: Optional[Tensor] = None, **_: object
        ) -> Tuple[Tensor, Tensor]:
            heads = module.num_attention_heads
            q, k, v = (
                _heads(_projected(hidden_states, layer), 1, heads)[0]
                for layer in (module.q_proj, module.k_proj, module.v_proj)
            )
            probabilities, context = windowed_attention(
                q,
                k,
                v,
                module.relative_position_bias().to(hidden_states.dtype),
                attention_mask,
                rules,
                scale=module.scaling,
                dropout=lambda p: F.dropout(p, module.attention_dropout, module.training),
            )
            return _projected(_merged(context), module.o_proj), probabilities

        return forward


class TorchvisionSwinAdapter(SwinAdapter):
    model_classes = (("torchvision.models.swin_transformer", "SwinTransformer"),)
    library = "torchvision.models.swin_transformer"
    block_classes = ("SwinTransformerBlock",)  # SwinTransformerBlockV2 is a subclass
    attention_classes = ("ShiftedWindowAttention",)  # ShiftedWindowAttentionV2 too

    def passed_through(self) -> Tuple[Type[nn.Module], ...]:
        from torchvision.ops.misc import MLP, Permute
        from torchvision.ops.stochastic_depth import StochasticDepth

        containers = _classes(self.library, "SwinTransformer", "SwinTransformerBlock")
        containers += _classes(
            self.library, "SwinTransformerBlockV2", "PatchMerging", "PatchMergingV2"
        )
        leaves = (nn.Dropout, nn.Identity, StochasticDepth, Permute, nn.AdaptiveAvgPool2d)
        return containers + (MLP, nn.Sequential) + leaves + (nn.Flatten,)

    def patch_embedding(self) -> nn.Conv2d:
        return self.model.features[0][0]

    def activations(self) -> List[nn.Module]:
        from torchvision.ops.misc import MLP

        return [block.mlp[1] for block in self.blocks() if type(block.mlp) is MLP]

    def attention_forward(self, module: nn.Module, rules: AttentionRules) -> Callable:
        cosine = _any_of(module, self.library, ("ShiftedWindowAttentionV2",))

        # torchvision's shifted_window_attention on (B, H, W, C), v1 and v2
        def forward(x: Tensor) -> Tensor:
            b, height, width, channels = x.shape
            wh, ww = module.window_size
            x = F.pad(x, (0, 0, 0, (ww - width % ww) % ww, 0, (wh - height % wh) % wh))
            _, ph, pw, _ = x.shape
            # no shift along a dimension that one window covers
            shift = [0 if w >= p else s for w, p, s in zip((wh, ww), (ph, pw), module.shift_size)]
            if sum(shift) > 0:
                x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
            windows = x.view(b, ph // wh, wh, pw // ww, ww, channels).permute(0, 1, 3, 2, 4, 5)
            windows = windows.reshape(-1, wh * ww, channels)
            qkv_bias, logit_scale = module.qkv.bias, None
            if cosine:
                logit_scale = module.logit_scale.clamp(max=math.log(100.0)).exp().to(x.dtype)
                if qkv_bias is not None:  # v2 has no key bias
                    qkv_bias = torch.cat(
                        [
                            qkv_bias[:channels],
                            torch.zeros_like(qkv_bias[:channels]),
                            qkv_bias[2 * channels :],
                        ]
                    )
            q, k, v = _heads(_projected(windows, module.qkv, qkv_bias), 3, module.num_heads)
            _, context = windowed_attention(
                q,
                k,
                v,
                module.get_relative_position_bias().to(x.dtype),
                _shift_mask(ph, pw, (wh, ww), shift, x) if sum(shift) > 0 else None,
                rules,
                scale=(channels // module.num_heads) ** -0.5,
                logit_scale=logit_scale,
                dropout=lambda p: F.dropout(p, module.attention_dropout, module.training),
            )
            out = F.dropout(
                _projected(_merged(context), module.proj), module.dropout, module.training
            )
            out = out.view(b, ph // wh, pw // ww, wh, ww, channels).permute(0, 1, 3, 2, 4, 5)
            out = out.reshape(b, ph, pw, channels)
            if sum(shift) > 0:
                out = torch.roll(out, shifts=(shift[0], shift[1]), dims=(1, 2))
            return out[:, :height, :width].contiguous()

        return forward


def _shift_mask(
    height: int, width: int, window: Tuple[int, int], shift: List[int], like: Tensor
) -> Tensor:
    """``(windows, n, n)``: -100 between positions of a shifted window that come from
    different regions of the cyclically shifted map, 0 within a region."""
    regions = like.new_zeros(height, width)
    count = 0
    for h in ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None)):
        for w in ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None)):
            regions[h[0] : h[1], w[0] : w[1]] = count
            count += 1
    regions = regions.view(height // window[0], window[0], width // window[1], window[1])
    regions = regions.permute(0, 2, 1, 3).reshape(-1, window[0] * window[1])
    differs = regions[:, None, :] != regions[:, :, None]
    return like.new_zeros(differs.shape).masked_fill(differs, -100.0)


#: every Swin family, in the order :func:`swin_adapter_for` tries them
SWIN_FAMILIES: List[Type[SwinAdapter]] = [
    TimmSwinAdapter,
    HuggingFaceSwinAdapter,
    TorchvisionSwinAdapter,
]


def swin_adapter_for(model: nn.Module) -> Optional[SwinAdapter]:
    """The adapter of ``model``'s Swin family, or ``None`` for other models."""
    for family in SWIN_FAMILIES:
        if any(
            _any_of(model, module_name, (class_name,))
            for module_name, class_name in family.model_classes
        ):
            return family(model)
    return None


def swin_refusal(model: nn.Module) -> ValueError:
    """The refusal of everything but the methods that explain Swin models."""
    return ValueError(
        f"model: {type(model).__name__} is a Swin Transformer (windowed attention, patch "
        "merging), which has no token-by-token attention map and no canonical ViT blocks: "
        f"of the attribution methods only {WORKING_METHODS} explain it"
    )
