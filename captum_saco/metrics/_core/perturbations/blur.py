"""``perturbation="blur"``: removed pixels take a Gaussian-blurred copy of the image."""

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_saco.metrics._core.perturbations.base import Perturbation, check_images


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """``images`` ``(N, C, H, W)`` blurred by a Gaussian of standard deviation
    ``sigma`` pixels, each channel alone: a separable kernel of radius
    ``ceil(3 · sigma)``, normalised to sum 1, the border replicated. Computed in
    float32 or wider, returned in the images' dtype.

    Examples::

        >>> import torch
        >>> image = torch.zeros(1, 1, 5, 5)
        >>> image[0, 0, 2, 2] = 1.0
        >>> blurred = gaussian_blur(image, 1.0)
        >>> round(blurred.sum().item(), 4), blurred[0, 0, 2, 2] < 1
        (1.0, tensor(True))
    """
    dtype = torch.promote_types(images.dtype, torch.float32)
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    x = images.to(dtype)
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return x.to(images.dtype)


class Blur(Perturbation):
    """Removed pixels take the values of one fixed Gaussian-blurred copy of
    each input (:func:`gaussian_blur`), the same for every metric and step;
    ``baselines=`` is not used.

    Args:
        sigma (float, optional): The Gaussian's standard deviation in pixels.
                    Default: None, a sixteenth of the shorter image side.

    Examples::

        >>> import torch
        >>> from captum_saco.metrics import Blur, deletion_curve
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 5))
        >>> images, maps = torch.randn(2, 3, 16, 16), torch.rand(2, 16, 16)
        >>> deletion_curve(model, images, maps, perturbation=Blur(sigma=2.0)).aopc().shape
        torch.Size([2])
    """

    name = "blur"

    def __init__(self, sigma: Optional[float] = None) -> None:
        if sigma is not None and (
            isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0
        ):
            raise ValueError(f"blur_sigma: expected a positive number of pixels, got {sigma!r}")
        self.sigma = sigma

    def check(self, forward_func: object, inputs: Tuple[Tensor, ...]) -> None:
        check_images(self.name, inputs)

    def fill_values(
        self, inputs: Tuple[Tensor, ...], baselines: Tuple[Tensor, ...]
    ) -> Tuple[Tensor, ...]:
        return tuple(
            gaussian_blur(
                x.detach(), self.sigma if self.sigma is not None else min(x.shape[-2:]) / 16
            )
            for x in inputs
        )

    def __repr__(self) -> str:
        return f"Blur(sigma={self.sigma!r})"
