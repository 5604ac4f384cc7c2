"""The embedded default: a small ViT trained on Fashion-MNIST, and test images.

Both ship inside the package (``captum_saco/datasets/data``), so that the
evaluation runs offline. ``scripts/train_fashion_vit.py`` produced them; its
recorded test accuracy is in :func:`fashion_mnist_metadata`.
"""

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from captum_saco.datasets.image_files import to_eight_bit

DATA_DIR = Path(__file__).resolve().parent / "data"
WEIGHTS_FILE = "fashion_vit.pt"
METADATA_FILE = "fashion_vit.json"
SAMPLES_FILE = "fashion_mnist_samples.pt"
CLIP_DIR = "fashion_clip"


class FashionMNISTSamples(NamedTuple):
    """Labelled Fashion-MNIST test images, normalised as the model expects."""

    images: Tensor
    """float32 ``(N, 1, 28, 28)``, normalised with ``data_config``."""
    labels: Tensor
    """int64 ``(N,)`` class indices."""
    class_names: List[str]
    """The ten class names, indexed by label."""
    data_config: Dict[str, Any]
    """timm-style data config: ``input_size``, ``mean``, ``std``, ..."""


def _data_file(name: str) -> Path:
    path = DATA_DIR / name
    if not path.is_file():
        raise FileNotFoundError(
            f"the embedded Fashion-MNIST file {path} is missing; reinstall captum-saco "
            "or recreate it with scripts/train_fashion_vit.py"
        )
    return path


@lru_cache(maxsize=1)
def _metadata() -> Dict[str, Any]:
    with open(_data_file(METADATA_FILE), encoding="utf-8") as f:
        return json.load(f)


def fashion_mnist_metadata() -> Dict[str, Any]:
    r"""
    The metadata recorded when the embedded model was trained.

    Returns:
        dict: ``model_config`` (the keyword arguments of timm's
        ``VisionTransformer``), ``data_config`` (timm-style: ``input_size``,
        ``mean``, ``std``, ``interpolation``, ``crop_pct``, ``crop_mode``),
        ``class_names``, ``test_accuracy`` (on the full 10k test set),
        ``sample_accuracy`` (on the shipped images) and ``training`` (seed,
        time, steps, optimiser). A fresh copy each call.

    Examples::

        >>> from captum_saco.datasets import fashion_mnist_metadata
        >>> meta = fashion_mnist_metadata()
        >>> meta["data_config"]["input_size"]
        [1, 28, 28]
        >>> meta["class_names"][0]
        'T-shirt/top'
    """
    return json.loads(json.dumps(_metadata()))


