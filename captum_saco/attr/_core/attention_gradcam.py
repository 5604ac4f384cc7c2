"""Grad-CAM on the last block's attention (as run by Chefer et al., CVPR 2021)."""

from torch import Tensor

from captum_saco.attr._core.engine import AttentionAttribution, AttentionTrace, Needs


class AttentionGradCAM(AttentionAttribution):
    r"""Grad-CAM (Selvaraju et al., ICCV 2017) on the last block's attention, the
    baseline of Chefer, Gur and Wolf, "Transformer Interpretability Beyond
    Attention Visualization" (CVPR 2021) and of the SaCo paper: per head ``h``,
    the class token's attention row ``A_L[h, 0]`` weighted by the head's mean
    gradient over the patch entries of that row,
    ``w_h = mean_j ∂y_t/∂A_L[h, 0, j]``; then the mean over heads, clamped at 0:
    ``clamp(mean_h w_h A_L[h, 0], min=0)``. For a head that does not read the
    class token, the row ``A_L[h, 0]`` and its gradient are ``s · A_L[h]`` and
    ``s · ∂y_t/∂A_L[h]`` with the head's read-out vector ``s`` (see
    :attr:`AttentionTrace.readout`; for a MAP head, its attention over the tokens,
    taken as a constant). Gradients are of the target's logit;
    one backward pass per chunk of examples.

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
        ...     maps = AttentionGradCAM(vit).attribute(images, target=[0, 4])
        >>> maps.shape, bool((maps >= 0).all())
        (torch.Size([2, 3, 32, 32]), True)
    """

    needs = Needs.GRADIENTS

    def _token_relevance(self, trace: AttentionTrace) -> Tensor:
        assert trace.gradients is not None
        row = trace.read(trace.attentions[-1])  # (N, heads, T)
        gradient = trace.read(trace.gradients[-1])
        weights = gradient[:, :, trace.num_prefix_tokens :].mean(dim=-1, keepdim=True)
        return (weights * row).mean(dim=1).clamp(min=0)
