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
from captum_saco.datasets.image_files import UNLABELLED, ImageFiles

__all__ = [
    "FashionMNISTSamples",
    "ImageFiles",
    "UNLABELLED",
    "fashion_mnist_metadata",
    "fashion_mnist_transform",
    "load_fashion_mnist_clip",
    "load_fashion_mnist_samples",
    "load_fashion_mnist_vit",
]
