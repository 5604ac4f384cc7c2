"""The named explanation methods and faithfulness metrics of :func:`evaluate`.

A new method is one entry in :data:`METHODS`: a builder ``(model, seed) ->
attribute`` where ``attribute(inputs, target, indices)`` returns the
attributions of a batch (``indices`` are the images' positions in the whole
data set, for methods seeded per image). A new metric is one entry in
:data:`_METRICS`: the measurement it reads and how it reads it.
"""

import copy
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from captum.attr import Attribution, IntegratedGradients, Saliency
from torch import Tensor, nn

from captum_saco._utils import model_output
from captum_saco.attr import (
    AttCAT,
    AttentionAttribution,
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

# (inputs, target, global indices of the examples[, additional forward args]) -> attributions
AttributeFn = Callable[..., Tensor]
# (model, seed, **options of attribute) -> AttributeFn
MethodBuilder = Callable[..., AttributeFn]


def logits_of(model: Callable[..., Any]) -> Callable[..., Tensor]:
    """``model`` as a function returning the logits tensor (Captum's gradient
    methods need a tensor, Hugging Face models return an output object)."""
    return lambda *args: model_output(model(*args))


def _random_builder(model: nn.Module, seed: int, **options: Any) -> AttributeFn:
    method = RandomAttribution(model)

    def attribute(
        inputs: Tensor, target: Tensor, indices: Tensor, extra: Optional[Tuple[Any, ...]] = None
    ) -> Tensor:
        # One generator per image, seeded by its index in the whole data set:
        # the maps do not depend on batching or on sharding across processes.
        generators = [torch.Generator().manual_seed(seed + int(i)) for i in indices]
        return method.attribute(inputs, generator=generators, **options)

    return attribute


def _attribute_with(method: Attribution, **options: Any) -> AttributeFn:
    """Call ``method.attribute(inputs, target=target, **options)``, with the
    additional forward arguments when there are some."""

    def attribute(
        inputs: Tensor, target: Tensor, indices: Tensor, extra: Optional[Tuple[Any, ...]] = None
    ) -> Tensor:
        kwargs = options if extra is None else {**options, "additional_forward_args": extra}
        # A fresh leaf that requires grad: gradient methods need one, and the
        # caller's tensor stays untouched.
        return method.attribute(inputs.detach().requires_grad_(), target=target, **kwargs)

    return attribute


def _vit_builder(cls: Callable[[nn.Module], Attribution]) -> MethodBuilder:
    """A builder for a ViT attribution class, which takes the model itself."""
    return lambda model, seed, **options: _attribute_with(cls(model), **options)


def _gradient_builder(cls: Callable[[Callable], Attribution], **defaults: Any) -> MethodBuilder:
    """A builder for a Captum method that takes a forward function: the model's logits."""
    return lambda model, seed, **options: _attribute_with(
        cls(logits_of(model)), **{**defaults, **options}
    )


def _on_logits(method: Attribution) -> Attribution:
    """``method`` itself, or, where its ``forward_func`` is a model (a Hugging
    Face model returns an output object, which Captum's methods cannot
    index), a shallow copy whose ``forward_func`` returns the logits; so is the
    method that a wrapper such as ``NoiseTunnel`` holds. The user's instance
    is not modified. The methods of :mod:`captum_saco.attr` read the model
    themselves and are used as they are."""
    if type(method).__module__.startswith("captum_saco.") or not isinstance(
        getattr(method, "forward_func", None), nn.Module
    ):
        return method
    copied = copy.copy(method)
    copied.forward_func = logits_of(method.forward_func)
    inner = getattr(method, "attribution_method", None)
    if isinstance(inner, Attribution):
        copied.attribution_method = _on_logits(inner)  # type: ignore[attr-defined]
    return copied


def _instance_builder(method: Attribution) -> MethodBuilder:
    """A builder for a ready-made attribution instance."""
    return lambda model, seed, **options: _attribute_with(_on_logits(method), **options)


def _class_builder(cls: type) -> MethodBuilder:
    """A builder for an attribution class: :class:`RandomAttribution` seeded per
    image, a ViT class of :mod:`captum_saco.attr` on the model, any other
    Captum class on the model's logits."""
    if issubclass(cls, RandomAttribution):
        return _random_builder
    if issubclass(cls, AttentionAttribution):
        return _vit_builder(cls)
    return _gradient_builder(cls)


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

MethodSpec = Union[str, Attribution, type]
MethodsType = Union[
    Sequence[str], Mapping[str, Union[MethodSpec, Tuple[MethodSpec, Mapping[str, Any]]]]
]


def _method_builder(name: str, method: Any) -> MethodBuilder:
    """The builder of ``methods[name]``: a name, an attribution instance or
    class, or ``(any of these, {option: value})`` with options of its
    ``attribute`` (such as ``start_layer`` or ``n_steps``)."""
    options: Mapping[str, Any] = {}
    if isinstance(method, tuple) and len(method) == 2 and isinstance(method[1], Mapping):
        method, options = method
        bad = [k for k in options if not isinstance(k, str)]
        if bad:
            raise TypeError(f"methods: the options of {name!r} must be named by str, got {bad[0]!r}")
    if isinstance(method, Attribution):
        builder = _instance_builder(method)
    elif isinstance(method, type) and issubclass(method, Attribution):
        builder = _class_builder(method)
    elif isinstance(method, str) and method in METHODS:
        builder = METHODS[method]
    elif isinstance(method, str):
        raise ValueError(
            f"methods: unknown method {method!r} for {name!r}; choose from {', '.join(METHODS)}"
        )
    else:
        raise TypeError(
            f"methods: expected a method name, a captum Attribution instance or class, or "
            f"(one of these, {{option: value}}) for {name!r}, got {type(method).__name__}"
        )
    if not options:
        return builder
    return lambda model, seed: builder(model, seed, **options)


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
