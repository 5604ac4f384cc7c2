"""What is specific to each Vision Transformer family, in one place.

The attention methods of :mod:`captum_saco.attr` read the post-softmax
attention probabilities of every block; Transformer Attribution also needs the
model's layers in one canonical form. This module is the only code that knows
how timm, Hugging Face transformers and torchvision lay out their ViTs.
"""

import sys
import threading
import weakref
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class BlockParts:
    """One pre-norm ViT block:
    ``x = x + ls1 * proj(attn(norm1(x))); x = x + ls2 * fc2(act(fc1(norm2(x))))``.

    The attention scale is ``head_dim ** -0.5`` with ``head_dim = D // num_heads``.
    """

    norm1: nn.LayerNorm
    qkv_weight: Tensor  # (3*D, D), rows ordered q, k, v
    qkv_bias: Optional[Tensor]  # (3*D,) or None
    num_heads: int
    proj: nn.Linear
    norm2: nn.LayerNorm
    fc1: nn.Linear
    act: Callable[[Tensor], Tensor]
    fc2: nn.Linear
    ls1: Optional[Tensor] = None  # layer-scale gamma (D,) or None
    ls2: Optional[Tensor] = None


@dataclass(frozen=True)
class ViTParts:
    """A whole ViT in canonical form, from the tokens entering block 0 to the logits."""

    blocks: List[BlockParts]
    norm: nn.Module  # final norm applied to the tokens
    # (token index, classifier): logits = mean over heads of head(norm(x)[:, index])
    heads: List[Tuple[int, nn.Linear]]
    num_prefix_tokens: int


SUPPORTED_MODELS = (
    "timm VisionTransformer with class-token pooling (global_pool='token'; DeiT "
    "distilled models and register tokens included), Hugging Face "
    "ViTForImageClassification, DeiTForImageClassification and "
    "DeiTForImageClassificationWithTeacher (transformers >= 5), and torchvision "
    "VisionTransformer"
)


