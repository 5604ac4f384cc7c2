"""AttnLRP (Achtibat et al., ICML 2024)."""

from typing import Any, Optional, Tuple, Union

from torch import Tensor

from captum_saco._utils import TargetType
from captum_saco.attr._core.engine import documented_options
from captum_saco.attr._core.gradient_x_input import (
    GRADIENT_RULE_ATTRIBUTE_DOC,
    GradientRuleAttribution,
)
from captum_saco.attr._core.replay import GradientRules


class AttnLRP(GradientRuleAttribution):
    r"""AttnLRP (Achtibat, Hatefi, Dreyer, Jain, Wiegand, Lapuschkin and Samek,
    "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for Transformers",
    ICML 2024), in the gradient-times-input form of its authors' LXT library:
    gradient times input of the target's logit where both attention products get
    the uniform rule (the gradient of the query and the key is divided by 4, that
    of the value by 2), the softmax keeps its gradient (AttnLRP's softmax rule),
    each LayerNorm's standard deviation is treated as a constant (its mean keeps
    its gradient) and the activation passes relevance unchanged (identity rule:
    gradient ``act(x) / x``, 0 at ``x == 0``; LXT divides by ``x + 1e-10``, which
    moves the results by less than 1e-7 of their maximum on the reference ViT).
    Linear layers and the patch embedding get the plain gradient (LRP-0), or
    optionally zennit's gamma rule (``linear_gamma``, ``embedding_gamma``).
    The product ``act(gate) * value`` of a gated MLP (SwiGLU, EVA-02) gets the
    uniform rule, each factor half of the relevance (LXT's ``gated_mlp_forward``);
    rotary position embeddings are linear maps of the queries and keys and
    relative position biases are biases (see
    :func:`~captum_saco.attr._core.replay.block_forward`).

    Computed as :class:`GradientRuleAttribution` describes (one backward pass for
    the batch, float32 at least).

    Args:
        model (nn.Module): the ViT to explain (timm, Hugging Face or torchvision, see
            :class:`AttentionAttribution`), with plain pre-norm LayerNorm blocks.
            The norms outside the blocks (timm's ``norm_pre`` and ``embed_norm_layer``,
            which the model runs itself, and the final norm) get the LayerNorm rule too.
            Or a Swin Transformer (timm, Hugging Face, torchvision v1 and v2), whose
            own modules get the rules (see :class:`GradientRuleAttribution`).
        forward_func (Callable, optional): a function that runs ``model`` on the
            inputs (with ``additional_forward_args``); it runs only up to the model's
            first block (a Swin Transformer runs whole, and the logits it returns
            are explained). Default: ``model``.

    Examples::

        >>> import torch, timm
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> vit = timm.models.VisionTransformer(
        ...     img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2, num_classes=5).eval()
        >>> images = torch.rand(2, 3, 32, 32)
        >>> with torch.no_grad():
        ...     pixels = AttnLRP(vit).attribute(images, target=[0, 4])
        >>> pixels.shape
        torch.Size([2, 3, 32, 32])
        >>> AttnLRP(vit).attribute(images, upsample=False).shape
        torch.Size([2, 1, 4, 4])
        >>> import torchvision
        >>> swin = torchvision.models.SwinTransformer(  # swin_t's layout, tiny
        ...     patch_size=[4, 4], embed_dim=24, depths=[2, 2], num_heads=[2, 2],
        ...     window_size=[4, 4], num_classes=5).eval()
        >>> AttnLRP(swin).attribute(images, target=1, upsample=False).shape
        torch.Size([2, 1, 8, 8])
    """

    @documented_options("", GRADIENT_RULE_ATTRIBUTE_DOC)
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor]],
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        linear_gamma: float = 0.0,
        embedding_gamma: float = 0.0,
        upsample: bool = True,
        max_examples_per_batch: Optional[int] = None,
    ) -> Union[Tensor, Tuple[Tensor]]:
        return self._attribute(
            inputs,
            target,
            additional_forward_args,
            upsample=upsample,
            max_examples_per_batch=max_examples_per_batch,
            rules=GradientRules(
                attention="uniform",
                norm="std_detached",
                activation="identity",
                gate="uniform",
                linear_gamma=linear_gamma,
                embedding_gamma=embedding_gamma,
            ),
        )
