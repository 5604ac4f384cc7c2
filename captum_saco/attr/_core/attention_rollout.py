"""Attention rollout (Abnar & Zuidema, 2020)."""

import torch
from torch import Tensor

from captum_saco.attr._core.engine import AttentionAttribution, AttentionTrace

_HEAD_FUSIONS = ("mean", "max", "min")


def _check_start_layer(start_layer: int, num_blocks: int) -> None:
    if isinstance(start_layer, bool) or not isinstance(start_layer, int):
        raise TypeError(f"start_layer: expected an int, got {type(start_layer).__name__}")
    if not 0 <= start_layer < num_blocks:
        raise ValueError(
            f"start_layer: expected a block index in [0, {num_blocks}), got {start_layer}"
        )


class AttentionRollout(AttentionAttribution):
    r"""Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in
    Transformers", ACL 2020): per block ``Â_b = rownorm(fuse_h A_b + I)``, rolled
    out as ``J = Â_L ··· Â_s``; the class token's row of ``J``. Needs no gradient
    and runs no backward pass.

    Options of :meth:`attribute`:

    - ``start_layer`` (int, default 0): the first block ``s`` rolled out.
    - ``head_fusion`` (str, default ``"mean"``): how the heads are fused,
      ``"mean"``, ``"max"`` or ``"min"``.
    - ``discard_ratio`` (float in ``[0, 1)``, default 0): per example and block,
      this fraction of the fused attention's entries, the lowest ones, is set to
      zero before the identity is added (the "discard" variant popularised by
      jacobgil/vit-explain).

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

    def _token_relevance(
        self,
        trace: AttentionTrace,
        *,
        start_layer: int = 0,
        head_fusion: str = "mean",
        discard_ratio: float = 0.0,
    ) -> Tensor:
        _check_start_layer(start_layer, len(trace.attentions))
        if head_fusion not in _HEAD_FUSIONS:
            raise ValueError(f"head_fusion: expected one of {_HEAD_FUSIONS}, got {head_fusion!r}")
        if not 0.0 <= discard_ratio < 1.0:
            raise ValueError(f"discard_ratio: expected a value in [0, 1), got {discard_ratio}")
        joint = None
        for attention in trace.attentions[start_layer:]:
            fused = _fuse_heads(attention, head_fusion)
            if discard_ratio > 0:
                fused = _discard_lowest(fused, discard_ratio)
            fused = fused + torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
            fused = fused / fused.sum(dim=-1, keepdim=True)
            joint = fused if joint is None else fused @ joint
        assert joint is not None
        return joint


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
