"""Partial LRP (Voita et al., ACL 2019, as run on ViTs by Chefer et al., CVPR 2021)."""

from typing import Any, Optional, Tuple, Union

from torch import Tensor

from captum_saco._utils import TargetType
from captum_saco.attr._core.engine import (
    AttentionAttribution,
    AttentionTrace,
    Needs,
    documented_options,
)
from captum_saco.attr._core.families import ViTParts
from captum_saco.attr._core.relevance import (
    AttentionRelevance,
    attention_relevance,
    check_precision,
)
from captum_saco.attr._core.transformer_attribution import (
    _PRECISION_OPTION,
    RelevancePrecision,
)


class PartialLRP(RelevancePrecision, AttentionAttribution):
    r"""Partial LRP: the LRP relevance of the last block's attention probabilities
    (Voita et al., "Analyzing Multi-Head Self-Attention", ACL 2019, as the
    baseline of Chefer, Gur and Wolf, CVPR 2021, whose implementation this
    follows), ``mean_h clamp(R(A_L), min=0)``, the class token's row without the
    prefix-token columns; for a head that does not read the class token, the
    head's read-out vector ``s`` times that matrix (see
    :attr:`~captum_saco.attr._core.engine.AttentionTrace.readout`).

    The relevance is propagated from the one-hot target at the head's output
    (through a pooling head and a zero-shot head as
    :mod:`~captum_saco.attr._core.relevance` describes) through the final norm
    and the last block with the rules of Chefer et
    al.'s implementation (:data:`~captum_saco.attr._core.relevance.CHEFER_RULES`);
    the pass stops there and takes no gradient. Like
    :class:`TransformerAttribution`, the model runs only up to its first block
    and the blocks are replayed in canonical form.

    Precision: by default (``precision="float64"``) the patch embedding, the
    replayed blocks and the relevance pass compute in float64 whatever the
    model's dtype, and the map is returned in the inputs' dtype (float32 for
    half-precision inputs): the residual rule divides by sums that nearly
    cancel, so that a float32 computation is up to 3.7e-4 of the maximum off
    float64 on the reference ViT of the tests (the original's own float32 run
    likewise) and depends on the rounding of every earlier layer.
    ``precision="model"`` computes in the model's dtype, as the original does.

    Args:
        model (nn.Module): the ViT whose attention is read (timm, Hugging Face or
            torchvision, see :class:`AttentionAttribution`).
        forward_func (Callable, optional): a function that runs ``model`` on the
            inputs; it is run only up to the model's first block, and the
            relevance is that of the classifier head's logits. Default: ``model``.

    Examples::

        >>> import torch, timm
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> vit = timm.models.VisionTransformer(
        ...     img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2, num_classes=5).eval()
        >>> images = torch.rand(2, 3, 32, 32)
        >>> maps = PartialLRP(vit).attribute(images, target=[0, 4])
        >>> maps.shape, maps.dtype, bool((maps >= 0).all())
        (torch.Size([2, 3, 32, 32]), torch.float32, True)
        >>> PartialLRP(vit).attribute(images, upsample=False).shape
        torch.Size([2, 1, 4, 4])
    """

    needs = Needs.RELEVANCE

    @documented_options(_PRECISION_OPTION)
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
        last = len(parts.blocks) - 1
        return attention_relevance(parts, tokens, target, gradients=False, first_block=last)

    def _token_relevance(self, trace: AttentionTrace) -> Tensor:
        """The class token's row of ``mean_h clamp(R(A_L), min=0)``, ``(N, T)``."""
        assert trace.relevances is not None and trace.relevances[-1] is not None
        return trace.read(trace.relevances[-1].clamp(min=0).mean(dim=1))
