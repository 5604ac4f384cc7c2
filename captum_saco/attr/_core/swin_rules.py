"""The gradient rules inside a Swin Transformer's own modules.

The canonical ViT replay of :mod:`captum_saco.attr._core.replay` cannot express
a Swin Transformer (windows, shifts, patch merging), so the rules go where LXT's
efficient mode puts them: into the model's own modules, for the duration of one
forward pass of the calling thread. The model then computes the same values as
always, and its plain autograd gradient is that of the rules.
"""

import threading
from contextlib import ExitStack, contextmanager
from functools import partial
from typing import Callable, Dict, Iterator, Tuple

import torch
from torch import Tensor, nn

from captum_saco.attr._core.families import _model_lock
from captum_saco.attr._core.families.swin import AttentionRules, SwinAdapter
from captum_saco.attr._core.replay import (
    GradientRules,
    _IdentityRule,
    _linear,
    _ScaledGradient,
    layer_norm,
)


def _uniform(q: Tensor, k: Tensor, v: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """AttnLRP's uniform rule on ``Q K^T`` and ``A V``: the gradient of q and k
    divided by 4, that of v by 2."""
    return (
        _ScaledGradient.apply(q, 0.25),
        _ScaledGradient.apply(k, 0.25),
        _ScaledGradient.apply(v, 0.5),
    )


def _unit_with_constant_norm(values: Tensor) -> Tensor:
    """``F.normalize(values, dim=-1)`` with the norm a constant (the LayerNorm rule)."""
    return values / values.norm(dim=-1, keepdim=True).clamp(min=1e-12).detach()


def attention_rules(rules: GradientRules) -> AttentionRules:
    """The windowed attention's share of ``rules``: the attention rule on the
    products and the softmax, the norm rule on cosine attention's normalisation."""
    operands = _uniform if rules.attention == "uniform" else AttentionRules.operands
    probabilities = Tensor.detach if rules.attention == "detached" else AttentionRules.probabilities
    unit = _unit_with_constant_norm if rules.norm == "std_detached" else AttentionRules.unit
    return AttentionRules(operands, probabilities, unit)


def _widened(forward: Callable[[Tensor], Tensor]) -> Callable[..., Tensor]:
    """``forward`` on its first argument in float32 at least."""

    def wide(values: Tensor, *args: object, **kwargs: object) -> Tensor:
        return forward(values.to(torch.promote_types(values.dtype, torch.float32)), *args, **kwargs)

    return wide


@contextmanager
def _forward_replaced(module: nn.Module, forward: Callable) -> Iterator[None]:
    """``module`` runs ``forward`` instead of its own forward on this thread's
    passes (other threads' passes run its own), until the block is left."""
    owner = threading.get_ident()
    had_own = "forward" in module.__dict__
    original = module.forward

    def dispatch(*args: object, **kwargs: object) -> object:
        return (forward if threading.get_ident() == owner else original)(*args, **kwargs)

    module.forward = dispatch
    try:
        yield
    finally:
        if had_own:
            module.forward = original
        else:
            del module.forward


@contextmanager
def rules_in_place(adapter: SwinAdapter, rules: GradientRules) -> Iterator[None]:
    """While active, this thread's forward passes of the adapter's model compute
    the model's values with ``rules`` in its gradient, from the first LayerNorm on
    in float32 at least (the dtype of a wider input).

    - every ``LayerNorm`` (patch embedding, blocks, patch merging, final norm):
      ``rules.norm``;
    - every windowed attention layer: ``rules.attention`` (its re-implementation
      :meth:`~captum_saco.attr._core.families.swin.SwinAdapter.attention_forward`;
      the q, k, v and output projections keep the gradient, the relative position
      bias and the shift mask are biases) and, in cosine attention,
      ``rules.norm`` on the normalisation of q and k;
    - every MLP activation: ``rules.activation``;
    - every other ``Linear`` (MLPs, patch merging, classifier head): the gradient,
      or zennit's gamma rule with ``rules.linear_gamma > 0``.

    The patch embedding is left to the caller. The replaced forwards are restored
    on exit, also on exceptions; the model's capture lock is held meanwhile.
    """
    adapter.check_rules()
    attention = attention_rules(rules)
    inside = {id(m) for a in adapter.attention_modules() for m in a.modules()}
    with ExitStack() as stack:
        # held before the forwards are read: another thread's call has restored them
        stack.enter_context(_model_lock(adapter.model))
        forwards: Dict[nn.Module, Callable] = {}
        for module in adapter.model.modules():
            if id(module) in inside:
                continue
            if isinstance(module, nn.LayerNorm):
                forwards[module] = _widened(partial(layer_norm, module, rule=rules.norm))
            elif isinstance(module, nn.Linear):
                forwards[module] = _widened(partial(_linear, module, gamma=rules.linear_gamma))
        if rules.activation == "identity":
            for act in adapter.activations():
                forwards[act] = _widened(partial(_IdentityRule.apply, act=act.forward))
        for module in adapter.attention_modules():
            forwards[module] = _widened(adapter.attention_forward(module, attention))
        for module, forward in forwards.items():
            stack.enter_context(_forward_replaced(module, forward))
        yield
