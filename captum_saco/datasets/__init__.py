"""The embedded default model and images (a small ViT trained on
Fashion-MNIST), a small CLIP trained on the same images for zero-shot
examples, and folders of image files as data sets."""

from captum_saco.datasets.fashion_mnist import (
    FashionMNISTSamples,
    fashion_mnist_metadata,
    fashion_mnist_transform,
    load_fashion_mnist_clip,
    load_fashion_mnist_samples,
    load_fashion_mnist_vit,
)
from captum_saco.datasets.image_files import BACKGROUND, UNLABELLED, ImageFiles
from captum_saco.datasets.labels import class_indices, read_class_map

__all__ = [
    "BACKGROUND",
    "FashionMNISTSamples",
    "ImageFiles",
    "UNLABELLED",
    "class_indices",
    "fashion_mnist_metadata",
    "fashion_mnist_transform",
    "load_fashion_mnist_clip",
    "load_fashion_mnist_samples",
    "load_fashion_mnist_vit",
    "read_class_map",
]
