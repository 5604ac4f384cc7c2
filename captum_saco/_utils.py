"""The one home for inputs, targets, additional arguments and model outputs.

Like Captum's ``captum._utils.common``, this module is shared by the metrics,
the attribution classes and the evaluation; it reuses Captum's own types and
helpers (``_format_tensor_into_tuples``, ``_format_additional_forward_args``,
``_is_tuple``, ``_format_output``; import those from Captum) and adds what they
leave out: validation with errors that name the
argument, model outputs with ``.logits`` (Hugging Face) and target resolution
against an output.
"""

import warnings
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
from captum._utils.common import _format_tensor_into_tuples
from captum._utils.typing import BaselineType, TargetType, TensorOrTupleOfTensorsGeneric
from torch import Tensor, nn

TensorOrTupleOfTensors = Union[Tensor, Tuple[Tensor, ...]]

__all__ = [
    "BaselineType",
    "TargetType",
    "TensorOrTupleOfTensors",
    "TensorOrTupleOfTensorsGeneric",
    "check_dense",
    "check_flag",
    "check_forward_func",
    "check_max_examples_per_batch",
    "format_inputs",
    "forward_scores",
    "model_output",
    "resolve_target",
    "warn_if_training",
]


def check_forward_func(forward_func: Any) -> Callable[..., Any]:
    """Return ``forward_func`` if it is callable, else raise a TypeError naming it."""
    if not callable(forward_func):
        raise TypeError(
            "forward_func: expected the model or a callable returning class scores, "
            f"got {type(forward_func).__name__}"
        )
    return forward_func


def _differs_in_training(module: nn.Module) -> bool:
    """Whether ``module`` in training mode computes otherwise than in eval mode:
    dropout with a non-zero rate (timm's ``DropPath`` included), or
    normalisation by batch statistics with running statistics to update."""
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return module.track_running_stats
    if isinstance(module, nn.modules.dropout._DropoutNd) or "Drop" in type(module).__name__:
        rate = getattr(module, "p", getattr(module, "drop_prob", None))
        return rate is None or rate > 0
    return False


def warn_if_training(model: Any, name: str, stacklevel: int) -> None:
    """Warn, naming ``name``, if ``model`` (a module, or a bound method of one)
    holds dropout or batch normalisation in training mode: its outputs are then
    random, and batch-norm layers update their running statistics with the
    inputs they are given. ``stacklevel`` counts from the caller, as
    ``warnings.warn``'s does."""
    module = model if isinstance(model, nn.Module) else getattr(model, "__self__", None)
    if isinstance(module, nn.Module) and any(
        m.training and _differs_in_training(m) for m in module.modules()
    ):
        warnings.warn(
            f"{name}: the model is in training mode, where its dropout or batch "
            "normalisation makes the results random (and batch norm updates its running "
            "statistics); call model.eval() first",
            UserWarning,
            stacklevel=stacklevel + 1,
        )


