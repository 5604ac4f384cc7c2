"""The report's figures, drawn with matplotlib and returned as ``data:`` URIs
of PNG images, so that the page holds them itself."""

import base64
import io
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from captum_saco.evaluation.result import EvaluationResult
from captum_saco.visualization import Colour, _pyplot


def data_uri(fig: Any, dpi: int = 110) -> str:
    """The figure as a PNG ``data:`` URI; the figure is closed."""
    plt = _pyplot()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _panel_size(n_methods: int) -> Tuple[float, float]:
    """The size of the distribution and the curves, side by side in the page."""
    return 5.2, max(3.6, 0.9 + 0.36 * n_methods)


def saco_distribution(result: EvaluationResult, colours: Dict[str, Colour]) -> str:
    """Box plots of the per-image SaCo of each method (first method on top)."""
    plt = _pyplot()
    methods = result.methods
    fig, ax = plt.subplots(figsize=_panel_size(len(methods)))
    values = []
    for m in methods:
        v = result.per_example[(m, "saco")]
        values.append(v[~torch.isnan(v)].numpy())
    positions = list(range(len(methods), 0, -1))
    boxes = ax.boxplot(
        values,
        positions=positions,
        orientation="horizontal",
        widths=0.6,
        patch_artist=True,
        showmeans=True,
        meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black"},
        flierprops={"markersize": 2, "alpha": 0.5},
        medianprops={"color": "black"},
    )
    for patch, m in zip(boxes["boxes"], methods):
        patch.set_facecolor(colours[m])
    ax.set_yticks(positions, methods, fontsize=8)
    ax.axvline(0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel("SaCo of one image (diamond: mean)", fontsize=9)
    ax.set_title("Per-image SaCo", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return data_uri(fig)


def _curves(result: EvaluationResult) -> Dict[str, Tensor]:
    """Method -> ``(images, K)`` per-image deletion curves (NaN rows left out)."""
    by_method: Dict[str, List[List[float]]] = {}
    for row in result.per_image:
        curve = row.get("deletion_curve")
        if curve is not None:
            by_method.setdefault(row["method"], []).append(curve)
    out = {}
    for method, curves in by_method.items():
        values = torch.tensor(curves, dtype=torch.float64)
        out[method] = values[~torch.isnan(values).any(dim=1)]
    return out


def deletion_curves(result: EvaluationResult, colours: Dict[str, Colour]) -> str:
    """The mean probability of the target against the fraction of pixels
    removed (most salient first), one line per method with its 95% band
    (mean ± 1.96 standard errors); empty if no curve was kept."""
    curves = _curves(result)
    if not curves:
        return ""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=_panel_size(len(result.methods)))
    band = 0.15 if len(curves) <= 5 else 0.06  # many bands stay readable when faint
    for method in result.methods:
        values = curves.get(method)
        if values is None or not values.shape[0]:
            continue
        k = values.shape[1]
        fractions = torch.arange(k, dtype=torch.float64) / k
        mean = values.mean(dim=0)
        se = values.std(dim=0) / math.sqrt(values.shape[0]) if values.shape[0] > 1 else 0 * mean
        ax.plot(fractions, mean, color=colours[method], label=method, linewidth=1.6)
        ax.fill_between(
            fractions, mean - 1.96 * se, mean + 1.96 * se, color=colours[method], alpha=band
        )
    ax.set_xlabel("fraction of pixels removed (most salient first)", fontsize=9)
    ax.set_ylabel("probability of the target", fontsize=9)
    ax.set_title("Deletion curves (mean, 95% band)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(curves) > 7 else 1, frameon=False)
    return data_uri(fig)


def _shown(image: Tensor) -> Any:
    """An image ``(C, H, W)`` scaled to [0, 1], as matplotlib shows it (grey
    for one channel)."""
    image = image.detach().cpu().float()
    image = (image - image.min()) / (image.max() - image.min() + 1e-12)
    return image[0].numpy() if image.shape[0] == 1 else image[:3].permute(1, 2, 0).numpy()


def example_strip(
    images: Tensor,
    captions: Sequence[str],
    heatmaps: Optional[Tensor] = None,
) -> str:
    """One row of the example images, with ``heatmaps`` ``(E, H, W)`` overlaid
    if given (each scaled to its own range), a caption under each."""
    plt = _pyplot()
    n = images.shape[0]
    fig, axes = plt.subplots(1, n, figsize=(1.55 * n, 2.0), squeeze=False)
    for j, ax in enumerate(axes[0]):
        ax.imshow(_shown(images[j]), cmap="gray", interpolation="nearest")
        if heatmaps is not None:
            h = heatmaps[j].detach().cpu().double()
            h = torch.nan_to_num(h)
            h = (h - h.min()) / (h.max() - h.min() + 1e-12)
            ax.imshow(h.numpy(), cmap="jet", alpha=0.5, interpolation="bilinear")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(captions[j], fontsize=8)
    fig.tight_layout()
    return data_uri(fig, dpi=100)
