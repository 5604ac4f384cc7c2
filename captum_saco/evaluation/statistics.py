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

    Returns:
        ``(low, high)``, or None without any defined value.

    Examples::

        >>> import torch
        >>> low, high = bootstrap_ci95(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
        >>> low < 2.5 < high
        True
    """
    return bootstrap_ci95s([values])[0]


def bootstrap_ci95s(rows: Sequence[Tensor]) -> List[Optional[Tuple[float, float]]]:
    """:func:`bootstrap_ci95` of each of ``rows``, the rows with as many defined
    values resampled together: with the same seed they draw the same resamples,
    so one matrix product per chunk of resamples gives all their means."""
    defined = [row[~torch.isnan(row)].double() for row in rows]
    by_count: Dict[int, List[int]] = {}
    for index, values in enumerate(defined):
        if values.numel():
            by_count.setdefault(values.numel(), []).append(index)
    intervals: List[Optional[Tuple[float, float]]] = [None] * len(rows)
    levels = torch.tensor([0.025, 0.975], dtype=torch.float64)
    for indices in by_count.values():
        means = _resampled_means(torch.stack([defined[i] for i in indices]))
        low, high = torch.quantile(means, levels, dim=1).tolist()
        for index, interval in zip(indices, zip(low, high)):
            intervals[index] = interval
    return intervals


def _resampled_means(values: Tensor) -> Tensor:
    """``(R, BOOTSTRAP_RESAMPLES)`` means of resamples of each row of ``values``
    ``(R, n)``, drawn in chunks of 50 (memory ``O(50 n + R * resamples)``)."""
    n = values.shape[1]
    generator = torch.Generator().manual_seed(BOOTSTRAP_SEED)
    means = []
    for start in range(0, BOOTSTRAP_RESAMPLES, 50):
        size = min(50, BOOTSTRAP_RESAMPLES - start)
        picks = torch.randint(n, (size, n), generator=generator)
        counts = torch.zeros(size, n, dtype=values.dtype)
        counts.scatter_add_(1, picks, torch.ones_like(counts))
        means.append(values @ counts.T / n)
    return torch.cat(means, dim=1)


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


def _test_kinds(pairs: Sequence[Tuple[Tensor, Tensor]]) -> List[Optional[Tuple[int, bool, bool]]]:
    """What SciPy's Wilcoxon test ("auto") chooses its method by, for each pair
    of NaN-free rows: the number of pairs, and whether some differences are
    zero or some nonzero ones tied; None where the rows are equal everywhere.
    The pairs of one length are looked at together."""
    kinds: List[Optional[Tuple[int, bool, bool]]] = [None] * len(pairs)
    by_length: Dict[int, List[int]] = {}
    for index, (a, _) in enumerate(pairs):
        by_length.setdefault(a.numel(), []).append(index)
    for n, indices in by_length.items():
        if n == 0:
            continue
        a, b = (torch.stack([pairs[i][side] for i in indices]) for side in (0, 1))
        magnitude = (a - b).abs().sort(dim=1).values  # the zeros first
        zero = magnitude[:, 0] == 0
        tied = ((magnitude[:, 1:] == magnitude[:, :-1]) & (magnitude[:, 1:] != 0)).any(dim=1)
        found = zip(indices, (a != b).any(dim=1).tolist(), zero.tolist(), tied.tolist())
        for index, differ, some_zero, some_tied in found:
            if differ:
                kinds[index] = (n, some_zero, some_tied)
    return kinds


def _p_values(pairs: Sequence[Tuple[Tensor, Tensor]]) -> List[Optional[float]]:
    """The Wilcoxon p-value of each pair of NaN-free float64 rows; None without
    SciPy, where the rows are equal everywhere, or where the test is undefined.

    Pairs alike in what the test's method depends on (:func:`_test_kinds`) are
    tested in one vectorised call, with the p-values of one call per pair.
    """
    p_values: List[Optional[float]] = [None] * len(pairs)
    wilcoxon = _wilcoxon()
    if wilcoxon is None:
        return p_values
    by_kind: Dict[Tuple[int, bool, bool], List[int]] = {}
    for index, kind in enumerate(_test_kinds(pairs)):
        if kind is not None:
            by_kind.setdefault(kind, []).append(index)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for indices in by_kind.values():
            a, b = (torch.stack([pairs[i][side] for i in indices]).numpy() for side in (0, 1))
            for index, p in zip(indices, wilcoxon(a, b, axis=1).pvalue.tolist()):
                p_values[index] = None if math.isnan(p) else p
    return p_values


def compare_pairs(
    pairs: Sequence[Tuple[Tensor, Tensor]], higher_is_better: bool
) -> List[Tuple[Optional[float], Optional[float]]]:
    """For each pair ``(a, b)`` of per-image values, the fraction of the images
    (where both are defined) on which ``a`` scores strictly better than ``b``,
    and the paired test's p-value. The rows of all pairs have one length."""
    if not pairs:
        return []
    a, b = (torch.stack([pair[side] for pair in pairs]).double() for side in (0, 1))
    both = ~(torch.isnan(a) | torch.isnan(b))
    better = (a > b) if higher_is_better else (a < b)  # False where either is NaN
    fractions = [
        wins / count if count else None
        for wins, count in zip(better.sum(dim=1).tolist(), both.sum(dim=1).tolist())
    ]
    kept = [
        (x, y) if complete else (x[defined], y[defined])
        for x, y, defined, complete in zip(
            a.unbind(), b.unbind(), both.unbind(), both.all(dim=1).tolist()
        )
    ]
    return list(zip(fractions, _p_values(kept)))


def comparisons(
    per_example: Dict[Tuple[str, str], Tensor],
    methods: Sequence[str],
    metrics: Dict[str, str],
) -> List[Dict[str, Any]]:
    """Every pair of methods (in the table's order) under every metric:
    ``{"metric", "method_a", "method_b", "a_better_fraction", "p_value"}``."""
    rows = []
    for metric, direction in metrics.items():
        names = [(a, b) for i, a in enumerate(methods) for b in methods[i + 1 :]]
        pairs = [(per_example[(a, metric)], per_example[(b, metric)]) for a, b in names]
        for (method_a, method_b), (fraction, p) in zip(
            names, compare_pairs(pairs, direction.startswith("higher"))
        ):
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


def kendall_tau_b(x: Tensor, y: Tensor) -> Tensor:
    r"""
    Kendall's τ-b between ``x`` and ``y`` along their last dimension, the
    items where either is NaN left out: ``(C − D) / sqrt((P − T_x)(P − T_y))``
    over the ``P`` pairs of items, with ``C`` (``D``) the pairs ordered alike
    (oppositely) by both and ``T_x`` (``T_y``) the pairs tied in ``x``
    (``y``). NaN where it is undefined (fewer than two items, or one of them
    constant). Computed here in float64, the same as SciPy's
    ``kendalltau(x, y, variant="b")``.

    Examples::

        >>> import torch
        >>> float(kendall_tau_b(torch.tensor([1., 2., 3., 4.]), torch.tensor([1., 3., 2., 4.])))
        0.6666666666666666
    """
    x, y = torch.broadcast_tensors(x.double(), y.double())
    keep = ~(torch.isnan(x) | torch.isnan(y))
    pair = keep.unsqueeze(-1) & keep.unsqueeze(-2)
    pair = pair & torch.ones_like(pair).triu(diagonal=1)
    sx = torch.sign(x.unsqueeze(-1) - x.unsqueeze(-2)).nan_to_num()
    sy = torch.sign(y.unsqueeze(-1) - y.unsqueeze(-2)).nan_to_num()
    pairs = pair.sum(dim=(-2, -1)).double()
    score = (sx * sy * pair).sum(dim=(-2, -1))
    tied_x = ((sx == 0) & pair).sum(dim=(-2, -1))
    tied_y = ((sy == 0) & pair).sum(dim=(-2, -1))
    denominator = ((pairs - tied_x) * (pairs - tied_y)).sqrt()
    return torch.where(denominator > 0, score / denominator, torch.nan)


def _tau(a: Sequence[Optional[float]], b: Sequence[Optional[float]]) -> Optional[float]:
    """:func:`kendall_tau_b` of two lists (None: undefined), or None."""
    values = [[math.nan if v is None else v for v in side] for side in (a, b)]
    tau = float(kendall_tau_b(*(torch.tensor(v, dtype=torch.float64) for v in values)))
    return None if math.isnan(tau) else tau


def swaps(
    methods: Sequence[str], a: Sequence[Optional[float]], b: Sequence[Optional[float]]
) -> List[Tuple[str, str]]:
    """The pairs of methods (in ``methods``' order) ordered strictly one way by
    the means ``a`` and strictly the other way by the means ``b``."""
    found = []
    for i in range(len(methods)):
        for j in range(i + 1, len(methods)):
            if None in (a[i], a[j], b[i], b[j]):
                continue
            if (a[i] - a[j]) * (b[i] - b[j]) < 0:  # type: ignore[operator]
                found.append((methods[i], methods[j]))
    return found


STABILITY_METHOD = (
    "rank stability: Kendall's tau-b between the methods' rankings by mean under two "
    "settings, per metric (1: the same order; swaps: the pairs of methods ordered the other way)"
)
AGREEMENT_METHOD = (
    "metric agreement: Kendall's tau-b between two metrics' rankings of the methods by mean, "
    "each best first (lower-is-better metrics negated); per image: the mean over the images of "
    "tau-b between the two metrics' rankings of the methods on that image"
)


def stability(
    means: Dict[Any, Dict[Tuple[str, str], Optional[float]]],
    methods: Sequence[str],
    metrics: Sequence[str],
) -> Dict[Tuple[str, Any, Any], Dict[str, Any]]:
    """For each metric and pair of settings (keys of ``means``, which map
    ``(method, metric)`` to the mean): ``{"tau_b", "swaps"}``."""
    settings = list(means)
    out: Dict[Tuple[str, Any, Any], Dict[str, Any]] = {}
    for metric in metrics:
        for i, s in enumerate(settings):
            for t in settings[i + 1 :]:
                a = [means[s][(m, metric)] for m in methods]
                b = [means[t][(m, metric)] for m in methods]
                out[(metric, s, t)] = {"tau_b": _tau(a, b), "swaps": swaps(methods, a, b)}
    return out


def agreement(
    per_example: Dict[Tuple[str, str], Tensor],
    methods: Sequence[str],
    metrics: Dict[str, str],
) -> Dict[Tuple[str, str], Dict[str, Any]]:
    """For each pair of metrics (in order): ``{"tau_b"}`` between their
    rankings of the methods by mean, ``"per_image_tau_b"``, the mean over the
    images of τ-b between their rankings of the methods on each image (where
    it is defined), and ``"n_images"``, the images where it is. Each metric's
    values are negated when lower is better, so that both rank best first."""
    signed = {
        k: torch.stack([per_example[(m, k)] for m in methods], dim=-1).double()
        * (1.0 if direction.startswith("higher") else -1.0)
        for k, direction in metrics.items()
    }
    names = list(metrics)
    out: Dict[Tuple[str, str], Dict[str, Any]] = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            means = [signed[k].nanmean(dim=0) for k in (a, b)]
            per_image = kendall_tau_b(signed[a], signed[b])
            defined = per_image[~torch.isnan(per_image)]
            out[(a, b)] = {
                "tau_b": _tau(*(m.tolist() for m in means)),
                "per_image_tau_b": float(defined.mean()) if defined.numel() else None,
                "n_images": int(defined.numel()),
            }
    return out
