"""The named explanation methods and faithfulness metrics of :func:`evaluate`.

A new method is one entry in :data:`METHODS`: a builder ``(model, seed) ->
attribute`` where ``attribute(inputs, target, indices)`` returns the
attributions of a batch (``indices`` are the images' positions in the whole
data set, for methods seeded per image). A new metric is one entry in
:data:`_METRICS`: the measurement it reads and how it reads it.
"""

from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple, Union

import torch
from captum.attr import Attribution, IntegratedGradients, Saliency
from torch import Tensor, nn

from captum_saco._utils import model_output
from captum_saco.attr import (
    AttCAT,
    AttentionGradCAM,
    AttentionRollout,
    AttnLRP,
    ConservativeLRP,
    FullLRP,
    GradientWeightedAttention,
    PartialLRP,
    RandomAttribution,
    RawAttention,
    TransformerAttribution,
)
from captum_saco.metrics._core.scoring import DEFAULT_METRIC_NAMES

# (inputs, target, global indices of the examples) -> attributions
AttributeFn = Callable[[Tensor, Tensor, Tensor], Tensor]
# (model, seed) -> AttributeFn
MethodBuilder = Callable[[nn.Module, int], AttributeFn]


def logits_of(model: Callable[..., Any]) -> Callable[..., Tensor]:
    """``model`` as a function returning the logits tensor (Captum's gradient
    methods need a tensor, Hugging Face models return an output object)."""
    return lambda *args: model_output(model(*args))


def _random_builder(model: nn.Module, seed: int) -> AttributeFn:
    method = RandomAttribution(model)

    def attribute(inputs: Tensor, target: Tensor, indices: Tensor) -> Tensor:
        # One generator per image, seeded by its index in the whole data set:
        # the maps do not depend on batching or on sharding across processes.
        generators = [torch.Generator().manual_seed(seed + int(i)) for i in indices]
        return method.attribute(inputs, generator=generators)

    return attribute


def _attribute_with(method: Attribution, **kwargs: Any) -> AttributeFn:
    """Call ``method.attribute(inputs, target=target, **kwargs)``."""

    def attribute(inputs: Tensor, target: Tensor, indices: Tensor) -> Tensor:
        # A fresh leaf that requires grad: gradient methods need one, and the
        # caller's tensor stays untouched.
        return method.attribute(inputs.detach().requires_grad_(), target=target, **kwargs)

    return attribute


def _vit_builder(cls: Callable[[nn.Module], Attribution]) -> MethodBuilder:
    """A builder for a ViT attribution class, which takes the model itself."""
    return lambda model, seed: _attribute_with(cls(model))


def _gradient_builder(cls: Callable[[Callable], Attribution], **kwargs: Any) -> MethodBuilder:
    """A builder for a Captum gradient method, given the model's logits."""
    return lambda model, seed: _attribute_with(cls(logits_of(model)), **kwargs)


def _instance_builder(method: Attribution) -> MethodBuilder:
    """A builder for a ready-made attribution instance."""
    return lambda model, seed: _attribute_with(method)


METHODS: Dict[str, MethodBuilder] = {
    "random": _random_builder,
    "raw_attention": _vit_builder(RawAttention),
    "attention_rollout": _vit_builder(AttentionRollout),
    "gradient_weighted_attention": _vit_builder(GradientWeightedAttention),
    "attention_gradcam": _vit_builder(AttentionGradCAM),
    "transformer_attribution": _vit_builder(TransformerAttribution),
    "partial_lrp": _vit_builder(PartialLRP),
    "full_lrp": _vit_builder(FullLRP),
    "conservative_lrp": _vit_builder(ConservativeLRP),
    "attn_lrp": _vit_builder(AttnLRP),
    "attcat": _vit_builder(AttCAT),
    "integrated_gradients": _gradient_builder(IntegratedGradients, n_steps=50),
    "saliency": _gradient_builder(Saliency),
}
"""The named explanation methods: ``random`` (:class:`RandomAttribution`,
seeded per image), the ViT methods of :mod:`captum_saco.attr` with their
defaults (``raw_attention``, ``attention_rollout``,
``gradient_weighted_attention``, ``attention_gradcam``,
``transformer_attribution``, ``partial_lrp``, ``full_lrp``,
``conservative_lrp``, ``attn_lrp``, ``attcat``; token maps upsampled to the
input, the LRP variants at the pixels) and Captum's ``integrated_gradients``
(zero baseline, 50 steps) and ``saliency`` (absolute gradient)."""

DEFAULT_METHODS: Tuple[str, ...] = tuple(METHODS)


def _fractions(n_groups: int) -> Tuple[float, ...]:
    """The deletion steps 1/K, ..., (K-1)/K (10%, ..., 90% for K = 10)."""
    if isinstance(n_groups, bool) or not isinstance(n_groups, int) or n_groups < 2:
        raise ValueError(f"n_groups: expected an int >= 2, got {n_groups!r}")
    return tuple(k / n_groups for k in range(1, n_groups))


METRICS: Dict[str, str] = {
    "saco": "higher is better",
    "aopc": "higher is better",
    "lodds": "lower is better",
    "auc": "lower is better",
    "comprehensiveness": "lower is better",
    "insertion": "higher is better",
    "srg": "higher is better",
}
"""The named metrics of :mod:`captum_saco.metrics`, each with the direction
that means a more faithful explanation: ``saco``; ``aopc``, ``lodds`` and
``auc`` of the most-salient-first deletion curve at 1/K, ..., (K-1)/K of the
features removed (computed once for the three); ``comprehensiveness``, the
AOPC of the least-salient-first curve; ``insertion``, the area of the
most-salient-first insertion curve at the same fractions
(:func:`captum_saco.metrics.insertion_curve`); ``srg``, the Symmetric
Relevance Gain of the two deletion curves (:func:`captum_saco.metrics.srg`).
By default the first five are computed."""

DEFAULT_METRICS: Tuple[str, ...] = DEFAULT_METRIC_NAMES

MethodsType = Union[Sequence[str], Mapping[str, Union[str, Attribution]]]


def _method_builder(name: str, method: Union[str, Attribution]) -> MethodBuilder:
    if isinstance(method, Attribution):
        return _instance_builder(method)
    if isinstance(method, str) and method in METHODS:
        return METHODS[method]
    raise TypeError(
        f"methods: expected a captum Attribution or a method name for {name!r}, "
        f"got {type(method).__name__}"
    )


def resolve_methods(methods: MethodsType) -> Dict[str, MethodBuilder]:
    """Method names (or ``{name: Attribution or name}``) -> their builders."""
    if isinstance(methods, str):
        raise TypeError("methods: expected a sequence of method names, got a string")
    if isinstance(methods, Mapping):
        resolved = {name: _method_builder(name, m) for name, m in methods.items()}
    else:
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(
                f"methods: unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}"
            )
        resolved = {m: METHODS[m] for m in methods}
    if not resolved:
        raise ValueError("methods: expected at least one method, got none")
    return resolved


def resolve_metrics(metrics: Sequence[str]) -> List[str]:
    """The checked metric names (computed by :func:`captum_saco.metrics.score_attributions`)."""
    if isinstance(metrics, str):
        raise TypeError("metrics: expected a sequence of metric names, got a string")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(
            f"metrics: unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)}"
        )
    if not metrics:
        raise ValueError("metrics: expected at least one metric, got none")
    return list(metrics)
