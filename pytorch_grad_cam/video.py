"""Video CAMs for clips longer than the model's own: :func:`explain_video` runs a CAM
window by window over time and stitches the maps, so memory holds one window's pass
whatever the clip's length; :func:`window_starts` says where the windows fall.

A video model (r3d_18, a small Conv3d network) takes (B, C, T, H, W) clips, and any CAM
method explains one as it explains an image: ``cam(clip)`` returns maps (B, T, H, W),
resized from the target layer's (t, h, w) grid in time and space (trilinear). A window
here is a clip of its own: its map explains the model's decision on that window, each
window's map is min-max scaled on its own (the windows' levels are not comparable), and a
frame covered by two windows (the last window is moved back to end at the clip's end)
gets the mean of their maps.
"""

from __future__ import annotations

import warnings
from typing import List, Optional, Sequence

import numpy as np
import torch

from pytorch_grad_cam.base_cam import BaseCAM, Target

__all__ = ["explain_video", "window_starts"]


def window_starts(frames: int, clip_length: int) -> List[int]:
    """The first frame of each window of ``clip_length`` frames over ``frames`` frames:
    0, L, 2L, ... and, where L does not divide the clip, a last window ending at its end.

    Raises:
        ValueError: if either is below 1.
    """
    if frames < 1 or clip_length < 1:
        raise ValueError(f"frames and clip_length must be at least 1, got {frames} and {clip_length}")
    if clip_length >= frames:
        return [0]
    starts = list(range(0, frames - clip_length + 1, clip_length))
    if starts[-1] + clip_length < frames:
        starts.append(frames - clip_length)
    return starts


def explain_video(
    cam: BaseCAM,
    video: torch.Tensor,
    targets: Optional[Sequence[Target]] = None,
    clip_length: Optional[int] = None,
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
) -> np.ndarray:
    """The maps of a batch of clips, computed window by window over time.

    Args:
        cam: any CAM (``GradCAM(model, target_layers)``) of a model that takes
            (B, C, T, H, W) clips.
        video: (B, C, T, H, W) float clips; they may stay on the CPU while the model runs
            on a GPU (each window is moved to the model's device on its own).
        targets: one per clip, used for every window (``ClassifierOutputTarget(k)``);
            None: each window's top class.
        clip_length: frames per window, the model's own clip length (a Kinetics r3d_18:
            16); None (or >= T): the whole clip in one call, ``cam(video)``.
        aug_smooth: as for ``cam(...)``, per window.
        eigen_smooth: as for ``cam(...)``, per window.

    Returns:
        numpy.float32 maps (B, T, H, W), each window's part in [0, 1]. ``cam.outputs``
        holds the last window's model output.

    Raises:
        TypeError: if ``cam`` is not a CAM or ``video`` not a tensor.
        ValueError: if ``video`` is not 5D or ``clip_length`` is below 1; others as ``cam(...)``.

    Warns:
        UserWarning: if the maps do not change over a window's frames (the target layer
            keeps one frame of it: pick an earlier layer for maps that vary in time).
    """
    if not isinstance(cam, BaseCAM):
        raise TypeError(f"cam must be a CAM object such as GradCAM(model, target_layers), not {type(cam).__name__}")
    if not isinstance(video, torch.Tensor) or video.ndim != 5:
        shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise (ValueError if isinstance(video, torch.Tensor) else TypeError)(
            f"video must be a (B, C, T, H, W) tensor, got {shape}; a (C, T, H, W) clip needs clip[None]"
        )
    frames = video.shape[2]
    if clip_length is not None and clip_length < 1:
        raise ValueError(f"clip_length must be at least 1 (the model's clip length), got {clip_length}")
    length = frames if clip_length is None else min(clip_length, frames)
    starts = window_starts(frames, length)
    maps = None
    covered = np.zeros(frames, np.float32)
    flat_windows = 0
    for start in starts:
        part = cam(video[:, :, start : start + length], targets, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)
        if maps is None:
            maps = np.zeros((part.shape[0], frames, *part.shape[2:]), np.float32)
        maps[:, start : start + length] += part
        covered[start : start + length] += 1
        flat_windows += int(length > 1 and np.ptp(part, axis=1).max() == 0)
    if flat_windows:
        warnings.warn(
            f"the maps are the same in every frame of {flat_windows} of {len(starts)} window(s): the target layer "
            f"{type(cam.target_layers[0]).__name__} keeps one frame of a {length}-frame window; pick an earlier "
            "layer (r3d_18: layer3) or a longer clip_length for maps that change over time",
            stacklevel=2,
        )
    if len(starts) > 1:
        maps /= covered[None, :, None, None]
    return maps
