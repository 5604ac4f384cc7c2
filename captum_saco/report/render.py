"""Fill the report's template (``templates/report.html.j2``) from an
:class:`~captum_saco.evaluation.EvaluationResult`, the run's settings and the
example explanations."""

import os
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

from captum_saco.evaluation.registry import METRICS
from captum_saco.evaluation.result import EvaluationResult, write_atomically
from captum_saco.evaluation.statistics import CI_METHOD, compare_pairs, p_value_method
from captum_saco.report import figures
from captum_saco.report.examples import Examples
from captum_saco.visualization import method_colours

TEMPLATES = os.path.join(os.path.dirname(__file__), "templates")

#: why a metric can be undefined on an image (as the metrics' warnings say)
UNDEFINED_REASONS = {
    "saco": (
        "the map holds NaN or infinite values, is constant, has fewer features than K or "
        "group saliences that are all equal, or the model's probabilities are not finite"
    ),
}
CURVE_REASON = "the map holds NaN or infinite values, or the model's probabilities are not finite"


def _environment() -> Any:
    try:
        import jinja2
    except ImportError as e:
        raise ImportError(
            "the report needs Jinja2; install it with pip install 'captum-saco[report]'"
        ) from e
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )


def _number(value: Optional[float], digits: int = 3) -> str:
    return "–" if value is None or value != value else f"{value:.{digits}f}"


def _p(p: Optional[float]) -> str:
    return "n/a" if p is None else f"{p:.1e}"


def _share_colour(share: Optional[float]) -> str:
    """A cell's background: blue where the row wins on most images, red where
    it loses, white at one half."""
    if share is None or share != share:
        return "#eeeeee"
    t = max(-1.0, min(1.0, 2 * share - 1))
    low, high = (214, 96, 77), (67, 147, 195)
    end = high if t > 0 else low
    r, g, b = (round(255 + (c - 255) * abs(t)) for c in end)
    return f"#{r:02x}{g:02x}{b:02x}"


def _results(result: EvaluationResult) -> Dict[str, Any]:
    """The results table: cells per method and metric, the best mean of each
    metric marked, and each method's comparison with Random Attribution."""
    metrics = result.metrics
    best = {}
    for k in metrics:
        means = [(r.mean, r.method) for r in result.rows if r.metric == k and r.mean is not None]
        if means:
            best[k] = (max(means) if METRICS[k].startswith("higher") else min(means))[1]
    versus: Dict[Tuple[str, str], Tuple[Optional[float], Optional[float]]] = {}
    others = [m for m in result.methods if m != "random"]
    if "random" in result.methods and others:
        for k in metrics:
            pairs = [
                (result.per_example[(m, k)], result.per_example[("random", k)]) for m in others
            ]
            for m, c in zip(others, compare_pairs(pairs, METRICS[k].startswith("higher"))):
                versus[(m, k)] = c
    rows = []
    for m in result.methods:
        cells = []
        for k in metrics:
            r = result.row(m, k)
            share, p = versus.get((m, k), (None, None))
            cells.append(
                {
                    "mean": _number(r.mean, 4),
                    "ci": "" if r.ci95 is None else f"[{_number(r.ci95[0])}, {_number(r.ci95[1])}]",
                    "best": best.get(k) == m,
                    "nan": r.nan,
                    "versus": None if (m, k) not in versus else f"{_number(share, 2)} (p {_p(p)})",
                    "versus_share": share,
                }
            )
        rows.append({"method": m, "cells": cells})
    undefined = [
        {
            "method": r.method,
            "metric": r.metric,
            "count": r.nan,
            "reason": UNDEFINED_REASONS.get(r.metric, CURVE_REASON),
        }
        for r in result.rows
        if r.nan
    ]
    return {
        "metrics": [{"name": k, "direction": METRICS[k]} for k in metrics],
        "rows": rows,
        "undefined": undefined,
        "has_random": bool(versus),
    }


def _matrices(result: EvaluationResult) -> List[Dict[str, Any]]:
    """Per metric, the share of the images on which the row's method beats
    the column's, with the paired test's p-value, and the cells' colours."""
    methods = result.methods
    out = []
    for k in result.metrics:
        ordered = [(a, b) for a in methods for b in methods if a != b]
        pairs = [(result.per_example[(a, k)], result.per_example[(b, k)]) for a, b in ordered]
        found = dict(zip(ordered, compare_pairs(pairs, METRICS[k].startswith("higher"))))
        rows = []
        for a in methods:
            cells = []
            for b in methods:
                share, p = found.get((a, b), (None, None))
                cells.append(
                    {
                        "self": a == b,
                        "share": _number(share, 2),
                        "p": _p(p),
                        "colour": _share_colour(share) if a != b else "#ffffff",
                    }
                )
            rows.append({"method": a, "cells": cells})
        out.append({"metric": k, "direction": METRICS[k], "methods": methods, "rows": rows})
    return out


