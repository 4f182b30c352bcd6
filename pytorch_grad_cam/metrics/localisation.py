"""Localisation metrics: how much of a map lies on the annotated object.

No model is needed: each function takes the maps and the objects' regions, given as
boxes or as segmentation masks, and returns one number per image (numpy float32 (B,)).

- :func:`relevance_mass`: the share of the map's positive mass inside the region
  (Arras et al. 2022, "relevance mass accuracy"; the Score-CAM paper's energy-based
  pointing game is the same quantity for a box).
- :func:`relevance_rank_accuracy`: the share of the map's K highest pixels that lie
  inside the region, K being the region's area (Arras et al. 2022).

Regions (``regions`` below), one per image:

- a box ``(x0, y0, x1, y1)`` in pixels, covering columns ``x0 <= x < x1`` and rows
  ``y0 <= y < y1`` (half-open, as in slicing: ``x1 = x0 + width``), clipped to the
  image; or a (K, 4) array of K boxes of the same object class (their union);
- or a segmentation mask (H, W), bool or 0/1 (any non-zero value is inside).

They come as a (B, 4) array/tensor of boxes, a (B, H, W) array/tensor of masks, or a
list of B items each of which is a box, a (K, 4) array of boxes or an (H, W) mask.
An item whose shape is the maps' (H, W) is read as a mask.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from pytorch_grad_cam.metrics.cams import CamsLike, as_cam_batch

ArrayLike = Union[np.ndarray, torch.Tensor]
RegionsLike = Union[ArrayLike, Sequence[Union[ArrayLike, Sequence[float]]]]

__all__ = ["region_masks", "relevance_mass", "relevance_rank_accuracy"]


def relevance_mass(cams: CamsLike, regions: RegionsLike) -> np.ndarray:
    """The share of each map's positive mass that lies inside the image's region.

    ``sum(relu(cam) inside) / sum(relu(cam))``; negative values are ignored, as in the
    paper. A map without positive mass scores 0.

    Args:
        cams: (B, H, W) maps (numpy, torch or a list of (H, W) maps; float, bool or uint8).
        regions: one box, set of boxes or mask per image (see the module docstring).

    Returns:
        numpy float32 (B,), each in [0, 1].

    Raises:
        ValueError/TypeError: on maps or regions of the wrong shape or kind, or a region
            that holds no pixel of the image.
    """
    maps = _maps(cams)
    inside = region_masks(regions, maps.shape, maps.device)
    positive = maps.clamp(min=0).flatten(1)
    total = positive.sum(dim=1)
    within = (positive * inside.flatten(1)).sum(dim=1)
    share = torch.where(total > 0, within / total.clamp(min=torch.finfo(total.dtype).tiny), 0.0)
    return _numpy(share)


def relevance_rank_accuracy(cams: CamsLike, regions: RegionsLike) -> np.ndarray:
    """The share of each map's K highest pixels inside the region, K = the region's area.

    Ties at the K-th value are counted by their expected share: if the top K must take
    ``m`` of the ``n`` pixels tied at the K-th value, of which ``n_in`` lie inside,
    they add ``m * n_in / n`` (the mean over every way of breaking the tie). A constant
    map therefore scores the chance level K / (H·W), never a lucky 1.

    Args:
        cams: (B, H, W) maps (numpy, torch or a list of (H, W) maps; float, bool or uint8).
        regions: one box, set of boxes or mask per image (see the module docstring).

    Returns:
        numpy float32 (B,), each in [0, 1].

    Raises:
        ValueError/TypeError: on maps or regions of the wrong shape or kind, or a region
            that holds no pixel of the image.
    """
    maps = _maps(cams)
    inside = region_masks(regions, maps.shape, maps.device).flatten(1)
    values = maps.flatten(1)
    areas = inside.sum(dim=1)
    ranked = values.sort(dim=1, descending=True).values
    kth = ranked.gather(1, (areas - 1)[:, None])  # the K-th highest value
    above = values > kth
    tied = values == kth
    taken_from_ties = areas - above.sum(dim=1)
    hits_above = (above & inside).sum(dim=1).float()
    hits_tied = (tied & inside).sum(dim=1).float() * taken_from_ties / tied.sum(dim=1)
    return _numpy((hits_above + hits_tied) / areas)


def region_masks(regions: RegionsLike, shape: Tuple[int, ...], device: Optional[torch.device] = None) -> torch.Tensor:
    """The regions as a bool tensor (B, H, W) on ``device``.

    Args:
        regions: one box, set of boxes or mask per image (see the module docstring).
        shape: (B, H, W), the maps' shape.
        device: where the masks are made (default: the CPU).

    Returns:
        A bool tensor (B, H, W), True inside each image's region.

    Raises:
        TypeError: if ``regions`` is not an array, a tensor or a list of them.
        ValueError: if there is not one region per image, a mask's shape is not (H, W),
            a box is not (x0, y0, x1, y1), or a region holds no pixel of the image.
    """
    batch, height, width = shape
    device = torch.device("cpu") if device is None else device
    if isinstance(regions, (np.ndarray, torch.Tensor)):
        tensor = torch.as_tensor(regions).detach()
        if tensor.ndim == 3:
            items = list(tensor)
        elif tensor.ndim == 2 and tensor.shape[-1] == 4:
            items = list(tensor)
        else:
            raise ValueError(f"regions must be (B, 4) boxes or (B, H, W) masks, got shape {tuple(tensor.shape)}")
    elif isinstance(regions, (list, tuple)):
        items = list(regions)
    else:
        raise TypeError(
            "regions must be a (B, 4) array of boxes, a (B, H, W) array of masks or a list "
            f"of them, not {type(regions).__name__}"
        )
    if len(items) != batch:
        raise ValueError(f"{len(items)} regions for {batch} maps; pass one region per image")
    masks = torch.zeros(batch, height, width, dtype=torch.bool, device=device)
    rows = torch.arange(height, device=device)[:, None]
    cols = torch.arange(width, device=device)[None, :]
    for index, item in enumerate(items):
        region = torch.as_tensor(np.asarray(item) if not torch.is_tensor(item) else item).detach()
        if tuple(region.shape) == (height, width):
            masks[index] = region.to(device) != 0
        elif region.ndim in (1, 2) and region.shape[-1] == 4:
            for x0, y0, x1, y1 in region.reshape(-1, 4).tolist():
                if not (x0 <= x1 and y0 <= y1):
                    raise ValueError(
                        f"box {(x0, y0, x1, y1)} of image {index} is not (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1"
                    )
                masks[index] |= (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
        else:
            raise ValueError(
                f"region {index} has shape {tuple(region.shape)}; pass a box (x0, y0, x1, y1), "
                f"a (K, 4) array of boxes or an ({height}, {width}) mask"
            )
    empty = torch.nonzero(~masks.flatten(1).any(dim=1)).flatten().tolist()
    if empty:
        raise ValueError(f"the region of image(s) {empty} holds no pixel of the {height}x{width} image")
    return masks


# ---------------------------------------------------------------- shared helpers
def _maps(cams: CamsLike, device: Optional[torch.device] = None) -> torch.Tensor:
    """``cams`` as float32 (B, H, W) through :func:`as_cam_batch`, on ``device`` (by
    default: a torch tensor's own device, else the CPU)."""
    if device is None:
        device = cams.device if torch.is_tensor(cams) else torch.device("cpu")
    if isinstance(cams, (list, tuple)):
        shape = (len(cams), *np.shape(cams[0])[-2:]) if len(cams) else (0, 0, 0)
    elif isinstance(cams, np.ndarray) or torch.is_tensor(cams):
        shape = tuple(cams.shape) if cams.ndim != 2 else (1, *cams.shape)
    else:
        raise TypeError(
            f"cams must be a numpy array, a torch tensor or a list of (H, W) maps, not {type(cams).__name__}"
        )
    if len(shape) != 3:
        raise ValueError(f"cams must be (B, H, W), got shape {tuple(shape)}")
    # as_cam_batch reads only the reference's batch size, (H, W) and device.
    reference = torch.empty(1, 1, 1, 1, device=device).expand(shape[0], 1, *shape[1:])
    return as_cam_batch(cams, reference)


def _numpy(values: torch.Tensor) -> np.ndarray:
    return values.detach().float().cpu().numpy().astype(np.float32, copy=False)
