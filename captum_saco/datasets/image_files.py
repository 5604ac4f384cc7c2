"""A folder of image files as a data set: flat, or one subfolder per class."""

import os
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Tuple

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

UNLABELLED = -1
#: the colour transparent pixels are composited on
BACKGROUND = (255, 255, 255)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _files_under(folder: Path) -> List[Path]:
    """The regular files under ``folder``, recursively, following linked folders
    as torchvision's ``ImageFolder`` does (each real folder once, so that a link
    loop ends), without hidden files or folders."""
    files, seen = [], set()
    for path, folders, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(path)
        if real in seen:
            folders[:] = []
            continue
        seen.add(real)
        folders[:] = [name for name in folders if not name.startswith(".")]
        files += [Path(path, name) for name in names if not name.startswith(".")]
    return sorted(p for p in files if p.is_file())


def to_eight_bit(image: Any) -> Any:
    """A PIL image with 8 bits per channel: a 16-bit greyscale image (PNG modes
    ``"I;16"`` and ``"I"``) is scaled by 255 / 65535, where PIL's ``convert``
    would clip its values at 255 (an almost white image); others as they are."""
    if not (image.mode == "I" or image.mode.startswith("I;16")):
        return image
    from PIL import Image

    values = np.asarray(image).astype(np.float64) * (255 / 65535)
    return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), "L")


def upright_opaque(image: Any) -> Any:
    """A PIL image as it is meant to be seen: turned by its EXIF orientation
    (phone photos are stored sideways with a tag), and with transparency
    composited on :data:`BACKGROUND` (white), where ``convert`` would show the
    colours of transparent pixels (often black)."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(to_eight_bit(image))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        image = Image.alpha_composite(background, rgba).convert("RGB")
    return image


class ImageFiles(Dataset):
    r"""
    The files of a folder as labelled images, read one at a time.

    Two layouts are understood: a flat folder of images (labels unknown,
    :data:`UNLABELLED`), or torchvision's ``ImageFolder`` layout, one
    subfolder per class read recursively, where the label of a file is the
    position of its class folder's name in sorted order (ImageNet's class
    index for synset folders), unless ``class_to_idx`` gives each folder's
    index. Files are taken in sorted order of their
    paths; hidden files and folders (names starting with ``.``) are left
    out. Every other file is an item: one that is not a readable image fails
    when read, so that a caller can skip it. Images are turned upright by
    their EXIF orientation and transparent pixels are composited on white
    (:func:`upright_opaque`).

    Args:
        root (str or Path): the folder.
        transform (Callable): PIL image -> tensor, e.g. timm's
                    ``create_transform(**resolve_data_config(model=model))``.
        mode (str): the PIL mode images are converted to before
                    ``transform``. Default: ``"RGB"``
        limit (int, optional): keep only the first ``limit`` files.
        class_to_idx (mapping of str to int, optional): each class folder's
                    label (e.g. from :func:`class_indices`). Default: the
                    folders' positions in sorted order.

    Attributes:
        classes (list of str): the class folders' names; empty when flat.
        samples (list of (Path, int)): each file and its label.

    Raises:
        ValueError: if ``root`` is not a folder, holds no files, or mixes
            files and class folders at its top level.

    Examples::

        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from torchvision.transforms.functional import to_tensor
        >>> root = Path(tempfile.mkdtemp())
        >>> for name in ["cat/1.png", "cat/2.png", "dog/1.png"]:
        ...     (root / name).parent.mkdir(exist_ok=True)
        ...     Image.new("RGB", (4, 4)).save(root / name)
        >>> data = ImageFiles(root, to_tensor)
        >>> data.classes, [data.key(i) for i in range(len(data))]
        (['cat', 'dog'], ['cat/1.png', 'cat/2.png', 'dog/1.png'])
        >>> image, label = data[2]
        >>> image.shape, label
        (torch.Size([3, 4, 4]), 1)
    """

    def __init__(
        self,
        root: "str | Path",
        transform: Callable[..., Tensor],
        mode: str = "RGB",
        limit: Optional[int] = None,
        class_to_idx: Optional[Mapping[str, int]] = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"root: {str(root)!r} is not a folder")
        top = [p for p in sorted(self.root.iterdir()) if _visible(p)]
        folders = [p for p in top if p.is_dir()]
        if folders and any(p.is_file() for p in top):
            raise ValueError(
                f"root: {str(root)!r} mixes files and class folders; expected either a flat "
                "folder of images or one subfolder per class"
            )
        self.classes: List[str] = [p.name for p in folders]
        missing = [c for c in self.classes if class_to_idx is not None and c not in class_to_idx]
        if missing:
            raise ValueError(f"class_to_idx: no index for the class folder {missing[0]!r}")
        labels = class_to_idx or {c: i for i, c in enumerate(self.classes)}
        if folders:
            self.samples: List[Tuple[Path, int]] = [
                (f, labels[folder.name]) for folder in folders for f in _files_under(folder)
            ]
        else:  # regular files: reading a named pipe or a device would wait forever
            self.samples = [(p, UNLABELLED) for p in top if p.is_file()]
        self.samples = self.samples[:limit]
        if not self.samples:
            raise ValueError(f"root: {str(root)!r} holds no files")
        self.transform, self.mode = transform, mode

    def __len__(self) -> int:
        return len(self.samples)

    def key(self, index: int) -> str:
        """The path of item ``index`` relative to the root, with ``/``."""
        return self.samples[index][0].relative_to(self.root).as_posix()

    def __getitem__(self, index: int) -> Tuple[Tensor, int]:
        from PIL import Image

        path, label = self.samples[index]
        with Image.open(path) as image:
            return self.transform(upright_opaque(image).convert(self.mode)), label