def _ratio(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.2g}" if value < 10 else f"{value:.0f}"


def _megabytes(value: Optional[float]) -> str:
    return "not reported" if not value else f"{value / 2**20:.1f} MiB"


def _costs(cost: Mapping[str, Any]) -> Dict[str, Any]:
    methods = cost.get("methods") or {}
    return {
        "forward": _number(cost.get("forward_seconds_per_image"), 5),
        "forward_backward": _number(cost.get("forward_backward_seconds_per_image"), 5),
        "device": cost.get("device", "unknown"),
        "rows": [
            {
                "method": m,
                "seconds": _number(c.get("seconds_per_image"), 5),
                "ratio_forward": _ratio(c.get("ratio_to_forward")),
                "ratio_backward": _ratio(c.get("ratio_to_forward_backward")),
                "scoring": _number(c.get("scoring_seconds_per_image"), 5),
                "memory": _megabytes(c.get("peak_memory_bytes")),
            }
            for m, c in methods.items()
        ],
    }


def _examples(examples: Optional[Examples]) -> Optional[Dict[str, Any]]:
    if examples is None or not examples.keys:
        return None
    captions = [f"{why} ({key})" for key, why in zip(examples.keys, examples.why)]
    strips = [
        {
            "method": m,
            "uri": figures.example_strip(
                examples.images,
                [f"SaCo {_number(v)}" for v in examples.saco[m]],
                heatmaps,
            ),
        }
        for m, heatmaps in examples.heatmaps.items()
    ]
    return {
        "best_method": examples.best_method,
        "images": figures.example_strip(examples.images, captions),
        "strips": strips,
    }


def render_report(
    result: EvaluationResult,
    settings: Mapping[str, Any],
    examples: Optional[Examples] = None,
) -> str:
    r"""
    The HTML text of the report of ``result``: one self-contained page
    (figures as ``data:`` URIs, no script, no external resource).

    Args:
        result (EvaluationResult): from :func:`~captum_saco.evaluation.evaluate`
                    (its per-image rows give the distributions and, if kept,
                    the deletion curves; its ``cost`` the cost table).
        settings (mapping of str to str): what the run was, shown as given
                    (model, data, K, baseline, seed, versions, ...).
        examples (Examples, optional): from
                    :func:`~captum_saco.report.explain_examples`.

    Returns:
        str: the page.

    Raises:
        ValueError: if ``result`` has no ``saco`` values.
        ImportError: if Jinja2 or matplotlib is not installed.

    Examples::

        >>> import torch
        >>> from captum_saco.evaluation import evaluate
        >>> from captum_saco.report import explain_examples, render_report
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)).eval()
        >>> images = torch.randn(5, 1, 8, 8)
        >>> result = evaluate(model, images, methods=["random", "saliency"],
        ...                   metrics=["saco", "auc"], n_groups=4)
        >>> examples = explain_examples(model, images, result, n_random=1)
        >>> examples.why, examples.heatmaps["saliency"].shape
        (['best', 'median', 'worst', 'random'], torch.Size([4, 8, 8]))
        >>> html = render_report(result, {"model": "a linear model"}, examples)
        >>> html.startswith("<!DOCTYPE html>"), 'data-method="saliency"' in html
        (True, True)
    """
    if "saco" not in result.metrics:
        raise ValueError("result: the report needs the saco metric among the evaluated metrics")
    start = time.perf_counter()
    palette = method_colours(len(result.methods))
    colours = dict(zip(result.methods, palette))
    context = {
        "title": f"Faithfulness of explanations: {result.model}",
        "settings": [(k, str(v)) for k, v in settings.items()],
        "results": _results(result),
        "ci_method": CI_METHOD,
        "p_value_method": p_value_method(),
        "cost": _costs(result.cost),
        "matrices": _matrices(result),
        "distribution": figures.saco_distribution(result, colours),
        "curves": figures.deletion_curves(result, colours),
        "examples": _examples(examples),
        "n_images": result.n_images,
        "skipped": [str(s) for s in result.skipped],
    }
    context["render_seconds"] = f"{time.perf_counter() - start:.1f}"
    return _environment().get_template("report.html.j2").render(**context)


def write_report(
    path: str,
    result: EvaluationResult,
    settings: Mapping[str, Any],
    examples: Optional[Examples] = None,
) -> None:
    """Write :func:`render_report`'s page to ``path`` atomically (a failed
    write leaves the previous file whole)."""
    write_atomically(path, render_report(result, settings, examples))
