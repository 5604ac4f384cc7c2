"""Plots of an evaluation: bars per method and metric, and SaCo's case study."""

import math
from typing import Any, List, Mapping, Optional

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


def _plot_metric_bars(axes: List[Any], result: EvaluationResult, colours: Any) -> None:
    methods = result.methods
    for ax, metric in zip(axes, result.metrics):
        rows = [result.row(m, metric) for m in methods]
        means = [math.nan if r.mean is None else r.mean for r in rows]
        errors = [0.0 if r.std is None else r.std / math.sqrt(r.n) for r in rows]
        ax.bar(
            range(len(methods)),
            means,
            yerr=errors,
            color=[colours(i % 10) for i in range(len(methods))],
        )
        ax.set_xticks(range(len(methods)), methods, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{metric} ({METRICS[metric]})", fontsize=9)
        ax.axhline(0, color="black", linewidth=0.5)
    for ax in axes[len(result.metrics) :]:
        ax.axis("off")


def _show_image(ax: Any, image: Tensor) -> None:
    shown = image.detach().cpu().float()
    shown = (shown - shown.min()) / (shown.max() - shown.min() + 1e-12)
    ax.imshow(shown.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray")
    ax.set_title("case-study image", fontsize=9)
    ax.axis("off")


def _plot_case_study(
    panels: List[Any], case_study: Mapping[str, Any], methods: List[str], colours: Any
) -> None:
    for i, (ax, (name, details)) in enumerate(zip(panels, case_study.items())):
        drops = details.probability_drop[0].double().numpy()
        salience = details.group_salience[0].double().numpy()
        groups = list(range(1, len(drops) + 1))
        ax.bar(groups, drops, color=colours(methods.index(name) % 10 if name in methods else i))
        ax.set_xlabel("salience group (most salient first)", fontsize=7)
        ax.set_ylabel("probability drop Δ", fontsize=7)
        ax.set_title(f"{name}: SaCo {float(details.coefficient[0]):.3f}", fontsize=9)
        twin = ax.twinx()
        twin.plot(groups, salience, color="black", marker=".", linewidth=1)
        twin.set_ylabel("group salience s(G)", fontsize=7)
    for ax in panels[len(case_study) :]:
        ax.axis("off")


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
    salience.

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
    n_cols = max(len(result.metrics), len(case_study or {}) + (image is not None))
    n_rows = 2 if case_study else 1
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.2 * n_cols, 3.6 * n_rows), squeeze=False)
    try:
        colours = plt.get_cmap("tab10")
        _plot_metric_bars(list(axes[0]), result, colours)
        if case_study:
            panels = list(axes[1])
            if image is not None:
                _show_image(panels.pop(0), image)
            _plot_case_study(panels, case_study, result.methods, colours)
        fig.suptitle(f"{result.model}: {result.n_images} images", fontsize=10)
        fig.tight_layout()
        with replacing(path) as temporary:  # a failed write leaves the previous plot
            fig.savefig(temporary, dpi=120, format="png")
    finally:
        plt.close(fig)
