"""What every Vision Transformer family provides, and what is shared by all.

A family (one file in this package) describes where its model keeps the tokens,
blocks, attention probabilities, norms, pooling and head; the attention methods
and the relevance rules read only that description (:class:`ViTAdapter`).
"""

import threading
import weakref
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

#: the :meth:`ViTAdapter.embedding_path` rules of norms (the LayerNorm rule)
NORM_RULES = ("patch_layernorm", "layernorm")


@dataclass(frozen=True)
class BlockParts:
    """One pre-norm ViT block:
    ``x = x + ls1 * proj(attn(norm1(x))); x = x + ls2 * fc2(act(fc1(norm2(x))))``.

    The attention scale is ``head_dim ** -0.5`` with ``head_dim = D // num_heads``.
    Every norm is an ``nn.LayerNorm`` or an ``nn.RMSNorm``.

    The optional parts (``None``: the block does not have them), in the order the
    block applies them:

    - ``q_norm``, ``k_norm``: norms of the queries and keys of each head (timm
      ``qk_norm``), applied to ``q`` and ``k`` ``(N, heads, T, d)``;
    - ``rope``: rotary position embedding ``(T - rope_skip, 2 * d)``, the sines
      then the cosines (timm's ``apply_rot_embed_cat`` layout), rotating the queries
      and keys after their norms; the first ``rope_skip`` tokens (the prefix tokens)
      are not rotated; ``rope_half`` selects the rotate-half layout instead of the
      interleaved one;
    - ``attention_bias``: ``(1, heads, T, T)`` added to the scaled scores before
      the softmax (BEiT's relative position bias);
    - ``attn_norm``: a norm of the merged attention output before ``proj``
      (sub-LN, timm ``scale_attn_inner``);
    - ``fc_value``: a gated MLP (SwiGLU, GluMlp): the hidden vector is
      ``act(fc1(x)) * fc_value(x)``, ``fc1`` being the gate;
    - ``mlp_norm``: a norm of the hidden vector before ``fc2`` (sub-LN, timm
      ``scale_mlp``).
    """

    norm1: nn.Module
    qkv_weight: Tensor  # (3*D, D), rows ordered q, k, v
    qkv_bias: Optional[Tensor]  # (3*D,) or None
    num_heads: int
    proj: nn.Linear
    norm2: nn.Module
    fc1: nn.Linear
    act: Callable[[Tensor], Tensor]
    fc2: nn.Linear
    ls1: Optional[Tensor] = None  # layer-scale gamma (D,) or None
    ls2: Optional[Tensor] = None
    q_norm: Optional[nn.Module] = None
    k_norm: Optional[nn.Module] = None
    rope: Optional[Tensor] = None
    rope_skip: int = 0
    rope_half: bool = False
    attention_bias: Optional[Tensor] = None
    attn_norm: Optional[nn.Module] = None
    fc_value: Optional[nn.Linear] = None
    mlp_norm: Optional[nn.Module] = None


#: what a head reads from the final norm's output: an ``int`` reads that token, a
#: ``slice`` the uniform average of the tokens it selects
TokenRead = Union[int, slice]


@dataclass(frozen=True)
class LinearMap:
    """``inputs @ weight.T + bias``, a linear layer given by its tensors (a projection
    matrix such as open_clip's ``proj``, or a zero-shot head's text matrix)."""

    weight: Tensor  # (out, in)
    bias: Optional[Tensor] = None  # (out,) or None


#: a linear layer of a head: an ``nn.Linear`` of the model or a :class:`LinearMap`
Linear = Union[nn.Linear, LinearMap]


