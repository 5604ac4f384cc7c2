"""Random Attribution: the sanity baseline of faithfulness evaluations."""

from typing import Any, Callable, List, Optional, Sequence, Union

import torch
from captum._utils.common import _format_output, _is_tuple
from captum._utils.typing import TargetType, TensorOrTupleOfTensorsGeneric
from captum.attr._utils.attribution import Attribution
from torch import Tensor

from captum_saco._utils import format_inputs

GeneratorArg = Union[None, torch.Generator, Sequence[torch.Generator]]


class RandomAttribution(Attribution):
    r"""
    Salience drawn i.i.d. from the uniform distribution on [0, 1) for every
    input feature, independently of the model. A faithfulness metric should
    score it about 0 (SaCo does; the cumulative deletion metrics often do
    not, which is the point made by Wu et al., "On the Faithfulness of Vision
    Transformer Explanations", CVPR 2024).

    The model is never called: ``forward_func`` is kept only so that the class
    is built like every other Captum attribution method.
    """

    def __init__(self, forward_func: Callable[..., Any]) -> None:
        r"""
        Args:

            forward_func (Callable): The forward function of the model or
                        any modification of it. It is not called.
        """
        Attribution.__init__(self, forward_func)

    def attribute(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        target: TargetType = None,
        additional_forward_args: Optional[object] = None,
        *,
        generator: GeneratorArg = None,
    ) -> TensorOrTupleOfTensorsGeneric:
        r"""
        Args:

            inputs (Tensor or tuple[Tensor, ...]): Input for which random
                        salience is drawn. Dimension 0 of every tensor is the
                        batch dimension.
            target (int, tuple, Tensor, or list, optional): Accepted for the
                        common calling convention of attribution methods and
                        ignored.
                        Default: None
            additional_forward_args (Any, optional): Accepted and ignored, as
                        ``target``.
                        Default: None
            generator (torch.Generator or sequence of torch.Generator, optional):
                        The source of randomness. One generator draws the whole
                        batch (input by input). A sequence of generators, one
                        per example, draws each example's salience from its own
                        generator (all its input tensors in order), so that an
                        example's map does not depend on how the examples are
                        batched. Values are drawn on each generator's device
                        and moved to the inputs' device. ``None`` uses the
                        global generator of the inputs' device.
                        Default: None

        Returns:
            *Tensor* or *tuple[Tensor, ...]* of **attributions**:
            - **attributions** (*Tensor* or *tuple[Tensor, ...]*):
                        Uniform random values in [0, 1), shaped like the
                        inputs, on their device, with their dtype (float32
                        for non-floating inputs). A tuple is returned if
                        ``inputs`` is a tuple.

        Raises:
            ValueError: if a sequence of generators does not hold exactly one
                generator per example.
            TypeError: if ``generator`` is neither a ``torch.Generator`` nor a
                sequence of them.

        Examples::

            >>> import torch
            >>> from captum_saco.attr import RandomAttribution
            >>> net = torch.nn.Linear(4, 2)
            >>> random = RandomAttribution(net)
            >>> inputs = torch.zeros(3, 4)
            >>> g = torch.Generator().manual_seed(0)
            >>> attr = random.attribute(inputs, generator=g)
            >>> attr.shape
            torch.Size([3, 4])
            >>> # Per-example generators: an example's map ignores the batching.
            >>> per_example = [torch.Generator().manual_seed(10 + i) for i in range(3)]
            >>> whole = random.attribute(inputs, generator=per_example)
            >>> last = random.attribute(
            ...     inputs[2:], generator=[torch.Generator().manual_seed(12)]
            ... )
            >>> torch.equal(whole[2:], last)
            True
        """
        is_inputs_tuple = _is_tuple(inputs)
        formatted = format_inputs(inputs)
        n = formatted[0].shape[0]
        if generator is None or isinstance(generator, torch.Generator):
            attributions = tuple(_uniform_like(x, x.shape, generator) for x in formatted)
        else:
            generators = _per_example_generators(generator, n)
            per_input: List[List[Tensor]] = [[] for _ in formatted]
            for g in generators:
                for values, x in zip(per_input, formatted):
                    values.append(_uniform_like(x, x.shape[1:], g))
            attributions = tuple(
                torch.stack(values) if values else _uniform_like(x, x.shape, None)
                for values, x in zip(per_input, formatted)
            )
        return _format_output(is_inputs_tuple, attributions)


def _per_example_generators(generator: object, n: int) -> List[torch.Generator]:
    """Check that ``generator`` is a sequence of ``n`` generators."""
    if not isinstance(generator, Sequence) or not all(
        isinstance(g, torch.Generator) for g in generator
    ):
        raise TypeError(
            "generator: expected a torch.Generator or a sequence of torch.Generator, "
            f"got {type(generator).__name__}"
        )
    if len(generator) != n:
        raise ValueError(
            f"generator: expected one generator per example ({n}), got {len(generator)}"
        )
    return list(generator)


def _uniform_like(x: Tensor, shape: Sequence[int], generator: Optional[torch.Generator]) -> Tensor:
    """Uniform [0, 1) values of ``shape`` drawn from ``generator`` on its own
    device, returned on ``x``'s device with ``x``'s floating dtype."""
    dtype = x.dtype if x.is_floating_point() else torch.float32
    device = generator.device if generator is not None else x.device
    values = torch.rand(tuple(shape), generator=generator, device=device, dtype=dtype)
    return values.to(x.device)
