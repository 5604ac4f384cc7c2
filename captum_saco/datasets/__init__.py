"""The embedded default model and images: a small ViT trained on Fashion-MNIST."""

from captum_saco.datasets.fashion_mnist import (
    FashionMNISTSamples,
    fashion_mnist_metadata,
    load_fashion_mnist_samples,
    load_fashion_mnist_vit,
)

__all__ = [
    "FashionMNISTSamples",
    "fashion_mnist_metadata",
    "load_fashion_mnist_samples",
    "load_fashion_mnist_vit",
]
