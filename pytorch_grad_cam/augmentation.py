"""Test-time augmentation (``aug_smooth``): the maps of augmented copies of each image,
de-augmented back to the image's geometry and averaged."""

from __future__ import annotations

from typing import Callable, List, Optional

import torch

from pytorch_grad_cam.scoring import Target

__all__ = ["default_transforms", "augmented_maps"]


def default_transforms(ndim: int = 4) -> object:
    """ttach's flip x [0.9, 1, 1.1]: six augmentations, each flips first, then multiplies;
    for (B, C, L) signals (``ndim`` 3) the flip reverses time."""
    import ttach as tta

    flip = _time_flip() if ndim == 3 else tta.HorizontalFlip()
    return tta.Compose([flip, tta.Multiply(factors=[0.9, 1, 1.1])])


def _time_flip() -> object:
    """A ttach transform that reverses a (B, C, L) signal (and its (B, 1, L) map) in time."""
    from ttach.base import DualTransform

    class TimeFlip(DualTransform):
        identity_param = False

        def __init__(self) -> None:
            super().__init__("apply", [False, True])

        def apply_aug_image(self, image: torch.Tensor, apply: bool = False, **kwargs: object) -> torch.Tensor:
            return image.flip(-1) if apply else image

        def apply_deaug_mask(self, mask: torch.Tensor, apply: bool = False, **kwargs: object) -> torch.Tensor:
            return mask.flip(-1) if apply else mask

    return TimeFlip()


def augmented_maps(
    explain: Callable[..., torch.Tensor],
    input_tensor: torch.Tensor,
    targets: Optional[List[Target]],
    eigen_smooth: bool,
    transforms: object,
) -> torch.Tensor:
    """The mean of the de-augmented maps of every augmented copy of ``input_tensor``.

    All copies go through ``explain(batch, targets, eigen_smooth, copies=n)`` in one
    batched pass (default targets then come from the copies' mean output).

    Args:
        transforms: True for :func:`default_transforms`, or a ``ttach.Compose`` of one's own.
            For a (B, C, L) signal the default's flip reverses time.

    Returns:
        Maps (B, *spatial), the plain mean of the copies' maps (not scaled again).
    """
    if transforms is True:
        transforms = default_transforms(input_tensor.ndim)
    transformers = list(transforms)
    batch = input_tensor.shape[0]
    augmented = torch.cat([t.augment_image(input_tensor) for t in transformers])
    cams = explain(augmented, targets, eigen_smooth, copies=len(transformers))
    restored = [t.deaugment_mask(chunk.unsqueeze(1)).squeeze(1) for t, chunk in zip(transformers, cams.split(batch))]
    return torch.stack(restored).mean(dim=0)
