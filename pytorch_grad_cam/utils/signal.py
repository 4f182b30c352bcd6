"""Pictures of 1D maps: a signal drawn as a curve with its CAM under it as a colour
strip (and tinting the plot's background), with OpenCV and numpy only."""

from __future__ import annotations

from typing import Sequence, Tuple

import cv2
import numpy as np

__all__ = ["show_cam_on_signal"]

#: Curve colours (RGB) of the signal's channels, in turn.
_CHANNEL_COLOURS: Sequence[Tuple[int, int, int]] = ((20, 20, 20), (30, 90, 200), (200, 60, 30), (40, 140, 60))


def show_cam_on_signal(
    signal: np.ndarray,
    cam: np.ndarray,
    width: int = 640,
    height: int = 200,
    strip: int = 40,
    colormap: int = cv2.COLORMAP_JET,
    tint: float = 0.35,
) -> np.ndarray:
    """Draw ``signal`` (L,) or (C, L) as curves (each channel scaled to the plot's
    height) over a background tinted by ``cam`` (L,), with the map as a colour strip
    under the plot, both resampled to ``width`` columns (linear interpolation).

    Args:
        signal: one signal, (L,) or (C, L); a torch tensor's ``.numpy()``.
        cam: its map (L,) in [0, 1] (one row of a CAM's (B, L) output).
        width: the picture's width (pixels).
        height: the plot's height (pixels).
        strip: the colour strip's height (pixels).
        colormap: the OpenCV colormap of the map.
        tint: how strongly the map colours the plot's background (0: white).

    Returns:
        An RGB uint8 image (height + strip, width, 3).

    Raises:
        ValueError: if the shapes do not fit, the sizes are not positive, ``tint`` is
            outside [0, 1], or ``cam`` is outside [0, 1] or not finite.
    """
    signal = np.asarray(signal, dtype=np.float64)
    cam = np.asarray(cam, dtype=np.float64)
    if signal.ndim == 1:
        signal = signal[None]
    if signal.ndim != 2 or cam.ndim != 1 or signal.shape[1] != cam.shape[0] or cam.shape[0] < 2:
        raise ValueError(
            f"signal must be (L,) or (C, L) and cam (L,) with L >= 2, got shapes {signal.shape} and {cam.shape}; "
            "pass one signal and its map (cams[i])"
        )
    if min(width, height, strip) < 1 or not 0 <= tint <= 1:
        raise ValueError(f"width, height, strip must be positive and tint in [0, 1], got {width, height, strip, tint}")
    if not np.isfinite(cam).all() or cam.min() < 0 or cam.max() > 1:
        raise ValueError("cam must be finite and in [0, 1]; pass a CAM's output (or scale_cam_image(cam))")
    columns = np.linspace(0, cam.shape[0] - 1, width)
    positions = np.arange(cam.shape[0])
    heat = np.interp(columns, positions, cam)
    colours = cv2.applyColorMap(np.uint8(np.round(255 * heat))[None], colormap)[0]
    colours = cv2.cvtColor(colours[None], cv2.COLOR_BGR2RGB)[0].astype(np.float64)
    plot = (1 - tint) * 255 + tint * np.broadcast_to(colours, (height, width, 3))
    picture = np.concatenate([plot, np.broadcast_to(colours, (strip, width, 3))]).round().astype(np.uint8)
    picture = np.ascontiguousarray(picture)
    margin = max(2, height // 20)
    for index, channel in enumerate(signal):
        values = np.interp(columns, positions, channel)
        low, high = values.min(), values.max()
        scaled = (values - low) / (high - low) if high > low else np.full_like(values, 0.5)
        rows = margin + (1 - scaled) * (height - 1 - 2 * margin)
        points = np.stack([np.arange(width), np.round(rows)], axis=1).astype(np.int32)
        colour = _CHANNEL_COLOURS[index % len(_CHANNEL_COLOURS)]
        cv2.polylines(picture, [points[:, None]], False, colour, 2, cv2.LINE_AA)
    return picture