_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _model_lock(model: nn.Module) -> threading.RLock:
    """The lock that serialises the captures of ``model`` (one per model object)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


def this_thread_only(hook: Callable[..., Any]) -> Callable[..., Any]:
    """``hook`` acting only on the forward passes of the thread that calls this.

    A module's hooks see the forward passes of every thread, and while one
    thread explains a model, another may run it as usual: its passes must be
    neither recorded nor changed."""
    owner = threading.get_ident()

    def guarded(*args: Any, **kwargs: Any) -> Any:
        return hook(*args, **kwargs) if threading.get_ident() == owner else None

    return guarded


class _ReachedFirstBlock(Exception):
    """Cuts a forward pass short once the tokens entering block 0 are recorded."""


class AttentionRecord:
    """What one forward pass under :meth:`ViTAdapter.capture` leaves behind.

    Attributes:
        attentions (list of Tensor or None): per block, the post-softmax attention
            probabilities ``(N, heads, T, T)`` as the forward pass used them (in
            the autograd graph whenever gradients were enabled).
        block_inputs (list of Tensor or None): per block, the tokens ``(N, T, D)``
            entering it (the residual stream), as the forward pass used them.
        grid (tuple of int or None): the patch grid ``(h, w)`` of the input.
        passes (int): how many forward passes entered block 0.
    """

    def __init__(self, num_blocks: int) -> None:
        self.attentions: List[Optional[Tensor]] = [None] * num_blocks
        self.block_inputs: List[Optional[Tensor]] = [None] * num_blocks
        self.grid: Optional[Tuple[int, int]] = None
        self.passes = 0

    @property
    def tokens(self) -> Optional[Tensor]:
        """The tokens ``(N, T, D)`` entering block 0."""
        return self.block_inputs[0]

    def complete(self) -> bool:
        """Whether the forward pass ran through the whole captured model."""
        return (
            self.grid is not None
            and all(a is not None for a in self.attentions)
            and all(x is not None for x in self.block_inputs)
        )


class ViTAdapter:
    """The knowledge of one model family: where the blocks are, how to read their
    attention probabilities, the prefix tokens and the canonical parts.

    Subclasses name the modules; :meth:`capture` is shared by all families.
    """

    #: number of tokens (class, distillation, register tokens) before the patches
    num_prefix_tokens: int

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    # --- what each family provides -------------------------------------------------
    def blocks(self) -> List[nn.Module]:
        """The transformer blocks, in the order the forward pass runs them."""
        raise NotImplementedError

    def patch_embedding(self) -> nn.Module:
        """The module whose output is ``(N, D, h, w)`` on the patch grid."""
        raise NotImplementedError

    def prefix_tokens(self) -> Tensor:
        """``(1, p, D)`` the prefix tokens (class, distillation, registers) before the
        position embedding, in the model's order. Raises a ValueError for models
        whose tokens entering block 0 are not the prefix and patch embeddings plus
        the position embedding."""
        raise NotImplementedError

    def attention_sources(self) -> List[Tuple[nn.Module, Callable[[object], Tensor]]]:
        """Per block, a module and how to read the attention probabilities from its
        output while :meth:`attention_mode` is active."""
        raise NotImplementedError

    @contextmanager
    def attention_mode(self) -> Iterator[None]:
        """Make the attention probabilities visible for the duration of the block."""
        yield

    def parts(self) -> ViTParts:
        """The model in the canonical form of :class:`ViTParts`."""
        raise NotImplementedError

    # --- shared --------------------------------------------------------------------
    @contextmanager
    def capture(self, stop_at_first_block: bool = False) -> Iterator[AttentionRecord]:
        """Record attention probabilities, the tokens entering every block and the
        patch grid of every forward pass of the model run inside the block.

        With ``stop_at_first_block``, the forward pass is cut short once the tokens
        entering block 0 are recorded: the rest of the ``with`` block is skipped and
        nothing else is recorded (for rules that replay the blocks themselves).

        Hooks and attention settings are removed and restored on leaving the block,
        also when it is left by an exception. Captures of one model are serialised:
        a lock per model is held from patching to restoring, so concurrent
        attribution calls from several threads wait for each other, and the hooks
        record only the forward passes of the thread that holds the capture.
        """
        blocks = self.blocks()
        record = AttentionRecord(len(blocks))

        def input_hook(index: int) -> Callable:
            def hook(module: nn.Module, args: Tuple, kwargs: dict) -> None:
                if index == 0:
                    record.passes += 1
                record.block_inputs[index] = args[0] if args else next(iter(kwargs.values()))
                if stop_at_first_block:
                    raise _ReachedFirstBlock

            return this_thread_only(hook)

        def store_grid(module: nn.Module, args: Tuple, output: Tensor) -> None:
            record.grid = (int(output.shape[-2]), int(output.shape[-1]))

        def attention_hook(index: int, read: Callable[[object], Tensor]) -> Callable:
            def hook(module: nn.Module, args: Tuple, output: object) -> None:
                record.attentions[index] = read(output)

            return this_thread_only(hook)

        with ExitStack() as stack:
            stack.enter_context(_model_lock(self.model))
            stack.enter_context(self.attention_mode())
            handles = [self.patch_embedding().register_forward_hook(this_thread_only(store_grid))]
            stack.callback(lambda: [h.remove() for h in handles])
            for index, (block, (module, read)) in enumerate(zip(blocks, self.attention_sources())):
                handles.append(block.register_forward_pre_hook(input_hook(index), with_kwargs=True))
                handles.append(module.register_forward_hook(attention_hook(index, read)))
            try:
                yield record
            except _ReachedFirstBlock:
                pass


def _unsupported(model: nn.Module, reason: str) -> ValueError:
    return ValueError(
        f"model: {reason}. Supported models: {SUPPORTED_MODELS}; pass the ViT module "
        "itself as model (wrap any preprocessing into forward_func)."
    )


def _inexpressible(model: nn.Module, part: str) -> ValueError:
    return ValueError(
        f"model: {type(model).__name__} has {part}, which the canonical pre-norm ViT "
        "block (LayerNorm, plain q/k/v attention with scale head_dim ** -0.5, "
        "Linear-act-Linear MLP, optional layer scale) cannot express"
    )


def _check_square_attention(model: nn.Module, dim: int, attn_dim: int) -> None:
    if attn_dim != dim:
        raise _inexpressible(model, f"an attention width {attn_dim} != embedding width {dim}")


# ------------------------------------------------------------------------------------
# timm
# ------------------------------------------------------------------------------------
class TimmViTAdapter(ViTAdapter):
    """timm ``VisionTransformer`` (and subclasses such as ``VisionTransformerDistilled``).

    Fused attention (``scaled_dot_product_attention``) never materialises the
    probabilities, so each ``Attention.fused_attn`` is switched off for the call;
    the probabilities are then the output of ``attn.attn_drop``.
    """

    def __init__(self, model: nn.Module) -> None:
        from timm.models.vision_transformer import Attention

        super().__init__(model)
        if getattr(model, "attn_pool", None) is not None or model.global_pool != "token":
            raise _unsupported(
                model,
                f"timm VisionTransformer with global_pool={model.global_pool!r} does not "
                "classify from the class token, so its class-token attention row does not "
                "explain the prediction; only global_pool='token' is supported",
            )
        if model.cls_token is None:
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

    def prefix_tokens(self) -> Tensor:
        for name in ("norm_pre", "patch_embed.norm"):
            if not isinstance(self.model.get_submodule(name), nn.Identity):
                raise ValueError(
                    f"model: the tokens entering block 0 are not the patch and prefix "
                    f"embeddings plus the position embedding: this model applies {name} in "
                    "between"
                )
        model = self.model
        return _joined([model.cls_token, getattr(model, "dist_token", None), model.reg_token])

    def attention_sources(self) -> List[Tuple[nn.Module, Callable[[object], Tensor]]]:
        return [(block.attn.attn_drop, _identity) for block in self.model.blocks]

    @contextmanager
    def attention_mode(self) -> Iterator[None]:
        attentions = [block.attn for block in self.model.blocks]
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
        if not isinstance(model.fc_norm, nn.Identity):
            raise _inexpressible(model, "a norm after pooling (fc_norm)")
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
        )


# ------------------------------------------------------------------------------------
# Hugging Face transformers
# ------------------------------------------------------------------------------------
class HuggingFaceViTAdapter(ViTAdapter):
    """Hugging Face ``ViTForImageClassification``, ``DeiTForImageClassification`` and
    ``DeiTForImageClassificationWithTeacher`` (transformers >= 5 layout).

    The configured attention implementation (``sdpa`` by default) is switched to
    ``eager`` for the call, which returns the probabilities from each attention
    module; every configuration object's setting is restored afterwards.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.backbone = model.deit if hasattr(model, "deit") else model.vit
        if not hasattr(self.backbone, "layers"):
            raise _unsupported(
                model, "this Hugging Face model has the transformers 4 layout (encoder.layer)"
            )
        self.num_prefix_tokens = 2 if hasattr(self.backbone.embeddings, "distillation_token") else 1

    def blocks(self) -> List[nn.Module]:
        return list(self.backbone.layers)

    def patch_embedding(self) -> nn.Module:
        return self.backbone.embeddings.patch_embeddings.projection

    def prefix_tokens(self) -> Tensor:
        embeddings = self.backbone.embeddings
        return _joined([embeddings.cls_token, getattr(embeddings, "distillation_token", None)])

    def attention_sources(self) -> List[Tuple[nn.Module, Callable[[object], Tensor]]]:
        return [(layer.attention, _second) for layer in self.backbone.layers]

    @contextmanager
    def attention_mode(self) -> Iterator[None]:
        from transformers import PretrainedConfig

        configs = {
            id(module.config): module.config
            for module in self.model.modules()
            if isinstance(getattr(module, "config", None), PretrainedConfig)
        }
        saved = {key: config._attn_implementation_internal for key, config in configs.items()}
        try:
            for config in configs.values():
                config._attn_implementation = "eager"
            yield
        finally:
            for key, config in configs.items():
                config._attn_implementation_internal = saved[key]

    def parts(self) -> ViTParts:
        model = self.model
        blocks = []
        for layer in self.backbone.layers:
            attn = layer.attention
            _check_square_attention(model, attn.q_proj.in_features, attn.q_proj.out_features)
            projections = (attn.q_proj, attn.k_proj, attn.v_proj)
            biases = [p.bias for p in projections]
            blocks.append(
                BlockParts(
                    norm1=layer.layernorm_before,
                    qkv_weight=torch.cat([p.weight for p in projections]),
                    qkv_bias=None if biases[0] is None else torch.cat(biases),
                    num_heads=attn.num_attention_heads,
                    proj=attn.o_proj,
                    norm2=layer.layernorm_after,
                    fc1=layer.mlp.fc1,
                    act=layer.mlp.activation_fn,
                    fc2=layer.mlp.fc2,
                )
            )
        if hasattr(model, "cls_classifier"):
            heads = [(0, model.cls_classifier), (1, model.distillation_classifier)]
        else:
            heads = [(0, model.classifier)]
        if not all(isinstance(head, nn.Linear) for _, head in heads):
            raise _inexpressible(model, "no linear classifier head (num_labels=0?)")
        return ViTParts(
            blocks=blocks,
            norm=self.backbone.layernorm,
            heads=heads,
            num_prefix_tokens=self.num_prefix_tokens,
        )