@dataclass(frozen=True)
class AttentionPool:
    """An attention-pooling (MAP) head's pool, from the final norm's output
    ``(N, T, D)`` to its latents ``(N, L, D)``::

        x = tokens[:, skip:]
        q = q_norm(q(latent)); k = k_norm(x @ kv_weight[:D].T + b); v = x @ kv_weight[D:].T + b
        latents = proj(softmax(q k^T / sqrt(head_dim)) v)   # per head, heads merged
        latents = latents + fc2(act(fc1(norm(latents))))

    The learned latent queries are constants of the model: they do not depend on
    the image. timm's ``AttentionPoolLatent`` and the ``head`` of Hugging Face's
    SigLIP tower (``nn.MultiheadAttention`` on a learned probe, then a LayerNorm
    and an MLP added residually) take this form.
    """

    latent: Tensor  # (L, latent_dim) the learned queries
    q: Optional[Linear]  # the queries' projection, None for none
    kv_weight: Tensor  # (2*D, D), rows ordered k, v
    kv_bias: Optional[Tensor]  # (2*D,) or None
    num_heads: int
    proj: Linear
    norm: nn.Module  # LayerNorm or Identity, before the MLP
    fc1: nn.Linear
    act: Callable[[Tensor], Tensor]
    fc2: nn.Linear
    q_norm: Optional[nn.Module] = None
    k_norm: Optional[nn.Module] = None
    skip: int = 0  # the prefix tokens the pool does not see


@dataclass(frozen=True)
class HeadParts:
    """One head, from the final norm's output ``(N, T, D)`` to logits ``(N, C)``::

        sequence = pool(tokens) if pool else tokens
        features = fc_norm(concat over r in reads of read_r(sequence))
        features = projection(features)  # if any
        features = features / ||features||  # if normalize (zero-shot heads)
        logits = classifier(features)  # if any (else the features are the output)

    where ``read_r`` is ``sequence[:, r]`` for an ``int`` and
    ``sequence[:, r].mean(1)`` for a ``slice``. A class-token head reads ``(0,)``;
    timm's ``global_pool="avg"`` ``(slice(p, None),)`` after ``p`` prefix tokens,
    then its ``fc_norm``; DINOv2's classifier ``(0, slice(p, None))``; a zero-shot
    CLIP head is the class token, the tower's projection, the L2 normalisation and
    ``classifier = LinearMap(scale * text_embeddings, bias)``. An attention-pooling
    (MAP) head has a ``pool`` (:class:`AttentionPool`) and reads its latents: the
    first (``(0,)``, timm's ``pool='token'``, SigLIP) or their mean
    (``(slice(None),)``, timm's ``pool='avg'``).
    """

    reads: Tuple[TokenRead, ...]
    classifier: Optional[Linear]  # None: the head outputs its features (an image tower)
    fc_norm: nn.Module = field(default_factory=nn.Identity)  # LayerNorm or Identity
    projection: Optional[Linear] = None
    normalize: bool = False  # the L2 normalisation after the projection
    pool: Optional[AttentionPool] = None

    @classmethod
    def class_token_or_mean(
        cls,
        classifier: Optional[Linear],
        class_token: bool,
        num_prefix_tokens: int,
        fc_norm: nn.Module,
    ) -> "HeadParts":
        """A head reading the class token (if ``class_token``) or the mean of the
        tokens after the ``num_prefix_tokens`` prefix tokens, through ``fc_norm``."""
        reads = (0,) if class_token else (slice(num_prefix_tokens, None),)
        return cls(reads, classifier, fc_norm)

    def reads_all_tokens(self) -> bool:
        """Whether a read averages tokens or the head pools them through its attention
        (else only the tokens read reach the logits)."""
        return self.pool is not None or any(isinstance(read, slice) for read in self.reads)


@dataclass(frozen=True)
class ViTParts:
    """A whole ViT in canonical form, from the tokens entering block 0 to the logits:
    ``logits`` is the mean over ``heads`` (two for DeiT distilled) of each head's
    logits on ``norm(tokens leaving the last block)``."""

    blocks: List[BlockParts]
    norm: nn.Module  # final norm applied to the tokens (a LayerNorm, or nn.Identity for none)
    heads: List[HeadParts]
    num_prefix_tokens: int


