"""sobel_cam: an image's edge map, the "explanation" that knows nothing about the
model; the metrics tutorial scores it as a baseline that a CAM should beat."""

import cv2
import numpy as np


def sobel_cam(img: np.ndarray) -> np.ndarray:
    """The uint8 Sobel edge magnitude of an RGB image.

    Gray = OpenCV's RGB-to-gray; gx, gy = 3 x 3 Sobel derivatives in float64 (border
    reflect-101); each |·| rounded and saturated to uint8; the result is
    0.5·|gx| + 0.5·|gy|, rounded to uint8.

    Args:
        img: (H, W, 3) uint8 RGB image.

    Returns:
        (H, W) uint8 edge map.

    Raises:
        ValueError: if ``img`` is not (H, W, 3) uint8.
    """
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(
            f"sobel_cam takes an (H, W, 3) uint8 RGB image, got shape {img.shape} and dtype "
            f"{img.dtype}; pass np.uint8(255 * img) for a float image in [0, 1]"
        )
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    grad_x = cv2.convertScaleAbs(cv2.Sobel(gray, cv2.CV_64F, 1, 0, ksize=3))
    grad_y = cv2.convertScaleAbs(cv2.Sobel(gray, cv2.CV_64F, 0, 1, ksize=3))
    return cv2.addWeighted(grad_x, 0.5, grad_y, 0.5, 0)
