"""Conservative LRP (Ali et al., ICML 2022)."""

from typing import Any, Optional, Tuple, Union

from torch import Tensor

from captum_saco._utils import TargetType
from captum_saco.attr._core.engine import documented_options
from captum_saco.attr._core.gradient_x_input import (
    GRADIENT_RULE_ATTRIBUTE_DOC,
    GradientRuleAttribution,
)
from captum_saco.attr._core.replay import GradientRules

_ACTIVATION_RULE_OPTION = r"""
            activation_rule (str, optional): ``"gradient"`` (default; Ali et al.) or
                ``"identity"`` (the activation's gradient becomes ``act(x) / x``,
                0 at ``x == 0``: LXT's CP-LRP; LXT divides by ``x + 1e-10``, which
                moves the results by less than 1e-7 of their maximum on the
                reference ViT). With ``embedding_gamma=0.25, linear_gamma=0.05``,
                ``"identity"`` is LXT's recorded CP-LRP gamma run.
"""


class ConservativeLRP(GradientRuleAttribution):
    r"""Conservative LRP (Ali, Schnake, Eberle, Montavon, Müller and Wolf, "XAI for
    Transformers: Better Explanations through Conservative Propagation", ICML 2022):
    gradient times input of the target's logit, with the attention probabilities
    treated as constants (AH rule) and each LayerNorm's standard deviation treated
    as a constant while its mean keeps its gradient (LN rule; biased variance,
    ``eps`` inside the square root, as the model computes it). Linear layers, the
    patch embedding and, by default, the activation get the plain gradient (the
    authors' setting without the gamma rule). With ``activation_rule="identity"``
    the activation passes relevance unchanged, which is LXT's CP-LRP
    (``lxt.efficient`` on torchvision ViTs), optionally with zennit's gamma rule on
    the MLP's linear layers, the classifier head and the patch embedding
    (``linear_gamma``, ``embedding_gamma``). The gate of a gated MLP (SwiGLU:
    ``act(gate) * value``) is treated as a constant like the attention
    probabilities, so all the relevance goes to the value (LXT's CP-LRP,
    ``cp_gated_mlp_forward``); the other parts of EVA-02 and BEiT blocks take the
    rules of their kind (see :func:`~captum_saco.attr._core.replay.block_forward`).

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
        >>> explainer = ConservativeLRP(vit)
        >>> with torch.no_grad():
        ...     pixels = explainer.attribute(images, target=[0, 4])
        >>> pixels.shape
        torch.Size([2, 3, 32, 32])
        >>> explainer.attribute(images, upsample=False, activation_rule="identity").shape
        torch.Size([2, 1, 4, 4])
    """

    @documented_options(_ACTIVATION_RULE_OPTION, GRADIENT_RULE_ATTRIBUTE_DOC)
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor]],
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        activation_rule: str = "gradient",
        linear_gamma: float = 0.0,
        embedding_gamma: float = 0.0,
        upsample: bool = True,
        max_examples_per_batch: Optional[int] = None,
    ) -> Union[Tensor, Tuple[Tensor]]:
        rules = GradientRules(
            attention="detached",
            norm="std_detached",
            activation=activation_rule,
            gate="detached",
            linear_gamma=linear_gamma,
            embedding_gamma=embedding_gamma,
        )
        return self._attribute(
            inputs,
            target,
            additional_forward_args,
            upsample=upsample,
            max_examples_per_batch=max_examples_per_batch,
            rules=rules,
        )
