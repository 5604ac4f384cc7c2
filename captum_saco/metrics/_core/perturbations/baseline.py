"""``perturbation="baseline"``: removed features take the baseline (the paper's setting)."""

from captum_saco.metrics._core.perturbations.base import Perturbation


class Baseline(Perturbation):
    """Removed features take the values of ``baselines=`` (default: the
    per-example, per-channel mean of the input). The default strategy of every
    metric, and the one of the SaCo paper.

    Examples::

        >>> import torch
        >>> from captum_saco.metrics import Baseline
        >>> x, fill = torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 1, 1)
        >>> removed = torch.tensor([[[[True, False], [False, False]]]])
        >>> Baseline().perturb(x, removed, fill).flatten().tolist()
        [0.0, 1.0, 1.0, 1.0]
    """

    name = "baseline"
