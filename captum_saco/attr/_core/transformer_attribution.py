"""Transformer Attribution (Chefer et al., CVPR 2021)."""

import torch
from torch import Tensor

from captum_saco.attr._core.attention_rollout import _check_start_layer
from captum_saco.attr._core.engine import AttentionAttribution, AttentionTrace
from captum_saco.attr._core.relevance import attention_relevance


def _check_logits(logits: Tensor, scores: Tensor) -> None:
    """The relevance pass explains the logits; refuse a forward_func that returns
    something else (finite examples only: a bad example becomes NaN, not an error)."""
    if logits.shape != scores.shape:
        raise ValueError(
            f"forward_func: TransformerAttribution explains the model's logits, of shape "
            f"{tuple(logits.shape)}, but forward_func returned class scores of shape "
            f"{tuple(scores.shape)}"
        )
    finite = torch.isfinite(scores).all(dim=1) & torch.isfinite(logits).all(dim=1)
    if not finite.any():
        return
    scores, logits = scores[finite], logits[finite].to(scores.dtype)
    tolerance = max(1e-3, 8 * torch.finfo(scores.dtype).eps)
    scale = scores.abs().amax(dim=1).clamp(min=1.0)
    if ((logits - scores).abs().amax(dim=1) > tolerance * scale).any():
        raise ValueError(
            "forward_func: its output is not the model's logits; TransformerAttribution "
            "propagates relevance from the logits of the classifier head, so forward_func "
            "must return them unchanged (and the model must be in eval mode: dropout makes "
            "every pass differ)"
        )


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
    It costs one forward pass without gradient, one forward and backward pass of
    the blocks and the relevance pass.

    Options of :meth:`attribute`:

    - ``start_layer`` (int, default 0): the first block ``s`` chained (the
      authors' evaluation scripts use 1).

    Args:
        model (nn.Module): the ViT whose attention is read (timm, Hugging Face or
            torchvision, see :class:`AttentionAttribution`).
        forward_func (Callable, optional): the function whose output is explained;
            it must run ``model`` and return its logits. Default: ``model``.

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

    # The gradients come from the relevance pass's own replay of the blocks, so
    # the model itself runs once, without gradient.
    needs_gradients = False

    def _token_relevance(self, trace: AttentionTrace, *, start_layer: int = 0) -> Tensor:
        """The class token's row of ``J``, as an ``(N, 1, T)`` matrix."""
        _check_start_layer(start_layer, len(trace.attentions))
        with torch.inference_mode(False):
            # Inside inference_mode() the trace holds inference tensors, which the
            # replay's autograd graph cannot save: it works on normal copies.
            tokens, classes = (
                (t.clone() if t.is_inference() else t) for t in (trace.tokens, trace.classes)
            )
            result = attention_relevance(self._adapter.parts(), tokens, classes)
        _check_logits(result.logits, trace.scores)
        # Row 0 of (Ā_L + I) ··· (Ā_s + I), from the left: r ← r Ā_b + r.
        first = result.relevances[0]
        row = first.new_zeros(first.shape[0], 1, first.shape[-1])
        row[:, 0, 0] = 1
        for gradient, relevance in zip(
            reversed(result.gradients[start_layer:]), reversed(result.relevances[start_layer:])
        ):
            weighted = (gradient * relevance).clamp_(min=0).mean(dim=1)
            row = torch.baddbmm(row, row, weighted)
        return row
