"""A folder of image files as a data set: flat, or one subfolder per class."""

from pathlib import Path
from typing import Callable, List, Optional, Tuple

from torch import Tensor
from torch.utils.data import Dataset

UNLABELLED = -1


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _files_under(folder: Path) -> List[Path]:
    """The files under ``folder``, recursively, without hidden files or folders."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


class ImageFiles(Dataset):
    r"""
    The files of a folder as labelled images, read one at a time.

    Two layouts are understood: a flat folder of images (labels unknown,
    :data:`UNLABELLED`), or torchvision's ``ImageFolder`` layout, one
    subfolder per class read recursively, where the label of a file is the
    position of its class folder's name in sorted order (ImageNet's class
    index for synset folders). Files are taken in sorted order of their
    paths; hidden files and folders (names starting with ``.``) are left
    out. Every other file is an item: one that is not a readable image fails
    when read, so that a caller can skip it.

    Args:
        root (str or Path): the folder.
        transform (Callable): PIL image -> tensor, e.g. timm's
                    ``create_transform(**resolve_data_config(model=model))``.
        mode (str): the PIL mode images are converted to before
                    ``transform``. Default: ``"RGB"``
        limit (int, optional): keep only the first ``limit`` files.

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
        if folders:
            self.samples: List[Tuple[Path, int]] = [
                (f, label) for label, folder in enumerate(folders) for f in _files_under(folder)
            ]
        else:
            self.samples = [(p, UNLABELLED) for p in top]
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
            return self.transform(image.convert(self.mode)), label
