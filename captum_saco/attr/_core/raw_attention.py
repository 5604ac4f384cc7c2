"""Raw attention: the last block's attention of the class token."""

from torch import Tensor

from captum_saco.attr._core.engine import AttentionAttribution, AttentionTrace


class RawAttention(AttentionAttribution):
    r"""The class token's attention in the last block, averaged over heads:
    ``mean_h A_L``; for a head that does not read the class token, ``s · mean_h A_L``
    with the head's read-out vector ``s`` (the uniform average over the tokens a
    mean-pooled head averages; for a MAP head, attention pooling, the head's
    attention over the tokens, mean over heads, one ``s`` per example). Needs no
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
        >>> RawAttention(vit).attribute(images).shape
        torch.Size([2, 3, 32, 32])
        >>> RawAttention(vit).attribute(images, target=1, upsample=False).shape
        torch.Size([2, 1, 4, 4])
    """

    def _token_relevance(self, trace: AttentionTrace) -> Tensor:
        return trace.read(trace.attentions[-1].mean(dim=1))
