"""Evaluate the faithfulness of explanation methods: methods x metrics on a
model and images, as one table.

:func:`evaluate` is the Python entry point that ``python -m captum_saco``
wraps. Methods and metrics are named (see :data:`METHODS` and
:data:`METRICS`); every method explains, and every metric scores, the same
target per image (the model's predicted class unless ``targets`` is given).
Under ``torch.distributed`` (for example ``torchrun``) the batches are
sharded across the processes and the per-image results gathered, so that
every process returns the table of the whole data set.
"""

from captum_saco.evaluation.registry import DEFAULT_METHODS, DEFAULT_METRICS, METHODS, METRICS
from captum_saco.evaluation.result import EvaluationResult, ResultRow
from captum_saco.evaluation.runner import evaluate, saco_case_study

__all__ = [
    "DEFAULT_METHODS",
    "DEFAULT_METRICS",
    "METHODS",
    "METRICS",
    "EvaluationResult",
    "ResultRow",
    "evaluate",
    "saco_case_study",
]
