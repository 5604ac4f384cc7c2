"""The pipeline shared by the attention-based attribution methods for ViTs."""

import inspect
import warnings
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from captum.attr import Attribution
from torch import Tensor, nn

from captum_saco._utils import TargetType, resolve_target
from captum_saco.attr._core.adapters import ViTAdapter, adapter_for
from captum_saco.attr._core.relevance import attention_relevance


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
        relevances (list of Tensor or None): per block, the LRP relevance of
            ``attentions`` (see :mod:`captum_saco.attr._core.relevance`); ``None``
            for methods that need no relevance.
    """

    attentions: List[Tensor]
    gradients: Optional[List[Tensor]]
    tokens: Tensor
    scores: Tensor
    classes: Tensor
    num_prefix_tokens: int
    grid: Tuple[int, int]
    relevances: Optional[List[Tensor]] = None


def _model_output(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    raise TypeError(
        f"forward_func: expected the model to return a Tensor or an output with .logits, "
        f"got {type(output).__name__}; pass a forward_func that returns the class scores"
    )


class AttentionAttribution(Attribution):
    r"""Base class of the attribution methods that read a Vision Transformer's
    attention.

    One pipeline serves every method (like pytorch-grad-cam's ``BaseCAM``): it runs
    the model once while recording each block's post-softmax attention
    probabilities, resolves the target (the predicted class by default), takes the
    gradient of the target logits with respect to the probabilities when the method
    needs it (one backward pass for the whole batch), hands everything to the
    method's rule, takes the class token's row without the prefix-token columns,
    lays it out on the patch grid and optionally upsamples it to the input's size.

    A method subclasses this class and implements :meth:`_token_relevance`, which
    turns an :class:`AttentionTrace` into a token-to-token relevance matrix
    ``(N, T, T)`` (only the class token's row, row 0, is used); it sets the class
    attribute ``needs_gradients`` to ``True`` if the rule reads
    ``trace.gradients``. Method options are the keyword arguments of
    ``_token_relevance``; :meth:`attribute` passes them through and rejects unknown
    ones before running the model.

    A rule that reads the LRP relevance of the attention sets ``needs_relevance``
    to ``True``: the model then runs only up to its first block, and the relevance
    pass (:func:`~captum_saco.attr._core.relevance.attention_relevance`) replays the
    blocks from the tokens entering block 0 in canonical form, filling
    ``trace.attentions``, ``trace.gradients``, ``trace.relevances`` and
    ``trace.scores`` (the classifier head's logits, which such a rule explains
    whatever ``forward_func`` returns). ``_token_relevance`` runs in the caller's
    gradient mode.

    Supported models: timm ``VisionTransformer`` with class-token pooling (DeiT
    distilled, register tokens, dynamic image sizes), Hugging Face
    ``ViTForImageClassification``, ``DeiTForImageClassification``,
    ``DeiTForImageClassificationWithTeacher``, and torchvision
    ``VisionTransformer``. The model is left exactly as found: hooks are removed and
    attention settings restored after every call, also when the call fails.

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
        ...     # the last block's attention, fused over heads by their maximum
        ...     def _token_relevance(self, trace):
        ...         return trace.attentions[-1].amax(dim=1)
        >>> MaxHeadAttention(vit).attribute(torch.rand(2, 3, 32, 32), upsample=False).shape
        torch.Size([2, 1, 4, 4])
    """

    #: whether the rule reads the gradient of the target logits w.r.t. the attention
    needs_gradients: bool = False
    #: whether the rule reads the LRP relevance of the attention (with its gradient)
    needs_relevance: bool = False

    def __init__(self, model: nn.Module, forward_func: Optional[Callable] = None) -> None:
        self._adapter: ViTAdapter = adapter_for(model)
        if forward_func is not None and not callable(forward_func):
            raise TypeError(
                f"forward_func: expected a callable, got {type(forward_func).__name__}"
            )
        self.model = model
        super().__init__(model if forward_func is None else forward_func)

    def _token_relevance(self, trace: AttentionTrace, **options: Any) -> Tensor:
        """The method's rule: token-to-token relevance ``(N, T, T)`` from the trace."""
        raise NotImplementedError

    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor]],
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        upsample: bool = True,
        **options: Any,
    ) -> Union[Tensor, Tuple[Tensor]]:
        r"""
        Args:
            inputs (Tensor or tuple[Tensor]): images ``(N, C, H, W)`` as the model
                takes them, or a tuple holding that one tensor.
            target (int, tuple, Tensor, list, optional): the output index explained
                for each example, in any form Captum accepts. Default: the predicted
                class.
            additional_forward_args (Any, optional): further positional arguments of
                ``forward_func`` after the inputs (a non-tuple is passed as one
                argument).
            upsample (bool, optional): if ``True`` (default), the patch-grid relevance
                is upsampled bilinearly (``align_corners=False``) to ``(H, W)`` and
                repeated over the ``C`` channels, giving the input's shape; if
                ``False``, the patch grid ``(N, 1, h, w)`` is returned, row-major as
                the model orders its patches.
            **options: the method's options (see the method's class).

        Returns:
            *Tensor* or *tuple[Tensor]* of **attributions**: the relevance of the
            patches for the class token, not normalised, in the same form as
            ``inputs`` and on their device.

        Raises:
            TypeError: for an unknown option or inputs that are not tensors.
            ValueError: for malformed inputs or targets.
        """
        is_tuple = isinstance(inputs, tuple)
        images = self._check_inputs(inputs)
        self._check_options(options)
        trace = self._trace(images, target, additional_forward_args)
        relevance = self._token_relevance(trace, **options)
        grid = self._patch_grid(relevance[:, 0], trace)
        not_finite = ~torch.isfinite(grid.flatten(1)).all(dim=1)
        if not_finite.any():
            warnings.warn(
                f"{type(self).__name__}: the maps of examples "
                f"{not_finite.nonzero().flatten().tolist()} are not finite (non-finite "
                "inputs or model outputs?)",
                stacklevel=2,
            )
        if upsample:
            grid = F.interpolate(
                grid, size=images.shape[-2:], mode="bilinear", align_corners=False
            ).repeat(1, images.shape[1], 1, 1)
        grid = grid.to(images.device)
        return (grid,) if is_tuple else grid

    @staticmethod
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
        if inputs.dim() != 4:
            raise ValueError(
                f"inputs: expected images of shape (N, C, H, W), got {tuple(inputs.shape)}"
            )
        return inputs

    def _check_options(self, options: dict) -> None:
        try:
            inspect.signature(self._token_relevance).bind(None, **options)
        except TypeError:
            allowed = [
                name
                for name, p in inspect.signature(self._token_relevance).parameters.items()
                if p.kind is p.KEYWORD_ONLY
            ]
            unknown = sorted(set(options) - set(allowed))
            raise TypeError(
                f"{type(self).__name__}.attribute: unknown option(s) {unknown}; "
                f"its options are {allowed}"
            ) from None

    def _trace(
        self, images: Tensor, target: TargetType, additional_forward_args: Any
    ) -> AttentionTrace:
        if additional_forward_args is None:
            extra: Tuple = ()
        elif isinstance(additional_forward_args, tuple):
            extra = additional_forward_args
        else:
            extra = (additional_forward_args,)
        if self.needs_relevance:
            return self._relevance_trace(images, target, extra)
        with ExitStack() as stack:
            record = stack.enter_context(self._adapter.capture())
            if self.needs_gradients:
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
            output = _model_output(self.forward_func(model_input, *extra))
            if not record.complete():
                raise ValueError(
                    "forward_func: running it did not run the whole model given at "
                    "construction; forward_func must call that model on the inputs"
                )
            scores, classes = resolve_target(output, target)
            attentions: List[Tensor] = record.attentions  # type: ignore[assignment]
            gradients = None
            if self.needs_gradients:
                objective = scores.gather(1, classes[:, None]).sum()
                gradients = [g.detach() for g in torch.autograd.grad(objective, attentions)]
        assert record.tokens is not None and record.grid is not None
        return AttentionTrace(
            attentions=[a.detach() for a in attentions],
            gradients=gradients,
            tokens=record.tokens.detach(),
            scores=scores.detach(),
            classes=classes,
            num_prefix_tokens=self._adapter.num_prefix_tokens,
            grid=record.grid,
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
            result = attention_relevance(self._adapter.parts(), tokens.detach(), target)
        return AttentionTrace(
            attentions=result.attentions,
            gradients=result.gradients,
            tokens=tokens.detach(),
            scores=result.logits,
            classes=result.classes,
            num_prefix_tokens=self._adapter.num_prefix_tokens,
            grid=record.grid,
            relevances=result.relevances,
        )

    @staticmethod
    def _patch_grid(row: Tensor, trace: AttentionTrace) -> Tensor:
        """The class-token row ``(N, T)`` without prefix columns as ``(N, 1, h, w)``."""
        h, w = trace.grid
        patches = row[:, trace.num_prefix_tokens :]
        if patches.shape[1] != h * w:
            raise ValueError(
                f"model: {patches.shape[1]} patch tokens do not fill the {h}x{w} patch grid "
                "(token dropping or pruning is not supported)"
            )
        return patches.reshape(-1, 1, h, w)