def check_flag(name: str, value: Any) -> bool:
    """Return ``value`` if it is a ``bool``, else raise a TypeError naming ``name``.

    Truthy strings such as ``"no"`` would otherwise silently count as True.
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return value


def check_max_examples_per_batch(value: Any) -> None:
    """Refuse a ``max_examples_per_batch`` that is neither None nor a positive int:
    a TypeError for another type (a bool or a float included), a ValueError below 1."""
    if value is None:
        return
    message = f"max_examples_per_batch: expected a positive int or None, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(message)
    if value < 1:
        raise ValueError(message)


def check_dense(tensor: Tensor, name: str) -> None:
    """Refuse, with a ValueError naming ``name``, a tensor that holds no values
    to read: one on the ``meta`` device or with a sparse layout."""
    if tensor.is_meta:
        raise ValueError(f"{name}: got a tensor on the meta device, which holds no values")
    if tensor.layout != torch.strided:
        raise ValueError(f"{name}: expected a dense tensor, got layout {tensor.layout}")


def format_inputs(inputs: TensorOrTupleOfTensors, name: str = "inputs") -> Tuple[Tensor, ...]:
    """``inputs`` as a non-empty tuple of real tensors sharing one batch size.

    Args:
        inputs (Tensor or tuple[Tensor, ...]): the examples, batch dimension
            first, as Captum's attribution methods take them.
        name (str, optional): the argument's name in error messages.
            Default: "inputs"

    Returns:
        tuple of Tensor: ``inputs`` itself if a tuple, else ``(inputs,)``.

    Raises:
        TypeError: if ``inputs`` is neither a tensor nor a non-empty tuple of
            tensors.
        ValueError: for a tensor without a batch dimension, batch sizes that
            differ, a tensor on the ``meta`` device (it holds no values) or a
            sparse tensor.

    Examples::

        >>> import torch
        >>> len(format_inputs(torch.zeros(2, 3)))
        1
        >>> format_inputs((torch.zeros(2, 3), torch.zeros(3, 3)))
        Traceback (most recent call last):
        ...
        ValueError: inputs: all inputs must share the batch size, got shapes [(2, 3), (3, 3)]
    """
    if not (
        isinstance(inputs, Tensor)
        or (isinstance(inputs, tuple) and inputs and all(isinstance(x, Tensor) for x in inputs))
    ):
        raise TypeError(
            f"{name}: expected a tensor or a non-empty tuple of tensors, got "
            f"{type(inputs).__name__}"
        )
    formatted = _format_tensor_into_tuples(inputs)
    for x in formatted:
        if x.dim() == 0:
            raise ValueError(f"{name}: every input needs a batch dimension, got a 0-dim tensor")
        check_dense(x, name)
    n = formatted[0].shape[0]
    if any(x.shape[0] != n for x in formatted):
        raise ValueError(
            f"{name}: all inputs must share the batch size, got shapes "
            f"{[tuple(x.shape) for x in formatted]}"
        )
    return formatted


def model_output(output: Any, name: str = "forward_func") -> Tensor:
    """The class scores in a model's output: the tensor itself, or its ``.logits``.

    Hugging Face models return an output object whose ``logits`` are the
    scores; every metric and attribution class accepts both forms.

    Raises:
        TypeError: naming ``name`` (the argument that gave ``output``) if
            ``output`` is neither.

    Examples::

        >>> import torch
        >>> from types import SimpleNamespace
        >>> model_output(SimpleNamespace(logits=torch.ones(1, 2))).shape
        torch.Size([1, 2])
    """
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    raise TypeError(
        f"{name}: expected the model's output, a Tensor or an output with .logits, got "
        f"{type(output).__name__}; the class scores are needed"
    )


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tuple_scores(output: Tensor, target: Union[tuple, list]) -> Tuple[Tensor, List[int]]:
    """Class-score rows and classes of tuple targets (one tuple or one per example)."""
    n = output.shape[0]
    per_example: Sequence[Any] = [target] * n if isinstance(target, tuple) else target
    if len(per_example) != n:
        raise ValueError(f"target: expected one tuple per example ({n}), got {len(per_example)}")
    positions = output.shape[1:]
    for t in per_example:
        if not isinstance(t, tuple) or len(t) != len(positions):
            raise ValueError(
                f"target: a tuple target must index all {len(positions)} non-batch "
                f"dimensions of the output of shape {tuple(output.shape)}, got {target!r}"
            )
        if not all(_is_index(i) and 0 <= i < size for i, size in zip(t, positions)):
            raise ValueError(
                f"target: every position of a tuple target must be an int in [0, size) "
                f"of the output's dimensions {tuple(positions)}, got {t!r}"
            )
    scores = torch.stack([output[(i,) + t[:-1]] for i, t in enumerate(per_example)])
    return scores, [t[-1] for t in per_example]


def _tensor_classes(target: Tensor, n: int) -> Tensor:
    check_dense(target, "target")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target: expected an integer tensor, got dtype {target.dtype}")
    if target.numel() == 1:
        return target.reshape(1).long().expand(n)
    if target.dim() == 1 and target.numel() == n:
        return target.long()
    raise ValueError(
        f"target: a tensor target must be a scalar or of shape ({n},), got {tuple(target.shape)}"
    )


def _classes(output: Tensor, target: TargetType) -> Tensor:
    """One class index per example for a non-tuple target of a ``(N, C)`` output."""
    n = output.shape[0]
    if target is None:
        return output.argmax(dim=1)
    if _is_index(target):
        return torch.full((n,), target, dtype=torch.long)
    if isinstance(target, list):
        if len(target) != n:
            raise ValueError(
                f"target: a list target needs one entry per example ({n}), got {len(target)}"
            )
        if not all(_is_index(t) for t in target):
            raise ValueError(f"target: a list target must hold ints, got {target!r}")
        return torch.tensor(target, dtype=torch.long)
    if isinstance(target, Tensor):
        return _tensor_classes(target, n)
    raise ValueError(
        "target: expected None, an int, a tuple, a list or an integer tensor, "
        f"got {type(target).__name__}"
    )


def resolve_target(output: Tensor, target: TargetType) -> Tuple[Tensor, Tensor]:
    """Turn any Captum ``target`` into class scores and one class per example.

    Args:
        output (Tensor): the forward function's output, ``(N, C)`` or
            ``(N, d_1, ..., d_k, C)`` when tuple targets pick a position
            before the class dimension.
        target (int, tuple, Tensor, list or None): a target in any form
            Captum's attribution methods accept. ``None`` takes the predicted
            class (argmax over the last dimension) of a 2D output.

    Returns:
        tuple of Tensor: ``scores`` of shape ``(N, C)``, the class-score rows
        the target points into, and ``classes``, a ``LongTensor`` of shape
        ``(N,)`` on ``output``'s device.

    Raises:
        ValueError: if the target's form does not fit the output (float or
            bool entries included), or an index lies outside the output.

    Examples::

        >>> import torch
        >>> scores, classes = resolve_target(torch.tensor([[0.1, 2.0], [3.0, 0.0]]), None)
        >>> classes.tolist()
        [1, 0]
        >>> resolve_target(torch.zeros(2, 3), [2, 0])[1].tolist()
        [2, 0]
    """
    if isinstance(target, tuple) or (
        isinstance(target, list) and target and isinstance(target[0], tuple)
    ):
        scores, class_list = _tuple_scores(output, target)
        classes = torch.tensor(class_list, dtype=torch.long, device=output.device)
    else:
        if output.dim() != 2:
            raise ValueError(
                "target: an int, list or tensor target needs a forward_func output of "
                f"shape (N, C), got {tuple(output.shape)}; use a tuple target to pick a "
                "position in a higher-dimensional output"
            )
        if output.shape[1] == 0:
            raise ValueError(
                "forward_func: expected class scores of shape (N, C) with at least one "
                f"class, got shape {tuple(output.shape)}"
            )
        scores, classes = output, _classes(output, target).to(output.device)
    n_classes = scores.shape[-1]
    # argmax classes (target None) lie in range: not checking them spares a device sync
    if target is not None and classes.numel() and (classes.min() < 0 or classes.max() >= n_classes):
        raise ValueError(
            f"target: class indices must lie in [0, {n_classes}) for a forward_func "
            f"with {n_classes} outputs, got {classes.tolist()}"
        )
    return scores, classes.contiguous()


def forward_scores(
    forward_func: Callable[..., Any],
    inputs: Sequence[Tensor],
    additional_forward_args: Optional[Tuple[Any, ...]],
    n_rows: int,
) -> Tensor:
    """Run ``forward_func`` and return its class scores, checking one row per input row."""
    output = model_output(forward_func(*inputs, *(additional_forward_args or ())))
    if output.dim() == 0 or output.shape[0] != n_rows:
        raise ValueError(
            f"forward_func: expected an output with one row per input row, got shape "
            f"{tuple(output.shape)} for inputs of {n_rows} rows (the metrics forward "
            "clean and perturbed copies of the examples together)"
        )
    return output
