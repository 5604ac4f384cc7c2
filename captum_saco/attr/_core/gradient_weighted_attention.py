"""Gradient-weighted multi-layer attention (Chefer et al., ICCV 2021)."""

from typing import Any, Optional, Tuple, Union

import torch
from torch import Tensor

from captum_saco._utils import TargetType, check_flag
from captum_saco.attr._core.engine import (
    AttentionAttribution,
    AttentionTrace,
    Needs,
    documented_options,
)


def _weighted(attention: Tensor, gradient: Tensor) -> Tensor:
    """``mean_h clamp(grad(A) ⊙ A, min=0)``."""
    return (gradient * attention).clamp(min=0).mean(dim=1)


class GradientWeightedAttention(AttentionAttribution):
    r"""The gradient-weighted attention rule of Chefer et al., "Generic
    Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder
    Transformers" (ICCV 2021), known as Transformer-MM: ``R = I`` and, block by
    block from the first, ``R ← R + mean_h clamp(grad(A_b) ⊙ A_b, min=0) · R``;
    the class token's row of ``R``, or for a head that does not read the class
    token ``s · R`` with the head's read-out vector ``s`` (see
    :attr:`AttentionTrace.readout`). Gradients are of the target's logit; one
    backward pass serves the whole batch.

    For a MAP head (attention pooling) ``s`` is the head's plain attention over
    the tokens (mean over heads), a constant: the gradients, which flow through
    the head, weight the blocks' attention, while the head's own attention is
    not weighted by its gradient (treating the head as one more attention layer
    of the rule would read ``s`` as ``mean_h clamp(grad(A_head) ⊙ A_head,
    min=0)``; not done, so that every method reads the blocks from one ``s``).

    Args:
        model (nn.Module): the ViT whose attention is read (timm, Hugging Face or
            torchvision, see :class:`AttentionAttribution`).
        forward_func (Callable, optional): the function whose output is explained;
            it must run ``model``. Default: ``model``.

    Examples::

        >>> import torch, timm
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> vit = timm.models.VisionTransformer(
        ...     img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2, num_classes=5).eval()
        >>> images = torch.rand(2, 3, 32, 32)
        >>> with torch.no_grad():
        ...     maps = GradientWeightedAttention(vit).attribute(images, target=[0, 4])
        >>> maps.shape, bool((maps >= 0).all())
        (torch.Size([2, 3, 32, 32]), True)
    """

    needs = Needs.GRADIENTS

    @documented_options(
        """
        aggregate_layers (bool, optional): if ``False``, only the last block is
            used, ``mean_h clamp(grad(A_L) ⊙ A_L, min=0)`` (the "gradient, no
            aggregation" ablation of the SaCo paper). Default: ``True``.
        """
    )
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor]],
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        aggregate_layers: bool = True,
        upsample: bool = True,
        max_examples_per_batch: Optional[int] = None,
    ) -> Union[Tensor, Tuple[Tensor]]:
        check_flag("aggregate_layers", aggregate_layers)
        return self._attribute(
            inputs,
            target,
            additional_forward_args,
            upsample=upsample,
            max_examples_per_batch=max_examples_per_batch,
            aggregate_layers=aggregate_layers,
        )

    def _token_relevance(self, trace: AttentionTrace, *, aggregate_layers: bool) -> Tensor:
        assert trace.gradients is not None
        if not aggregate_layers:
            return trace.read(_weighted(trace.attentions[-1], trace.gradients[-1]))
        first = trace.attentions[0]
        relevance = torch.eye(first.shape[-1], dtype=first.dtype, device=first.device)
        relevance = relevance.expand(first.shape[0], -1, -1)
        for attention, gradient in zip(trace.attentions, trace.gradients):
            relevance = relevance + _weighted(attention, gradient) @ relevance
        return trace.read(relevance)
