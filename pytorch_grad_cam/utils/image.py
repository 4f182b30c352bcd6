"""Image helpers: overlaying a CAM on a photo, (de)normalising images, and the one
scaling-and-resizing step that every CAM method ends with."""

from __future__ import annotations

from typing import Any, Callable, List, Mapping, Optional, Sequence, Union

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
    # amin/amax: the same values as min/max(dim) without the indices (several times faster on the CPU)
    flat = flat - flat.amin(dim=1, keepdim=True)
    if flat.requires_grad:  # a differentiable map: amax's backward reads flat as it is
        return (flat / (flat.amax(dim=1, keepdim=True) + eps)).reshape(cams.shape)
    flat /= flat.amax(dim=1, keepdim=True) + eps  # in place: a new tensor already, and maps can be large
    return flat.reshape(cams.shape)


def resize_maps(cams: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """Resize (B, *spatial) maps to ``size`` (same number of spatial dimensions) with
    (bi/tri)linear interpolation; half-pixel centres unless ``align_corners``."""
    size = tuple(int(s) for s in size)
    if tuple(cams.shape[1:]) == size:
        return cams
    mode = _RESIZE_MODES[len(size)]
    return F.interpolate(cams.unsqueeze(1), size=size, mode=mode, align_corners=align_corners)[:, 0]


class ChannelsLastCalls:
    """Calls ``function(batch)`` with a 4-D CPU batch in ``channels_last`` memory format:
    the same numbers, and torch's CPU convolutions run such batches faster (ScoreCAM's
    masked images, cam.py --image-dir's batches; benchmarks/bench.py measures it).
    The first call that raises a RuntimeError with it (a model that ``.view``s a feature
    map) is made again with the batch as given, and so is every later call; other
    batches (not 4-D, not on the CPU, or ``enabled`` False) go as given.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def __call__(self, function: Callable[[torch.Tensor], Any], batch: torch.Tensor) -> Any:
        """``function``'s result on ``batch`` (see the class); raises what the call with
        the batch as given raises."""
        if not (self.enabled and batch.ndim == 4 and batch.device.type == "cpu"):
            return function(batch)
        try:
            return function(batch.contiguous(memory_format=torch.channels_last))
        except RuntimeError:
            self.enabled = False
            return function(batch)


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
        mask: (H, W) map in [0, 1], for example ``grayscale_cam[0]``; float16 works,
            and ``img`` and ``mask`` may be torch tensors (bfloat16 becomes float32).
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
    # A torch tensor (a map straight from differentiable(), a half-precision model's
    # output) becomes numpy; bfloat16, which numpy has no dtype for, becomes float32.
    img, mask = _as_array(img), _as_array(mask)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"img must be (H, W, 3), got shape {img.shape}")
    # min/max propagate NaN, and a NaN or an infinity fails one of the comparisons.
    if not np.issubdtype(img.dtype, np.floating) or img.size and not (img.min() >= 0 and img.max() <= 1):
        raise ValueError(
            f"img must be a float image with values in [0, 1] (got dtype {img.dtype}, "
            f"range [{img.min()}, {img.max()}]); pass np.float32(img) / 255 for a uint8 photo"
        )
    if mask.ndim != 2:
        raise ValueError(
            f"mask must be one 2D map, got shape {mask.shape}; pass grayscale_cam[0] for the first image of a batch"
        )
    if mask.shape != img.shape[:2]:
        raise ValueError(
            f"mask of shape {mask.shape} does not match the image's {img.shape[:2]}; "
            "compute the CAM on an input of the image's size or resize the mask"
        )
    if mask.size and not (mask.min() >= 0 and mask.max() <= 1 + 1e-6):
        raise ValueError(
            f"mask values must lie in [0, 1], got [{mask.min()}, {mask.max()}]; "
            "pass a CAM output or scale_cam_image(mask)"
        )
    if not 0 <= image_weight <= 1:
        raise ValueError(f"image_weight must be in [0, 1], got {image_weight}")
    heatmap = cv2.applyColorMap(np.uint8(np.clip(255 * mask, 0, 255)), colormap)
    if use_rgb:
        heatmap = cv2.cvtColor(heatmap, cv2.COLOR_BGR2RGB)
    # The formula's operations one at a time, in place where the dtype allows: the same
    # numbers as ``(1 - w) * (heatmap / 255) + w * img`` written out, in half the time.
    blend = np.float32(heatmap)
    np.divide(blend, 255, out=blend)
    np.multiply(blend, 1 - image_weight, out=blend)
    weighted = np.multiply(img, image_weight)
    if weighted.dtype == blend.dtype:
        np.add(blend, weighted, out=blend)
    else:
        blend = blend + weighted
    peak = np.max(blend)
    if peak > 0:  # a black image under a colormap that starts at black stays black, not NaN
        np.divide(blend, peak, out=blend)
    np.multiply(blend, 255, out=blend)
    return blend.astype(np.uint8)


def _as_array(value: object) -> np.ndarray:
    if torch.is_tensor(value):
        value = value.detach().cpu()
        return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    return np.asarray(value)


def preprocess_image(
    img: np.ndarray,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
) -> torch.Tensor:
    """(H, W, C) float image -> (1, C, H, W) float32 tensor, normalised per channel.

    Args:
        img: float image, typically in [0, 1].
        mean: per-channel means; default 0.5 for every channel.
        std: per-channel standard deviations; default 0.5 for every channel.

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
            f"mean and std need {channels} entries (one per channel), got {mean.numel()} and {std.numel()}"
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


# ------------------------------------------------------------- Deep Feature Factorization
def create_labels_legend(concept_scores: ArrayLike, labels: Union[Mapping, Sequence[str]], top_k: int = 2) -> List[str]:
    """One legend entry per concept: its ``top_k`` classes by descending score.

    Args:
        concept_scores: (n concepts, classes) scores, e.g. the softmax of DFF's concept outputs.
        labels: class names, a dict (HuggingFace's ``config.id2label``) or a list, indexed
            by class; a name with commas ("tabby, tabby cat") keeps its first three parts.
        top_k: classes per concept.

    Returns:
        n strings, each of ``top_k`` lines ``"name:score"`` (score with 2 decimals) joined
        by newlines.
    """
    scores = np.asarray(concept_scores.detach().cpu() if torch.is_tensor(concept_scores) else concept_scores)
    if scores.ndim != 2:
        raise ValueError(f"concept_scores must be (concepts, classes), got shape {scores.shape}")
    # Descending; on a tie the higher class index first (the reverse of a stable ascending sort).
    ranked = np.argsort(scores, axis=1, kind="stable")[:, ::-1][:, :top_k]
    legend = []
    for concept, categories in enumerate(ranked):
        lines = []
        for category in categories:
            name = ",".join(str(labels[int(category)]).split(",")[:3])
            lines.append(f"{name}:{scores[concept, category]:.2f}")
        legend.append("\n".join(lines))
    return legend


def concept_colors(count: int) -> np.ndarray:
    """``count`` distinct RGB colours in [0, 1], (count, 3): full-saturation hues 300°·i/count,
    red through yellow, green, cyan and blue towards magenta.

    This follows the hue sweep of matplotlib's ``gist_rainbow`` (red at 0, magenta near 1),
    the reference's colours, closely without matplotlib; the exact shades differ slightly.
    """
    hues = 300.0 * np.arange(count, dtype=np.float32) / max(count, 1)
    hsv = np.stack([hues, np.ones_like(hues), np.ones_like(hues)], axis=-1)[None].astype(np.float32)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0].astype(np.float64)


