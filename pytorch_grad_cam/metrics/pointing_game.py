"""The pointing game (Zhang et al. 2016) and its energy-based variant (Wang et al.
2020, the Score-CAM paper): does the map point at the object?

No model is needed: each function takes the maps and the objects' regions (boxes or
segmentation masks, see :mod:`pytorch_grad_cam.metrics.localisation`) and returns
one number per image (numpy float32 (B,)).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
import torch.nn.functional as F

from pytorch_grad_cam.metrics.cams import CamsLike
from pytorch_grad_cam.metrics.localisation import RegionsLike, _maps, _numpy, region_masks, relevance_mass

__all__ = ["energy_pointing_game", "pointing_game"]

_TIES = ("all", "any", "first")


def pointing_game(
    cams: CamsLike,
    regions: RegionsLike,
    tolerance: float = 15,
    ties: str = "all",
) -> np.ndarray:
    """1 where the map's maximum lies on the object (within ``tolerance`` pixels), else 0.

    A pixel counts as on the object when the Euclidean distance between its centre and
    the centre of some pixel of the region is at most ``tolerance`` (15 pixels in the
    paper; 0 asks for the region itself). Boxes and masks go through the same test, so
    a mask that is exactly a box scores as the box.

    Args:
        cams: (B, H, W) maps (numpy, torch or a list of (H, W) maps; float, bool or uint8).
        regions: one box, set of boxes or mask per image (see
            :mod:`pytorch_grad_cam.metrics.localisation`).
        tolerance: the distance in pixels, >= 0.
        ties: when several pixels share the maximum: ``"all"`` (the default) needs every
            one of them on the object, so a flat or blank map cannot score by luck;
            ``"any"`` needs one; ``"first"`` looks only at the first in row-major order
            (``numpy.argmax``'s choice).

    Returns:
        numpy float32 (B,) of 0 and 1; the pointing accuracy is its mean.

    Raises:
        ValueError: on a negative ``tolerance``, an unknown ``ties``, or maps or regions
            of the wrong shape (see :func:`~pytorch_grad_cam.metrics.localisation.region_masks`).
    """
    real = isinstance(tolerance, numbers.Real) and not isinstance(tolerance, bool)
    if not (real and math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a distance in pixels >= 0, got {tolerance!r}")
    if ties not in _TIES:
        raise ValueError(f"ties must be one of {_TIES}, got {ties!r}")
    maps = _maps(cams)
    near = _dilate(region_masks(regions, maps.shape, maps.device), tolerance).flatten(1)
    values = maps.flatten(1)
    is_max = values == values.max(dim=1, keepdim=True).values
    if ties == "first":
        first = values.argmax(dim=1, keepdim=True)
        hits = near.gather(1, first)[:, 0]
    elif ties == "any":
        hits = (is_max & near).any(dim=1)
    else:
        hits = (~is_max | near).all(dim=1)
    return _numpy(hits.float())


def energy_pointing_game(cams: CamsLike, regions: RegionsLike) -> np.ndarray:
    """The share of each map's positive energy inside the object's box or mask.

    The Score-CAM paper's energy-based pointing game; the same quantity as
    :func:`~pytorch_grad_cam.metrics.localisation.relevance_mass` (which it calls).

    Returns:
        numpy float32 (B,), each in [0, 1] (0 for a map without positive values).

    Raises:
        ValueError/TypeError: on maps or regions of the wrong shape or kind.
    """
    return relevance_mass(cams, regions)


def _dilate(masks: torch.Tensor, radius: float) -> torch.Tensor:
    """The pixels within Euclidean distance ``radius`` of a True pixel of ``masks``
    (B, H, W), by a convolution with a disk."""
    reach = int(math.floor(radius))
    if reach == 0:
        return masks
    offsets = torch.arange(-reach, reach + 1, device=masks.device, dtype=torch.float32)
    disk = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).float()
    counts = F.conv2d(masks[:, None].float(), disk[None, None], padding=reach)
    return counts[:, 0] > 0.5