# ------------------------------------------------------------------------------------
# torchvision
# ------------------------------------------------------------------------------------
class TorchvisionViTAdapter(ViTAdapter):
    """torchvision ``VisionTransformer``.

    Its blocks call ``nn.MultiheadAttention`` with ``need_weights=False``, and the
    weights that module can return are a copy outside the autograd graph. For the
    call, each attention module's ``forward`` is replaced on the instance by the
    explicit computation from its own ``in_proj``/``out_proj`` weights, which returns
    the probabilities it used; the original ``forward`` is restored afterwards.
    """

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

    def prefix_tokens(self) -> Tensor:
        return _joined([self.model.class_token])

    def attention_sources(self) -> List[Tuple[nn.Module, Callable[[object], Tensor]]]:
        return [(block.self_attention, _second) for block in self.model.encoder.layers]

    @contextmanager
    def attention_mode(self) -> Iterator[None]:
        modules = [block.self_attention for block in self.model.encoder.layers]
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
            heads=[(0, model.heads.head)],
            num_prefix_tokens=self.num_prefix_tokens,
        )


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


def _joined(tokens: List[Optional[Tensor]]) -> Tensor:
    """The present prefix tokens ``(1, 1, D)`` as one detached ``(1, p, D)`` tensor."""
    return torch.cat([token.detach() for token in tokens if token is not None], dim=1)