def show_factorization_on_image(
    img: np.ndarray,
    explanations: ArrayLike,
    colors: Optional[Sequence[Sequence[float]]] = None,
    image_weight: float = 0.5,
    concept_labels: Optional[Sequence[str]] = None,
) -> np.ndarray:
    """Colour every pixel by the concept that explains it most, over the image.

    Each pixel takes the colour of its strongest concept (argmax over ``explanations``),
    with that colour's HSV value set to 255 × the concept's strength there (OpenCV's uint8
    HSV); the overlay is ``img·image_weight + colours·(1 − image_weight)``. The caller's
    ``explanations`` are not changed.

    Args:
        img: (H, W, 3) float RGB image in [0, 1].
        explanations: (n, H, W) concept maps in [0, 1] (one image of DFF's explanations).
        colors: n RGB (or RGBA) colours in [0, 1]; default :func:`concept_colors`.
        image_weight: the image's share of the blend, in [0, 1].
        concept_labels: n legend texts (lines separated by "\\n", see
            :func:`create_labels_legend`); a legend panel (H, W, 3) drawn with OpenCV,
            a colour swatch and the text per concept, is then placed to the right.

    Returns:
        uint8 RGB (H, W, 3), or (H, 2W, 3) with ``concept_labels``.

    Raises:
        ValueError: on shapes that do not fit together, values outside [0, 1], or too few
            colours or labels.
    """
    img = np.asarray(img)
    maps = np.asarray(explanations.detach().cpu() if torch.is_tensor(explanations) else explanations)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"img must be (H, W, 3), got shape {img.shape}")
    # min/max propagate NaN, and a NaN or an infinity fails one of the comparisons.
    if not np.issubdtype(img.dtype, np.floating) or img.size and not (img.min() >= 0 and img.max() <= 1):
        raise ValueError(
            f"img must be a float RGB image with values in [0, 1] (got dtype {img.dtype}); "
            "pass np.float32(img) / 255 for a uint8 photo"
        )
    if maps.ndim != 3 or maps.shape[1:] != img.shape[:2] or maps.shape[0] == 0:
        raise ValueError(
            f"explanations must be (n, H, W) maps of the image's size {img.shape[:2]}, got shape "
            f"{maps.shape}; pass one image's explanations from DeepFeatureFactorization"
        )
    if not 0 <= image_weight <= 1:
        raise ValueError(f"image_weight must be in [0, 1], got {image_weight}")
    count = maps.shape[0]
    if colors is None:
        palette = concept_colors(count)
    else:
        if len(colors) < count:
            raise ValueError(f"{len(colors)} colours for {count} concepts; pass one colour per concept")
        palette = np.array([np.asarray(color, dtype=np.float64)[:3] for color in colors[:count]])
    if concept_labels is not None and len(concept_labels) != count:
        raise ValueError(f"{len(concept_labels)} concept labels for {count} concepts; pass one per concept")

    maps = np.nan_to_num(maps.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    winner = maps.argmax(axis=0)
    strength = np.take_along_axis(maps, winner[None], axis=0)[0]
    # Each concept's colour as OpenCV uint8 HSV; the winner's hue and saturation, and its
    # strength as the value, then back to RGB (the losing concepts add black).
    palette_hsv = cv2.cvtColor(np.uint8(np.clip(palette, 0, 1) * 255)[None], cv2.COLOR_RGB2HSV)[0]
    hsv = palette_hsv[winner]
    hsv[..., 2] = np.uint8(np.clip(255 * strength, 0, 255))
    overlay = np.float32(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)) / 255
    result = np.uint8(np.clip((img * image_weight + overlay * (1 - image_weight)) * 255, 0, 255))
    if concept_labels is None:
        return result
    legend = _legend_panel(result.shape[0], result.shape[1], palette, list(concept_labels))
    return np.hstack((result, legend))


