"""Zero-shot image classifiers from CLIP and SigLIP models.

:class:`ZeroShotClassifier` turns a dual encoder (or its image tower alone)
and a set of text embeddings into an ordinary classifier: its forward maps
images to one logit per prompt, so every metric and attribution method of
captum-saco takes it as ``forward_func`` with the prompt index as ``target``.
"""

import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_saco._utils import check_dense

__all__ = ["ZeroShotClassifier", "load_zero_shot_classifier"]


def _is_instance(model: nn.Module, module_name: str, class_name: str) -> bool:
    """isinstance against a class of a library that may not be installed; a
    library that is not imported cannot have made ``model``."""
    cls = getattr(sys.modules.get(module_name), class_name, None)
    return cls is not None and isinstance(model, cls)


def _is_hf_dual_encoder(model: nn.Module) -> bool:
    """A Hugging Face image-text model with its own scale (``CLIPModel``,
    ``SiglipModel`` and their kin)."""
    return (
        type(model).__module__.startswith("transformers.")
        and hasattr(model, "get_image_features")
        and isinstance(getattr(model, "logit_scale", None), Tensor)
    )


def _is_open_clip(model: nn.Module) -> bool:
    """An open_clip model (``CLIP``, ``CustomTextCLIP``, ``CoCa``)."""
    return type(model).__module__.startswith("open_clip.") and hasattr(model, "encode_image")