def _identity(output: object) -> Tensor:
    return output  # type: ignore[return-value]


def _second(output: object) -> Tensor:
    return output[1]  # type: ignore[index]


def _family_class(module_name: str, class_names: Tuple[str, ...]) -> Tuple[type, ...]:
    """The named classes of a library module if the library is already imported (a
    model of that library cannot exist otherwise, so nothing is imported here)."""
    module = sys.modules.get(module_name)
    if module is None:
        return ()
    return tuple(getattr(module, name) for name in class_names if hasattr(module, name))


def adapter_for(model: nn.Module) -> ViTAdapter:
    """The adapter of ``model``'s family.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.
        ValueError: if the model is not one of the supported ViTs, or classifies
            from something other than the class token.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    families: List[Tuple[Tuple[type, ...], Callable[[nn.Module], ViTAdapter]]] = [
        (_family_class("timm.models.vision_transformer", ("VisionTransformer",)), TimmViTAdapter),
        (
            _family_class("transformers.models.vit.modeling_vit", ("ViTForImageClassification",))
            + _family_class(
                "transformers.models.deit.modeling_deit",
                ("DeiTForImageClassification", "DeiTForImageClassificationWithTeacher"),
            ),
            HuggingFaceViTAdapter,
        ),
        (
            _family_class("torchvision.models.vision_transformer", ("VisionTransformer",)),
            TorchvisionViTAdapter,
        ),
    ]
    for classes, adapter in families:
        if classes and isinstance(model, classes):
            return adapter(model)
    raise _unsupported(model, f"{type(model).__name__} is not a supported Vision Transformer")


def vit_parts(model: nn.Module) -> ViTParts:
    """``model`` in the canonical pre-norm ViT form of :class:`ViTParts`.

    Args:
        model (nn.Module): a supported ViT (see :data:`SUPPORTED_MODELS`).

    Returns:
        ViTParts: the blocks, final norm and classifier heads, sharing the model's
        parameters (no copies of ``nn.Module`` weights except Hugging Face's
        separate q/k/v weights, which are concatenated).

    Raises:
        ValueError: for unsupported models and for parts the canonical form cannot
            express (timm ``qk_norm``, torchvision ``representation_size``, ...).

    Examples::

        >>> import torch, timm
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> vit = timm.models.VisionTransformer(
        ...     img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2, num_classes=5)
        >>> parts = vit_parts(vit)
        >>> len(parts.blocks), parts.blocks[0].qkv_weight.shape, parts.num_prefix_tokens
        (2, torch.Size([72, 24]), 1)
    """
    return adapter_for(model).parts()
