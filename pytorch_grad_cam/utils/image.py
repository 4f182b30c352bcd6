"""Image helpers: overlaying a CAM on a photo, (de)normalising images, and the one
scaling-and-resizing step that every CAM method ends with."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F

ArrayLike = Union[torch.Tensor, np.ndarray]

_RESIZE_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def min_max_scale(cams: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Per map (first dimension): x - min, then divided by (max + eps).

    An all-zero (or constant) map becomes all zeros, never NaN.
    """
    flat = cams.reshape(cams.shape[0], -1)
    flat = flat - flat.min(dim=1, keepdim=True).values
    flat = flat / (flat.max(dim=1, keepdim=True).values + eps)
    return flat.reshape(cams.shape)


def resize_maps(cams: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """Resize (B, *spatial) maps to ``size`` (same number of spatial dimensions) with
    (bi/tri)linear interpolation; half-pixel centres unless ``align_corners``."""
    size = tuple(int(s) for s in size)
    if tuple(cams.shape[1:]) == size:
        return cams
    mode = _RESIZE_MODES[len(size)]
    return F.interpolate(cams.unsqueeze(1), size=size, mode=mode, align_corners=align_corners)[:, 0]


def scale_cam_image(cam: ArrayLike, target_size: Optional[Sequence[int]] = None) -> ArrayLike:
    """Min-max scale each map of a batch to [0, 1] and optionally resize it.

    Args:
        cam: (B, h, w) (or (B, d, h, w)) maps, a numpy array or a torch tensor.
        target_size: the output size in OpenCV order, (width, height) (for volumes
            (width, height, depth)); None keeps the size.

    Returns:
        float32 maps of the same kind as ``cam``, each in [0, 1]; a constant map
        becomes all zeros.

    Raises:
        ValueError: if ``target_size`` does not have one entry per spatial dimension.
    """
    is_numpy = isinstance(cam, np.ndarray)
    maps = torch.from_numpy(np.asarray(cam, dtype=np.float32)) if is_numpy else cam.float()
    maps = min_max_scale(torch.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0))
    if target_size is not None:
        size = tuple(reversed(tuple(target_size)))
        if len(size) != maps.ndim - 1:
            raise ValueError(
                f"target_size {tuple(target_size)} has {len(size)} entries but the maps "
                f"have {maps.ndim - 1} spatial dimensions; pass (width, height)"
            )
        # Rounding in the interpolation can overshoot 1 by an ulp; the promise is [0, 1].
        maps = resize_maps(maps, size).clamp(0, 1)
    return maps.numpy() if is_numpy else maps


def show_cam_on_image(
    img: np.ndarray,
    mask: np.ndarray,
    use_rgb: bool = False,
    colormap: int = cv2.COLORMAP_JET,
    image_weight: float = 0.5,
) -> np.ndarray:
    """Overlay a CAM heatmap on an image.

    Args:
        img: (H, W, 3) float image with values in [0, 1] (RGB if ``use_rgb``, else BGR).
        mask: (H, W) map in [0, 1], for example ``grayscale_cam[0]``.
        use_rgb: return RGB (True) or OpenCV's BGR (False).
        colormap: an OpenCV colormap.
        image_weight: the image's share of the blend, in [0, 1].

    Returns:
        (H, W, 3) uint8 blend: (1 - image_weight) * heatmap + image_weight * img,
        divided by its maximum.

    Raises:
        ValueError: on an image outside [0, 1] or not (H, W, 3), a mask that is not
            2D, not of the image's size or outside [0, 1], or ``image_weight``
            outside [0, 1].
    """
    img = np.asarray(img)
    mask = np.asarray(mask)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"img must be (H, W, 3), got shape {img.shape}")
    if not np.issubdtype(img.dtype, np.floating) or img.size and not (
        np.isfinite(img).all() and img.min() >= 0 and img.max() <= 1
    ):
        raise ValueError(
            f"img must be a float image with values in [0, 1] (got dtype {img.dtype}, "
            f"range [{img.min()}, {img.max()}]); pass np.float32(img) / 255 for a uint8 photo"
        )
    if mask.ndim != 2:
        raise ValueError(
            f"mask must be one 2D map, got shape {mask.shape}; pass grayscale_cam[0] "
            "for the first image of a batch"
        )
    if mask.shape != img.shape[:2]:
        raise ValueError(
            f"mask of shape {mask.shape} does not match the image's {img.shape[:2]}; "
            "compute the CAM on an input of the image's size or resize the mask"
        )
    if mask.size and not (np.isfinite(mask).all() and mask.min() >= 0 and mask.max() <= 1 + 1e-6):
        raise ValueError(
            f"mask values must lie in [0, 1], got [{mask.min()}, {mask.max()}]; "
            "pass a CAM output or scale_cam_image(mask)"
        )
    if not 0 <= image_weight <= 1:
        raise ValueError(f"image_weight must be in [0, 1], got {image_weight}")
    heatmap = cv2.applyColorMap(np.uint8(np.clip(255 * mask, 0, 255)), colormap)
    if use_rgb:
        heatmap = cv2.cvtColor(heatmap, cv2.COLOR_BGR2RGB)
    heatmap = np.float32(heatmap) / 255
    blend = (1 - image_weight) * heatmap + image_weight * img
    peak = np.max(blend)
    if peak > 0:  # a black image under a colormap that starts at black stays black, not NaN
        blend = blend / peak
    return np.uint8(255 * blend)


