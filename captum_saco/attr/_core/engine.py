"""The pipeline shared by the attention-based attribution methods for ViTs."""

import dataclasses
import enum
import textwrap
import warnings
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Tuple, TypeVar, Union

import torch
import torch.nn.functional as F
from captum._utils.common import _format_additional_forward_args
from captum.attr import Attribution
from captum.attr._utils.batching import _tuple_splice_range
from torch import Tensor, nn

from captum_saco._utils import (
    TargetType,
    check_dense,
    check_flag,
    check_max_examples_per_batch,
    model_output,
    resolve_target,
)
from captum_saco.attr._core.families import ViTAdapter, ViTParts, adapter_for
from captum_saco.attr._core.relevance import AttentionRelevance, attention_relevance


class Needs(enum.IntEnum):
    """What an attention rule reads, in increasing order of cost; each level
    includes the ones below it."""

    #: the post-softmax attention probabilities of every block (no backward pass)
    ATTENTION = 1
    #: and their gradients w.r.t. the target logit (one backward pass per chunk)
    GRADIENTS = 2
    #: and their LRP relevance (the relevance pass of
    #: :func:`~captum_saco.attr._core.relevance.attention_relevance`)
    RELEVANCE = 3


@dataclass(frozen=True)
class AttentionTrace:
    """What one forward (and backward) pass of the model yields for a rule.

    All tensors are detached from the autograd graph and live on the model's
    device.

    Attributes:
        attentions (list of Tensor): per block, the post-softmax attention
            probabilities ``(N, heads, T, T)``.
        gradients (list of Tensor or None): per block, the gradient of the sum
            over the batch of the target logits with respect to ``attentions``;
            ``None`` for methods that need no gradient.
        tokens (Tensor): the tokens ``(N, T, D)`` entering block 0.
        scores (Tensor): the class scores ``(N, C)`` the target points into.
        classes (Tensor): the target class of every example, ``(N,)``.
        num_prefix_tokens (int): tokens before the patches (class token first).
        grid (tuple of int): the patch grid ``(h, w)``; ``T = num_prefix_tokens + h * w``.
        readout (Tensor): the head's read-out vector ``s`` over the tokens, in the
            attention's dtype: ``(T,)``, one for every example, for a fixed read-out
            (the class token ``e_0`` for a class-token head, the uniform average over
            the tokens a mean-pooled head averages), or ``(N, T)``, one per example,
            for a MAP head (attention pooling): the head's attention over the tokens
            (mean over heads), recorded in the same forward pass and taken as a
            constant (no gradient flows into it). The rules take ``s`` times their
            token-by-token matrix (:meth:`read`) where the class-token row was taken.
        relevances (list of Tensor or None): per block, the LRP relevance of
            ``attentions`` (see :mod:`captum_saco.attr._core.relevance`); ``None``
            for methods that need no relevance (and for blocks a rule does not read).
        input_relevance (Tensor or None): ``(N, T, D)`` the LRP relevance of
            ``tokens``, for rules that continue the relevance pass through block 0.
        block_inputs (list of Tensor or None): per block, the tokens ``(N, T, D)``
            entering it (the residual stream; ``block_inputs[0]`` is ``tokens``);
            ``None`` in the trace of the relevance pass.
        block_gradients (list of Tensor or None): per block, the gradient of the
            sum over the batch of the target logits with respect to
            ``block_inputs``; ``None`` where ``gradients`` is ``None`` and in the
            trace of the relevance pass.
    """

    attentions: List[Tensor]
    gradients: Optional[List[Tensor]]
    tokens: Tensor
    scores: Tensor
    classes: Tensor
    num_prefix_tokens: int
    grid: Tuple[int, int]
    readout: Tensor
    relevances: Optional[List[Tensor]] = None
    block_inputs: Optional[List[Tensor]] = None
    block_gradients: Optional[List[Tensor]] = None
    input_relevance: Optional[Tensor] = None

    def readout_rows(self) -> Tensor:
        """``(N, 1, T)`` the read-out vector of every example, as a row."""
        return self.readout.expand(self.classes.shape[0], -1).unsqueeze(1)

    def read(self, matrix: Tensor) -> Tensor:
        """``s · matrix``: each example's read-out vector times its token-by-token
        matrices ``(N, ..., T, T)`` (e.g. per head), giving ``(N, ..., T)``, in
        ``matrix``'s dtype."""
        rows = self.readout_rows().to(matrix.dtype)
        rows = rows.view(rows.shape[0], *([1] * (matrix.dim() - 3)), 1, rows.shape[-1])
        return (rows @ matrix).squeeze(-2)


