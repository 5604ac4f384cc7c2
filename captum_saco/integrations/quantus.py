"""SaCo as a `Quantus <https://github.com/understandable-machine-intelligence-lab/Quantus>`_
metric: :class:`SaCo` is a ``quantus.Metric``, used as Quantus' own metrics
are. Needs Quantus (``pip install quantus``), imported with this module."""

import warnings
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from torch import nn

try:
    import quantus
    from quantus.helpers.enums import DataType, EvaluationCategory, ModelType, ScoreDirection
    from quantus.helpers.model.model_interface import ModelInterface
except ImportError as e:  # pragma: no cover - the error names the missing package
    raise ImportError("captum_saco.integrations.quantus needs Quantus: pip install quantus") from e

from captum_saco._utils import BaselineType
from captum_saco.metrics import saco


class SaCo(quantus.Metric[List[float]]):
    r"""
    The Salience-guided Faithfulness Coefficient (Wu et al., CVPR 2024) as a
    Quantus metric: each example's value is
    :func:`captum_saco.metrics.saco` of its attributions, for the target
    ``y_batch``, computed a batch at a time (``batch_size`` of the call).

    Quantus prepares the data as for its own metrics (channels first, the
    attributions given one channel when they have none, ``normalise`` and
    ``abs`` if asked, or explanations made by ``explain_func``); SaCo then
    runs the model itself (its logits, softmax applied: Quantus' ``softmax``
    of the call, default True) in float32 as the inputs come. A positive
    rescaling such as ``normalise`` leaves SaCo unchanged; ``abs`` changes the
    ranking. ``model_predict_kwargs`` are passed to the model's forward.

    Args:
        n_groups (int): ``K``, SaCo's salience groups. Default: 10
        baselines (scalar or Tensor, optional): as in
                    :func:`~captum_saco.metrics.saco`. Default: None, the
                    per-example, per-channel mean of the input.
        max_examples_per_batch (int, optional): as in
                    :func:`~captum_saco.metrics.saco`. Default: None
        abs, normalise, normalise_func, normalise_func_kwargs,
        return_aggregate, aggregate_func, default_plot_func,
        disable_warnings, display_progressbar: Quantus' arguments of every
                    metric. ``abs`` and ``normalise`` default to False here,
                    so that the values are those of ``saco`` on the maps as
                    given; ``disable_warnings`` also silences SaCo's
                    warnings about undefined examples (NaN).

    Examples::

        >>> import numpy as np, torch
        >>> from captum_saco.integrations.quantus import SaCo
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
        >>> x = np.random.default_rng(0).normal(size=(4, 1, 4, 4)).astype(np.float32)
        >>> a = np.abs(x)
        >>> scores = SaCo(n_groups=4)(model=model, x_batch=x, y_batch=np.array([0, 1, 2, 0]),
        ...                           a_batch=a)
        >>> len(scores), all(-1 <= s <= 1 for s in scores)
        (4, True)
    """

    name = "SaCo"
    data_applicability = {DataType.IMAGE, DataType.TIMESERIES, DataType.TABULAR}
    model_applicability = {ModelType.TORCH}
    score_direction = ScoreDirection.HIGHER
    evaluation_category = EvaluationCategory.FAITHFULNESS

    def __init__(
        self,
        n_groups: int = 10,
        baselines: BaselineType = None,
        max_examples_per_batch: Optional[int] = None,
        abs: bool = False,
        normalise: bool = False,
        normalise_func: Optional[Callable[[np.ndarray], np.ndarray]] = None,
        normalise_func_kwargs: Optional[Dict[str, Any]] = None,
        return_aggregate: bool = False,
        aggregate_func: Optional[Callable] = None,
        default_plot_func: Optional[Callable] = None,
        disable_warnings: bool = False,
        display_progressbar: bool = False,
        **kwargs: Any,
    ) -> None:
        if isinstance(n_groups, bool) or not isinstance(n_groups, int) or n_groups < 2:
            raise ValueError(f"n_groups: expected an int >= 2, got {n_groups!r}")
        super().__init__(
            abs=abs,
            normalise=normalise,
            normalise_func=normalise_func,
            normalise_func_kwargs=normalise_func_kwargs,
            return_aggregate=return_aggregate,
            aggregate_func=aggregate_func,
            default_plot_func=default_plot_func,
            disable_warnings=disable_warnings,
            display_progressbar=display_progressbar,
            **kwargs,
        )
        self.n_groups, self.baselines = n_groups, baselines
        self.max_examples_per_batch = max_examples_per_batch
        # set by each call: Quantus' softmax and model_predict_kwargs
        self._softmax, self._predict_kwargs = True, {}

    def __call__(  # type: ignore[override]
        self,
        model: nn.Module,
        x_batch: np.ndarray,
        y_batch: np.ndarray,
        a_batch: Optional[np.ndarray] = None,
        s_batch: Optional[np.ndarray] = None,
        channel_first: Optional[bool] = None,
        explain_func: Optional[Callable] = None,
        explain_func_kwargs: Optional[Dict[str, Any]] = None,
        model_predict_kwargs: Optional[Dict[str, Any]] = None,
        softmax: Optional[bool] = True,
        device: Optional[str] = None,
        batch_size: int = 64,
        **kwargs: Any,
    ) -> List[float]:
        """SaCo of each example of ``x_batch`` (a list of floats, NaN where
        undefined; one value with ``return_aggregate``), as Quantus' metrics
        are called."""
        self._softmax = True if softmax is None else bool(softmax)
        self._predict_kwargs = dict(model_predict_kwargs or {})
        return super().__call__(
            model=model,
            x_batch=x_batch,
            y_batch=y_batch,
            a_batch=a_batch,
            s_batch=s_batch,
            custom_batch=None,
            channel_first=channel_first,
            explain_func=explain_func,
            explain_func_kwargs=explain_func_kwargs,
            model_predict_kwargs=model_predict_kwargs,
            softmax=softmax,
            device=device,
            batch_size=batch_size,
            **kwargs,
        )

    def evaluate_batch(  # type: ignore[override]
        self,
        model: Any,
        x_batch: np.ndarray,
        y_batch: np.ndarray,
        a_batch: np.ndarray,
        **kwargs: Any,
    ) -> List[float]:
        """SaCo of one batch, by :func:`captum_saco.metrics.saco`."""
        module = model.get_model() if isinstance(model, ModelInterface) else model
        if not isinstance(module, nn.Module):
            raise TypeError(f"model: SaCo runs PyTorch models, got {type(module).__name__}")
        parameter = next(module.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        predict_kwargs = self._predict_kwargs
        forward = (lambda x: module(x, **predict_kwargs)) if predict_kwargs else module
        inputs = torch.as_tensor(np.asarray(x_batch), device=device)
        attributions = torch.as_tensor(np.asarray(a_batch), device=device)
        target = torch.as_tensor(np.asarray(y_batch), device=device).long().reshape(-1)
        with warnings.catch_warnings():
            if self.disable_warnings:
                warnings.simplefilter("ignore")
            with torch.no_grad():
                values = saco(
                    forward,
                    inputs,
                    attributions,
                    baselines=self.baselines,
                    target=target,
                    n_groups=self.n_groups,
                    max_examples_per_batch=self.max_examples_per_batch,
                    apply_softmax=self._softmax,
                )
        return values.double().cpu().tolist()


__all__ = ["SaCo"]
