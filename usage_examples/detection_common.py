"""What the three detector examples (detection_*_example.py) share: their command line,
reading the photo, and printing and drawing the detections. Each example states only
its model, its input and its class names."""

from __future__ import annotations

import argparse
import os
from typing import List, Optional, Sequence

import cv2
import numpy as np

from pytorch_grad_cam.detection import Detection, draw_detections


def example_arguments(
    description: str, photo: str, weights_help: str, trained_confidence: float, size: int, output_name: str
) -> argparse.Namespace:
    """The examples' options; ``--confidence`` defaults to ``trained_confidence`` with
    --weights and to 0 with random weights (whose confidences are all tiny)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-path", default=photo, help=f"the photo (default: {os.path.relpath(photo)})")
    parser.add_argument("--method", default="gradcam", help="a name in pytorch_grad_cam.METHODS")
    parser.add_argument("--weights", default=None, help=f"{weights_help} (default: random weights)")
    parser.add_argument(
        "--confidence", type=float, default=None, help=f"default: {trained_confidence}, or 0 with random weights"
    )
    parser.add_argument("--max-detections", type=int, default=3, help="the most boxes explained")
    parser.add_argument("--size", type=int, default=size, help="the longer side of the model's input, in pixels")
    parser.add_argument("--output-dir", default=".", help=f"where {output_name} goes")
    args = parser.parse_args()
    if args.confidence is None:
        args.confidence = trained_confidence if args.weights else 0.0
    return args


def load_photo(path: str, size: int, multiple: int = 1) -> np.ndarray:
    """The photo as (H, W, 3) RGB floats in [0, 1], its longer side ``size`` pixels and
    both sides multiples of ``multiple``."""
    bgr = cv2.imread(path)
    if bgr is None:
        raise SystemExit(f"{path}: not an image (or no such file); pass --image-path PATH")
    height, width = bgr.shape[:2]
    scale = size / max(height, width)
    new_width, new_height = (max(multiple, round(side * scale / multiple) * multiple) for side in (width, height))
    rgb = cv2.cvtColor(cv2.resize(bgr, (new_width, new_height), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    return np.float32(rgb) / 255


def report(
    rgb: np.ndarray,
    detections: List[Detection],
    names: Optional[Sequence[str]],
    confidence: float,
    output_dir: str,
    output_name: str,
) -> str:
    """Print one line per detection (name, label, score, box), draw them onto ``rgb`` and
    write the picture as ``output_dir/output_name``; returns its path."""
    for detection in detections:
        box = ", ".join(f"{value:.1f}" for value in detection.box)
        print(f"{names[detection.label]} ({detection.label}) score {detection.score:.3g} box [{box}]")
    if not detections:
        print(f"no detection at confidence {confidence}; try a lower --confidence")
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, output_name)
    cv2.imwrite(path, cv2.cvtColor(draw_detections(rgb, detections, class_names=names), cv2.COLOR_RGB2BGR))
    print(f"wrote {path} ({rgb.shape[1]}x{rgb.shape[0]})")
    return path
