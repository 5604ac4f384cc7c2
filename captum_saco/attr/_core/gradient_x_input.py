"""Gradient times input of a ViT under named gradient rules.

The LRP variants for transformers that are written in gradient-times-input form
(conservative LRP, AttnLRP) differ only in how the gradient flows through some
layers (:class:`~captum_saco.attr._core.replay.GradientRules`). One backward
pass gives their relevance at the pixels, at the patch embedding's output and at
the tokens entering block 0: the model runs its own patch embedding (and
position embedding) up to block 0, the blocks, final norm and classifier heads
are replayed from there in canonical form with the rules, and the gradient of
the target logit flows back through the replay and the model's own embedding.
Swin Transformers, which the replay cannot express, run their own forward pass
with the rules put into their modules (:mod:`captum_saco.attr._core.swin_rules`).
"""

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from captum_saco._utils import TargetType, model_output, resolve_target
from captum_saco.attr._core.engine import AttentionAttribution, Needs, check_differentiable
from captum_saco.attr._core.families import ViTAdapter, _model_lock, this_thread_only
from captum_saco.attr._core.families.swin import SwinAdapter, swin_adapter_for
from captum_saco.attr._core.replay import (
    GradientRules,
    embedding_norms_as,
    gamma_rule,
    model_forward,
)
from captum_saco.attr._core.swin_rules import rules_in_place


@dataclass(frozen=True)
class GradientXInput:
    """Gradient times input of the target logits, at three places of the model.

    Attributes:
        pixels (Tensor): ``(N, C, H, W)`` at the input images.
        patches (Tensor): ``(N, h, w)`` at the patch embedding's output, summed
            over the embedding channels.
        tokens (Tensor or None): ``(N, T)`` at the tokens entering block 0 (prefix
            tokens first), summed over the embedding dimension; ``None`` for Swin
            models, whose stages have token grids of different sizes.
        logits (Tensor): ``(N, C)`` the logits of the replay (of the model's own
            forward pass for Swin models).
        classes (Tensor): ``(N,)`` the target class of each example.
    """

    pixels: Tensor
    patches: Tensor
    tokens: Optional[Tensor]
    logits: Tensor
    classes: Tensor


def _embedding_hook(embedded: List[Tensor], gamma: float) -> Callable:
    """A forward hook on the patch embedding that keeps its output in ``embedded``
    and, with ``gamma > 0``, gives the convolution the gamma rule; it acts only on
    the forward passes of the thread that registers it."""

    def hook(module: nn.Module, args: Tuple, output: Tensor) -> Optional[Tensor]:
        if gamma > 0:
            if not isinstance(module, nn.Conv2d):
                raise ValueError(
                    f"embedding_gamma: the patch embedding is a {type(module).__name__}, "
                    "not a Conv2d"
                )
            output = gamma_rule(module._conv_forward, args[0], module.weight, module.bias, gamma)
        embedded.append(output)
        return output if gamma > 0 else None

    return this_thread_only(hook)


def gradient_x_input(
    adapter: ViTAdapter,
    forward_func: Callable,
    images: Tensor,
    target: TargetType,
    extra: Tuple,
    rules: GradientRules,
) -> GradientXInput:
    """Gradient times input of the target logits under ``rules``, in one backward pass.

    ``forward_func(images, *extra)`` runs up to the model's first block. The replay
    computes in float32 at least (in the tokens' dtype if wider), and the products
    are taken in that precision; the model's own embedding runs in the dtype of its
    weights. A caller's autocast is switched off for the call: under it, a float32
    model is explained in float32. The
    gradient is that of the sum over the batch of each example's target logit, so
    an example's relevance does not depend on the rest of the batch.
    """
    with ExitStack() as stack:
        pixels = _differentiable_pixels(stack, images)
        # Built here, not in the caller's inference_mode(), where the parts that
        # families assemble (Hugging Face's joined q/k/v weight) would be inference
        # tensors, which the replay's autograd graph cannot save.
        parts = adapter.relevance_parts()
        # the capture's lock (re-entrant), held while the embedding hook is there too
        embedded = _recording_embedding(stack, adapter, rules)
        stack.enter_context(embedding_norms_as(adapter, rules.norm))
        with adapter.capture(stop_at_first_block=True) as record:
            forward_func(pixels, *extra)
        if record.tokens is None or not embedded:
            raise ValueError(
                "forward_func: running it did not run the model given at construction; "
                "forward_func must call that model on the inputs"
            )
        tokens = record.tokens
        check_differentiable(tokens, embedded[-1])
        dtype = torch.promote_types(tokens.dtype, torch.float32)
        logits = model_forward(parts, tokens.to(dtype), rules).logits
        _, classes = resolve_target(logits.detach(), target)
        objective = logits.gather(1, classes[:, None]).sum()
        gradients = torch.autograd.grad(objective, (pixels, embedded[-1], tokens))
    pixel_relevance, patch_relevance, token_relevance = _times(
        (pixels, embedded[-1], tokens), gradients, dtype
    )
    return GradientXInput(
        pixels=pixel_relevance,
        patches=patch_relevance.sum(dim=1),
        tokens=token_relevance.sum(dim=-1),
        logits=logits.detach(),
        classes=classes,
    )


