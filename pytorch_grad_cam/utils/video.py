"""Pictures and files of video maps, with OpenCV and numpy only: per-frame overlays of a
(T, H, W) map on a clip, a strip of some frames for documents, and animated files
(GIF/WebP/APNG through ``cv2.imwriteanimation``, MP4/AVI through ``cv2.VideoWriter``)
written and read back.

Frames are RGB throughout, (T, H, W, 3): uint8 in [0, 255] or float in [0, 1]; OpenCV's
BGR order stays inside this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple, Union

import cv2
import numpy as np

from pytorch_grad_cam.utils.image import show_cam_on_image

__all__ = [
    "ANIMATION_SUFFIXES",
    "VIDEO_SUFFIXES",
    "moving_object_clip",
    "read_video",
    "show_cam_on_video",
    "video_strip",
    "write_animation",
]

#: Suffixes written and read as animated images (``cv2.imwriteanimation``).
ANIMATION_SUFFIXES = (".gif", ".webp", ".apng", ".png")
#: Suffixes written and read as videos (``cv2.VideoWriter``), with their codec.
VIDEO_SUFFIXES = {".mp4": "mp4v", ".avi": "MJPG"}

PathLike = Union[str, Path]


def _frames_uint8(frames: np.ndarray) -> np.ndarray:
    """RGB frames (T, H, W, 3) as uint8 (floats are read as [0, 1]).

    Raises:
        ValueError: on another shape, no frame, or floats outside [0, 1]."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(
            f"frames must be RGB (T, H, W, 3) with T >= 1, got shape {frames.shape}; "
            "a (3, T, H, W) clip tensor becomes frames with clip.permute(1, 2, 3, 0).numpy()"
        )
    if frames.dtype == np.uint8:
        return frames
    if not np.issubdtype(frames.dtype, np.floating):
        raise ValueError(f"frames must be uint8 or float in [0, 1], got {frames.dtype}")
    if not np.isfinite(frames).all() or frames.min() < 0 or frames.max() > 1:
        raise ValueError("float frames must be finite and in [0, 1]; scale them (frames / 255) first")
    return np.round(frames * 255).astype(np.uint8)


def _check_animation_support(path: Path) -> None:
    """Nothing where OpenCV has its animation API (4.11 and later).

    Raises:
        ValueError: naming the fix, where it has not."""
    if not hasattr(cv2, "imwriteanimation"):
        raise ValueError(
            f"{path}: animated images need OpenCV >= 4.11 (this is {cv2.__version__}); "
            "pip install -U opencv-python-headless, or use .mp4 / .avi"
        )


def show_cam_on_video(
    frames: np.ndarray,
    maps: np.ndarray,
    image_weight: float = 0.5,
    colormap: int = cv2.COLORMAP_JET,
) -> np.ndarray:
    """Overlay each frame's map on it (:func:`~pytorch_grad_cam.utils.image.show_cam_on_image`
    frame by frame).

    Args:
        frames: the clip, RGB (T, H, W, 3), uint8 or float in [0, 1].
        maps: its map (T, H, W) in [0, 1] (one video of a CAM's (B, T, H, W) output).
        image_weight: the frames' share of each overlay.
        colormap: the OpenCV colormap of the maps.

    Returns:
        RGB uint8 overlays (T, H, W, 3).

    Raises:
        ValueError: if the shapes do not match, or the maps are outside [0, 1].
    """
    frames = _frames_uint8(frames)
    maps = np.asarray(maps)
    if maps.shape != frames.shape[:3]:
        raise ValueError(
            f"maps must be (T, H, W) = {frames.shape[:3]} to match the frames, got {maps.shape}; "
            "pass one video's maps (cams[i]) at the frames' size"
        )
    if not np.isfinite(maps).all() or maps.min() < 0 or maps.max() > 1:
        raise ValueError("maps must be finite and in [0, 1]; pass a CAM's output")
    overlays = [
        show_cam_on_image(frame.astype(np.float32) / 255, cam.astype(np.float32), True, colormap, image_weight)
        for frame, cam in zip(frames, maps)
    ]
    return np.stack(overlays)


def video_strip(
    frames: np.ndarray,
    maps: np.ndarray,
    every: int = 1,
    gap: int = 4,
    image_weight: float = 0.5,
) -> np.ndarray:
    """A picture for documents: every ``every``-th frame in a row, with its overlay under it.

    Returns:
        An RGB uint8 image (2H + gap, n·W + (n - 1)·gap, 3), n = ceil(T / every), white between.

    Raises:
        ValueError: as :func:`show_cam_on_video`, or if ``every`` < 1 or ``gap`` < 0.
    """
    if every < 1 or gap < 0:
        raise ValueError(f"every must be >= 1 and gap >= 0, got every={every}, gap={gap}")
    overlays = show_cam_on_video(frames, maps, image_weight)[::every]
    frames = _frames_uint8(frames)[::every]
    count, height, width = overlays.shape[:3]
    strip = np.full((2 * height + gap, count * width + (count - 1) * gap, 3), 255, np.uint8)
    for index, (frame, overlay) in enumerate(zip(frames, overlays)):
        left = index * (width + gap)
        strip[:height, left : left + width] = frame
        strip[height + gap :, left : left + width] = overlay
    return strip