_ATTRIBUTE_DOC = r"""
        Args:
            inputs (Tensor or tuple[Tensor]): images ``(N, C, H, W)`` as the model
                takes them, or a tuple holding that one tensor.
            target (int, tuple, Tensor, list, optional): the output index explained
                for each example, in any form Captum accepts. Default: the predicted
                class.
            additional_forward_args (Any, optional): further positional arguments of
                ``forward_func`` after the inputs (a non-tuple is passed as one
                argument). With ``max_examples_per_batch``, every tensor among them
                is taken to hold one row per example and is split with the inputs,
                as in Captum.
{options}            upsample (bool, optional): if ``True`` (default), the patch-grid relevance
                is upsampled bilinearly (``align_corners=False``) to ``(H, W)`` and
                repeated over the ``C`` channels, giving the input's shape; if
                ``False``, the patch grid ``(N, 1, h, w)`` is returned, row-major as
                the model orders its patches.
            max_examples_per_batch (int, optional): the most examples run through
                the model at once; the inputs are split into chunks of that size,
                which bounds the memory of the recorded attention (and gradients),
                with the same results as one batch (one backward pass per chunk for
                the methods that need one). Default: all at once.

        Returns:
            *Tensor* or *tuple[Tensor]* of **attributions**: the relevance of the
            patches for the class token, not normalised, in the same form as
            ``inputs`` and on their device; float32 for float16 and bfloat16
            models (the rule computes in float32), else the model's dtype.

        Raises:
            TypeError: for inputs that are not tensors (or not floating point, for
                methods that differentiate the model), a non-bool ``upsample`` or a
                non-int ``max_examples_per_batch``.
            ValueError: for malformed inputs, targets, options or
                ``max_examples_per_batch``, and tensors on the meta device. Options
                are checked before the model runs.
"""

_Method = TypeVar("_Method", bound=Callable)


def documented_options(
    options: str, template: str = _ATTRIBUTE_DOC
) -> Callable[[_Method], _Method]:
    """Decorator giving a method's ``attribute`` a shared Captum-style docstring
    (``template``, by default that of the attention methods) with its own options
    (Google-style ``name (type): text`` entries) inserted at ``{options}``."""
    entries = textwrap.indent(textwrap.dedent(options).strip("\n"), " " * 12)

    def document(attribute: _Method) -> _Method:
        attribute.__doc__ = template.format(options=entries + "\n" if entries else "")
        return attribute

    return document


def check_start_layer(start_layer: int, num_blocks: int) -> None:
    """Refuse a ``start_layer`` option that is not a block index of the model."""
    if isinstance(start_layer, bool) or not isinstance(start_layer, int):
        raise TypeError(f"start_layer: expected an int, got {type(start_layer).__name__}")
    if not 0 <= start_layer < num_blocks:
        raise ValueError(
            f"start_layer: expected a block index in [0, {num_blocks}), got {start_layer}"
        )


