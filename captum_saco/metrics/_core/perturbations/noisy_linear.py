"""``perturbation="noisy_linear"``: ROAD's noisy linear imputation (Rong et al., ICML 2022)."""

from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from captum_saco.metrics._core.perturbations.base import Perturbation, check_images

NEIGHBOURS: Tuple[Tuple[int, int, float], ...] = (
    (-1, 0, 1 / 6),
    (1, 0, 1 / 6),
    (0, -1, 1 / 6),
    (0, 1, 1 / 6),
    (-1, -1, 1 / 12),
    (-1, 1, 1 / 12),
    (1, -1, 1 / 12),
    (1, 1, 1 / 12),
)
"""``(dy, dx, weight)`` of the 8 neighbours in ROAD's system: 1/6 for the edge
neighbours, 1/12 for the diagonal ones."""

ROAD_NOISE = 0.01
"""The standard deviation of ROAD's noise on the imputed pixels (its default)."""


def _spsolve():  # type: ignore[no-untyped-def]
    try:
        from scipy.sparse import csr_matrix
        from scipy.sparse.linalg import spsolve
    except ImportError:
        raise ImportError(
            "perturbation='noisy_linear' solves a sparse linear system with scipy, which is "
            "not installed: pip install 'captum-saco[stats]' (or scipy)"
        ) from None
    return csr_matrix, spsolve


def _impute_one(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """``image`` ``(C, H, W)`` float64 with the pixels of ``removed`` ``(H, W)`` solved."""
    csr_matrix, spsolve = _spsolve()
    h, w = removed.shape
    variable = np.full((h, w), -1, dtype=np.int64)
    ys, xs = np.nonzero(removed)
    u = len(ys)
    variable[ys, xs] = np.arange(u)
    diagonal = np.zeros(u)
    rhs = np.zeros((u, image.shape[0]))
    rows, columns, values = [], [], []
    for dy, dx, weight in NEIGHBOURS:
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)  # border neighbours dropped
        diagonal[inside] += weight
        neighbour = np.full(u, -1, dtype=np.int64)
        neighbour[inside] = variable[ny[inside], nx[inside]]
        unknown = inside & (neighbour >= 0)
        known = inside & (neighbour < 0)
        rows.append(np.nonzero(unknown)[0])
        columns.append(neighbour[unknown])
        values.append(np.full(int(unknown.sum()), -weight))
        rhs[known] += weight * image[:, ny[known], nx[known]].T
    index = np.arange(u)
    matrix = csr_matrix(
        (
            np.concatenate(values + [diagonal]),
            (np.concatenate(rows + [index]), np.concatenate(columns + [index])),
        ),
        shape=(u, u),
    )
    solution = np.asarray(spsolve(matrix.tocsc(), rhs)).reshape(u, -1)
    out = image.copy()
    out[:, ys, xs] = solution.T
    return out


