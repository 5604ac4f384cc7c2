"""AttCAT: attentive class activation tokens (Qiang et al., NeurIPS 2022)."""

import torch
from torch import Tensor

from captum_saco.attr._core.engine import AttentionAttribution, AttentionTrace, Needs


class AttCAT(AttentionAttribution):
    r"""AttCAT (Qiang, Pan, Zhu and Li, "AttCAT: Explaining Transformers via
    Attentive Class Activation Tokens", NeurIPS 2022), as its authors' code
    (``generate_TransCAM``) computes it: for every token ``j``,

    .. math::

        \mathrm{AttCAT}_j = \sum_b \Big(\sum_d h^b_{jd}
            \frac{\partial y_t}{\partial h^b_{jd}}\Big)
            \cdot \operatorname{mean}_{h, i} A^b_{h, i, j}

    where ``h^b`` is the residual stream entering block ``b`` (block 0: the
    class and patch tokens with the position embedding), ``A^b`` the block's
    attention probabilities averaged over heads and query rows, and ``y_t`` the
    target's logit. Not clamped: negative values are evidence against the
    target. Gradients come from one backward pass per chunk of examples. It
    reads no read-out vector (it averages over all query rows), whatever the
    head: for a pooled or MAP head the gradients flow through that head.

    The original runs on a post-norm BERT, where ``hidden_states[b]`` is the
    input of layer ``b``; on a pre-norm ViT the residual stream entering block
    ``b`` is the same literal choice (not the LayerNorm output that feeds the
    attention), as in the reference recording of ``tests/data``.

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
        ...     maps = AttCAT(vit).attribute(images, target=[0, 4], upsample=False)
        >>> maps.shape
        torch.Size([2, 1, 4, 4])
    """

    needs = Needs.GRADIENTS

    def _token_relevance(self, trace: AttentionTrace) -> Tensor:
        assert trace.block_inputs is not None and trace.block_gradients is not None
        total = torch.zeros_like(trace.attentions[0][:, 0, 0])
        for tokens, gradient, attention in zip(
            trace.block_inputs, trace.block_gradients, trace.attentions
        ):
            total += (tokens * gradient).sum(dim=-1) * attention.mean(dim=(1, 2))
        return total