class AttentionAttribution(Attribution):
    r"""Base class of the attribution methods that read a Vision Transformer's
    attention, and the public base for user-written attention rules.

    One pipeline serves every method (like pytorch-grad-cam's ``BaseCAM``): it
    checks the inputs, splits them into chunks of at most
    ``max_examples_per_batch`` examples, and per chunk runs the model once while
    recording each block's post-softmax attention probabilities, resolves the
    target (the predicted class by default), takes the gradient of the target
    logits with respect to the probabilities when the rule needs it (one backward
    pass per chunk), hands everything to the rule as an :class:`AttentionTrace`,
    takes the head's read-out row (the class token's row for a class-token head,
    see :attr:`AttentionTrace.readout`) without the prefix-token columns, lays it out on
    the patch grid and optionally upsamples it to the input's size.

    The contract for a rule (a subclass):

    - the class attribute :attr:`needs` says what the rule reads:
      :attr:`Needs.ATTENTION` (default; no backward pass),
      :attr:`Needs.GRADIENTS` (``trace.gradients`` too) or
      :attr:`Needs.RELEVANCE` (``trace.relevances`` too: the model then runs only
      up to its first block, and the relevance pass
      (:func:`~captum_saco.attr._core.relevance.attention_relevance`) replays the
      blocks from the tokens entering block 0 in canonical form, filling
      ``trace.attentions``, ``trace.gradients``, ``trace.relevances`` and
      ``trace.scores``, the classifier head's logits, which such a rule explains
      whatever ``forward_func`` returns);
    - ``_token_relevance(trace, **options) -> Tensor`` is the rule: the class
      token's relevance for every token, ``(N, T)``, prefix tokens included (the
      pipeline drops their columns). It runs in the caller's gradient mode;
    - a rule without options inherits :meth:`attribute`; a rule with options
      overrides it, declares them as keyword-only arguments documented with
      ``@documented_options(...)`` (the shared docstring plus the options),
      validates them (before the model runs; :attr:`num_blocks` serves
      ``start_layer`` checks) and delegates to
      ``self._attribute(inputs, target, additional_forward_args,
      upsample=upsample, max_examples_per_batch=max_examples_per_batch,
      **options)``, which passes the options to ``_token_relevance``;
    - a method that reaches the pixels overrides
      ``_explain(images, target, extra, *, upsample, **options)`` instead, which
      returns, per chunk, the ``(N, C, H, W)`` map when ``upsample`` is ``True``
      and the ``(N, 1, h, w)`` patch-token map otherwise.

    Supported models: see
    :data:`~captum_saco.attr._core.families.SUPPORTED_MODELS` (timm
    ``VisionTransformer`` with class-token, mean or attention pooling, timm Eva and
    BEiT, Hugging Face ViT, DeiT, BEiT, DINOv2, ``CLIPForImageClassification`` and
    ``SiglipForImageClassification``, torchvision ``VisionTransformer``, and
    zero-shot CLIP and SigLIP classifiers); Swin Transformers only for
    ``ConservativeLRP`` and ``AttnLRP`` (the others refuse them by name). The model
    is left exactly as found: hooks are removed and attention settings restored
    after every call, also when the call fails.

    Args:
        model (nn.Module): the ViT whose attention is read.
        forward_func (Callable, optional): the function whose output is explained;
            it must run ``model``. Default: ``model``, with the logits taken from
            Hugging Face output objects.

    Examples::

        >>> import torch, timm
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> vit = timm.models.VisionTransformer(
        ...     img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2, num_classes=5).eval()
        >>> class MaxHeadAttention(AttentionAttribution):
        ...     # the last block's class-token attention, fused over heads by their maximum
        ...     def _token_relevance(self, trace):
        ...         return trace.attentions[-1][:, :, 0].amax(dim=1)
        >>> MaxHeadAttention(vit).attribute(torch.rand(2, 3, 32, 32), upsample=False).shape
        torch.Size([2, 1, 4, 4])
    """

    #: what the rule reads from the trace
    needs: Needs = Needs.ATTENTION

    def __init__(self, model: nn.Module, forward_func: Optional[Callable] = None) -> None:
        self._adapter: ViTAdapter = self._adapter_for(model)
        if any(p.is_meta for p in model.parameters()):
            raise ValueError(
                "model: its parameters are on the meta device and hold no values; "
                "materialise them first (e.g. model.to_empty(device=...) and load weights)"
            )
        if forward_func is not None and not callable(forward_func):
            raise TypeError(f"forward_func: expected a callable, got {type(forward_func).__name__}")
        super().__init__(model if forward_func is None else forward_func)

    def _adapter_for(self, model: nn.Module) -> ViTAdapter:
        """The description of ``model`` that the method reads (a method that explains
        more families overrides this)."""
        return adapter_for(model)

    @property
    def num_blocks(self) -> int:
        """The number of transformer blocks of the model."""
        return len(self._adapter.blocks())

    @documented_options("")
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor]],
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        upsample: bool = True,
        max_examples_per_batch: Optional[int] = None,
    ) -> Union[Tensor, Tuple[Tensor]]:
        return self._attribute(
            inputs,
            target,
            additional_forward_args,
            upsample=upsample,
            max_examples_per_batch=max_examples_per_batch,
        )

    def _attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor]],
        target: TargetType,
        additional_forward_args: Any,
        *,
        upsample: bool,
        max_examples_per_batch: Optional[int],
        **options: Any,
    ) -> Union[Tensor, Tuple[Tensor]]:
        """The shared pipeline: checks, chunks, :meth:`_explain` per chunk, joins."""
        images = _check_inputs(inputs)
        if self.needs >= Needs.GRADIENTS and not images.is_floating_point():
            raise TypeError(
                f"inputs: {type(self).__name__} differentiates the model's output, which "
                f"needs floating-point images, got dtype {images.dtype}; convert them as the "
                "model expects (e.g. images.float() / 255 and its normalisation)"
            )
        if isinstance(target, Tensor):
            check_dense(target, "target")
        check_flag("upsample", upsample)
        extra = _format_additional_forward_args(additional_forward_args) or ()
        chunks = [
            self._explain(chunk, chunk_target, chunk_extra, upsample=upsample, **options)
            for chunk, chunk_target, chunk_extra in _chunks(
                images, target, extra, max_examples_per_batch
            )
        ]
        maps = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        not_finite = ~torch.isfinite(maps.flatten(1)).all(dim=1)
        if not_finite.any():
            warnings.warn(
                f"{type(self).__name__}: the maps of examples "
                f"{not_finite.nonzero().flatten().tolist()} are not finite (non-finite "
                "inputs or model outputs?)",
                stacklevel=3,
            )
        maps = maps.to(images.device)
        return (maps,) if isinstance(inputs, tuple) else maps

    def _explain(
        self, images: Tensor, target: TargetType, extra: Tuple, *, upsample: bool, **options: Any
    ) -> Tensor:
        """One chunk's maps: the rule's class-token row on the patch grid.

        The rule runs with autocast disabled on a trace whose half-precision
        tensors are widened to float32, so that its products and sums are float32
        whatever precision the model ran in."""
        trace = self._trace(images, target, extra)
        with torch.autocast(images.device.type, enabled=False):
            grid = self._patch_grid(self._token_relevance(_widened(trace), **options), trace)
            if upsample:
                grid = F.interpolate(
                    grid, size=images.shape[-2:], mode="bilinear", align_corners=False
                ).repeat(1, images.shape[1], 1, 1)
        return grid

    def _token_relevance(self, trace: AttentionTrace, **options: Any) -> Tensor:
        """The method's rule: the class token's relevance ``(N, T)`` for every token."""
        raise NotImplementedError

    def _trace(self, images: Tensor, target: TargetType, extra: Tuple) -> AttentionTrace:
        if self.needs >= Needs.RELEVANCE:
            return self._relevance_trace(images, target, extra)
        with ExitStack() as stack:
            record = stack.enter_context(self._adapter.capture())
            if self.needs >= Needs.GRADIENTS:
                # Gradients are needed even inside no_grad() or inference_mode(). A
                # fresh leaf that requires grad puts the attention into the graph even
                # when the model's parameters are frozen; the user's tensor is not
                # touched.
                stack.enter_context(torch.inference_mode(False))
                stack.enter_context(torch.enable_grad())
                model_input = images.clone() if images.is_inference() else images.detach()
                model_input.requires_grad_()
            else:
                stack.enter_context(torch.no_grad())
                model_input = images
            output = model_output(self.forward_func(model_input, *extra))
            if not record.complete():
                raise ValueError(
                    "forward_func: running it did not run the whole model given at "
                    "construction; forward_func must call that model on the inputs"
                )
            if record.passes > 1:
                raise ValueError(
                    f"forward_func: it ran the model {record.passes} times in one call (test-"
                    "time augmentation?), and the attention of one forward pass is explained; "
                    "forward_func must run the model once on the inputs"
                )
            if output.dim() == 0 or output.shape[0] != images.shape[0]:
                raise ValueError(
                    "forward_func: expected an output with one row per example, got shape "
                    f"{tuple(output.shape)} for {images.shape[0]} examples"
                )
            scores, classes = resolve_target(output, target)
            attentions: List[Tensor] = record.attentions  # type: ignore[assignment]
            block_inputs: List[Tensor] = record.block_inputs  # type: ignore[assignment]
            gradients = block_gradients = None
            if self.needs >= Needs.GRADIENTS:
                objective = scores.gather(1, classes[:, None]).sum()
                check_differentiable(objective, *attentions, *block_inputs)
                both = torch.autograd.grad(objective, attentions + block_inputs)
                gradients = [g.detach() for g in both[: len(attentions)]]
                block_gradients = [g.detach() for g in both[len(attentions) :]]
        assert record.grid is not None
        return AttentionTrace(
            attentions=[a.detach() for a in attentions],
            gradients=gradients,
            tokens=block_inputs[0].detach(),
            scores=scores.detach(),
            classes=classes,
            num_prefix_tokens=self._adapter.num_prefix_tokens,
            grid=record.grid,
            readout=self._readout(attentions[0], record.readout),
            block_inputs=[x.detach() for x in block_inputs],
            block_gradients=block_gradients,
        )

    def _relevance_trace(self, images: Tensor, target: TargetType, extra: Tuple) -> AttentionTrace:
        """The trace of the relevance pass, replayed from the tokens entering block 0."""
        with self._adapter.capture(stop_at_first_block=True) as record, torch.no_grad():
            self.forward_func(images, *extra)
        if record.tokens is None or record.grid is None:
            raise ValueError(
                "forward_func: running it did not run the model given at construction; "
                "forward_func must call that model on the inputs"
            )
        with torch.inference_mode(False):
            # Inside inference_mode() the tokens are inference tensors, which the
            # replay's autograd graph cannot save: it works on a normal copy.
            tokens = record.tokens.clone() if record.tokens.is_inference() else record.tokens
            parts = self._adapter.relevance_parts()
            # The replay runs at least in the precision of the model's weights, also
            # under autocast (wider where a rule asked for wider tokens).
            dtype = torch.promote_types(tokens.dtype, parts.blocks[0].qkv_weight.dtype)
            with torch.autocast(tokens.device.type, enabled=False):
                result = self._relevance(parts, tokens.detach().to(dtype), target)
        return AttentionTrace(
            attentions=result.attentions,
            gradients=result.gradients,
            tokens=tokens.detach(),
            scores=result.logits,
            classes=result.classes,
            num_prefix_tokens=self._adapter.num_prefix_tokens,
            grid=record.grid,
            readout=self._readout(result.attentions[0], result.readout),
            relevances=result.relevances,
            input_relevance=result.input_relevance,
        )

    def _relevance(self, parts: ViTParts, tokens: Tensor, target: TargetType) -> AttentionRelevance:
        """The relevance pass of :attr:`Needs.RELEVANCE`; a rule that reads less (no
        gradients, only the last blocks) or more (``input_relevance``) overrides it."""
        return attention_relevance(parts, tokens, target)

    def _readout(self, attention: Tensor, recorded: Optional[Tensor] = None) -> Tensor:
        """The read-out vector ``s`` for attention probabilities ``(N, h, T, T)``: the
        per-example ``(N, T)`` one the capture or the relevance pass ``recorded`` (a
        MAP head), else the adapter's fixed ``(T,)`` one."""
        s = self._adapter.readout(attention.shape[-1]) if recorded is None else recorded
        return s.to(attention.device, attention.dtype)

    def _patch_grid(self, row: Tensor, trace: AttentionTrace) -> Tensor:
        """The class-token row ``(N, T)`` without prefix columns as ``(N, 1, h, w)``."""
        expected = (trace.classes.shape[0], trace.attentions[0].shape[-1])
        if tuple(row.shape) != expected:
            raise ValueError(
                f"{type(self).__name__}._token_relevance: expected one row per example over "
                f"the tokens, shape {expected}, got {tuple(row.shape)} (a per-example "
                "read-out is (N, T): take trace.read(matrix), not trace.readout @ matrix)"
            )
        h, w = trace.grid
        patches = row[:, trace.num_prefix_tokens :]
        if patches.shape[1] != h * w:
            raise ValueError(
                f"model: {patches.shape[1]} patch tokens do not fill the {h}x{w} patch grid "
                "(token dropping or pruning is not supported)"
            )
        return patches.reshape(-1, 1, h, w)


