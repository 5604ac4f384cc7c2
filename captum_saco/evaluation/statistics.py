"""Uncertainty of the table: a confidence interval of each mean, and paired
comparisons of the methods image by image."""

import math
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CI_METHOD = (
    f"95% confidence interval of the mean: percentile bootstrap over the images "
    f"({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED})"
)


def bootstrap_ci95(values: Tensor) -> Optional[Tuple[float, float]]:
    r"""
    The 95% percentile-bootstrap confidence interval of the mean of
    ``values`` (float64, NaNs left out), seeded so that it is reproducible.

    Resampling runs in chunks of resamples, so memory stays
    ``O(len(values) * 50)``.

    Returns:
        ``(low, high)``, or None without any defined value.

    Examples::

        >>> import torch
        >>> low, high = bootstrap_ci95(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
        >>> low < 2.5 < high
        True
    """
    defined = values[~torch.isnan(values)].double()
    n = defined.numel()
    if n == 0:
        return None
    generator = torch.Generator().manual_seed(BOOTSTRAP_SEED)
    means = []
    for start in range(0, BOOTSTRAP_RESAMPLES, 50):
        size = min(50, BOOTSTRAP_RESAMPLES - start)
        picks = torch.randint(n, (size, n), generator=generator)
        means.append(defined[picks].mean(dim=1))
    quantiles = torch.quantile(torch.cat(means), torch.tensor([0.025, 0.975], dtype=torch.float64))
    return float(quantiles[0]), float(quantiles[1])


def _wilcoxon() -> Any:
    try:
        from scipy.stats import wilcoxon
    except ImportError:
        return None
    return wilcoxon


def p_value_method() -> str:
    """How the comparisons' p-values are computed, or why they are missing."""
    if _wilcoxon() is None:
        return "p-values need SciPy, which is not installed: pip install 'captum-saco[stats]'"
    return "two-sided Wilcoxon signed-rank test over the images where both are defined (SciPy)"


def _p_value(a: Tensor, b: Tensor) -> Optional[float]:
    wilcoxon = _wilcoxon()
    if wilcoxon is None or not bool((a != b).any()):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = float(wilcoxon(a.numpy(), b.numpy()).pvalue)
    return None if math.isnan(p) else p


def compare(
    a: Tensor, b: Tensor, higher_is_better: bool
) -> Tuple[Optional[float], Optional[float]]:
    """The fraction of the images (where both are defined) on which ``a``
    scores strictly better than ``b``, and the paired test's p-value."""
    both = ~(torch.isnan(a) | torch.isnan(b))
    a, b = a[both].double(), b[both].double()
    if a.numel() == 0:
        return None, None
    better = a > b if higher_is_better else a < b
    return float(better.double().mean()), _p_value(a, b)


def comparisons(
    per_example: Dict[Tuple[str, str], Tensor],
    methods: Sequence[str],
    metrics: Dict[str, str],
) -> List[Dict[str, Any]]:
    """Every pair of methods (in the table's order) under every metric:
    ``{"metric", "method_a", "method_b", "a_better_fraction", "p_value"}``."""
    rows = []
    for metric, direction in metrics.items():
        for i, method_a in enumerate(methods):
            for method_b in methods[i + 1 :]:
                fraction, p = compare(
                    per_example[(method_a, metric)],
                    per_example[(method_b, metric)],
                    direction.startswith("higher"),
                )
                rows.append(
                    {
                        "metric": metric,
                        "method_a": method_a,
                        "method_b": method_b,
                        "a_better_fraction": fraction,
                        "p_value": p,
                    }
                )
    return rows
