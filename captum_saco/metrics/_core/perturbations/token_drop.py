"""``perturbation="token_drop"``: the tokens of removed patches leave a ViT's sequence."""

from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from captum_saco.metrics._core.perturbations.base import ForwardRows, Perturbation


def _adapter(forward_func: Any) -> Any:
    """The ViT family description of ``forward_func``, refused by name otherwise."""
    from captum_saco.attr._core.families import adapter_for

    if not isinstance(forward_func, nn.Module):
        raise TypeError(
            "perturbation='token_drop': forward_func must be the ViT model itself (an "
            f"nn.Module of a family the attribution classes support), got "
            f"{type(forward_func).__name__}"
        )
    try:
        return adapter_for(forward_func)
    except (TypeError, ValueError) as error:
        raise ValueError(f"perturbation='token_drop': {error}") from None


class TokenDrop(Perturbation):
    """Removed patches are dropped from a ViT's token sequence.

    The features are the model's patches. A removed patch's token is taken
    out of the sequence after the position embedding (by a forward pre-hook
    on block 0, removed afterwards, also on errors), so no baseline and no
    out-of-distribution image is involved; the class, distillation and
    register tokens are always kept. The clean probability is the full
    model's. Rows that keep different numbers of patches run as separate
    forward calls.

    The attributions may be a patch-grid map ``(N, 1, h, w)`` or ``(N, h,
    w)`` (each patch keeps its own value, never upsampled) or a map on the
    input's grid (``(N, C, H, W)``, ``(N, 1, H, W)``, ``(N, H, W)``), summed
    per patch. ``forward_func`` must be the model itself, a ViT of a family
    the attribution classes of :mod:`captum_saco.attr` support (timm,
    Hugging Face and torchvision ViTs and DeiTs); ``feature_mask`` cannot be
    given (the features are the patches) and ``baselines`` are not used.

    Examples::

        >>> import torch
        >>> from timm.models.vision_transformer import VisionTransformer
        >>> from captum_saco.metrics import deletion_curve
        >>> _ = torch.manual_seed(0)
        >>> model = VisionTransformer(img_size=8, patch_size=4, in_chans=1, num_classes=3,
        ...                           embed_dim=8, depth=1, num_heads=2).eval()
        >>> grid_maps = torch.rand(2, 1, 2, 2)  # one value per patch
        >>> curve = deletion_curve(model, torch.randn(2, 1, 8, 8), grid_maps,
        ...                        fractions=(0.25, 0.5), perturbation="token_drop")
        >>> curve.n_removed[0].tolist()
        [0, 1, 2]
    """

    name = "token_drop"
    _model: Tuple[Any, int, int, int]  # this call's adapter, patch size and grid (see check)

    def _grid(self, forward_func: Any, x: Tensor) -> Tuple[Any, int, int, int]:
        """The adapter, the patch size ``p`` and the ``h x w`` patch grid of images ``x``."""
        adapter = _adapter(forward_func)
        embedding = adapter.patch_embedding()
        kernel, stride = getattr(embedding, "kernel_size", None), getattr(embedding, "stride", None)
        if (
            not isinstance(embedding, nn.Conv2d)
            or kernel != stride
            or kernel[0] != kernel[1]
            or x.shape[-2] % kernel[0]
            or x.shape[-1] % kernel[0]
        ):
            raise ValueError(
                "perturbation='token_drop': expected a patch embedding by a square Conv2d "
                f"whose stride is its kernel, tiling the input of shape {tuple(x.shape)}; got "
                f"{type(embedding).__name__} with kernel {kernel} and stride {stride}"
            )
        p = kernel[0]
        return adapter, p, x.shape[-2] // p, x.shape[-1] // p

    def check(self, forward_func: Callable[..., Any], inputs: Tuple[Tensor, ...]) -> None:
        if len(inputs) != 1 or inputs[0].dim() != 4:
            raise ValueError(
                "perturbation='token_drop': expected one input of images (N, C, H, W), got "
                f"{[tuple(x.shape) for x in inputs]}"
            )
        # the model's description for this call's forward passes
        self._model = self._grid(forward_func, inputs[0])

    def features(
        self,
        forward_func: Callable[..., Any],
        inputs: Tuple[Tensor, ...],
        attributions: Any,
        feature_mask: Union[None, Tensor, Tuple[Tensor, ...]],
    ) -> Tuple[Any, Tensor]:
        if feature_mask is not None:
            raise ValueError(
                "feature_mask: perturbation='token_drop' ranks the model's patches; "
                "give no feature_mask"
            )
        x = inputs[0]
        _, p, h, w = self._grid(forward_func, x)
        a = attributions
        if isinstance(a, tuple) and len(a) == 1:
            a = a[0]
        if isinstance(a, Tensor) and a.dim() in (3, 4) and tuple(a.shape[-2:]) == (h, w):
            grid = a if a.dim() == 4 else a.unsqueeze(1)
            if grid.shape[1] == 1:  # each patch's own value, on every pixel of the patch
                a = grid.repeat_interleave(p, dim=-2).repeat_interleave(p, dim=-1)
        ids = torch.arange(h * w, device=x.device).view(1, 1, h, w)
        mask = ids.repeat_interleave(p, dim=-2).repeat_interleave(p, dim=-1)
        return a, mask

    def forward(
        self,
        forward_rows: ForwardRows,
        inputs: Sequence[Tensor],
        removed: Sequence[Tensor],
        fills: Sequence[Tensor],
        rows: Tensor,
    ) -> Tensor:
        adapter, p, h, w = self._model
        x, gone = inputs[0], removed[0]
        keep = ~gone[:, 0, ::p, ::p].reshape(x.shape[0], h * w)
        counts = keep.sum(dim=1)
        scores: Optional[Tensor] = None
        for count in counts.unique().tolist():
            chosen = (counts == count).nonzero().squeeze(1)
            if count == h * w:  # nothing dropped: the full model
                part = forward_rows([x[chosen]], rows[chosen])
            else:
                patches = keep[chosen].nonzero()[:, 1].view(len(chosen), count)
                prefix = torch.arange(adapter.num_prefix_tokens, device=x.device)
                index = torch.cat(
                    [prefix.expand(len(chosen), -1), patches + adapter.num_prefix_tokens], dim=1
                )
                hook = adapter.blocks()[0].register_forward_pre_hook(
                    _keep_tokens(index), with_kwargs=True
                )
                try:
                    part = forward_rows([x[chosen]], rows[chosen])
                finally:
                    hook.remove()
            if scores is None:
                scores = part.new_empty(x.shape[0], *part.shape[1:])
            scores[chosen] = part
        assert scores is not None
        return scores


def _keep_tokens(index: Tensor) -> Callable[..., Tuple[Tuple[Any, ...], Dict[str, Any]]]:
    """A forward pre-hook (with kwargs) that keeps the tokens ``index`` ``(R, T')``
    of the hidden states ``(R, T, D)`` entering a block."""

    def keep(
        module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]
    ) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
        def gather(hidden: Tensor) -> Tensor:
            return hidden.gather(1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))

        if args:
            return (gather(args[0]),) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": gather(kwargs["hidden_states"])}

    return keep