def noisy_linear_impute(
    images: Tensor,
    removed: Tensor,
    noise: float = ROAD_NOISE,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    r"""ROAD's noisy linear imputation (Rong et al., ICML 2022) of the removed pixels.

    For every removed pixel ``i`` the value ``x_i`` solves, per channel,
    ``Σ_{j ∈ N(i)} w_ij (x_i − x_j) = 0`` over its 8 neighbours ``N(i)`` in
    the image (neighbours outside the image are dropped), ``w = 1/6`` for the
    4 edge and ``1/12`` for the 4 diagonal neighbours, where the remaining
    pixels keep their values: one sparse linear system per image, solved
    exactly (scipy's ``spsolve``, in float64). Then Gaussian noise of standard
    deviation ``noise`` is added to the imputed pixels only. An image with no
    remaining pixel has nothing to solve from and is refused.

    Args:
        images (Tensor): ``(C, H, W)`` or ``(N, C, H, W)``.
        removed (Tensor): bool, ``(H, W)`` or ``(N, [1,] H, W)``: True where a
                    pixel (all its channels) is removed.
        noise (float, optional): The noise's standard deviation. Default: 0.01
        generator (torch.Generator, optional): A CPU generator for the noise.
                    Default: None, torch's global one.

    Returns:
        Tensor: the images with the removed pixels imputed, in their shape,
        dtype and device; the remaining pixels unchanged.

    Examples::

        >>> import torch
        >>> image = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 9.0, 0.0], [6.0, 6.0, 6.0]]])
        >>> removed = torch.zeros(3, 3, dtype=torch.bool)
        >>> removed[1, 1] = True
        >>> noisy_linear_impute(image, removed, noise=0.0)[0, 1, 1].item()
        2.0
    """
    single = images.dim() == 3
    x = images.unsqueeze(0) if single else images
    if x.dim() != 4:
        raise ValueError(f"images: expected (C, H, W) or (N, C, H, W), got {tuple(images.shape)}")
    mask = removed.to(torch.bool).reshape(-1, *x.shape[-2:])
    if mask.shape[0] not in (1, x.shape[0]):
        raise ValueError(
            f"removed: expected (H, W) or (N, [1,] H, W) for images {tuple(images.shape)}, "
            f"got {tuple(removed.shape)}"
        )
    mask = mask.expand(x.shape[0], -1, -1).cpu()
    out = []
    for image, m in zip(x, mask):
        if not bool(m.any()):
            out.append(image)
            continue
        if bool(m.all()):
            raise ValueError(
                "removed: every pixel of an image is removed, so no pixel remains to impute "
                "it from (noisy linear imputation needs at least one)"
            )
        solved = torch.from_numpy(_impute_one(image.detach().double().cpu().numpy(), m.numpy()))
        if noise:
            draws = torch.randn(solved.shape, generator=generator, dtype=torch.float64)
            solved = torch.where(m, solved + noise * draws, solved)
        out.append(solved.to(device=image.device, dtype=image.dtype))
    result = torch.stack(out)
    return result[0] if single else result


class NoisyLinear(Perturbation):
    """ROAD's noisy linear imputation (Rong et al., ICML 2022): removed pixels
    are imputed from the remaining pixels of the original image by
    :func:`noisy_linear_impute`, with noise on the imputed pixels only.

    Each perturbed image is one sparse solve on the CPU (the price of the
    method, as in ROAD). An image with every pixel removed (an insertion
    curve's point 0, a deletion fraction of 1) has nothing to impute from: it
    takes ``baselines=`` instead (default: the per-example per-channel mean).
    ``forward_func`` may be any callable; the inputs must be images
    ``(N, C, H, W)``.

    Args:
        noise (float, optional): The noise's standard deviation, in the
                    units of the inputs. Default: 0.01, ROAD's
        seed (int, optional): Seeds the noise afresh at every metric call,
                    for results that do not depend on earlier calls.
                    Default: None
        generator (torch.Generator, optional): A CPU generator the noise
                    is drawn from instead (not reset). Default: None, torch's
                    global generator unless ``seed`` is given.

    Examples::

        >>> import torch
        >>> from captum_saco.metrics import NoisyLinear, aopc
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
        >>> images, maps = torch.randn(2, 3, 8, 8), torch.rand(2, 8, 8)
        >>> a = aopc(model, images, maps, perturbation=NoisyLinear(seed=0))
        >>> torch.equal(a, aopc(model, images, maps, perturbation=NoisyLinear(seed=0)))
        True
    """

    name = "noisy_linear"

    def __init__(
        self,
        noise: float = ROAD_NOISE,
        seed: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
            raise ValueError(f"noise: expected a number >= 0, got {noise!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator: expected a torch.Generator, got {type(generator).__name__}"
            )
        if seed is not None and generator is not None:
            raise ValueError("seed, generator: give at most one of them")
        self.noise = float(noise)
        self.seed = seed
        self.generator = generator
        self._draws: Optional[torch.Generator] = generator

    def check(self, forward_func: object, inputs: Tuple[Tensor, ...]) -> None:
        _spsolve()
        check_images(self.name, inputs)

    def fill_values(
        self, inputs: Tuple[Tensor, ...], baselines: Tuple[Tensor, ...]
    ) -> Tuple[Tensor, ...]:
        if self.seed is not None:  # a call's noise does not depend on earlier calls
            self._draws = torch.Generator().manual_seed(self.seed)
        return baselines

    def perturb(self, x: Tensor, removed: Tensor, fill: Tensor) -> Tensor:
        mask = removed.expand(x.shape[0], 1, *x.shape[2:]).squeeze(1)
        everything = mask.flatten(1).all(dim=1)
        partial = ~everything
        out = torch.where(everything.view(-1, 1, 1, 1), fill.expand_as(x), x)
        if bool(partial.any()):
            out[partial] = noisy_linear_impute(
                x[partial], mask[partial], noise=self.noise, generator=self._draws
            )
        return out

    def __repr__(self) -> str:
        return f"NoisyLinear(noise={self.noise!r}, seed={self.seed!r})"