def load_fashion_mnist_vit(device: Union[None, str, torch.device] = None) -> nn.Module:
    r"""
    The embedded Vision Transformer, a stock timm ``VisionTransformer``
    (28x28 grey input, 4x4 patches, 4 blocks, width 96, 3 heads, class-token
    pooling) trained on Fashion-MNIST, in eval mode.

    Its ``pretrained_cfg`` holds the data config, so that
    ``timm.data.resolve_data_config(model=model)`` gives the normalisation it
    was trained with, as for any timm model.

    Args:
        device (str or torch.device, optional): where to put the model.
                    Default: None (CPU)

    Returns:
        torch.nn.Module: a new model instance with the shipped weights.

    Raises:
        ImportError: if timm is not installed.
        FileNotFoundError: if the shipped weights are missing.

    Examples::

        >>> import torch
        >>> from captum_saco.datasets import load_fashion_mnist_vit
        >>> model = load_fashion_mnist_vit()
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError as e:
        raise ImportError(
            "load_fashion_mnist_vit needs timm; install it with pip install 'captum-saco[timm]'"
        ) from e
    meta = _metadata()
    model = VisionTransformer(**meta["model_config"])
    state = torch.load(_data_file(WEIGHTS_FILE), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    data_config = meta["data_config"]
    model.pretrained_cfg = {
        **data_config,
        "input_size": tuple(data_config["input_size"]),
        "mean": tuple(data_config["mean"]),
        "std": tuple(data_config["std"]),
        "num_classes": meta["model_config"]["num_classes"],
        "label_names": list(meta["class_names"]),
    }
    return model.eval().to(device)


def load_fashion_mnist_clip(device: Union[None, str, torch.device] = None) -> Tuple[nn.Module, Any]:
    r"""
    The embedded CLIP-style model, a stock Hugging Face ``CLIPModel`` trained
    here on Fashion-MNIST with the class names as prompts
    (``scripts/train_fashion_clip.py``; image tower: 28x28 grey input, 4x4
    patches, 4 blocks of width 64; text tower over single characters), and its
    tokenizer, loaded with ``from_pretrained`` from the package's data folder.
    It takes the images of :func:`load_fashion_mnist_samples` as they are.
    Its test accuracy and training record are in
    ``captum_saco/datasets/data/fashion_clip/training.json``.

    Args:
        device (str or torch.device, optional): where to put the model.
                    Default: None (CPU)

    Returns:
        tuple: ``(model, tokenizer)``, the model in eval mode; pass both to
        :meth:`captum_saco.models.ZeroShotClassifier.from_prompts`.

    Raises:
        ImportError: if transformers is not installed.
        FileNotFoundError: if the shipped files are missing.

    Examples::

        >>> from captum_saco.datasets import load_fashion_mnist_clip, load_fashion_mnist_samples
        >>> from captum_saco.models import ZeroShotClassifier
        >>> model, tokenizer = load_fashion_mnist_clip()
        >>> samples = load_fashion_mnist_samples(limit=8)
        >>> classifier = ZeroShotClassifier.from_prompts(model, tokenizer, samples.class_names)
        >>> classifier(samples.images).shape
        torch.Size([8, 10])
    """
    try:
        from transformers import CLIPModel, CLIPTokenizer
    except ImportError as e:
        raise ImportError(
            "load_fashion_mnist_clip needs transformers; install it with "
            "pip install 'captum-saco[transformers]'"
        ) from e
    folder = _data_file(CLIP_DIR + "/config.json").parent
    model = CLIPModel.from_pretrained(folder)
    return model.eval().to(device), CLIPTokenizer.from_pretrained(folder)


def fashion_mnist_transform() -> Callable[[Any], Tensor]:
    r"""
    The embedded model's preprocessing of an image file: grey, 28x28
    (resized bilinearly if it is not), scaled to [0, 1] and normalised with
    the training set's mean and std, exactly as
    :func:`load_fashion_mnist_samples` normalises the shipped images.

    Returns:
        Callable: PIL image -> float32 tensor ``(1, 28, 28)``.

    Examples::

        >>> from PIL import Image
        >>> from captum_saco.datasets import fashion_mnist_transform
        >>> fashion_mnist_transform()(Image.new("RGB", (40, 30))).shape
        torch.Size([1, 28, 28])
    """
    from PIL import Image

    config = _metadata()["data_config"]
    _, height, width = config["input_size"]
    mean = torch.tensor(config["mean"]).view(-1, 1, 1)
    std = torch.tensor(config["std"]).view(-1, 1, 1)

    def transform(image: Any) -> Tensor:
        grey = to_eight_bit(image).convert("L")
        if grey.size != (width, height):
            grey = grey.resize((width, height), Image.Resampling.BILINEAR)
        pixels = torch.frombuffer(bytearray(grey.tobytes()), dtype=torch.uint8)
        return (pixels.view(1, height, width).float().div(255.0) - mean) / std

    return transform


def load_fashion_mnist_samples(limit: Optional[int] = None) -> FashionMNISTSamples:
    r"""
    The labelled Fashion-MNIST test images shipped with the package (a
    stratified, seeded sample of the test set, in test-set order), normalised
    with the embedded model's data config.

    Args:
        limit (int, optional): return only the first ``limit`` images.
                    Default: None (all)

    Returns:
        FashionMNISTSamples: ``images`` float32 ``(N, 1, 28, 28)``,
        ``labels`` int64 ``(N,)``, ``class_names`` and ``data_config``.

    Raises:
        ValueError: if ``limit`` is negative.
        FileNotFoundError: if the shipped images are missing.

    Examples::

        >>> from captum_saco.datasets import load_fashion_mnist_samples
        >>> samples = load_fashion_mnist_samples(limit=4)
        >>> samples.images.shape, samples.labels.shape
        (torch.Size([4, 1, 28, 28]), torch.Size([4]))
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit: expected a non-negative number of images, got {limit}")
    meta = _metadata()
    raw = torch.load(_data_file(SAMPLES_FILE), map_location="cpu", weights_only=True)
    images, labels = raw["images"], raw["labels"]
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    config = meta["data_config"]
    mean = torch.tensor(config["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(config["std"]).view(1, -1, 1, 1)
    normalised = (images.float().div(255.0).unsqueeze(1) - mean) / std
    return FashionMNISTSamples(
        images=normalised,
        labels=labels.long(),
        class_names=list(meta["class_names"]),
        data_config=fashion_mnist_metadata()["data_config"],
    )