def _legend_panel(height: int, width: int, palette: np.ndarray, labels: List[str]) -> np.ndarray:
    """A white (height, width, 3) RGB panel: per concept a colour swatch and its lines of text,
    the font as large as fits (at most about the reference's 14 pt per 256 pixels)."""
    panel = np.full((height, width, 3), 255, dtype=np.uint8)
    entries = [str(label).split("\n") for label in labels]
    total_lines = sum(len(lines) for lines in entries)
    margin = max(2, round(0.03 * min(height, width)))
    swatch_width = max(4, round(0.12 * width))
    text_left = 2 * margin + swatch_width
    text_width = max(1, width - text_left - margin)
    # Half a line of space between concepts.
    line_height = (height - 2 * margin) / max(1.0, total_lines + 0.5 * (len(entries) - 1))
    font = cv2.FONT_HERSHEY_SIMPLEX
    longest = max((line for lines in entries for line in lines), key=len, default="")
    (text_w, text_h), baseline = cv2.getTextSize(longest or " ", font, 1.0, 1)
    largest = 0.65 * height / 256 / max(1.0, len(entries) / 6)
    scale = max(0.2, min(0.8 * line_height / (text_h + baseline), text_width / max(1, text_w), largest))
    thickness = max(1, round(scale * 1.5))
    swatch_height = max(2, min(round(5 * height / 256), round(0.6 * line_height)))
    y = margin
    for color, lines in zip(palette, entries):
        centre = round(y + line_height / 2)
        rgb = tuple(int(c) for c in np.uint8(np.clip(color, 0, 1) * 255))
        top = centre - swatch_height // 2
        cv2.rectangle(panel, (margin, top), (margin + swatch_width, top + swatch_height), rgb, -1)
        for line in lines:
            base = round(y + line_height / 2 + text_h * scale / 2)
            cv2.putText(panel, line, (text_left, base), font, scale, (0, 0, 0), thickness, cv2.LINE_AA)
            y += line_height
        y += 0.5 * line_height
    return panel
