"""Attention rollout (Abnar & Zuidema, 2020, "Quantifying Attention Flow in Transformers").

Per block l, the heads' attention A^l (B, heads, N, N) fused over the heads (mean, or
max / min), optionally with the smallest ``discard_ratio`` of its entries set to zero
(the class token's attention to itself is kept); the residual connection added and the
rows renormalised, Â^l = (A^l + I) / rowsum(A^l + I); rolled out over the blocks,

    R = Â^L ⋯ Â^1,     map = minmax(R[class token, patch tokens]) on the patch grid

(a model without prefix tokens, mean-pooled: the mean of R's rows). Class-agnostic: no
gradient, no target.
"""

from __future__ import annotations

import torch
from torch import nn

from pytorch_grad_cam.attention_cam import AttentionCAM, patch_grid, query_row, rollout
from pytorch_grad_cam.attention_maps import AttentionRecord
from pytorch_grad_cam.recording import Record

_FUSIONS = {
    "mean": lambda maps: maps.mean(dim=1),
    "max": lambda maps: maps.amax(dim=1),
    "min": lambda maps: maps.amin(dim=1),
}


def discard_lowest(fused: torch.Tensor, ratio: float) -> torch.Tensor:
    """``fused`` (B, N, N) with the ``ratio`` smallest entries of each image set to zero,
    the class token's entry for itself (index 0) kept."""
    if ratio <= 0:
        return fused
    flat = fused.flatten(1)
    lowest = flat.topk(int(flat.shape[1] * ratio), dim=1, largest=False).indices
    dropped = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, lowest, True)
    dropped[:, 0] = False
    return flat.masked_fill(dropped, 0).reshape(fused.shape)


class AttentionRollout(AttentionCAM):
    """Attention rollout over the target blocks (None: every block, as the paper).

    Args:
        model, target_layers, reshape_transform: as :class:`AttentionCAM`.
        head_fusion: "mean" (the paper), "max" or "min" over the heads.
        discard_ratio: the fraction (in [0, 1)) of each fused map's smallest entries set to zero.
        **kwargs: as :class:`BaseCAM`.

    Raises:
        ValueError: as :class:`AttentionCAM`; for another ``head_fusion`` or a
            ``discard_ratio`` outside [0, 1).
    """

    uses_gradients = False
    needs_targets = False

    def __init__(
        self,
        model: nn.Module,
        target_layers=None,
        reshape_transform=None,
        head_fusion: str = "mean",
        discard_ratio: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, **kwargs)
        if head_fusion not in _FUSIONS:
            raise ValueError(f"head_fusion={head_fusion!r}; choose one of {', '.join(_FUSIONS)}")
        if not 0 <= discard_ratio < 1:
            raise ValueError(f"discard_ratio={discard_ratio!r}; pass a fraction in [0, 1), e.g. 0.9")
        self.head_fusion = head_fusion
        self.discard_ratio = discard_ratio

    def relevance(self, record: Record, attention: AttentionRecord) -> torch.Tensor:
        """The class token's row of the rollout: (B, N)."""
        fuse = _FUSIONS[self.head_fusion]
        fused = [discard_lowest(fuse(maps.detach()), self.discard_ratio) for maps in attention.maps]
        prefix = patch_grid(attention, fused[0].shape[-1], type(self).__name__)[0]
        return query_row(rollout(fused), prefix)
