"""Plots of an evaluation: bars per method and metric, and SaCo's case study."""

import math
import textwrap
from typing import Any, List, Mapping, Optional, Tuple

from torch import Tensor

from captum_saco.evaluation.registry import METRICS
from captum_saco.evaluation.result import EvaluationResult, replacing

__all__ = ["plot_evaluation"]


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(
            "plotting needs matplotlib; install it with pip install 'captum-saco[plot]'"
        ) from e
    return plt


Colour = Tuple[float, float, float, float]


def method_colours(n: int) -> List[Colour]:
    """``n`` distinct colours, one per method: tab20's dark shades then its
    light ones (neighbours differ) up to 20 methods, evenly spaced hues beyond.

    Examples::

        >>> colours = method_colours(14)
        >>> len(set(colours))
        14
    """
    plt = _pyplot()
    if n <= 20:
        tab20 = plt.get_cmap("tab20")
        order = list(range(0, 20, 2)) + list(range(1, 20, 2))
        return [tab20(order[i]) for i in range(n)]
    hsv = plt.get_cmap("hsv")
    return [hsv(i / n) for i in range(n)]


def grid_shape(n_panels: int) -> Tuple[int, int]:
    """``(rows, columns)`` of a grid of square panels whose aspect stays
    between 1:1 and 2:1 (wide), whatever the number of panels.

    Examples::

        >>> [grid_shape(n) for n in (1, 2, 3, 7, 20)]
        [(1, 1), (1, 2), (2, 2), (3, 3), (4, 5)]
    """
    columns = math.ceil(math.sqrt(max(n_panels, 1)))
    return math.ceil(max(n_panels, 1) / columns), columns


def _title(ax: Any, text: str) -> None:
    """A panel's title, wrapped to the panel's width rather than cut."""
    ax.set_title("\n".join(textwrap.wrap(text, 34)), fontsize=9)


def _plot_metric_bars(axes: List[Any], result: EvaluationResult, colours: List[Colour]) -> None:
    methods = result.methods
    for ax, metric in zip(axes, result.metrics):
        rows = [result.row(m, metric) for m in methods]
        means = [math.nan if r.mean is None else r.mean for r in rows]
        errors = [0.0 if r.std is None else r.std / math.sqrt(r.n) for r in rows]
        positions = list(range(len(methods), 0, -1))  # the first method on top
        ax.barh(positions, means, xerr=errors, color=colours)
        ax.set_yticks(positions, methods, fontsize=7)
        _title(ax, f"{metric} ({METRICS[metric]})")
        ax.axvline(0, color="black", linewidth=0.5)
        ax.tick_params(axis="x", labelsize=7)


def _show_image(ax: Any, image: Tensor) -> None:
    shown = image.detach().cpu().float()
    shown = (shown - shown.min()) / (shown.max() - shown.min() + 1e-12)
    ax.imshow(shown.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray")
    _title(ax, "case-study image")
    ax.axis("off")


def _plot_case_study(
    panels: List[Any], case_study: Mapping[str, Any], methods: List[str], colours: List[Colour]
) -> None:
    extra = method_colours(len(methods) + len(case_study))[len(methods) :]
    for i, (ax, (name, details)) in enumerate(zip(panels, case_study.items())):
        drops = details.probability_drop[0].double().numpy()
        salience = details.group_salience[0].double().numpy()
        groups = list(range(1, len(drops) + 1))
        ax.bar(groups, drops, color=colours[methods.index(name)] if name in methods else extra[i])
        ax.set_xlabel("salience group (most salient first)", fontsize=7)
        ax.set_ylabel("probability drop Δ", fontsize=7)
        ax.tick_params(labelsize=7)
        _title(ax, f"{name}: SaCo {float(details.coefficient[0]):.3f}")
        twin = ax.twinx()
        twin.plot(groups, salience, color="black", marker=".", linewidth=1)
        twin.set_ylabel("group salience s(G)", fontsize=7)
        twin.tick_params(labelsize=7)


def plot_evaluation(
    result: EvaluationResult,
    path: str,
    case_study: Optional[Mapping[str, Any]] = None,
    image: Optional[Tensor] = None,
) -> None:
    r"""
    Save a PNG of the evaluation: one bar chart per metric (the mean of each
    method, with its standard error) and, if ``case_study`` is given (from
    :func:`~captum_saco.evaluation.saco_case_study`), SaCo's per-group
    probability drops of one image for each method, with the groups' summed
    salience. The panels form a grid whose aspect stays between 1:1 and 2:1
    for any number of methods (see :func:`grid_shape`), each method in its
    own colour (see :func:`method_colours`), titles wrapped, never cut.

    The figure is drawn with matplotlib's current backend, which is left as
    it is, and closed after saving.

    Args:
        result (EvaluationResult): from :func:`~captum_saco.evaluation.evaluate`.
        path (str): the PNG file to write.
        case_study (mapping, optional): method -> SacoDetails of one image.
        image (Tensor, optional): that image ``(C, H, W)``, shown beside it.

    Raises:
        ImportError: if matplotlib is not installed.

    Examples::

        >>> import tempfile, torch
        >>> from captum_saco.evaluation import evaluate, saco_case_study
        >>> from captum_saco.visualization import plot_evaluation
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)).eval()
        >>> images = torch.randn(4, 1, 8, 8)
        >>> result = evaluate(model, images, methods=["random", "saliency"], metrics=["saco"])
        >>> study = saco_case_study(model, images, 0, methods=["random", "saliency"], n_groups=4)
        >>> path = tempfile.mkdtemp() + "/evaluation.png"
        >>> plot_evaluation(result, path, study, images[0])
        >>> open(path, "rb").read(4)[1:]  # the PNG signature
        b'PNG'
    """
    plt = _pyplot()
    studied = len(case_study or {}) + (image is not None and bool(case_study))
    n_panels = len(result.metrics) + studied
    n_rows, n_cols = grid_shape(n_panels)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(3.4 * n_cols, 3.4 * n_rows), squeeze=False, layout="constrained"
    )
    try:
        colours = method_colours(len(result.methods))
        panels = list(axes.flat)
        _plot_metric_bars(panels[: len(result.metrics)], result, colours)
        rest = panels[len(result.metrics) :]
        if case_study:
            if image is not None:
                _show_image(rest.pop(0), image)
            _plot_case_study(rest, case_study, result.methods, colours)
        for ax in panels[n_panels:]:
            ax.axis("off")
        fig.suptitle(f"{result.model}: {result.n_images} images", fontsize=11)
        with replacing(path) as temporary:  # a failed write leaves the previous plot
            fig.savefig(temporary, dpi=120, format="png")
    finally:
        plt.close(fig)