def _image_encoder(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """The function from images to (N, D) image embeddings (projected, not normalised)."""
    if _is_hf_dual_encoder(model):
        return lambda images: model.get_image_features(pixel_values=images).pooler_output
    if _is_instance(
        model, "transformers.models.clip.modeling_clip", "CLIPVisionModelWithProjection"
    ):
        return lambda images: model(pixel_values=images).image_embeds
    if _is_open_clip(model):
        return lambda images: model.encode_image(images)
    return model


class ZeroShotClassifier(nn.Module):
    r"""
    A CLIP or SigLIP model as a classifier over text prompts: ``forward(images)``
    returns the model's image-text logits against the fixed text embeddings,
    ``(N, C)`` for C prompts, the same numbers as the model's own
    ``logits_per_image``:

    - CLIP: ``scale * cos(image_embedding, text_embedding)``;
    - SigLIP (models with a ``logit_bias``): ``scale * cos(...) + bias``.

    ``scale`` is the model's own (``exp`` of its ``logit_scale`` parameter), or
    the ``logit_scale`` argument for an image tower that has none.

    Supported models:

    - Hugging Face ``CLIPModel``, ``SiglipModel`` (and other dual encoders with
      ``get_image_features`` and a ``logit_scale``): their own scale and bias;
    - Hugging Face ``CLIPVisionModelWithProjection``: ``logit_scale`` required;
    - open_clip models (``open_clip.create_model_and_transforms``), CLIP and
      SigLIP: their own scale and bias;
    - any other module whose forward maps images to ``(N, D)`` image
      embeddings, such as timm's CLIP image towers
      (``vit_base_patch16_clip_224.openai``, whose head is the projection):
      ``logit_scale`` required.

    The wrapped model is the ``model`` submodule (not a copy); the text
    embeddings are normalised once and kept as the buffer
    ``text_embeddings``, so ``.to()`` and ``.double()`` move both.

    Args:
        model (nn.Module): the dual encoder or image tower, see above.
        text_embeddings (Tensor): ``(C, D)`` text embeddings, one row per
            prompt (projected; normalised here). Copied, never modified.
        logit_scale (float, optional): the factor the cosine similarities are
            multiplied by (for OpenAI's CLIP 100, the ``exp`` of its
            ``logit_scale`` parameter), for models without a scale of their
            own; must be None for models that have one.
            Default: None

    Examples::

        >>> import torch
        >>> from captum_saco.models import ZeroShotClassifier
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> tower = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8))
        >>> classifier = ZeroShotClassifier(tower, torch.randn(3, 8), logit_scale=100.0)
        >>> classifier(torch.randn(2, 3, 2, 2)).shape
        torch.Size([2, 3])
    """

    text_embeddings: Tensor

    def __init__(
        self, model: nn.Module, text_embeddings: Tensor, logit_scale: Optional[float] = None
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        if not isinstance(text_embeddings, Tensor):
            raise TypeError(
                f"text_embeddings: expected a Tensor, got {type(text_embeddings).__name__}"
            )
        check_dense(text_embeddings, "text_embeddings")
        if (
            text_embeddings.dim() != 2
            or text_embeddings.shape[0] == 0
            or not text_embeddings.is_floating_point()
        ):
            raise ValueError(
                "text_embeddings: expected a floating-point (C, D) tensor with at least one row, "
                f"got {text_embeddings.dtype} of shape {tuple(text_embeddings.shape)}"
            )
        norms = text_embeddings.detach().norm(dim=-1)
        if not bool(torch.isfinite(norms).all()) or bool((norms == 0).any()):
            raise ValueError("text_embeddings: every row must be finite and non-zero")
        own_scale = _is_hf_dual_encoder(model) or (
            _is_open_clip(model) and isinstance(getattr(model, "logit_scale", None), Tensor)
        )
        if own_scale and logit_scale is not None:
            raise ValueError(
                f"logit_scale: {type(model).__name__} has its own logit_scale; "
                "leave logit_scale None"
            )
        if not own_scale:
            if logit_scale is None:
                raise ValueError(
                    f"logit_scale: {type(model).__name__} has no logit scale of its own; pass the "
                    "factor its cosine similarities are multiplied by (100 for OpenAI's CLIP)"
                )
            if (
                isinstance(logit_scale, bool)
                or not isinstance(logit_scale, (int, float))
                or not logit_scale > 0
            ):
                raise ValueError(f"logit_scale: expected a positive number, got {logit_scale!r}")
        self.model = model
        self._fixed_scale = None if own_scale else float(logit_scale)  # type: ignore[arg-type]
        self.register_buffer(
            "text_embeddings", F.normalize(text_embeddings.detach().clone(), dim=-1)
        )
        self.prompts: Optional[List[str]] = None

    def logit_scale_and_bias(self) -> "tuple[Tensor, Optional[Tensor]]":
        """The factor of the cosine similarities and the bias added to them
        (None for CLIP), as tensors of the text embeddings' dtype and device."""
        ref = self.text_embeddings
        if self._fixed_scale is not None:
            return torch.tensor(self._fixed_scale, dtype=ref.dtype, device=ref.device), None
        bias = getattr(self.model, "logit_bias", None)
        scale = self.model.logit_scale.to(ref).exp()
        return scale, None if bias is None else bias.to(ref)

    def forward(self, images: Tensor) -> Tensor:
        # looked up per call: a copy of the classifier runs its own copy of the model
        embeddings = _image_encoder(self.model)(images)
        if not isinstance(embeddings, Tensor) or embeddings.dim() != 2:
            got = (
                tuple(embeddings.shape)
                if isinstance(embeddings, Tensor)
                else type(embeddings).__name__
            )
            raise ValueError(
                f"model: {type(self.model).__name__} must map images to (N, D) image "
                f"embeddings, got {got}"
            )
        if embeddings.shape[1] != self.text_embeddings.shape[1]:
            raise ValueError(
                f"text_embeddings: have dimension {self.text_embeddings.shape[1]}, but the model's "
                f"image embeddings have {embeddings.shape[1]}"
            )
        scale, bias = self.logit_scale_and_bias()
        logits = scale * F.normalize(embeddings, dim=-1) @ self.text_embeddings.to(embeddings).T
        return logits if bias is None else logits + bias

    @classmethod
    def from_prompts(
        cls,
        model: nn.Module,
        tokenizer_or_processor: Any,
        class_names: Sequence[str],
        template: str = "a photo of a {}.",
    ) -> "ZeroShotClassifier":
        r"""
        The classifier over the prompts ``template.format(name)``, one per class
        name, encoded by the model's own text tower. The prompts are kept as
        the attribute ``prompts``.

        Args:
            model (nn.Module): a Hugging Face dual encoder (``CLIPModel``,
                ``SiglipModel``) or an open_clip model.
            tokenizer_or_processor: the model's tokenizer: for Hugging Face its
                tokenizer or processor (SigLIP prompts are padded to the text
                tower's full length, as SigLIP was trained), for open_clip
                ``open_clip.get_tokenizer(name)``.
            class_names (sequence of str): the class names, in target order.
            template (str, optional): the prompt, with ``{}`` where the class
                name goes. Default: ``"a photo of a {}."``

        Returns:
            ZeroShotClassifier: target ``i`` is ``class_names[i]``.

        Examples::

            >>> from captum_saco.datasets import load_fashion_mnist_clip
            >>> from captum_saco.models import ZeroShotClassifier
            >>> model, tokenizer = load_fashion_mnist_clip()
            >>> classifier = ZeroShotClassifier.from_prompts(model, tokenizer, ["Bag", "Sandal"])
            >>> classifier.prompts
            ['a photo of a Bag.', 'a photo of a Sandal.']
        """
        if isinstance(class_names, str) or not all(isinstance(c, str) for c in class_names):
            raise TypeError("class_names: expected a sequence of strings")
        if len(class_names) == 0:
            raise ValueError("class_names: expected at least one class name")
        if not isinstance(template, str) or "{}" not in template:
            raise ValueError(
                f"template: expected a string with '{{}}' for the class name, got {template!r}"
            )
        prompts = [template.format(name) for name in class_names]
        device = next(model.parameters()).device
        with torch.no_grad():
            if _is_hf_dual_encoder(model):
                tokenizer = getattr(tokenizer_or_processor, "tokenizer", tokenizer_or_processor)
                text_config = model.config.text_config
                siglip = "siglip" in model.config.model_type
                tokens = tokenizer(
                    prompts,
                    padding="max_length" if siglip else True,
                    max_length=text_config.max_position_embeddings,
                    truncation=True,
                    return_tensors="pt",
                )
                inputs = {
                    k: tokens[k].to(device) for k in ("input_ids", "attention_mask") if k in tokens
                }
                if siglip:  # SigLIP was trained on padded prompts without a mask
                    inputs.pop("attention_mask", None)
                text = model.get_text_features(**inputs).pooler_output
            elif _is_open_clip(model) and hasattr(model, "encode_text"):
                text = model.encode_text(tokenizer_or_processor(prompts).to(device))
            else:
                raise ValueError(
                    f"model: {type(model).__name__} has no text tower that from_prompts knows; "
                    "encode the prompts yourself and call "
                    "ZeroShotClassifier(model, text_embeddings, logit_scale)"
                )
        classifier = cls(model, text)
        classifier.prompts = prompts
        return classifier


_INTERPOLATION = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def _hf_data_config(image_processor: Any, channels: int) -> Dict[str, Any]:
    """timm's data config for a Hugging Face image processor (resize, crop, normalise)."""
    size, crop = image_processor.size, getattr(image_processor, "crop_size", None)
    center_crop = bool(getattr(image_processor, "do_center_crop", False)) and crop is not None
    height, width = (crop.height, crop.width) if center_crop else (size.height, size.width)
    short = size.shortest_edge
    return {
        "input_size": (channels, height, width),
        "mean": tuple(image_processor.image_mean),
        "std": tuple(image_processor.image_std),
        "interpolation": _INTERPOLATION.get(int(image_processor.resample), "bicubic"),
        "crop_pct": height / short if center_crop and short else 1.0,
        "crop_mode": "center" if center_crop else "squash",
    }


def _open_clip_data_config(model: nn.Module) -> Dict[str, Any]:
    """timm's data config for an open_clip model's own preprocessing."""
    cfg = model.visual.preprocess_cfg
    height, width = model.visual.image_size
    return {
        "input_size": (3, height, width),
        "mean": tuple(cfg["mean"]),
        "std": tuple(cfg["std"]),
        "interpolation": cfg.get("interpolation", "bicubic"),
        "crop_pct": 1.0,
        "crop_mode": "squash" if cfg.get("resize_mode") == "squash" else "center",
    }


def load_zero_shot_classifier(
    model_name: str, class_names: Sequence[str], template: str = "a photo of a {}."
) -> ZeroShotClassifier:
    r"""
    A pretrained CLIP or SigLIP as a :class:`ZeroShotClassifier` over the prompts
    ``template.format(name)``, loaded by name the way its library loads it, with
    its image preprocessing as a timm data config in ``pretrained_cfg``
    (``timm.data.resolve_data_config(model=classifier)`` reads it):

    - ``"hf:NAME_OR_PATH"``: ``transformers.AutoModel.from_pretrained`` and
      ``AutoProcessor.from_pretrained`` (a hub name such as
      ``hf:openai/clip-vit-base-patch32`` or ``hf:google/siglip-base-patch16-224``,
      or a folder written by ``save_pretrained`` holding model and processor);
    - ``"open_clip:ARCH/PRETRAINED"``: ``open_clip.create_model_and_transforms(ARCH,
      pretrained=PRETRAINED)`` and ``open_clip.get_tokenizer(ARCH)``, e.g.
      ``open_clip:ViT-B-32/openai``; PRETRAINED may be a checkpoint file.

    Args:
        model_name (str): the model, as above.
        class_names (sequence of str): the class names, in target order.
        template (str, optional): the prompt, ``{}`` for the class name.
            Default: ``"a photo of a {}."``

    Returns:
        ZeroShotClassifier: in eval mode, on the CPU.

    Raises:
        ValueError: for a name of another form.
        ImportError: if the library of the name is not installed.

    Examples::

        >>> from captum_saco.models import load_zero_shot_classifier
        >>> import os, transformers
        >>> from captum_saco.datasets import load_fashion_mnist_clip
        >>> model, tokenizer = load_fashion_mnist_clip()
        >>> folder = os.path.join(getfixture("tmp_path"), "clip")
        >>> model.save_pretrained(folder)
        >>> processor = transformers.CLIPProcessor(transformers.CLIPImageProcessor(
        ...     size={"shortest_edge": 28}, crop_size=28), tokenizer)
        >>> _ = processor.save_pretrained(folder)
        >>> classifier = load_zero_shot_classifier(f"hf:{folder}", ["Bag", "Sandal"])
        >>> classifier.pretrained_cfg["input_size"]
        (1, 28, 28)
    """
    library, _, name = model_name.partition(":")
    if library == "hf" and name:
        import transformers

        model = transformers.AutoModel.from_pretrained(name)
        processor = transformers.AutoProcessor.from_pretrained(name)
        channels = model.config.vision_config.num_channels
        data_config = _hf_data_config(processor.image_processor, channels)
    elif library == "open_clip" and name:
        import open_clip

        arch, _, pretrained = name.partition("/")
        model, _, _ = open_clip.create_model_and_transforms(arch, pretrained=pretrained or None)
        processor = open_clip.get_tokenizer(arch)
        data_config = _open_clip_data_config(model)
    else:
        raise ValueError(
            "model_name: expected 'hf:NAME_OR_PATH' or 'open_clip:ARCH/PRETRAINED', "
            f"got {model_name!r}"
        )
    classifier = ZeroShotClassifier.from_prompts(model.eval(), processor, class_names, template)
    classifier.pretrained_cfg = data_config
    return classifier.eval()
