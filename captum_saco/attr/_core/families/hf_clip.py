"""The family of Hugging Face CLIP image towers (``CLIPVisionModel``, the
``vision_model`` of ``CLIPModel`` and ``CLIPVisionModelWithProjection``)."""

from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Tuple

from torch import Tensor, nn

from captum_saco.attr._core.families.base import ViTAdapter, _joined, _second
from captum_saco.attr._core.families.hf_vit import HuggingFaceViTAdapter


class HuggingFaceClipVisionAdapter(ViTAdapter):
    """Hugging Face ``CLIPVisionModel`` (transformers >= 5): patch embedding, class and
    position embeddings, ``pre_layrnorm``, pre-norm ``encoder.layers``,
    ``post_layernorm`` on the class token (then ``visual_projection`` in the
    models that hold it).

    As for Hugging Face ViT, the attention implementation is switched to
    ``eager`` for the call (every configuration restored afterwards), so that
    each ``self_attn`` returns its probabilities.

    The tower explains a zero-shot classifier (see
    :class:`captum_saco.models.ZeroShotClassifier`); it is not a family of its
    own, as its output is an embedding, not class scores.
    """

    model_classes = (("transformers.models.clip.modeling_clip", "CLIPVisionModel"),)
    description = "Hugging Face CLIP image towers (CLIPModel, CLIPVisionModelWithProjection)"

    num_prefix_tokens = 1

    def blocks(self) -> List[nn.Module]:
        return list(self.model.encoder.layers)

    def patch_embedding(self) -> nn.Module:
        return self.model.embeddings.patch_embedding

    def embedding_path(self) -> Dict[str, str]:
        return {"embeddings.patch_embedding": "linear", "pre_layrnorm": "layernorm"}

    def prefix_tokens(self) -> Tensor:
        return _joined([self.model.embeddings.class_embedding.view(1, 1, -1)])

    def attention_sources(self) -> List[Tuple[nn.Module, Callable[[object], Tensor]]]:
        return [(layer.self_attn, _second) for layer in self.blocks()]

    @contextmanager
    def attention_mode(self) -> Iterator[None]:
        with HuggingFaceViTAdapter.attention_mode(self):  # the same switch to eager
            yield