_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _model_lock(model: nn.Module) -> threading.RLock:
    """The lock that serialises the captures of ``model`` (one per model object)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


def this_thread_only(hook: Callable[..., Any]) -> Callable[..., Any]:
    """``hook`` acting only on the forward passes of the thread that calls this.

    A module's hooks see the forward passes of every thread, and while one
    thread explains a model, another may run it as usual: its passes must be
    neither recorded nor changed."""
    owner = threading.get_ident()

    def guarded(*args: Any, **kwargs: Any) -> Any:
        return hook(*args, **kwargs) if threading.get_ident() == owner else None

    return guarded


class _ReachedFirstBlock(Exception):
    """Cuts a forward pass short once the tokens entering block 0 are recorded."""


class AttentionRecord:
    """What one forward pass under :meth:`ViTAdapter.capture` leaves behind.

    Attributes:
        attentions (list of Tensor or None): per block, the post-softmax attention
            probabilities ``(N, heads, T, T)`` as the forward pass used them (in
            the autograd graph whenever gradients were enabled).
        block_inputs (list of Tensor or None): per block, the tokens ``(N, T, D)``
            entering it (the residual stream), as the forward pass used them.
        grid (tuple of int or None): the patch grid ``(h, w)`` of the input.
        passes (int): how many forward passes entered block 0.
        readout (Tensor or None): for a head that reads the tokens through its own
            attention (see :meth:`ViTAdapter.readout_source`), the per-example
            read-out ``(N, T)`` of the forward pass, detached; else ``None``.
    """

    def __init__(self, num_blocks: int, reads_readout: bool = False) -> None:
        self.attentions: List[Optional[Tensor]] = [None] * num_blocks
        self.block_inputs: List[Optional[Tensor]] = [None] * num_blocks
        self.grid: Optional[Tuple[int, int]] = None
        self.passes = 0
        self.readout: Optional[Tensor] = None
        self._reads_readout = reads_readout

    @property
    def tokens(self) -> Optional[Tensor]:
        """The tokens ``(N, T, D)`` entering block 0."""
        return self.block_inputs[0]

    def complete(self) -> bool:
        """Whether the forward pass ran through the whole captured model."""
        return (
            self.grid is not None
            and all(a is not None for a in self.attentions)
            and all(x is not None for x in self.block_inputs)
            and (self.readout is not None or not self._reads_readout)
        )


class ViTAdapter:
    """The knowledge of one model family: where the blocks are, how to read their
    attention probabilities, the prefix tokens and the canonical parts.

    Subclasses name the modules; :meth:`capture` is shared by all families.
    """

    #: the model classes the family explains, as (library module, class name)
    model_classes: Tuple[Tuple[str, str], ...]
    #: one phrase naming the supported models, for the error messages and the README
    description: str
    #: number of tokens (class, distillation, register tokens) before the patches
    num_prefix_tokens: int

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    # --- what each family provides -------------------------------------------------
    def blocks(self) -> List[nn.Module]:
        """The transformer blocks, in the order the forward pass runs them."""
        raise NotImplementedError

    def patch_embedding(self) -> nn.Module:
        """The module whose output is ``(N, D, h, w)`` on the patch grid."""
        raise NotImplementedError

    def reads_class_token(self) -> bool:
        """Whether the head reads the class token (else :meth:`readout` says what)."""
        return True

    def readout(self, num_tokens: int) -> Tensor:
        """The head's read-out vector ``s`` ``(T,)`` over the tokens leaving the last
        block, from which the rollout-type methods start instead of the class-token
        row: for a class-token head the class token (``s = e_0``); for a mean-pooled
        head the uniform average over exactly the tokens it averages. A head whose
        read-out depends on the image (attention pooling) has none: it names
        :meth:`readout_source` instead."""
        s = torch.zeros(num_tokens)
        s[0] = 1
        return s

    def readout_source(self) -> Optional[Tuple[nn.Module, Callable[[object], Tensor]]]:
        """For a head that reads the tokens through its own attention (attention
        pooling, MAP: a learned latent query attends to the tokens), a module of
        the head and how to read, from its output while :meth:`attention_mode` is
        active, the per-example read-out ``s`` ``(N, T)``: the head's attention
        probabilities over the tokens leaving the last block, averaged over its
        heads (and over the latent queries it pools), zero on tokens it does not
        attend to. ``None`` (default) for heads with a fixed :meth:`readout`."""
        return None

    def embedding_path(self) -> Dict[str, str]:
        """The modules, by name, that the input passes on its way to block 0, and the
        rule of each: ``"linear"`` (the patch embedding's convolution),
        ``"patch_layernorm"`` (a norm inside the patch embedding, on the patch
        tokens alone), ``"layernorm"`` (a norm on the whole sequence before block
        0, after the prefix tokens and the position embedding are added) — both
        take the LayerNorm rule —, ``"identity"`` (dropout) or ``"constant"`` (a
        module whose output does not depend on the input, such as a
        position-embedding lookup). A name whose module is an ``nn.Identity`` is
        allowed (the model does not have that part). A module that runs before
        block 0 and is not named here makes the relevance methods refuse the model
        (see :meth:`capture`)."""
        raise NotImplementedError

    def embedding_norms(self) -> List[Tuple[str, nn.LayerNorm]]:
        """The LayerNorms, by name, of :meth:`embedding_path`, in its order."""
        norms = []
        for name, rule in self.embedding_path().items():
            module = self.model.get_submodule(name)
            if rule not in NORM_RULES or isinstance(module, nn.Identity):
                continue
            if not isinstance(module, nn.LayerNorm):
                raise _inexpressible(self.model, f"a {type(module).__name__} at {name}")
            norms.append((name, module))
        return norms

    def prefix_tokens(self) -> Tensor:
        """``(1, p, D)`` the prefix tokens (class, distillation, registers) before the
        position embedding, in the model's order. Raises a ValueError for models
        whose tokens entering block 0 are not the prefix and patch embeddings plus
        the position embedding (up to the norms of :meth:`embedding_path`)."""
        raise NotImplementedError

    def attention_sources(self) -> List[Tuple[nn.Module, Callable[[object], Tensor]]]:
        """Per block, a module and how to read the attention probabilities from its
        output while :meth:`attention_mode` is active."""
        raise NotImplementedError

    @contextmanager
    def attention_mode(self) -> Iterator[None]:
        """Make the attention probabilities visible for the duration of the block."""
        yield

    def parts(self) -> ViTParts:
        """The model in the canonical form of :class:`ViTParts`."""
        raise NotImplementedError

    def relevance_parts(self) -> ViTParts:
        """:meth:`parts`, for the relevance methods (the LRP family and Transformer
        Attribution). An attention-pooling (MAP) head is an attention layer in
        them (:class:`AttentionPool`) and takes the rules of the blocks'
        attention."""
        return self.parts()

    # --- shared --------------------------------------------------------------------
    def name(self) -> str:
        """The model's name in error messages."""
        return type(self.model).__name__

    @contextmanager
    def capture(self, stop_at_first_block: bool = False) -> Iterator[AttentionRecord]:
        """Record attention probabilities, the tokens entering every block, the
        patch grid and, for a head with a :meth:`readout_source`, the per-example
        read-out of every forward pass of the model run inside the block.

        With ``stop_at_first_block``, the forward pass is cut short once the tokens
        entering block 0 are recorded: the rest of the ``with`` block is skipped and
        nothing else is recorded (for rules that replay the blocks themselves). Then
        every module that ran before block 0 must be one of :meth:`embedding_path`
        (or an ``nn.Identity``): any other raises a ValueError naming it, as no
        relevance rule is known for it.

        Hooks and attention settings are removed and restored on leaving the block,
        also when it is left by an exception. Captures of one model are serialised:
        a lock per model is held from patching to restoring, so concurrent
        attribution calls from several threads wait for each other, and the hooks
        record only the forward passes of the thread that holds the capture.
        """
        blocks = self.blocks()
        readout_source = self.readout_source()
        record = AttentionRecord(len(blocks), reads_readout=readout_source is not None)

        ran: List[str] = []

        def input_hook(index: int) -> Callable:
            def hook(module: nn.Module, args: Tuple, kwargs: dict) -> None:
                if index == 0:
                    record.passes += 1
                record.block_inputs[index] = args[0] if args else next(iter(kwargs.values()))
                if stop_at_first_block:
                    self._check_embedding_path(ran)
                    raise _ReachedFirstBlock

            return this_thread_only(hook)

        def store_grid(module: nn.Module, args: Tuple, output: Tensor) -> None:
            record.grid = (int(output.shape[-2]), int(output.shape[-1]))

        def attention_hook(index: int, read: Callable[[object], Tensor]) -> Callable:
            def hook(module: nn.Module, args: Tuple, output: object) -> None:
                record.attentions[index] = read(output)

            return this_thread_only(hook)

        def readout_hook(read: Callable[[object], Tensor]) -> Callable:
            def hook(module: nn.Module, args: Tuple, output: object) -> None:
                with torch.no_grad():
                    record.readout = read(output).detach()

            return this_thread_only(hook)

        with ExitStack() as stack:
            stack.enter_context(_model_lock(self.model))
            stack.enter_context(self.attention_mode())
            handles = [self.patch_embedding().register_forward_hook(this_thread_only(store_grid))]
            stack.callback(lambda: [h.remove() for h in handles])
            for index, (block, (module, read)) in enumerate(zip(blocks, self.attention_sources())):
                handles.append(block.register_forward_pre_hook(input_hook(index), with_kwargs=True))
                handles.append(module.register_forward_hook(attention_hook(index, read)))
            if readout_source is not None:
                module, read = readout_source
                handles.append(module.register_forward_hook(readout_hook(read)))
            if stop_at_first_block:
                for name, module in self._leaves_outside(blocks):
                    hook = this_thread_only(lambda *_, name=name: ran.append(name))
                    handles.append(module.register_forward_hook(hook))
            try:
                yield record
            except _ReachedFirstBlock:
                pass

    def _leaves_outside(self, blocks: List[nn.Module]) -> List[Tuple[str, nn.Module]]:
        """The model's modules without children, outside the blocks, but for
        ``nn.Identity``."""
        inside = {id(m) for block in blocks for m in block.modules()}
        return [
            (name, module)
            for name, module in self.model.named_modules()
            if id(module) not in inside
            and next(module.children(), None) is None
            and not isinstance(module, nn.Identity)
        ]

    def _check_embedding_path(self, ran: List[str]) -> None:
        """Refuse the model by name if a module without a rule ran before block 0."""
        path = self.embedding_path()
        unknown = [name for name in ran if name not in path]
        if unknown:
            module = self.model.get_submodule(unknown[0])
            raise ValueError(
                f"model: {type(self.model).__name__} runs {unknown[0]} "
                f"({type(module).__name__}) between the input and block 0, a module the "
                "relevance methods have no rule for, so they refuse this model"
            )


class TowerAdapter(ViTAdapter):
    """A model whose ViT is one of its submodules (its image tower, at
    ``tower_path``), described by the tower's own adapter: the tokens, blocks,
    attention probabilities, embedding path and read-out are the tower's; a
    subclass says what differs in what reads the tower's output (read-out, head).

    Args:
        model (nn.Module): the model explained.
        tower_path (str): the tower's name in ``model`` (``get_submodule``).
        tower (ViTAdapter): the adapter of the tower.
    """

    def __init__(self, model: nn.Module, tower_path: str, tower: ViTAdapter) -> None:
        super().__init__(model)
        self.tower_path = tower_path
        self.tower = tower
        self.num_prefix_tokens = tower.num_prefix_tokens

    def name(self) -> str:
        return f"{type(self.model).__name__} over {self.tower.name()}"

    def blocks(self) -> List[nn.Module]:
        return self.tower.blocks()

    def patch_embedding(self) -> nn.Module:
        return self.tower.patch_embedding()

    def reads_class_token(self) -> bool:
        return self.tower.reads_class_token()

    def readout(self, num_tokens: int) -> Tensor:
        return self.tower.readout(num_tokens)

    def readout_source(self) -> Optional[Tuple[nn.Module, Callable[[object], Tensor]]]:
        return self.tower.readout_source()

    def embedding_path(self) -> Dict[str, str]:
        return {
            f"{self.tower_path}.{name}": rule for name, rule in self.tower.embedding_path().items()
        }

    def prefix_tokens(self) -> Tensor:
        return self.tower.prefix_tokens()

    def attention_sources(self) -> List[Tuple[nn.Module, Callable[[object], Tensor]]]:
        return self.tower.attention_sources()

    @contextmanager
    def attention_mode(self) -> Iterator[None]:
        with self.tower.attention_mode():
            yield


def _unsupported(model: nn.Module, reason: str) -> ValueError:
    from captum_saco.attr._core.families import SUPPORTED_MODELS

    return ValueError(
        f"model: {reason}. Supported models: {SUPPORTED_MODELS}; pass the ViT module "
        "itself as model (wrap any preprocessing into forward_func)."
    )


def _inexpressible(model: nn.Module, part: str) -> ValueError:
    return ValueError(
        f"model: {type(model).__name__} has {part}, which the canonical pre-norm ViT "
        "block (LayerNorm or RMSNorm, q/k/v attention with scale head_dim ** -0.5, "
        "optional q/k norms, rotary embedding and attention bias, Linear-act-Linear "
        "or gated MLP, optional sub-norms and layer scale) cannot express"
    )


def _inexpressible_pool(model: nn.Module, part: str) -> ValueError:
    """The relevance methods' refusal of an attention-pooling head they have no
    rule for (the attention-map methods read its attention all the same)."""
    return ValueError(
        f"model: {type(model).__name__} has {part} in its attention-pooling (MAP) head, "
        "which TransformerAttribution, PartialLRP, FullLRP, ConservativeLRP and AttnLRP "
        "have no rule for; RawAttention, AttentionRollout, AttentionGradCAM, "
        "GradientWeightedAttention and AttCAT explain it"
    )


@contextmanager
def _unfused(attentions: List[nn.Module]) -> Iterator[None]:
    """Switch off ``fused_attn`` (``scaled_dot_product_attention``, which never
    materialises the probabilities) on timm attention modules while active; the
    flags are restored on exit, also on exceptions."""
    saved = [attn.fused_attn for attn in attentions]
    try:
        for attn in attentions:
            attn.fused_attn = False
        yield
    finally:
        for attn, fused in zip(attentions, saved):
            attn.fused_attn = fused


def _check_square_attention(model: nn.Module, dim: int, attn_dim: int) -> None:
    if attn_dim != dim:
        raise _inexpressible(model, f"an attention width {attn_dim} != embedding width {dim}")


def _joined(tokens: List[Optional[Tensor]]) -> Tensor:
    """The present prefix tokens ``(1, 1, D)`` as one detached ``(1, p, D)`` tensor."""
    return torch.cat([token.detach() for token in tokens if token is not None], dim=1)


def mean_readout(num_tokens: int, num_prefix_tokens: int) -> Tensor:
    """The read-out vector ``(T,)`` of a head averaging the tokens after the prefix
    tokens: ``1 / (T - p)`` on each of them, 0 on the prefix tokens."""
    s = torch.zeros(num_tokens)
    s[num_prefix_tokens:] = 1 / (num_tokens - num_prefix_tokens)
    return s


def _identity(output: object) -> Tensor:
    return output  # type: ignore[return-value]


def _second(output: object) -> Tensor:
    return output[1]  # type: ignore[index]
