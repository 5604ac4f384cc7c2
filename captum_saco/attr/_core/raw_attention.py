"""Raw attention: the last block's attention of the class token."""

from typing import Any, Optional, Tuple, Union

from torch import Tensor

from captum_saco._utils import TargetType
from captum_saco.attr._core.engine import AttentionAttribution, AttentionTrace


class RawAttention(AttentionAttribution):
    r"""The class token's attention in the last block, averaged over heads:
    ``mean_h A_L``. Needs no gradient and runs no backward pass.

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

    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor]],
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
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
            upsample (bool, optional): if ``True`` (default), the patch-grid map is
                upsampled bilinearly to ``(H, W)`` and repeated over the ``C``
                channels; if ``False``, the patch grid ``(N, 1, h, w)`` is returned.
            max_examples_per_batch (int, optional): the most examples run through
                the model at once (same results, memory bounded by the chunk).
                Default: all at once.

        Returns:
            *Tensor* or *tuple[Tensor]* of **attributions**: the class token's
            attention to every patch, in the same form as ``inputs`` and on their
            device.
        """
        return self._attribute(
            inputs,
            target,
            additional_forward_args,
            upsample=upsample,
            max_examples_per_batch=max_examples_per_batch,
        )

    def _token_relevance(self, trace: AttentionTrace) -> Tensor:
        return trace.attentions[-1][:, :, 0].mean(dim=1)