def write_animation(path: PathLike, frames: np.ndarray, fps: float = 8.0) -> Path:
    """Write RGB frames (T, H, W, 3) as an animated file, the format by suffix: .gif,
    .webp, .apng/.png (``cv2.imwriteanimation``, looping) or .mp4 (mp4v), .avi (MJPG)
    (``cv2.VideoWriter``). GIF keeps frame durations in hundredths of a second (8 fps's
    125 ms is stored as 120 ms).

    Returns:
        The path written.

    Raises:
        ValueError: for another suffix, bad frames or ``fps`` <= 0.
        OSError: if OpenCV cannot write the file (a missing folder, a codec it lacks).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    frames = _frames_uint8(frames)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    bgr = [np.ascontiguousarray(frame[..., ::-1]) for frame in frames]
    if suffix in ANIMATION_SUFFIXES:
        _check_animation_support(path)
        animation = cv2.Animation()
        animation.frames = bgr
        animation.durations = [max(1, round(1000 / fps))] * len(bgr)
        animation.loop_count = 0  # loop for ever
        written = cv2.imwriteanimation(str(path), animation)
    elif suffix in VIDEO_SUFFIXES:
        height, width = bgr[0].shape[:2]
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*VIDEO_SUFFIXES[suffix]), fps, (width, height))
        written = writer.isOpened()
        for frame in bgr if written else []:
            writer.write(frame)
        writer.release()
    else:
        raise ValueError(
            f"{path}: unknown suffix {path.suffix!r}; use one of "
            f"{', '.join(ANIMATION_SUFFIXES + tuple(VIDEO_SUFFIXES))}"
        )
    if not written or not path.is_file():
        raise OSError(f"OpenCV could not write {path}; check that its folder exists and is writable")
    return path


def read_video(
    path: PathLike, max_frames: Optional[int] = None, size: Optional[Tuple[int, int]] = None
) -> Tuple[np.ndarray, float]:
    """Read a video (.mp4, .avi, ... through ``cv2.VideoCapture``) or an animated image
    (.gif, .webp, .apng/.png through ``cv2.imreadanimation``).

    Args:
        path: the file.
        max_frames: keep only the first frames (None: all).
        size: (height, width) to resize every frame to (area interpolation; None: as stored).

    Returns:
        (frames, fps): RGB float32 frames (T, H, W, 3) in [0, 1] and the frame rate (an
        animated image's from its first frame's duration; 0.0 where the file says nothing).

    Raises:
        FileNotFoundError: if ``path`` is not a file.
        ValueError: if OpenCV cannot decode it or it holds no frame.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video file")
    if path.suffix.lower() in ANIMATION_SUFFIXES:
        _check_animation_support(path)
        ok, animation = cv2.imreadanimation(str(path))
        bgr = list(animation.frames) if ok else []
        durations = list(animation.durations) if ok else []
        fps = 1000.0 / float(durations[0]) if durations and durations[0] > 0 else 0.0
    else:
        capture = cv2.VideoCapture(str(path))
        fps = float(capture.get(cv2.CAP_PROP_FPS)) if capture.isOpened() else 0.0
        bgr = []
        while capture.isOpened() and (max_frames is None or len(bgr) < max_frames):
            ok, frame = capture.read()
            if not ok:
                break
            bgr.append(frame)
        capture.release()
    bgr = bgr[:max_frames] if max_frames is not None else bgr
    if not bgr:
        raise ValueError(f"{path}: OpenCV read no frame from it; is it a video (mp4, avi) or an animated gif/webp?")
    frames = []
    for frame in bgr:
        frame = frame[..., :3] if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        if size is not None:
            frame = cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        frames.append(frame[..., ::-1])
    return np.stack(frames).astype(np.float32) / 255, fps


def moving_object_clip(
    frames: int = 16, size: int = 112, present: Optional[Tuple[int, int]] = None, seed: int = 0
) -> np.ndarray:
    """A synthetic clip whose answer is known: a smooth grey-green textured background
    and, only in frames ``present[0]`` to ``present[1] - 1`` (None: the middle 6/16 of the
    clip, frames 5-10 of 16), a red disc crossing it from left to right (cam.py's clip
    when no ``--video-path`` is given, the README's).

    Returns:
        RGB float32 frames (T, H, W, 3) in [0, 1].

    Raises:
        ValueError: if ``frames`` or ``size`` is below 1 (size below 8), or ``present``
            is not a range of frames inside the clip.
    """
    start, stop = present if present is not None else (frames * 5 // 16, max(1, frames * 11 // 16))
    if frames < 1 or size < 8 or not 0 <= start < stop <= frames:
        raise ValueError(
            f"need frames >= 1, size >= 8 and 0 <= present[0] < present[1] <= frames, "
            f"got frames={frames}, size={size}, present={present}"
        )
    generator = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(generator.random((size, size)).astype(np.float32), (0, 0), size / 16)
    noise = (noise - noise.min()) / max(float(noise.max() - noise.min()), 1e-6)
    background = np.stack([0.35 + 0.2 * noise, 0.45 + 0.2 * noise, 0.35 + 0.1 * noise], axis=-1)
    clip = np.repeat(background[None], frames, axis=0)
    rows, columns = np.mgrid[0:size, 0:size]
    radius = size / 7
    for index in range(start, stop):
        progress = (index - start + 0.5) / (stop - start)
        centre_x, centre_y = radius + progress * (size - 2 * radius), size / 2 + size / 8 * np.sin(3 * progress)
        disc = (columns - centre_x) ** 2 + (rows - centre_y) ** 2 <= radius**2
        clip[index][disc] = (0.9, 0.1, 0.1)
    return clip.astype(np.float32)