def preprocess_image(
    img: np.ndarray,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
) -> torch.Tensor:
    """(H, W, C) float image -> (1, C, H, W) float32 tensor, normalised per channel.

    Args:
        img: float image, typically in [0, 1].
        mean, std: per-channel statistics; default 0.5 for every channel.

    Returns:
        The normalised (1, C, H, W) tensor on the CPU.

    Raises:
        ValueError: if ``img`` is not (H, W, C), or ``mean``/``std`` do not have C entries.
    """
    img = np.asarray(img)
    if img.ndim != 3:
        raise ValueError(f"img must be (H, W, C), got shape {img.shape}")
    channels = img.shape[2]
    mean = torch.tensor([0.5] * channels if mean is None else list(mean), dtype=torch.float32)
    std = torch.tensor([0.5] * channels if std is None else list(std), dtype=torch.float32)
    if mean.numel() != channels or std.numel() != channels:
        raise ValueError(
            f"mean and std need {channels} entries (one per channel), got "
            f"{mean.numel()} and {std.numel()}"
        )
    tensor = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)
    tensor = (tensor - mean[:, None, None]) / std[:, None, None]
    return tensor.unsqueeze(0).contiguous()


def deprocess_image(img: np.ndarray) -> np.ndarray:
    """Make a gradient image viewable: standardise, scale by 0.1, shift to 0.5, clip.

    Returns:
        uint8 image of the same shape: (img - mean) / (std + 1e-5) * 0.1 + 0.5,
        clipped to [0, 1], times 255.
    """
    img = np.asarray(img, dtype=np.float32)
    img = img - np.mean(img)
    img = img / (np.std(img) + 1e-5)
    img = img * 0.1 + 0.5
    img = np.clip(img, 0, 1)
    return np.uint8(img * 255)


def scale_accross_batch_and_channels(tensor: ArrayLike, target_size: Optional[Sequence[int]]) -> ArrayLike:
    """Min-max scale and resize every (image, channel) map on its own (FullGrad's step).

    (B, C, *spatial) is treated as B·C maps for :func:`scale_cam_image`. The name's
    spelling is the reference library's.

    Args:
        tensor: (B, C, h, w) (or (B, C, d, h, w)) numpy array or torch tensor.
        target_size: (width, height) (OpenCV order), or None to keep the size.

    Returns:
        float32 (B, C, height, width) of the input's kind, each map in [0, 1].
    """
    batch, channels, *spatial = tensor.shape
    maps = scale_cam_image(tensor.reshape(batch * channels, *spatial), target_size)
    return maps.reshape(batch, channels, *maps.shape[1:])
