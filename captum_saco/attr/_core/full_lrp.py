"""LRP of a whole Vision Transformer down to the pixels (Chefer et al.'s ``method="full"``)."""

from contextlib import ExitStack
from typing import Any, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_saco._utils import TargetType
from captum_saco.attr._core.engine import AttentionAttribution, Needs
from captum_saco.attr._core.families import ViTParts, _model_lock, this_thread_only
from captum_saco.attr._core.relevance import (
    CHEFER_RULES,
    AttentionRelevance,
    attention_relevance,
    check_precision,
    computing_in,
    z_box,
)
from captum_saco.attr._core.replay import layer_norm
from captum_saco.attr._core.transformer_attribution import map_dtype


class FullLRP(AttentionAttribution):
    r"""LRP of the whole ViT down to the pixels, as Chefer, Gur and Wolf's
    implementation runs it with ``method="full"`` (the "LRP" baseline of
    "Transformer Interpretability Beyond Attention Visualization", CVPR 2021).

    The relevance is seeded with the one-hot target at the classifier's output
    and propagated through the final norm and every block with the rules of the
    authors' implementation
    (:data:`~captum_saco.attr._core.relevance.CHEFER_RULES`), then split between
    the token embeddings and the position embedding by the residual rule
    (:func:`~captum_saco.attr._core.relevance.z_rule_rescaled`, per example), the
    prefix tokens' share is dropped, and the patch-embedding convolution passes
    the patch tokens' relevance to the pixels by the z^B rule
    (:func:`~captum_saco.attr._core.relevance.z_box`) with each image's minimum and
    maximum (over channels and pixels) as bounds. The original applies z^B only to
    3-channel images (alpha1-beta0 otherwise); here it applies to any number of
    channels. A norm between the patch embedding and block 0 (timm's
    ``embed_norm_layer`` on the patch tokens, ``norm_pre`` or CLIP's
    ``ln_pre`` on the whole sequence) passes the relevance unchanged, as Chefer's
    rules do for every LayerNorm; the residual rule then splits the relevance of
    the sequence norm's *input*. The relevance is that of the classifier head's
    logits; the model runs only up to its first block and its blocks are replayed
    in canonical form.

    Precision: by default (``precision="float64"``) the patch embedding, the
    replayed blocks and the relevance pass compute in float64 whatever the
    model's dtype, and the result is returned in the inputs' dtype (float32 for
    half-precision inputs). The residual
    rule divides by sums that nearly cancel: on the reference ViT of the tests a
    float32 run of the original is up to 0.5 % of the maximum off its float64
    run, and on other weights O(1) off. ``precision="model"`` computes in the
    model's dtype, as the original does.

    Args:
        model (nn.Module): the ViT (timm, Hugging Face or torchvision, see
            :class:`AttentionAttribution`) whose tokens entering block 0 are its
            prefix and patch embeddings plus a position embedding.
        forward_func (Callable, optional): a function that runs ``model`` on the
            inputs, handing them to the patch embedding with their shape; it is run
            only up to the model's first block. Default: ``model``.

    Examples::

        >>> import torch, timm
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> vit = timm.models.VisionTransformer(
        ...     img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2, num_classes=5).eval()
        >>> images = torch.rand(2, 3, 32, 32)
        >>> pixels = FullLRP(vit).attribute(images, target=[0, 4])
        >>> pixels.shape, pixels.dtype
        (torch.Size([2, 3, 32, 32]), torch.float32)
        >>> FullLRP(vit).attribute(images, target=[0, 4], upsample=False).shape
        torch.Size([2, 1, 4, 4])
    """

    needs = Needs.RELEVANCE

    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor]],
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        precision: str = "float64",
        upsample: bool = True,
        max_examples_per_batch: Optional[int] = None,
    ) -> Union[Tensor, Tuple[Tensor]]:
        r"""
        Args:
            inputs (Tensor or tuple[Tensor]): images ``(N, C, H, W)`` as the model
                takes them, or a tuple holding that one tensor.
            target (int, tuple, Tensor, list, optional): the class explained for
                each example, in any form Captum accepts. Default: the predicted
                class.
            additional_forward_args (Any, optional): further positional arguments of
                ``forward_func`` after the inputs (a non-tuple is passed as one
                argument); with ``max_examples_per_batch``, tensors among them are
                split with the inputs.
            precision (str, optional): ``"float64"`` (default) computes the
                relevance pass in float64, ``"model"`` in the model's dtype (see
                the class description).
            upsample (bool, optional): if ``True`` (default), the pixels'
                relevance ``(N, C, H, W)``; if ``False``, the patch tokens'
                relevance ``(N, 1, h, w)`` (summed over the embedding dimension)
                that the convolution's rule distributes over the pixels.
            max_examples_per_batch (int, optional): the most examples explained at
                once (same results, memory bounded by the chunk). Default: all at
                once.

        Returns:
            *Tensor* or *tuple[Tensor]* of **attributions**: the relevance, signed,
            summing to about 1 per example (up to what biases and the position
            embedding take), in the same form as ``inputs``, in their dtype
            (float32 for half-precision inputs) and on their device.
        """
        check_precision(precision)
        return self._attribute(
            inputs,
            target,
            additional_forward_args,
            upsample=upsample,
            max_examples_per_batch=max_examples_per_batch,
            precision=precision,
        )

    def _relevance(self, parts: ViTParts, tokens: Tensor, target: TargetType) -> AttentionRelevance:
        return attention_relevance(parts, tokens, target, gradients=False, input_relevance=True)

    def _explain(
        self, images: Tensor, target: TargetType, extra: Tuple, *, upsample: bool, precision: str
    ) -> Tensor:
        conv = self._adapter.patch_embedding()
        prefix = self._adapter.prefix_tokens()
        path = self._adapter.embedding_path()
        norms = self._adapter.embedding_norms()
        patch_norms = [norm for name, norm in norms if path[name] == "patch_layernorm"]
        sequence_norms = [norm for name, norm in norms if path[name] == "layernorm"]
        seen: List[Tensor] = []
        summed: List[Tensor] = []  # the input of the first norm on the whole sequence
        # Under the model's capture lock, so that no other thread's attribution call
        # reaches the hooks, and acting on this thread's passes only. Registered
        # before computing_in's own hooks, so that they see the inputs as computed.
        with _model_lock(self._adapter.model), ExitStack() as stack:
            keep = this_thread_only(lambda module, args: seen.append(args[0]))
            stack.callback(conv.register_forward_pre_hook(keep).remove)
            if sequence_norms:
                keep_sum = this_thread_only(lambda module, args: summed.append(args[0]))
                stack.callback(sequence_norms[0].register_forward_pre_hook(keep_sum).remove)
            stack.enter_context(computing_in(self._adapter, precision))
            trace = self._trace(images, target, extra)
        assert trace.input_relevance is not None
        dtype = trace.tokens.dtype
        pixels = seen[0].detach().to(dtype)
        if pixels.shape != images.shape:
            raise ValueError(
                f"forward_func: FullLRP needs the images handed to the patch embedding with "
                f"their shape {tuple(images.shape)}, got {tuple(pixels.shape)}"
            )
        with torch.no_grad():
            relevance = self._patch_relevance(
                conv,
                patch_norms,
                prefix,
                pixels,
                summed[0].detach().to(dtype) if summed else trace.tokens,
                trace.input_relevance,
            )
            if upsample:
                bounds = [
                    pixels.amin(dim=(1, 2, 3), keepdim=True),
                    pixels.amax(dim=(1, 2, 3), keepdim=True),
                ]
                relevance = z_box(conv, pixels, relevance, *bounds)
            else:
                relevance = relevance.sum(dim=1, keepdim=True)
        return relevance.to(map_dtype(images))

    @staticmethod
    def _patch_relevance(
        conv: nn.Conv2d,
        patch_norms: List[nn.LayerNorm],
        prefix: Tensor,
        pixels: Tensor,
        summed: Tensor,
        relevance: Tensor,
    ) -> Tensor:
        """``(N, D, h, w)`` the relevance of the patch embeddings (the convolution's
        output), from that of the tokens entering block 0 (``relevance``), which is
        that of ``summed``, the prefix and patch embeddings plus the position
        embedding (the norms in between pass it unchanged)."""
        bias = None if conv.bias is None else conv.bias.to(pixels.dtype)
        layout = (conv.stride, conv.padding, conv.dilation, conv.groups)
        patches = F.conv2d(pixels, conv.weight.to(pixels.dtype), bias, *layout)
        n, dim, h, w = patches.shape
        tokens = patches.flatten(2).transpose(1, 2)
        for norm in patch_norms:
            tokens = layer_norm(norm, tokens)
        embedded = torch.cat([prefix.to(pixels.dtype).expand(n, -1, -1), tokens], dim=1)
        embedded_relevance, _ = CHEFER_RULES.residual(embedded, summed - embedded, relevance)
        return embedded_relevance[:, prefix.shape[1] :].transpose(1, 2).reshape(n, dim, h, w)
