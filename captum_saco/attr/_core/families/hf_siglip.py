"""The family of Hugging Face SigLIP image towers (``SiglipVisionModel``, the
``vision_model`` of ``SiglipModel``) and of ``SiglipForImageClassification``."""

from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from torch import Tensor, nn

from captum_saco.attr._core.families.base import ViTAdapter, _second
from captum_saco.attr._core.families.hf_clip import HuggingFaceClipClassifierAdapter
from captum_saco.attr._core.families.hf_vit import HuggingFaceViTAdapter


class HuggingFaceSiglipVisionAdapter(ViTAdapter):
    """Hugging Face ``SiglipVisionModel`` (transformers >= 5): patch embedding plus
    position embedding (no class token), pre-norm ``encoder.layers``,
    ``post_layernorm`` on every token, then the attention-pooling (MAP) ``head``:
    a learned probe attends to the tokens through an ``nn.MultiheadAttention``.

    Its read-out vector is that head's attention over the tokens, averaged over
    its heads (the probabilities ``nn.MultiheadAttention`` returns with its
    default ``need_weights=True``), per example (:meth:`readout_source`). The
    attention implementation of the blocks is switched to ``eager`` for the call,
    as for Hugging Face ViT. The tower explains a zero-shot classifier (see
    :class:`captum_saco.models.ZeroShotClassifier`) or, through
    :class:`HuggingFaceSiglipClassifierAdapter`, ``SiglipForImageClassification``.
    """

    model_classes = (("transformers.models.siglip.modeling_siglip", "SiglipVisionModel"),)
    description = "Hugging Face SigLIP image towers (SiglipModel)"

    num_prefix_tokens = 0

    def blocks(self) -> List[nn.Module]:
        return list(self.model.encoder.layers)

    def patch_embedding(self) -> nn.Module:
        return self.model.embeddings.patch_embedding

    def reads_class_token(self) -> bool:
        return False

    def readout(self, num_tokens: int) -> Tensor:
        raise ValueError(
            f"model: {type(self.model).__name__} has no pooling head "
            "(vision_use_head=False), so nothing reads its tokens"
        )

    def readout_source(self) -> Optional[Tuple[nn.Module, Callable[[object], Tensor]]]:
        """The pooling head's ``nn.MultiheadAttention``, whose second output is its
        probe's attention over the tokens, averaged over heads, ``(N, 1, T)``."""
        if not self.model.use_head:
            return None
        return self.model.head.attention, lambda output: output[1][:, 0]  # type: ignore[index]

    def embedding_path(self) -> Dict[str, str]:
        return {
            "embeddings.patch_embedding": "linear",
            "embeddings.position_embedding": "constant",
        }

    def prefix_tokens(self) -> Tensor:
        weight = self.model.embeddings.patch_embedding.weight
        return weight.new_zeros(1, 0, weight.shape[0]).detach()

    def attention_sources(self) -> List[Tuple[nn.Module, Callable[[object], Tensor]]]:
        return [(layer.self_attn, _second) for layer in self.blocks()]

    @contextmanager
    def attention_mode(self) -> Iterator[None]:
        with HuggingFaceViTAdapter.attention_mode(self):  # the same switch to eager
            yield


class HuggingFaceSiglipClassifierAdapter(HuggingFaceClipClassifierAdapter):
    """Hugging Face ``SiglipForImageClassification``: its classifier reads the mean
    of all tokens after ``post_layernorm`` (SigLIP has no class token; the
    tower's attention-pooling head runs but the classifier does not read it), so
    its read-out vector is the uniform average over the tokens, and its canonical
    parts end with ``post_layernorm``, the mean and the classifier."""

    model_classes = (
        ("transformers.models.siglip.modeling_siglip", "SiglipForImageClassification"),
    )
    description = "Hugging Face SiglipForImageClassification (mean of the tokens)"
    tower_family = HuggingFaceSiglipVisionAdapter

    def final_norm(self) -> nn.Module:
        return self.model.vision_model.post_layernorm
