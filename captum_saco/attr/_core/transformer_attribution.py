"""Transformer Attribution (Chefer et al., CVPR 2021)."""

from typing import Any, Optional, Tuple, Union

import torch
from torch import Tensor

from captum_saco._utils import TargetType
from captum_saco.attr._core.engine import (
    AttentionAttribution,
    AttentionTrace,
    Needs,
    check_start_layer,
    documented_options,
)
from captum_saco.attr._core.relevance import check_precision, computing_in

_PRECISION_OPTION = """precision (str, optional): ``"float64"`` (default) computes the
    relevance pass in float64, ``"model"`` in the model's dtype (see
    the class description).
"""

_START_LAYER_OPTION = """start_layer (int, optional): the first block ``s`` chained (the
    authors' evaluation scripts use 1). Default: 0.
"""


def map_dtype(images: Tensor) -> torch.dtype:
    """The dtype of the LRP methods' maps: the inputs', float32 for float16 and
    bfloat16 inputs (a relevance computed in float64 and rounded to bfloat16
    would tie values that differ)."""
    return torch.promote_types(images.dtype, torch.float32)


class RelevancePrecision:
    """Mixin of the LRP methods: their ``precision`` option (see
    :data:`~captum_saco.attr._core.relevance.PRECISIONS`). The maps come back in
    :func:`map_dtype`."""

    def _explain(
        self, images: Tensor, target: TargetType, extra: Tuple, *, precision: str, **options: Any
    ) -> Tensor:
        with computing_in(self._adapter, precision):  # type: ignore[attr-defined]
            maps = super()._explain(images, target, extra, **options)  # type: ignore[misc]
        return maps.to(map_dtype(images))


class TransformerAttribution(RelevancePrecision, AttentionAttribution):
    r"""Transformer Attribution (Chefer, Gur and Wolf, "Transformer
    Interpretability Beyond Attention Visualization", CVPR 2021).

    Per block, the LRP relevance ``R(A_b)`` of the attention probabilities is
    weighted by their gradient, ``Ā_b = mean_h clamp(grad(A_b) ⊙ R(A_b), min=0)``,
    and the blocks are chained without row normalisation,
    ``J = (Ā_L + I) ··· (Ā_s + I)``; the answer is the class token's row of ``J``
    without the prefix-token columns (for a head that does not read the class
    token, ``s J`` with the head's read-out vector ``s``: the uniform average over
    the tokens a mean-pooled head averages, ``½ e_0 + ½`` the patch mean for
    DINOv2, the head's attention over the tokens of each image, mean over its
    heads, for an attention-pooling (MAP) head). Gradients are of the target's
    logit. The relevance is propagated from the one-hot target at the head's output
    through the head (a pooling, attention-pooling or zero-shot head too), the
    final norm and every
    block with the rules of the authors' implementation (see
    :mod:`captum_saco.attr._core.relevance`),
    for the whole batch at once; unlike the original, the rescaling at residual
    connections is done per example, so an example's map does not depend on the
    rest of the batch.

    The relevance pass replays the model from the tokens entering block 0 in a
    canonical form of its layers, so the method supports the models
    :class:`AttentionAttribution` lists, as long as their blocks are plain
    pre-norm ViT blocks (an error names what the canonical form cannot express).
    The model itself runs only up to its first block; the cost is one forward
    and backward pass of the replayed blocks and the relevance pass.

    Precision: by default (``precision="float64"``) the patch embedding, the
    replayed blocks, their backward pass and the relevance pass compute in float64,
    whatever the model's dtype (the model is not touched), and the map is returned
    in the inputs' dtype (float32 for half-precision inputs). The original's
    residual rule divides by sums that nearly cancel and takes the sign of such
    sums, so in float32 the map is not the map of the model: on 64 images of the
    embedded Fashion-MNIST ViT, float32 computation is up to 5.8 % of the maximum
    off float64 (the original's own float32 and float64 runs differ likewise),
    rounding the tokens entering block 0 to float32 moves the float64 map by up to
    98 %, and an image's map depends on the batch it is in by up to 1.6e-4 of its
    maximum. In float64 the maps agree with a float64 run of the original to 4e-8
    (the float32 rounding of the returned map) and do not depend on the batch.
    ``precision="model"`` computes in the model's dtype as the original does: faster
    (see ``benchmarks/bench_attr.py``), but only right to about the differences
    above.

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

    needs = Needs.RELEVANCE

    @documented_options(_START_LAYER_OPTION + _PRECISION_OPTION)
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor]],
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        start_layer: int = 0,
        precision: str = "float64",
        upsample: bool = True,
        max_examples_per_batch: Optional[int] = None,
    ) -> Union[Tensor, Tuple[Tensor]]:
        check_start_layer(start_layer, self.num_blocks)
        check_precision(precision)
        return self._attribute(
            inputs,
            target,
            additional_forward_args,
            upsample=upsample,
            max_examples_per_batch=max_examples_per_batch,
            start_layer=start_layer,
            precision=precision,
        )

    def _token_relevance(self, trace: AttentionTrace, *, start_layer: int) -> Tensor:
        """The head's read-out row of ``J`` (the class token's), ``(N, T)``."""
        assert trace.gradients is not None and trace.relevances is not None
        # s (Ā_L + I) ··· (Ā_s + I), from the left: r ← r Ā_b + r.
        first = trace.relevances[0]
        row = trace.readout_rows().to(first.dtype)
        for gradient, relevance in zip(
            reversed(trace.gradients[start_layer:]), reversed(trace.relevances[start_layer:])
        ):
            weighted = (gradient * relevance).clamp_(min=0).mean(dim=1)
            row = torch.baddbmm(row, row, weighted)
        return row[:, 0]
