"""Attention rollout (Abnar & Zuidema, 2020)."""

from typing import Any, Optional, Tuple, Union

import torch
from torch import Tensor

from captum_saco._utils import TargetType
from captum_saco.attr._core.engine import (
    AttentionAttribution,
    AttentionTrace,
    check_start_layer,
    documented_options,
)

_HEAD_FUSIONS = ("mean", "max", "min")


class AttentionRollout(AttentionAttribution):
    r"""Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in
    Transformers", ACL 2020): per block ``Â_b = rownorm(fuse_h A_b + I)``, rolled
    out as ``J = Â_L ··· Â_s``; the class token's row of ``J``, or for a head that
    does not read the class token ``s · J`` with the head's read-out vector ``s``
    (see :attr:`AttentionTrace.readout`: the uniform average for a mean-pooled
    head, the head's attention over the tokens for a MAP head). Needs no
    gradient and runs no backward pass.

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
        >>> rollout = AttentionRollout(vit)
        >>> rollout.attribute(images, upsample=False, start_layer=1, head_fusion="max").shape
        torch.Size([2, 1, 4, 4])
    """

    @documented_options(
        """
        start_layer (int, optional): the first block ``s`` rolled out. Default: 0.
        head_fusion (str, optional): how the heads are fused, ``"mean"``,
            ``"max"`` or ``"min"``. Default: ``"mean"``.
        discard_ratio (float, optional): in ``[0, 1)``; per example and block,
            the ``int(T² · discard_ratio)`` lowest entries of the fused attention
            are set to zero before the identity is added, except the class
            token's attention to itself (entry ``(0, 0)``), which is never
            discarded (so one entry fewer is zeroed when it is among the
            lowest): the "discard" variant of jacobgil/vit-explain's
            ``vit_rollout.py``, followed exactly. Two differences from that
            script: it divides ``(fused + I) / 2`` by ``.sum(dim=-1)``, which
            broadcasts to dividing entry ``(i, j)`` by the sum of row ``j``,
            where rows are normalised here as in Abnar & Zuidema; and it
            discards for the first example of a batch only, where every example
            is treated here. Default: 0.
        """
    )
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor]],
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        start_layer: int = 0,
        head_fusion: str = "mean",
        discard_ratio: float = 0.0,
        upsample: bool = True,
        max_examples_per_batch: Optional[int] = None,
    ) -> Union[Tensor, Tuple[Tensor]]:
        check_start_layer(start_layer, self.num_blocks)
        if head_fusion not in _HEAD_FUSIONS:
            raise ValueError(f"head_fusion: expected one of {_HEAD_FUSIONS}, got {head_fusion!r}")
        if isinstance(discard_ratio, bool) or not isinstance(discard_ratio, (int, float)):
            raise TypeError(f"discard_ratio: expected a number, got {discard_ratio!r}")
        if not 0.0 <= discard_ratio < 1.0:
            raise ValueError(f"discard_ratio: expected a value in [0, 1), got {discard_ratio}")
        if discard_ratio > 0 and not self._adapter.reads_class_token():
            raise ValueError(
                "discard_ratio: defined (as in vit-explain, which keeps the class token's "
                f"entry) only for class-token heads; {type(self._adapter.model).__name__}'s "
                "head does not read the class token"
            )
        return self._attribute(
            inputs,
            target,
            additional_forward_args,
            upsample=upsample,
            max_examples_per_batch=max_examples_per_batch,
            start_layer=start_layer,
            head_fusion=head_fusion,
            discard_ratio=discard_ratio,
        )

    def _token_relevance(
        self, trace: AttentionTrace, *, start_layer: int, head_fusion: str, discard_ratio: float
    ) -> Tensor:
        # s Â_L ··· Â_s, from the left: r ← r Â_b, b = L, ..., s.
        row = trace.readout_rows()
        for attention in reversed(trace.attentions[start_layer:]):
            fused = _fuse_heads(attention, head_fusion)
            if discard_ratio > 0:
                fused = _discard_lowest(fused, discard_ratio)
            fused = fused + torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
            row = row @ (fused / fused.sum(dim=-1, keepdim=True))
        return row[:, 0]


def _fuse_heads(attention: Tensor, head_fusion: str) -> Tensor:
    if head_fusion == "mean":
        return attention.mean(dim=1)
    if head_fusion == "max":
        return attention.amax(dim=1)
    return attention.amin(dim=1)


def _discard_lowest(fused: Tensor, discard_ratio: float) -> Tensor:
    """Zero the ``int(T² · discard_ratio)`` lowest entries of each example's
    ``(T, T)`` matrix, except entry ``(0, 0)`` (as jacobgil/vit-explain)."""
    flat = fused.flatten(1)
    count = int(flat.shape[1] * discard_ratio)
    lowest = flat.topk(count, dim=1, largest=False).indices
    discarded = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, lowest, True)
    discarded[:, 0] = False
    return flat.masked_fill(discarded, 0.0).view_as(fused)
