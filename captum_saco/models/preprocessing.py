"""How an image file becomes a model's input: the size, crop, resampling and
normalisation the model was trained with, read from where its source keeps
them (timm's data config, a Hugging Face image processor, torchvision's
weights), as one :class:`Preprocessing`."""

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from torch import Tensor, nn

#: PIL's resampling filters by number, as Hugging Face image processors store them
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


@dataclass(frozen=True)
class Preprocessing:
    r"""
    The preprocessing of an image for a model, as timm describes it.

    An image is resized (its shorter side to ``input_size / crop_pct``, or,
    with ``crop_mode="squash"``, both sides, ignoring the aspect ratio),
    centre-cropped to ``input_size``, scaled to [0, 1] and normalised by
    ``mean`` and ``std``.

    Args:
        input_size (tuple of int): ``(channels, height, width)``.
        mean (tuple of float): one value per channel.
        std (tuple of float): one value per channel.
        interpolation (str): one of :data:`INTERPOLATIONS`.
        crop_pct (float): the share of the resized image kept by the crop.
        crop_mode (str): ``"center"`` or ``"squash"``.
        source (str): where these settings come from.

    Examples::

        >>> from PIL import Image
        >>> p = Preprocessing((3, 8, 8), (0.5,) * 3, (0.5,) * 3, "bilinear", 1.0)
        >>> p.transform()(Image.new("RGB", (16, 12), "white")).shape
        torch.Size([3, 8, 8])
        >>> p.overridden(input_size=4, mean=[0.0] * 3).describe()[:43]
        'input_size 3x4x4, mean (0.0, 0.0, 0.0), std'
    """

    input_size: Tuple[int, int, int]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    crop_mode: str = "center"
    source: str = "timm's default data config"

    @property
    def mode(self) -> str:
        """The PIL mode images are converted to."""
        return "L" if self.input_size[0] == 1 else "RGB"

    def overridden(
        self,
        input_size: Optional[int] = None,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        interpolation: Optional[str] = None,
        crop_pct: Optional[float] = None,
    ) -> "Preprocessing":
        """These settings with the given ones replaced (``input_size``: one
        side of the square input); a ValueError names a bad argument."""
        channels = self.input_size[0]
        for name, values in (("mean", mean), ("std", std)):
            if values is not None and len(values) != channels:
                raise ValueError(
                    f"{name}: expected {channels} values (one per channel of the model's "
                    f"input), got {len(values)}"
                )
        if std is not None and any(v <= 0 for v in std):
            raise ValueError(f"std: expected positive values, got {list(std)}")
        if interpolation is not None and interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation: expected one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}"
            )
        if crop_pct is not None and not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct: expected a number in (0, 1], got {crop_pct}")
        changes: Dict[str, Any] = {
            "input_size": None if input_size is None else (channels, input_size, input_size),
            "mean": None if mean is None else tuple(float(v) for v in mean),
            "std": None if std is None else tuple(float(v) for v in std),
            "interpolation": interpolation,
            "crop_pct": crop_pct,
        }
        changes = {k: v for k, v in changes.items() if v is not None}
        if not changes:
            return self
        return replace(self, **changes, source=f"{self.source}, overridden")

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready: ``input_size``, ``mean``, ``std`` as lists, and the rest."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def describe(self) -> str:
        """One line: the settings without their source."""
        size = "x".join(map(str, self.input_size))
        return (
            f"input_size {size}, mean {tuple(round(v, 4) for v in self.mean)}, std "
            f"{tuple(round(v, 4) for v in self.std)}, {self.interpolation}, crop_pct "
            f"{round(self.crop_pct, 4)}, crop {self.crop_mode}"
        )

    def transform(self) -> Callable[..., Tensor]:
        """PIL image -> normalised ``(C, H, W)`` tensor, as timm's evaluation
        transform does."""
        from torchvision import transforms as T

        _, height, width = self.input_size
        scale = (math.floor(height / self.crop_pct), math.floor(width / self.crop_pct))
        # the shorter side, keeping the aspect ratio, as timm does for a square crop
        size = scale[0] if self.crop_mode == "center" and height == width else scale
        interpolation = T.InterpolationMode(self.interpolation)
        return T.Compose(
            [
                T.Resize(size, interpolation=interpolation),
                T.CenterCrop((height, width)),
                T.ToTensor(),
                T.Normalize(self.mean, self.std),
            ]
        )