def swin_gradient_x_input(
    adapter: SwinAdapter,
    forward_func: Callable,
    images: Tensor,
    target: TargetType,
    extra: Tuple,
    rules: GradientRules,
) -> GradientXInput:
    """Gradient times input under ``rules`` of a Swin Transformer, in one backward
    pass: the gradient of the target logits of ``forward_func(images, *extra)``
    (its output, or the ``logits`` of a Hugging Face output object), which runs the
    model once with the rules in its modules
    (:func:`~captum_saco.attr._core.swin_rules.rules_in_place`; the patch
    embedding's convolution as in :func:`gradient_x_input`). The model computes in
    the dtype of its weights up to the patch embedding and from there in float32 at
    least; the products are taken in the logits' dtype (float32 at least). A
    caller's autocast is switched off for the call. ``tokens`` is ``None``.
    """
    with ExitStack() as stack:
        pixels = _differentiable_pixels(stack, images)
        embedded = _recording_embedding(stack, adapter, rules)
        stack.enter_context(rules_in_place(adapter, rules))
        logits = model_output(forward_func(pixels, *extra))
        if len(embedded) != 1:
            raise ValueError(
                f"forward_func: it ran the model given at construction {len(embedded)} times "
                "in one call; forward_func must run that model once on the inputs"
            )
        if logits.dim() != 2 or logits.shape[0] != images.shape[0]:
            raise ValueError(
                "forward_func: expected logits (N, C) with one row per example, got shape "
                f"{tuple(logits.shape)} for {images.shape[0]} examples"
            )
        check_differentiable(logits, embedded[0])
        _, classes = resolve_target(logits.detach(), target)
        objective = logits.gather(1, classes[:, None]).sum()
        gradients = torch.autograd.grad(objective, (pixels, embedded[0]))
    dtype = torch.promote_types(logits.dtype, torch.float32)
    pixel_relevance, patch_relevance = _times((pixels, embedded[0]), gradients, dtype)
    return GradientXInput(
        pixels=pixel_relevance,
        patches=patch_relevance.sum(dim=1),
        tokens=None,
        logits=logits.detach(),
        classes=classes,
    )


def _differentiable_pixels(stack: ExitStack, images: Tensor) -> Tensor:
    """For the duration of ``stack``, gradients on (also inside the caller's
    ``no_grad()`` or ``inference_mode()``) and autocast off (the model's weights
    set the precision); a fresh leaf copy of ``images`` that requires grad (the
    user's tensor is not touched)."""
    stack.enter_context(torch.inference_mode(False))
    stack.enter_context(torch.enable_grad())
    stack.enter_context(torch.autocast(images.device.type, enabled=False))
    pixels = images.clone() if images.is_inference() else images.detach()
    return pixels.requires_grad_()


def _recording_embedding(
    stack: ExitStack, adapter: Union[ViTAdapter, SwinAdapter], rules: GradientRules
) -> List[Tensor]:
    """The list that the patch embedding's outputs are recorded in for the duration
    of ``stack`` (gamma rule as ``rules.embedding_gamma`` says), under the model's
    capture lock."""
    stack.enter_context(_model_lock(adapter.model))
    embedded: List[Tensor] = []
    handle = adapter.patch_embedding().register_forward_hook(
        _embedding_hook(embedded, rules.embedding_gamma)
    )
    stack.callback(handle.remove)
    return embedded


def _times(
    values: Tuple[Tensor, ...], gradients: Tuple[Tensor, ...], dtype: torch.dtype
) -> List[Tensor]:
    """``value * gradient`` of each pair, detached, in ``dtype``."""
    return [
        value.detach().to(dtype) * gradient.to(dtype) for value, gradient in zip(values, gradients)
    ]


