"""The images of an evaluation as a stream of batches: from a tensor, or from
a data set read by a ``DataLoader``, where a file that cannot be read is
reported and skipped instead of ending the run."""

import numbers
from collections import Counter
from typing import Any, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

# Errors of reading one file that skip it: not a readable image (OSError,
# SyntaxError and ValueError from Pillow's parsers), or a decompression bomb.
try:
    from PIL.Image import DecompressionBombError

    READ_ERRORS: Tuple[type, ...] = (OSError, SyntaxError, ValueError, DecompressionBombError)
except ImportError:  # pragma: no cover - Pillow ships with torchvision
    READ_ERRORS = (OSError, SyntaxError, ValueError)


class Batch(NamedTuple):
    indices: Tensor
    """``(B,)`` positions of the readable images in the data set."""
    images: Tensor
    """``(B, ...)`` those images (``B`` may be 0)."""
    labels: Optional[Tensor]
    """``(B,)`` their labels (negative: unknown), or None without labels."""
    skipped: List[Tuple[int, str]]
    """``(position, reason)`` of the items of the batch left out: unreadable, or
    of another shape than most of the batch."""


def _split(item: Any) -> Tuple[Any, Any]:
    """``(images, labels)`` of an item or a batch: ``(images, labels, ...)``,
    ``(images,)``, images alone, or a Hugging Face dict with ``pixel_values``
    and ``labels`` (or ``label``); labels None when absent."""
    if isinstance(item, Mapping):
        if "pixel_values" not in item:
            raise TypeError(
                "inputs: a dict item needs the key 'pixel_values' (the Hugging Face "
                f"convention), got the keys {sorted(map(str, item))}"
            )
        return item["pixel_values"], item.get("labels", item.get("label"))
    if isinstance(item, (tuple, list)) and item:
        return item[0], item[1] if len(item) > 1 else None
    return item, None


def _image_and_label(item: Any, index: int) -> Tuple[Tensor, int]:
    """An item of a data set as ``(image, label)``: ``(image, label, ...)``, a
    dict ``{"pixel_values", "labels"}``, or an image alone
    (``TensorDataset(images)`` gives ``(image,)``), whose label is unknown
    (-1), as is a label None. Images are tensors or NumPy arrays; labels
    integers."""
    if isinstance(item, Mapping) or (isinstance(item, (tuple, list)) and item):
        image, label = _split(item)
    else:
        image, label = item, None
    if label is None:
        label = -1
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(image)
    if not isinstance(image, Tensor):
        raise TypeError(
            f"inputs: item {index} of the data set holds a {type(image).__name__}, not an "
            "image tensor; give the data set a transform that makes tensors (e.g. "
            "torchvision.transforms.ToTensor())"
        )
    if isinstance(label, Tensor) and label.numel() == 1 and not label.is_floating_point():
        label = label.item()
    if isinstance(label, bool) or not isinstance(label, numbers.Integral):
        raise TypeError(
            f"inputs: item {index} of the data set has the label {label!r}; expected an "
            "integer class index, or items without labels"
        )
    return image, int(label)


class _Indexed(Dataset):
    """Items ``(index, image or None, label, error or None)``; a read error
    becomes a value, so that one bad file does not end the batch."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __getitem__(self, index: int) -> Tuple[int, Optional[Tensor], int, Optional[str]]:
        try:
            item = self.dataset[index]
        except READ_ERRORS as e:
            return index, None, -1, f"it cannot be read ({type(e).__name__}: {e})"
        return (index, *_image_and_label(item, index), None)


def _collate(items: Sequence[Tuple[int, Optional[Tensor], int, Optional[str]]]) -> Batch:
    read = [(i, image, label) for i, image, label, error in items if error is None]
    skipped = [(i, error) for i, _, _, error in items if error is not None]
    # An image of another shape than most of its batch's is skipped, not the batch.
    shapes = Counter(image.shape for _, image, _ in read)
    if len(shapes) > 1:
        shape = shapes.most_common(1)[0][0]
        skipped += [
            (i, f"its shape {tuple(image.shape)} differs from the batch's {tuple(shape)}")
            for i, image, _ in read
            if image.shape != shape
        ]
        read = [(i, image, label) for i, image, label in read if image.shape == shape]
    if not read:
        return Batch(torch.zeros(0, dtype=torch.long), torch.zeros(0), None, skipped)
    return Batch(
        torch.tensor([i for i, _, _ in read]),
        torch.stack([image for _, image, _ in read]),
        torch.tensor([label for _, _, label in read]),
        skipped,
    )


class Source:
    """The images of an evaluation: a tensor, or a data set of
    ``(image, label)`` items."""

    def __init__(self, inputs: Union[Tensor, Dataset], workers: int = 0) -> None:
        self.inputs, self.workers = inputs, workers
        self.has_labels = not isinstance(inputs, Tensor)

    def __len__(self) -> int:
        return len(self.inputs)  # type: ignore[arg-type]

    def key(self, index: int) -> Any:
        """The name of image ``index`` in per-image results: its path for a
        data set of files, else its index."""
        key = getattr(self.inputs, "key", None)
        return key(index) if callable(key) else index

    def batches(self, plan: List[List[int]]) -> Iterator[Batch]:
        """The batches of ``plan`` (lists of positions), in order."""
        if isinstance(self.inputs, Tensor):
            for positions in plan:
                indices = torch.tensor(positions)
                yield Batch(indices, self.inputs[indices], None, [])
            return
        loader = DataLoader(
            _Indexed(self.inputs),
            batch_sampler=plan,
            num_workers=self.workers,
            collate_fn=_collate,
            persistent_workers=False,
        )
        yield from loader

    def first_image(self) -> Tuple[int, Tensor]:
        """The first readable image and its position (for the case study)."""
        for batch in self.batches([[i] for i in range(len(self))]):
            if batch.indices.numel():
                return int(batch.indices[0]), batch.images[0]
        raise ValueError("inputs: no item of the data set can be read")


class Stream:
    """The images of an evaluation as an iterable of batches (a ``DataLoader``,
    a generator, a list): each batch ``(images, labels)``, ``(images,)``,
    images alone, or a dict with ``pixel_values`` and ``labels`` (the Hugging
    Face convention). Images are read once, in order; an image's key is its
    position in the stream. Their number is known once they are read."""

    has_labels = True

    def __init__(self, batches: Iterable[Any]) -> None:
        self.inputs, self.count = batches, 0

    def __len__(self) -> int:
        return self.count

    def key(self, index: int) -> int:
        return index

    def batches(self) -> Iterator[Batch]:
        for number, item in enumerate(self.inputs):
            images, labels = _split(item)
            if isinstance(images, np.ndarray):
                images = torch.from_numpy(images)
            if not isinstance(images, Tensor) or images.dim() < 2 or images.shape[0] == 0:
                raise TypeError(
                    f"inputs: batch {number} of the iterable holds "
                    f"{type(images).__name__ if not isinstance(images, Tensor) else 'shape ' + str(tuple(images.shape))}"
                    "; expected (images, labels) with images a tensor of shape (B, ...)"
                )
            n = images.shape[0]
            if labels is not None:
                labels = torch.as_tensor(labels)
                if labels.shape != (n,) or labels.is_floating_point() or labels.dtype == torch.bool:
                    raise TypeError(
                        f"inputs: batch {number} of the iterable has labels of shape "
                        f"{tuple(labels.shape)} and dtype {labels.dtype}; expected {n} "
                        "integer classes, one per image"
                    )
            indices = torch.arange(self.count, self.count + n)
            self.count += n
            yield Batch(indices, images, labels, [])