def check_differentiable(*tensors: Tensor) -> None:
    """Refuse, naming ``forward_func``, to differentiate ``tensors`` outside an
    autograd graph: a ``forward_func`` that runs the model under ``no_grad``,
    detaches or rounds its output records none."""
    if not all(t.requires_grad for t in tensors):
        raise ValueError(
            "forward_func: this method differentiates the model, but running "
            "forward_func recorded no autograd graph (does it run the model under "
            "torch.no_grad(), or detach or round its output?); pass a differentiable "
            "forward_func"
        )


def _widened(trace: AttentionTrace) -> AttentionTrace:
    """``trace`` with its float16 and bfloat16 tensors in float32."""

    def widen(value: Any) -> Any:
        if isinstance(value, list):
            return [widen(v) for v in value]
        if isinstance(value, Tensor) and value.dtype in (torch.float16, torch.bfloat16):
            return value.float()
        return value

    return dataclasses.replace(
        trace, **{f.name: widen(getattr(trace, f.name)) for f in dataclasses.fields(trace)}
    )


def _check_inputs(inputs: Union[Tensor, Tuple[Tensor]]) -> Tensor:
    if isinstance(inputs, tuple):
        if len(inputs) != 1:
            raise ValueError(
                f"inputs: expected one image tensor (or a tuple holding one), got a tuple "
                f"of {len(inputs)}; pass further model arguments as additional_forward_args"
            )
        inputs = inputs[0]
    if not isinstance(inputs, Tensor):
        raise TypeError(f"inputs: expected a Tensor, got {type(inputs).__name__}")
    check_dense(inputs, "inputs")
    if inputs.dim() != 4 or inputs.shape[0] == 0:
        raise ValueError(
            f"inputs: expected images of shape (N, C, H, W) with N > 0, got {tuple(inputs.shape)}"
        )
    return inputs


