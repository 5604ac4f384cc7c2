"""What is specific to each Vision Transformer family, in one place.

The attention methods of :mod:`captum_saco.attr` read the post-softmax
attention probabilities of every block; Transformer Attribution also needs the
model's layers in one canonical form. This module is the only code that knows
how timm, Hugging Face transformers and torchvision lay out their ViTs.
"""

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

from torch import Tensor, nn


@dataclass(frozen=True)
class BlockParts:
    """One pre-norm ViT block:
    ``x = x + ls1 * proj(attn(norm1(x))); x = x + ls2 * fc2(act(fc1(norm2(x))))``.

    The attention scale is ``head_dim ** -0.5`` with ``head_dim = D // num_heads``.
    """

    norm1: nn.LayerNorm
    qkv_weight: Tensor  # (3*D, D), rows ordered q, k, v
    qkv_bias: Optional[Tensor]  # (3*D,) or None
    num_heads: int
    proj: nn.Linear
    norm2: nn.LayerNorm
    fc1: nn.Linear
    act: Callable[[Tensor], Tensor]
    fc2: nn.Linear
    ls1: Optional[Tensor] = None  # layer-scale gamma (D,) or None
    ls2: Optional[Tensor] = None


@dataclass(frozen=True)
class ViTParts:
    """A whole ViT in canonical form, from the tokens entering block 0 to the logits."""

    blocks: List[BlockParts]
    norm: nn.Module  # final norm applied to the tokens
    # (token index, classifier): logits = mean over heads of head(norm(x)[:, index])
    heads: List[Tuple[int, nn.Linear]]
    num_prefix_tokens: int
