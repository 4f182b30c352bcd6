"""Attention maps of a vision transformer's blocks, read during one forward pass without
changing the model for good (LeGrad, attention rollout and its gradient-weighted form).

Fused attention (timm's ``fused_attn``, HuggingFace's ``attn_implementation="sdpa"``,
``nn.MultiheadAttention(need_weights=False)`` in torchvision and open_clip) never forms
the attention matrix, so for the length of one pass each attention module takes its
explicit path: timm's flag is cleared, HuggingFace's config says "eager", and a
MultiheadAttention runs an explicit forward of its own formula. Hooks hand each block's
post-softmax attention (B, heads, N, N), the very tensor multiplied into the values (so
gradients with respect to it are exact), to the caller. Flags, configs, forwards and
hooks are put back on exit, also when the pass raises (docs/decisions.md: the model is
left as found).
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from pytorch_grad_cam.layers import layer_name
from pytorch_grad_cam.token_grid import is_patchify
from pytorch_grad_cam.utils.hooks import Hooks

__all__ = [
    "AttentionRecord",
    "is_attention",
    "attention_of_block",
    "transformer_blocks",
    "attention_maps",
    "patch_embedding",
]

CNN_HINT = (
    "it explains vision transformers through their attention maps; for a CNN use a layer method "
    "such as 'gradcam' (GradCAM) or 'hirescam'"
)


@dataclass
class AttentionRecord:
    """What one pass read: per block its attention (B, heads, N, N) (in the graph when
    autograd is on), the patch grid (h, w) of the patch embedding, and what a method adds
    (``gradients``: per block the score's gradient with respect to the attention)."""

    maps: List[Optional[torch.Tensor]]
    grid: Optional[Tuple[int, int]] = None
    gradients: List[torch.Tensor] = field(default_factory=list)


def _is_hf_attention(module: nn.Module) -> bool:
    config = getattr(module, "config", None)
    return type(module).__name__.endswith("Attention") and hasattr(config, "_attn_implementation")


def _is_timm_attention(module: nn.Module) -> bool:
    return hasattr(module, "fused_attn") and isinstance(getattr(module, "attn_drop", None), nn.Module)


def is_attention(module: nn.Module) -> bool:
    """True for an attention module whose map this file reads: ``nn.MultiheadAttention``
    (torchvision, open_clip), timm's attention (a ``fused_attn`` flag and an ``attn_drop``
    applied to the probabilities) or a HuggingFace ``*Attention`` with a config."""
    return isinstance(module, nn.MultiheadAttention) or _is_timm_attention(module) or _is_hf_attention(module)


def _innermost_attentions(module: nn.Module) -> List[nn.Module]:
    """The attention modules inside ``module`` (itself included) that hold no other one
    (HuggingFace's older ``XAttention`` wraps the ``XSelfAttention`` that forms the map)."""
    found = [m for m in module.modules() if is_attention(m)]
    return [m for m in found if not any(other is not m and is_attention(other) for other in m.modules())]


def attention_of_block(model: nn.Module, block: nn.Module) -> nn.Module:
    """The one attention module inside ``block``.

    Raises:
        ValueError: naming the block, if it holds no attention module or several.
    """
    found = _innermost_attentions(block)
    if len(found) != 1:
        held = "no attention module" if not found else f"{len(found)} attention modules"
        raise ValueError(
            f"target layer {layer_name(model, block)} ({type(block).__name__}) holds {held}; pass "
            "transformer blocks, each holding one attention module (timm: model.blocks, torchvision: "
            "model.encoder.layers, open_clip: visual.transformer.resblocks, HuggingFace: vit.layers), "
            "or target_layers=None to use every block"
        )
    return found[0]


def transformer_blocks(model: nn.Module, method: str) -> List[nn.Module]:
    """The model's transformer blocks in order: for each attention module, its largest
    ancestor holding no other attention module; of those, the largest group that shares
    one parent (``model.blocks``), which leaves out an attention-pooling head.

    Raises:
        ValueError: naming ``method`` and the fix, if the model has no attention module.
    """
    attentions = _innermost_attentions(model)
    if not attentions:
        raise ValueError(f"{method}: {type(model).__name__} has no attention module; {CNN_HINT}")
    parents = {id(child): parent for parent in model.modules() for child in parent.children()}
    groups = {}
    for attention in attentions:
        block = attention
        while id(block) in parents and len(_innermost_attentions(parents[id(block)])) == 1:
            block = parents[id(block)]
        groups.setdefault(id(parents.get(id(block))), []).append(block)
    return max(groups.values(), key=len)


def patch_embedding(model: nn.Module) -> Optional[nn.Module]:
    """The patch embedding: the first patchify convolution (:func:`~pytorch_grad_cam.token_grid.is_patchify`)."""
    return next((module for module in model.modules() if is_patchify(module)), None)


@contextmanager
def _attribute(owner: object, name: str, value: object) -> Iterator[None]:
    """``owner.name = value`` for the body; after it, the value found, or (a name the
    instance did not hold: a method, a class attribute) the instance attribute removed."""
    had = name in vars(owner) or isinstance(getattr(type(owner), name, None), property)
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if had:
            setattr(owner, name, saved)
        else:
            delattr(owner, name)


def _masked(scores: torch.Tensor, attn_mask, key_padding_mask, is_causal: bool) -> torch.Tensor:
    """``scores`` (B, H, N, S) with MultiheadAttention's masks applied (True / -inf: masked)."""
    batch, heads, length, source = scores.shape
    if attn_mask is None and is_causal:
        attn_mask = torch.ones(length, source, dtype=torch.bool, device=scores.device).triu(1)
    for mask in (attn_mask, None if key_padding_mask is None else key_padding_mask[:, None, None, :]):
        if mask is None:
            continue
        if mask.ndim == 3:
            mask = mask.reshape(batch, heads, length, source)
        scores = scores.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return scores


def _explicit_mha(mha: nn.MultiheadAttention, sink: Callable[[torch.Tensor], None]) -> Callable:
    """A forward for ``mha`` computing softmax(q·kᵀ/√d)·v explicitly (its formula), with the
    probabilities handed to ``sink``; same arguments and outputs as ``mha.forward``."""

    def forward(
        query,
        key,
        value,
        key_padding_mask=None,
        need_weights=True,
        attn_mask=None,
        average_attn_weights=True,
        is_causal=False,
    ):
        if mha.in_proj_weight is None or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError(
                "nn.MultiheadAttention with separate key/value sizes, add_bias_kv or add_zero_attn is not "
                "supported for reading attention maps; use a model whose attention uses one in_proj_weight"
            )
        if not mha.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        batch, length, dim = query.shape
        heads = mha.num_heads
        biases = (None,) * 3 if mha.in_proj_bias is None else mha.in_proj_bias.chunk(3)
        q, k, v = (
            F.linear(x, w, b).reshape(batch, -1, heads, dim // heads).transpose(1, 2)
            for x, w, b in zip((query, key, value), mha.in_proj_weight.chunk(3), biases)
        )
        scores = _masked((q * (dim // heads) ** -0.5) @ k.transpose(-2, -1), attn_mask, key_padding_mask, is_causal)
        attention = scores.softmax(dim=-1)
        sink(attention)
        out = (F.dropout(attention, mha.dropout, mha.training) @ v).transpose(1, 2).reshape(batch, length, dim)
        out = F.linear(out, mha.out_proj.weight, mha.out_proj.bias)
        if not mha.batch_first:
            out = out.transpose(0, 1)
        weights = (attention.mean(dim=1) if average_attn_weights else attention) if need_weights else None
        return out, weights

    return forward


def _explicit(stack: ExitStack, hooks: Hooks, attention: nn.Module, sink: Callable[[torch.Tensor], None]) -> None:
    """Switch ``attention`` to its explicit path for the stack's life and send its map to ``sink``."""
    if isinstance(attention, nn.MultiheadAttention):
        stack.enter_context(_attribute(attention, "forward", _explicit_mha(attention, sink)))
    elif _is_timm_attention(attention):
        stack.enter_context(_attribute(attention, "fused_attn", False))
        # The explicit path applies attn_drop to the probabilities and multiplies its output into v.
        hooks.forward(attention.attn_drop, lambda module, inputs, output: sink(output))
    else:
        stack.enter_context(_attribute(attention.config, "_attn_implementation", "eager"))
        # HuggingFace's eager attention returns (output, probabilities), the latter multiplied into v.
        hooks.forward(attention, lambda module, inputs, output: sink(output[1]))


@contextmanager
def attention_maps(model: nn.Module, blocks: Sequence[nn.Module]) -> Iterator[AttentionRecord]:
    """Within the body, every forward pass of ``model`` fills the yielded record: each
    block's attention map (its last call) and the patch grid. Everything switched or
    hooked here is put back on exit, also when the body raises.

    Raises:
        ValueError: if a block holds no attention module or several; if a hook cannot
            be registered (a TorchScript module).
    """
    attentions = [attention_of_block(model, block) for block in blocks]
    record = AttentionRecord(maps=[None] * len(attentions))

    def sink_for(index: int) -> Callable[[torch.Tensor], None]:
        def sink(attention: torch.Tensor) -> None:
            record.maps[index] = attention

        return sink

    def read_grid(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        record.grid = (int(output.shape[-2]), int(output.shape[-1]))

    with ExitStack() as stack:
        hooks = stack.enter_context(Hooks())
        embedding = patch_embedding(model)
        if embedding is not None:
            hooks.forward(embedding, read_grid)
        for index, attention in enumerate(attentions):
            _explicit(stack, hooks, attention, sink_for(index))
        yield record