def _chunks(
    images: Tensor, target: TargetType, extra: Tuple, max_examples_per_batch: Optional[int]
) -> Iterator[Tuple[Tensor, TargetType, Tuple]]:
    """The inputs, their targets and per-example extra arguments in chunks of at most
    ``max_examples_per_batch`` examples (Captum's convention: list targets, tensor
    targets of more than one element and every tensor in ``extra`` are split)."""
    n = images.shape[0]
    per_example_target = isinstance(target, list) or (
        isinstance(target, Tensor) and target.numel() > 1
    )
    if per_example_target and len(target) != n:  # type: ignore[arg-type]
        entries = len(target)  # type: ignore[arg-type]
        raise ValueError(
            f"target: a list or tensor target needs one entry per example ({n}), got {entries}"
        )
    if max_examples_per_batch is None:
        yield images, target, extra
        return
    check_max_examples_per_batch(max_examples_per_batch)
    for value in extra:
        if isinstance(value, Tensor) and (value.dim() == 0 or value.shape[0] != n):
            raise ValueError(
                "additional_forward_args: with max_examples_per_batch, every tensor is split "
                f"with the inputs and needs one row per example ({n}), got shape "
                f"{tuple(value.shape)}"
            )
    for start in range(0, n, max_examples_per_batch):
        end = start + max_examples_per_batch
        yield (
            images[start:end],
            target[start:end] if per_example_target else target,  # type: ignore[index]
            _tuple_splice_range(extra, start, end),
        )
