"""Attention rollout (Abnar & Zuidema, 2020)."""

from typing import Any, Optional, Tuple, Union

import torch
from torch import Tensor

from captum_saco._utils import TargetType
from captum_saco.attr._core.engine import AttentionAttribution, AttentionTrace, check_start_layer

_HEAD_FUSIONS = ("mean", "max", "min")


class AttentionRollout(AttentionAttribution):
    r"""Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in
    Transformers", ACL 2020): per block ``Â_b = rownorm(fuse_h A_b + I)``, rolled
    out as ``J = Â_L ··· Â_s``; the class token's row of ``J``. Needs no gradient
    and runs no backward pass.

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
        r"""
        Args:
            inputs (Tensor or tuple[Tensor]): images ``(N, C, H, W)`` as the model
                takes them, or a tuple holding that one tensor.
            target (int, tuple, Tensor, list, optional): the output index explained
                for each example, in any form Captum accepts. The map itself does
                not depend on it (attention is read, not differentiated); it is
                checked against the model's output. Default: the predicted class.
            additional_forward_args (Any, optional): further positional arguments of
                ``forward_func`` after the inputs (a non-tuple is passed as one
                argument); with ``max_examples_per_batch``, tensors among them are
                split with the inputs.
            start_layer (int, optional): the first block ``s`` rolled out.
                Default: 0.
            head_fusion (str, optional): how the heads are fused, ``"mean"``,
                ``"max"`` or ``"min"``. Default: ``"mean"``.
            discard_ratio (float, optional): in ``[0, 1)``; per example and block,
                this fraction of the fused attention's entries, the lowest ones, is
                set to zero before the identity is added (the "discard" variant
                popularised by jacobgil/vit-explain). Default: 0.
            upsample (bool, optional): if ``True`` (default), the patch-grid map is
                upsampled bilinearly to ``(H, W)`` and repeated over the ``C``
                channels; if ``False``, the patch grid ``(N, 1, h, w)`` is returned.
            max_examples_per_batch (int, optional): the most examples run through
                the model at once (same results, memory bounded by the chunk).
                Default: all at once.

        Returns:
            *Tensor* or *tuple[Tensor]* of **attributions**: the class token's row
            of the rolled-out attention, in the same form as ``inputs`` and on
            their device.

        Raises:
            TypeError, ValueError: for options outside the ranges above (before the
                model runs), and as :meth:`AttentionAttribution.attribute`.
        """
        check_start_layer(start_layer, self.num_blocks)
        if head_fusion not in _HEAD_FUSIONS:
            raise ValueError(f"head_fusion: expected one of {_HEAD_FUSIONS}, got {head_fusion!r}")
        if not 0.0 <= discard_ratio < 1.0:
            raise ValueError(f"discard_ratio: expected a value in [0, 1), got {discard_ratio}")
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
        joint = None
        for attention in trace.attentions[start_layer:]:
            fused = _fuse_heads(attention, head_fusion)
            if discard_ratio > 0:
                fused = _discard_lowest(fused, discard_ratio)
            fused = fused + torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
            fused = fused / fused.sum(dim=-1, keepdim=True)
            joint = fused if joint is None else fused @ joint
        assert joint is not None
        return joint[:, 0]


def _fuse_heads(attention: Tensor, head_fusion: str) -> Tensor:
    if head_fusion == "mean":
        return attention.mean(dim=1)
    if head_fusion == "max":
        return attention.amax(dim=1)
    return attention.amin(dim=1)


def _discard_lowest(fused: Tensor, discard_ratio: float) -> Tensor:
    flat = fused.flatten(1)
    count = int(flat.shape[1] * discard_ratio)
    lowest = flat.topk(count, dim=1, largest=False).indices
    return flat.scatter(1, lowest, 0.0).view_as(fused)
