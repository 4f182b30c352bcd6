"""AttentionCAM: the template of the transformer-native methods (LeGrad, attention
rollout, gradient-weighted rollout), whose maps come from the blocks' attention maps
rather than from a layer's activations.

The target layers are transformer blocks (default: every block of the model). During
the record step every block's attention module takes its explicit path and hands its
post-softmax attention (B, heads, N, N) over (:mod:`pytorch_grad_cam.attention_maps`);
a method turns these maps (and, for the gradient methods, the gradients it takes in
:meth:`BaseCAM.backward`) into a relevance per token (:meth:`AttentionCAM.relevance`);
the patch tokens' relevance, laid out on the patch grid, min-max scaled and resized to
the input, is the map. Prefix tokens (class, distillation and register tokens) are the
first N − h·w tokens, h×w being the patch embedding's output grid.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List, Optional

import torch
from torch import nn

from pytorch_grad_cam.attention_maps import (
    CNN_HINT,
    AttentionRecord,
    attention_maps,
    attention_of_block,
    is_attention,
    transformer_blocks,
)
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.model_state import compute_dtype
from pytorch_grad_cam.recording import Record
from pytorch_grad_cam.utils.image import min_max_scale, resize_maps

__all__ = ["AttentionCAM", "patch_grid", "rollout", "query_row"]


def patch_grid(record: AttentionRecord, tokens: int, method: str) -> tuple:
    """(prefix, h, w): the number of prefix tokens N − h·w and the patch grid.

    Raises:
        ValueError: if no patch embedding ran, or its grid does not fit the N tokens.
    """
    if record.grid is None:
        raise ValueError(
            f"{method}: no patch embedding (a Conv2d whose stride equals its kernel) ran in the forward "
            "pass, so the token grid is unknown; this method supports ViTs that embed patches with a convolution"
        )
    height, width = record.grid
    prefix = tokens - height * width
    if prefix < 0:
        raise ValueError(
            f"{method}: the attention has {tokens} tokens, fewer than the {height}x{width} patches of the patch "
            "embedding; pass the transformer blocks that attend over the patch tokens"
        )
    return prefix, height, width


class AttentionCAM(BaseCAM):
    """A method computed from the blocks' attention maps; subclasses state
    :meth:`relevance` (and, for gradients, :meth:`BaseCAM.backward`).

    Args:
        model: a vision transformer (timm, torchvision, open_clip image tower,
            HuggingFace); left as found, its fused attention included.
        target_layers: transformer blocks (modules or names), each holding one attention
            module; None: every block. ``reshape_transform`` is accepted, so that every
            registered method takes the same arguments, and not used: tokens are laid out
            on the patch embedding's grid. ``eigen_smooth`` is likewise accepted and not used.
        **kwargs: as :class:`BaseCAM`.

    Raises:
        ValueError: for a model without attention (a CNN: use a layer method such as
            GradCAM), or a target layer that is not a block holding one attention module.
    """

    #: The method reads attention maps: only transformers can be explained with it.
    needs_attention: bool = True

    def __init__(self, model: nn.Module, target_layers=None, reshape_transform=None, **kwargs) -> None:
        super().__init__(model, target_layers, None, **kwargs)
        name = type(self).__name__
        if not self.target_layers:
            self.target_layers = transformer_blocks(self.model, name)
        elif not any(is_attention(module) for module in self.model.modules()):
            raise ValueError(f"{name}: {type(self.model).__name__} has no attention module; {CNN_HINT}")
        else:
            for block in self.target_layers:
                attention_of_block(self.model, block)
        self._attention: Optional[AttentionRecord] = None

    def relevance(self, record: Record, attention: AttentionRecord) -> torch.Tensor:
        """Each token's relevance (B, N) as a key, from the call's attention maps.

        Raises:
            NotImplementedError: in AttentionCAM itself.
        """
        raise NotImplementedError(f"{type(self).__name__} must define relevance")

    def forward_context(self):
        """The record step runs with every block's attention read (explicit path, hooks)."""
        return self._reading_attention()

    @contextmanager
    def _reading_attention(self) -> Iterator[None]:
        with attention_maps(self.model, self.target_layers) as attention:
            self._attention = attention
            try:
                yield
            except BaseException:
                self._attention = None  # a failed call keeps none of its tensors on the object
                raise

    def attention_record(self) -> AttentionRecord:
        """This call's attention maps (in :meth:`BaseCAM.backward` and after the record step).

        Raises:
            RuntimeError: outside a call.
        """
        if self._attention is None:
            raise RuntimeError(f"{type(self).__name__}: attention maps are read only during a call")
        return self._attention

    def compute_cam_per_layer(self, record: Record, eigen_smooth: bool) -> List[torch.Tensor]:
        """The one map: the patch tokens' relevance on the patch grid, min-max, resized."""
        attention, self._attention = self.attention_record(), None
        missing = [index for index, value in enumerate(attention.maps) if value is None]
        if missing:
            raise ValueError(f"{type(self).__name__}: target blocks {missing} did not run in the forward pass")
        scores = self.relevance(record, attention)
        prefix, height, width = patch_grid(attention, scores.shape[1], type(self).__name__)
        patches = torch.relu(scores[:, prefix:].reshape(scores.shape[0], height, width))
        patches = patches.to(compute_dtype(patches)).flatten(1)
        # Scaled to [0, 1] exactly before the library's min-max (whose absolute eps would
        # flatten a relevance whose range is tiny: gradients with respect to attention).
        patches = patches - patches.amin(dim=1, keepdim=True)
        patches = patches / patches.amax(dim=1, keepdim=True).clamp_min(torch.finfo(patches.dtype).tiny)
        cam = min_max_scale(patches.reshape(-1, height, width))
        return [resize_maps(cam, record.input_tensor.shape[2:])]

    def release(self) -> None:
        """Drop what the last call kept."""
        super().release()
        self._attention = None


def rollout(fused: List[torch.Tensor]) -> torch.Tensor:
    """Abnar & Zuidema's rollout of per-block token mixing matrices (B, N, N):
    R = Â_L ⋯ Â_1 with Â = (A + I) / rowsum(A + I)."""
    eye = torch.eye(fused[0].shape[-1], dtype=fused[0].dtype, device=fused[0].device)
    result = eye.expand_as(fused[0])
    for mixing in fused:
        mixing = mixing + eye
        result = (mixing / mixing.sum(dim=-1, keepdim=True)) @ result
    return result


def query_row(result: torch.Tensor, prefix: int) -> torch.Tensor:
    """The class token's row (B, N) of a rollout, or (no prefix token: a mean-pooled
    model) the mean over the rows."""
    return result[:, 0] if prefix > 0 else result.mean(dim=1)
