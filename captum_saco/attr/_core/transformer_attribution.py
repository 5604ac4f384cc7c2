"""Transformer Attribution (Chefer et al., CVPR 2021)."""

import torch
from torch import Tensor

from captum_saco.attr._core.attention_rollout import _check_start_layer
from captum_saco.attr._core.engine import AttentionAttribution, AttentionTrace


class TransformerAttribution(AttentionAttribution):
    r"""Transformer Attribution (Chefer, Gur and Wolf, "Transformer
    Interpretability Beyond Attention Visualization", CVPR 2021).

    Per block, the LRP relevance ``R(A_b)`` of the attention probabilities is
    weighted by their gradient, ``Ā_b = mean_h clamp(grad(A_b) ⊙ R(A_b), min=0)``,
    and the blocks are chained without row normalisation,
    ``J = (Ā_L + I) ··· (Ā_s + I)``; the answer is the class token's row of ``J``
    without the prefix-token columns. Gradients are of the target's logit.
    The relevance is propagated from the one-hot target at the classifier's
    output through the final norm and every block with the rules of the
    authors' implementation (see :mod:`captum_saco.attr._core.relevance`),
    for the whole batch at once; unlike the original, the rescaling at residual
    connections is done per example, so an example's map does not depend on the
    rest of the batch.

    The relevance pass replays the model from the tokens entering block 0 in a
    canonical form of its layers, so the method supports the models
    :class:`AttentionAttribution` lists, as long as their blocks are plain
    pre-norm ViT blocks (an error names what the canonical form cannot express).
    The model itself runs only up to its first block; the cost is one forward
    and backward pass of the replayed blocks and the relevance pass.

    Options of :meth:`attribute`:

    - ``start_layer`` (int, default 0): the first block ``s`` chained (the
      authors' evaluation scripts use 1).

    Args:
        model (nn.Module): the ViT whose attention is read (timm, Hugging Face or
            torchvision, see :class:`AttentionAttribution`).
        forward_func (Callable, optional): a function that runs ``model`` on the
            inputs (with ``additional_forward_args``); it is run only up to the
            model's first block, and the relevance is that of the classifier
            head's logits, whatever ``forward_func`` returns. Default: ``model``.

    Examples::

        >>> import torch, timm
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> vit = timm.models.VisionTransformer(
        ...     img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2, num_classes=5).eval()
        >>> images = torch.rand(2, 3, 32, 32)
        >>> explainer = TransformerAttribution(vit)
        >>> with torch.no_grad():
        ...     maps = explainer.attribute(images, target=[0, 4])
        >>> maps.shape, bool((maps >= 0).all())
        (torch.Size([2, 3, 32, 32]), True)
        >>> explainer.attribute(images, upsample=False, start_layer=1).shape
        torch.Size([2, 1, 4, 4])
    """

    needs_relevance = True

    def _token_relevance(self, trace: AttentionTrace, *, start_layer: int = 0) -> Tensor:
        """The class token's row of ``J``, as an ``(N, 1, T)`` matrix."""
        _check_start_layer(start_layer, len(trace.attentions))
        assert trace.gradients is not None and trace.relevances is not None
        # Row 0 of (Ā_L + I) ··· (Ā_s + I), from the left: r ← r Ā_b + r.
        first = trace.relevances[0]
        row = first.new_zeros(first.shape[0], 1, first.shape[-1])
        row[:, 0, 0] = 1
        for gradient, relevance in zip(
            reversed(trace.gradients[start_layer:]), reversed(trace.relevances[start_layer:])
        ):
            weighted = (gradient * relevance).clamp_(min=0).mean(dim=1)
            row = torch.baddbmm(row, row, weighted)
        return row