def timm_preprocessing(model: nn.Module) -> Preprocessing:
    """timm's data config of ``model`` (its ``pretrained_cfg`` attribute where it
    has one, e.g. a timm model or any module given one; timm's ImageNet
    defaults otherwise)."""
    from timm.data import resolve_data_config

    has_config = bool(getattr(model, "pretrained_cfg", None))
    config = resolve_data_config(model=model)
    return Preprocessing(
        tuple(config["input_size"]),  # type: ignore[arg-type]
        tuple(config["mean"]),
        tuple(config["std"]),
        config["interpolation"],
        float(config["crop_pct"]),
        config.get("crop_mode", "center"),
        "the model's timm data config" if has_config else "timm's default data config",
    )


def _present(sizes: Any) -> Dict[str, int]:
    """The keys of a Hugging Face size dictionary that hold a value."""
    return {k: v for k, v in dict(sizes or {}).items() if v is not None}


def hf_preprocessing(processor: Any) -> Preprocessing:
    """The settings of a Hugging Face image processor (``size``, ``crop_size``,
    ``image_mean``, ``image_std``, ``resample``): ``size`` as ``height`` and
    ``width`` resizes to that size; as ``shortest_edge`` it resizes the shorter
    side, then crops ``crop_size`` (or ``crop_pct``)."""
    size = _present(processor.size)
    mean = tuple(float(v) for v in (processor.image_mean or (0.0, 0.0, 0.0)))
    std = tuple(float(v) for v in (processor.image_std or (1.0, 1.0, 1.0)))
    if not getattr(processor, "do_normalize", True):
        mean, std = (0.0,) * len(mean), (1.0,) * len(std)
    interpolation = _PIL_RESAMPLE.get(int(getattr(processor, "resample", 2) or 2), "bilinear")
    crop = _present(getattr(processor, "crop_size", None))
    do_crop = bool(getattr(processor, "do_center_crop", False)) and crop
    mode = "center"
    if "shortest_edge" in size:
        edge = int(size["shortest_edge"])
        crop_pct = getattr(processor, "crop_pct", None)
        if crop_pct and edge >= 384:  # ConvNeXt: large inputs are resized, not cropped
            height = width = edge
            crop_pct, mode = 1.0, "squash"
        elif crop_pct:  # ConvNeXt: resize to edge / crop_pct, crop edge
            height = width = edge
        elif do_crop:
            height, width = int(crop["height"]), int(crop["width"])
            crop_pct = min(height, width) / edge
        else:
            height = width = edge
            crop_pct = 1.0
    else:
        height, width = int(size["height"]), int(size["width"])
        crop_pct, mode = 1.0, "squash"
        if do_crop:
            crop_pct = min(int(crop["height"]) / height, 1.0)
            height, width = int(crop["height"]), int(crop["width"])
    return Preprocessing(
        (len(mean), height, width),
        mean,
        std,
        interpolation,
        float(crop_pct),
        mode,
        "the Hugging Face image processor",
    )


def torchvision_preprocessing(transforms: Any) -> Preprocessing:
    """The settings of torchvision's ``weights.transforms()``
    (``ImageClassification``: ``resize_size``, ``crop_size``, ``mean``,
    ``std``, ``interpolation``)."""
    crop = int(transforms.crop_size[0])
    resize = int(transforms.resize_size[0])
    return Preprocessing(
        (3, crop, crop),
        tuple(float(v) for v in transforms.mean),
        tuple(float(v) for v in transforms.std),
        transforms.interpolation.value,
        crop / resize,
        "center",
        "the torchvision weights' transforms",
    )