#: The ``attribute`` docstring of the gradient-rule methods, for
#: :func:`~captum_saco.attr._core.engine.documented_options`.
GRADIENT_RULE_ATTRIBUTE_DOC = r"""
        Args:
            inputs (Tensor or tuple[Tensor]): images ``(N, C, H, W)`` as the model
                takes them, or a tuple holding that one tensor.
            target (int, tuple, Tensor, list, optional): the class whose logit is
                explained, for each example, in any form Captum accepts for
                ``(N, C)`` outputs. Default: the predicted class (of the replayed
                classifier head).
            additional_forward_args (Any, optional): further positional arguments of
                ``forward_func`` after the inputs (a non-tuple is passed as one
                argument); with ``max_examples_per_batch``, tensors among them are
                split with the inputs.
{options}            linear_gamma (float, optional): zennit's gamma rule on the MLPs' linear
                layers and the classifier head (see :class:`GradientRuleAttribution`).
                Default: 0, the gradient.
            embedding_gamma (float, optional): zennit's gamma rule on the patch
                embedding's convolution. Default: 0.
            upsample (bool, optional): if ``True`` (default), the relevance of the
                pixels ``(N, C, H, W)``; if ``False``, the relevance of the patch
                embedding's output summed over its channels, ``(N, 1, h, w)``.
            max_examples_per_batch (int, optional): the most examples run at once;
                one backward pass per chunk (same results, memory bounded by the
                chunk). Default: all at once.

        Returns:
            *Tensor* or *tuple[Tensor]* of **attributions**: the relevance (gradient
            times input under the rules), signed and not normalised, in the same
            form as ``inputs`` and on their device, in float32 for half-precision
            inputs.

        Raises:
            ValueError: for an unknown rule option, a negative gamma, malformed inputs
                or targets, or blocks the canonical form cannot express.
"""


class GradientRuleAttribution(AttentionAttribution):
    r"""Base of the methods that are gradient times input under named
    :class:`~captum_saco.attr._core.replay.GradientRules` (``ConservativeLRP``,
    ``AttnLRP``); a subclass's ``attribute`` passes ``rules=GradientRules(...)`` to
    ``self._attribute``.

    One backward pass gives the relevance of the whole batch: the model runs its own
    patch and position embedding up to block 0; the blocks, the final norm and the
    classifier head are replayed from there in canonical form with the rules
    (:mod:`captum_saco.attr._core.replay`), so the relevance is that of the
    classifier head's logits whatever ``forward_func`` returns. An example's
    relevance does not depend on the rest of the batch. The replay and the products
    are computed in float32 at least (float16 and bfloat16 models too; their own
    patch embedding runs in their precision), and the attributions are returned in
    that precision.

    Gamma rule (options ``linear_gamma`` and ``embedding_gamma``): if positive,
    the MLPs' linear layers and the classifier head, or the patch embedding's
    convolution, get zennit's generalised gamma rule with that gamma
    (``zennit.rules.Gamma``, stabiliser 1e-6, written as a gradient as LXT does when
    it combines zennit with its rules; see
    :func:`~captum_saco.attr._core.replay.gamma_rule`). The attention projections
    keep the gradient, as in LXT (zennit's hooks never fire on torch's
    ``MultiheadAttention``). LXT's ViT example sweeps (convolution, linear) gammas
    and recommends none.

    Swin Transformers (timm ``SwinTransformer``, Hugging Face
    ``SwinForImageClassification``, torchvision ``swin_t`` / ``swin_v2_t``), which
    the canonical replay cannot express, run their own forward pass through
    ``forward_func`` with the rules put into their modules for the call
    (:func:`~captum_saco.attr._core.swin_rules.rules_in_place`: windowed and
    shifted-window attention, patch merging, every LayerNorm, the MLP activation;
    the gamma rule on every linear layer outside the attention: MLPs, patch
    merging, head), and the relevance is that of ``forward_func``'s logits; the map
    is on the input patch grid.
    """

    needs = Needs.GRADIENTS  # it differentiates the model (floating-point images only)

    def _explain(
        self,
        images: Tensor,
        target: TargetType,
        extra: Tuple,
        *,
        upsample: bool,
        rules: GradientRules,
    ) -> Tensor:
        """The pixel relevance ``(N, C, H, W)``, or with ``upsample=False`` the patch
        embedding's relevance ``(N, 1, h, w)``."""
        explain = (
            swin_gradient_x_input if isinstance(self._adapter, SwinAdapter) else gradient_x_input
        )
        result = explain(self._adapter, self.forward_func, images, target, extra, rules)
        return result.pixels if upsample else result.patches[:, None]

    def _adapter_for(self, model: nn.Module) -> Union[ViTAdapter, SwinAdapter]:
        """Swin models too (see :func:`swin_gradient_x_input`)."""
        swin = swin_adapter_for(model)
        if swin is None:
            return super()._adapter_for(model)
        swin.check_rules()
        return swin
