"""Folder mode's files: the images found under ``--image-dir`` and where their outputs
go, atomic writes (a temporary file renamed into place), the cleanup of the temporary
files a killed run left, and the encoded pictures and maps.
"""

from __future__ import annotations

import io
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

from pytorch_grad_cam.cli.jobs import CLIError, encode_image

#: File name suffixes taken as images (compared case-insensitively).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
RECORDS_DIR = ".records"
THUMBNAIL_SIDE = 160
JPEG_QUALITY = 90
#: A temporary file: ``.<final name>.partial-<pid>``, in the final file's folder.
_PARTIAL = re.compile(r"^\..+\.partial-\d+(-\d+)?$")  # pid, then thread id


@dataclass(frozen=True)
class ImageItem:
    """One input image.

    Attributes:
        relative: its path under ``--image-dir``, with ``/`` separators (``sub/a.jpg``).
        path: where it is.
        output_stem: its outputs' common prefix under ``--output-dir`` (``sub/a``).
    """

    relative: str
    path: Path
    output_stem: str

    def output(self, kind: str, suffix: str) -> str:
        """The relative output path ``<stem>.<kind><suffix>`` (``sub/a.gradcam.jpg``)."""
        return f"{self.output_stem}.{kind}{suffix}"

    def record(self, method: str) -> str:
        """The relative path of the record of ``method`` for this image."""
        return f"{RECORDS_DIR}/{self.relative}.{method}.json"


def _image_paths(image_dir: Path, exclude: Optional[Path]) -> List[str]:
    """The relative paths (``/`` separators) of the image files under ``image_dir``,
    hidden files and folders and the folder ``exclude`` skipped, sorted."""
    excluded = exclude.resolve() if exclude is not None else None
    relatives: List[str] = []
    for folder, subfolders, files in os.walk(image_dir):
        subfolders[:] = sorted(
            name
            for name in subfolders
            if not name.startswith(".") and (excluded is None or (Path(folder) / name).resolve() != excluded)
        )
        for name in files:
            if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES):
                relatives.append((Path(folder) / name).relative_to(image_dir).as_posix())
    return sorted(relatives)


def find_images(image_dir: Path, exclude: Optional[Path] = None) -> List[ImageItem]:
    """Every image file under ``image_dir`` (recursive; hidden files and folders and the
    folder ``exclude`` skipped), sorted by relative path.

    Raises:
        CLIError: if ``image_dir`` is not a folder, or holds no image.
    """
    if not image_dir.exists():
        raise CLIError(f"--image-dir {image_dir}: no such folder")
    if not image_dir.is_dir():
        raise CLIError(f"--image-dir {image_dir} is a file; pass it with --image-path, or pass its folder")
    relatives = _image_paths(image_dir, exclude)
    if not relatives:
        raise CLIError(
            f"--image-dir {image_dir} holds no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}, any case)"
        )
    # Two files with one stem in a folder (a.jpg, a.png) would share outputs: they keep their whole names.
    stems: Dict[Tuple[str, str], int] = {}
    for relative in relatives:
        key = (relative.rpartition("/")[0], relative.rsplit("/", 1)[-1].rsplit(".", 1)[0].casefold())
        stems[key] = stems.get(key, 0) + 1
    items = []
    for relative in relatives:
        folder, _, name = relative.rpartition("/")
        stem = name.rsplit(".", 1)[0]
        unique = stems[(folder, stem.casefold())] == 1
        output_stem = (f"{folder}/" if folder else "") + (stem if unique else name)
        items.append(ImageItem(relative, image_dir / relative, output_stem))
    return items


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and
    ``os.replace``: a reader (or a later run) sees the old file or the whole new one.

    Raises:
        OSError: if the folder cannot be created or the file written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per process and thread: two writer threads may write one file (an image's
    # thumbnail, once per method) at the same time, each through its own temporary file.
    temporary = path.with_name(f".{path.name}.partial-{os.getpid()}-{threading.get_ident()}")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def remove_partial_files(output_dir: Path) -> int:
    """Delete the temporary files that a killed run left under ``output_dir``; how many."""
    removed = 0
    for folder, _, files in os.walk(output_dir):
        for name in files:
            if _PARTIAL.match(name):
                (Path(folder) / name).unlink(missing_ok=True)
                removed += 1
    return removed


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """An RGB uint8 image as JPEG bytes.

    Raises:
        CLIError: if OpenCV cannot encode it.
    """
    return encode_image(rgb, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, quality])


def encode_map(grayscale: np.ndarray) -> bytes:
    """The map as a compressed ``.npz`` (key ``cam``, float32)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, cam=np.asarray(grayscale, dtype=np.float32))
    return buffer.getvalue()


def thumbnail(rgb: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """``rgb`` shrunk to at most ``side`` pixels on its long side (never enlarged)."""
    height, width = rgb.shape[:2]
    scale = min(1.0, side / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return rgb if scale == 1.0 else cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
