"""Measure every registered CAM method with every metric on the packaged pretrained
EfficientNet-Lite0 (offline) and write:

- docs/metrics.md: one row per method (plus a seeded RandomCAM and a centred Gaussian
  blob, the baselines a method has to beat), one column per metric, the mean over the
  bundled photos, with each metric's direction, the settings and the machine;
- docs/sanity_check.png: the model-randomisation sanity check (Spearman rank
  correlation of each step's map with the intact model's map), one curve per method,
  drawn with OpenCV.

Each photo is explained for its top class at --target-layer (default: _swish, the head's
activation), the metrics scoring that class's softmax probability. The localisation
metrics use hand-measured boxes of the object in the 224 x 224 model input (the same
boxes as tests/test_cli.py: the cat's face, the cup, the motorcycle).

    python docs/make_metrics_table.py --no-progress      # or: make metrics  (~45 min on 2 heavily loaded CPU threads, ScoreCAM the largest part)
    python docs/make_metrics_table.py --quick            # 3 methods, one photo, 3 sanity steps: a minute
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path
from typing import Callable, Dict, Sequence, Tuple

import cv2
import numpy as np
import torch

from pytorch_grad_cam import METHODS
from pytorch_grad_cam.metrics import (
    DeletionMetric,
    DropInConfidence,
    IncreaseInConfidence,
    InsertionMetric,
    ROADCombined,
    energy_pointing_game,
    pointing_game,
    relevance_rank_accuracy,
    sanity_check,
)
from pytorch_grad_cam.perturbation_cam import PerturbationCAM
from pytorch_grad_cam.registry import get_method
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget

ROOT = Path(__file__).resolve().parents[1]
MODEL = "efficientnet_lite0"
LAYER = "_swish"
#: (top, bottom, left, right), inclusive, in the 224 x 224 model input (tests/test_cli.py's PHOTO_BOXES).
PHOTO_BOXES = {
    "cat": (48, 200, 40, 190),
    "coffee": (0, 130, 60, 170),
    "motorcycle": (64, 200, 30, 205),
}
ROAD_PERCENTILES = (20, 40, 60, 80)
#: The layers the sanity check re-initialises, output first (a cascade: step i has
#: randomised the first i + 1). A subset of the model's 99 parameterised layers, spread
#: over its depth, so that ScoreCAM's 1280 forwards per map stay affordable.
SANITY_LAYERS = (
    "_fc",
    "_conv_head",
    "_blocks.15._project_conv",
    "_blocks.7._project_conv",
    "_conv_stem",
)
QUICK_METHODS = ("gradcam", "eigencam", "randomcam")
BLOB = "centre blob"
SEED = 0
PERTURBATION_BATCH = 64


def model_zoo():
    """The CLI helpers and the model zoo (one import line to change when they move)."""
    from pytorch_grad_cam.cli import app as cli
    from pytorch_grad_cam.cli.model_zoo import MODELS, load_model

    return cli, MODELS, load_model


# =========================================================================== the maps
def centre_blob(size: Tuple[int, int]) -> np.ndarray:
    """A centred isotropic Gaussian with sigma = a quarter of the shorter side, in [0, 1]:
    the map of a method that always says "the object is in the middle"."""
    height, width = size
    sigma = min(size) / 4
    rows = np.arange(height, dtype=np.float64)[:, None] - (height - 1) / 2
    columns = np.arange(width, dtype=np.float64)[None, :] - (width - 1) / 2
    return np.exp(-(rows**2 + columns**2) / (2 * sigma**2)).astype(np.float32)


def method_factory(name: str, progress: bool) -> Callable[[torch.nn.Module], object]:
    """A function of a model building ``name``'s CAM at that model's LAYER."""
    method = get_method(name)
    options = {"batch_size": PERTURBATION_BATCH, "progress": progress} if issubclass(method, PerturbationCAM) else {}
    return lambda model: method(model, [getattr(model, LAYER)], **options)


def cam_maps(
    name: str, model: torch.nn.Module, inputs: torch.Tensor, categories: Sequence[int], progress: bool
) -> np.ndarray:
    """(B, H, W) maps of ``name`` (seeded, so RandomCAM is repeatable), one image at a time."""
    if name == BLOB:
        return np.stack([centre_blob(tuple(inputs.shape[-2:]))] * len(inputs))
    maps = []
    for image, category in zip(inputs, categories):
        torch.manual_seed(SEED)
        with method_factory(name, progress)(model) as cam:
            maps.append(cam(image[None], targets=[ClassifierOutputTarget(category)])[0])
    return np.stack(maps)


# =========================================================================== the metrics
#: column -> (direction, description)
METRICS: Dict[str, Tuple[str, str]] = {
    "ROAD": ("↑", "ROADCombined, percentiles 20/40/60/80 (noise 0.01, seeded)"),
    "Deletion": ("↓", "DeletionMetric, 20 steps, constant (0) baseline: area under the score curve"),
    "Insertion": ("↑", "InsertionMetric, 20 steps, blurred baseline (sigma 5 px): area under the curve"),
    "Drop": ("↓", "DropInConfidence: max(score(x) − score(x·cam), 0)"),
    "Increase": ("↑", "IncreaseInConfidence: share of photos whose score rises under x·cam"),
    "PG": ("↑", "pointing game (tolerance 15 px; all tied maxima on the box)"),
    "Energy PG": ("↑", "energy pointing game = relevance mass: share of the map's positive mass in the box"),
    "Rank acc.": ("↑", "relevance rank accuracy: share of the box-area top pixels in the box"),
}


def measure(
    maps: np.ndarray, inputs: torch.Tensor, categories: Sequence[int], boxes: np.ndarray, model: torch.nn.Module
) -> Dict[str, float]:
    """Every metric of METRICS for the maps of one method, the mean over the photos."""
    targets = [ClassifierOutputSoftmaxTarget(c) for c in categories]
    torch.manual_seed(SEED)
    values = {
        "ROAD": ROADCombined(ROAD_PERCENTILES)(inputs, maps, targets, model),
        "Deletion": DeletionMetric(20)(inputs, maps, targets, model),
        "Insertion": InsertionMetric(20)(inputs, maps, targets, model),
        "Drop": DropInConfidence()(inputs, maps, targets, model),
        "Increase": IncreaseInConfidence()(inputs, maps, targets, model),
        "PG": pointing_game(maps, boxes),
        "Energy PG": energy_pointing_game(maps, boxes),
        "Rank acc.": relevance_rank_accuracy(maps, boxes),
    }
    return {name: float(np.mean(value)) for name, value in values.items()}


# =========================================================================== the plot
PALETTE = [  # BGR, distinguishable on white
    (180, 119, 31),
    (14, 127, 255),
    (44, 160, 44),
    (40, 39, 214),
    (189, 103, 148),
    (75, 86, 140),
    (194, 119, 227),
    (127, 127, 127),
    (34, 189, 188),
    (207, 190, 23),
    (0, 0, 0),
    (0, 90, 180),
    (120, 200, 120),
    (90, 90, 230),
    (200, 160, 90),
    (150, 0, 150),
    (0, 150, 150),
    (60, 60, 60),
]


def plot_sanity(curves: Dict[str, np.ndarray], layers: Sequence[str], title: str) -> np.ndarray:
    """One polyline per method: x = randomisation step (layer names), y = Spearman in [-1, 1]."""
    width, height = 1000, 620
    left, right, top, bottom = 80, 230, 50, 130
    image = np.full((height, width, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    x_of = lambda step: int(left + (width - left - right) * step / max(len(layers), 1))  # noqa: E731
    low, high = -1.0, 1.0
    y_of = lambda value: int(top + (height - top - bottom) * (high - value) / (high - low))  # noqa: E731
    for tick in np.arange(-1.0, 1.01, 0.2):
        y = y_of(tick)
        cv2.line(image, (left, y), (width - right, y), (225, 225, 225) if abs(tick) > 1e-9 else (150, 150, 150), 1)
        cv2.putText(image, f"{round(tick, 1) + 0.0:.1f}", (left - 45, y + 5), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.rectangle(image, (left, top), (width - right, height - bottom), (0, 0, 0), 1)
    for step, name in enumerate(["intact", *layers]):
        x = x_of(step)
        cv2.line(image, (x, height - bottom), (x, height - bottom + 5), (0, 0, 0), 1)
        # Layer names run down-left at an angle: draw on a patch, rotate it, paste it.
        name = name.replace("._project_conv", " project")
        (text_width, text_height), _ = cv2.getTextSize(name, font, 0.4, 1)
        patch = np.full((text_height + 6, text_width + 4, 3), 255, np.uint8)
        cv2.putText(patch, name, (2, text_height + 1), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        patch = cv2.rotate(patch, cv2.ROTATE_90_COUNTERCLOCKWISE)
        y0 = height - bottom + 8
        h = min(patch.shape[0], height - y0 - 30)
        image[y0 : y0 + h, x - patch.shape[1] // 2 : x - patch.shape[1] // 2 + patch.shape[1]] = patch[-h:]
    cv2.putText(
        image,
        "layers randomised (cumulative, output first)",
        (left + 150, height - 10),
        font,
        0.5,
        (0, 0, 0),
        1,
        cv2.LINE_AA,
    )
    label = np.full((24, 260, 3), 255, np.uint8)
    cv2.putText(label, "Spearman rank correlation", (2, 17), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    label = cv2.rotate(label, cv2.ROTATE_90_COUNTERCLOCKWISE)
    image[top + 40 : top + 40 + label.shape[0], 4 : 4 + label.shape[1]] = label
    cv2.putText(image, title, (left, 30), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    for index, (name, curve) in enumerate(curves.items()):
        colour = PALETTE[index % len(PALETTE)]
        points = np.array([(x_of(step), y_of(float(v))) for step, v in enumerate([1.0, *curve])], np.int32)
        cv2.polylines(image, [points], False, colour, 2, cv2.LINE_AA)
        for point in points:
            cv2.circle(image, tuple(int(c) for c in point), 3, colour, cv2.FILLED, cv2.LINE_AA)
        y = top + 10 + 22 * index
        cv2.line(image, (width - right + 15, y), (width - right + 45, y), colour, 2, cv2.LINE_AA)
        cv2.putText(image, name, (width - right + 52, y + 5), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return image


# =========================================================================== the report
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} "
        f"thread(s), load average {load} (1/5/15 min) at the end"
    )


def markdown(
    rows: Dict[str, Dict[str, float]],
    photos: Sequence[str],
    labels: Sequence[str],
    sanity_final: Dict[str, float],
    seconds: float,
    quick: bool,
) -> str:
    columns = list(METRICS)
    lines = [
        "# Metrics of every method on EfficientNet-Lite0",
        "",
        "Generated by `docs/make_metrics_table.py` (`make metrics`); measured, not copied."
        + (" **Quick run** (subset of methods/photos)." if quick else ""),
        "",
        f"- Model: the packaged pretrained `{MODEL}` (ImageNet), eval mode; target layer `{LAYER}`"
        " (the head's activation, 1280 channels at 7 × 7).",
        "- Photos (resized to 224 × 224, each explained and scored for its top class): "
        + ", ".join(f"`examples/{p}.jpg` ({label})" for p, label in zip(photos, labels))
        + ".",
        "- Boxes (top, bottom, left, right, inclusive, in the model input): "
        + ", ".join(f"{p} {PHOTO_BOXES[p]}" for p in photos)
        + ".",
        "- Scores: the softmax probability of the class (`ClassifierOutputSoftmaxTarget`).",
        f"- Baselines: `randomcam` (random channel weights, seed {SEED}) and `{BLOB}` (a centred"
        " Gaussian map, sigma = 56 px, the same for every photo).",
        f"- Sanity check: the cat photo, cascade over {len(SANITY_LAYERS)} layers"
        f" ({', '.join(f'`{name}`' for name in SANITY_LAYERS)}), seed {SEED}; see `docs/sanity_check.png`."
        " The last column is the Spearman correlation after the last step (near 0: the map depends on the"
        " weights, as it should). The intact model's map is the table's map of the cat (computed once).",
        f"- Date: {datetime.date.today().isoformat()}; machine: {machine()}; {seconds / 60:.0f} min in all.",
        "",
        "Values are means over the photos (the pointing game and Increase are shares of photos).",
        "",
        "| method | " + " | ".join(f"{name} {METRICS[name][0]}" for name in columns) + " | sanity (last) ↓ |",
        "|---|" + "---:|" * (len(columns) + 1),
    ]
    for method, values in rows.items():
        sanity = f"{sanity_final[method]:.2f}" if method in sanity_final else "–"
        lines.append(f"| {method} | " + " | ".join(f"{values[name]:.3f}" for name in columns) + f" | {sanity} |")
    lines += ["", "Metrics:", ""]
    lines += [f"- **{name}** ({direction} is better): {text}." for name, (direction, text) in METRICS.items()]
    lines.append(
        "- **sanity (last)** (↓, towards 0): Spearman rank correlation with the intact model's map after"
        " every listed layer is re-initialised."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=ROOT / "docs")
    parser.add_argument(
        "--quick", action="store_true", help=f"only {', '.join(QUICK_METHODS)}, the cat, 3 sanity steps"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    progress = not args.no_progress
    device = torch.device(args.device)
    start = time.perf_counter()
    cli, models, load_model = model_zoo()
    entry = models[MODEL]
    model = load_model(entry, MODEL, progress=progress).to(device).eval()
    # channels_last: ~1.8x faster forwards on CPU (oneDNN's depthwise convolutions); the
    # maps agree with the default layout within 5e-6 for every method.
    model = model.to(memory_format=torch.channels_last)
    photos = ["cat"] if args.quick else list(PHOTO_BOXES)
    inputs = torch.cat([cli.model_input(cli.read_photo(ROOT / "examples" / f"{p}.jpg"), entry) for p in photos])
    inputs = inputs.to(device)
    categories = [cli.top_predictions(cli.predict(model, image[None]), 1)[0][0] for image in inputs]
    labels = [cli.class_label(c, 1000) for c in categories]
    boxes = np.array(
        [[left, top, right + 1, bottom + 1] for top, bottom, left, right in (PHOTO_BOXES[p] for p in photos)]
    )
    # The attention methods (class flag needs_attention) explain vision transformers, not this CNN.
    layer_methods = [m for m, cls in METHODS.items() if not cls.needs_attention]
    methods = [m for m in layer_methods if m in QUICK_METHODS] if args.quick else layer_methods
    rows: Dict[str, Dict[str, float]] = {}
    cat_maps: Dict[str, np.ndarray] = {}  # the intact model's map of the first photo, reused by the sanity check
    for method in [*methods, BLOB]:
        began = time.perf_counter()
        maps = cam_maps(method, model, inputs, categories, progress)
        cat_maps[method] = maps[:1]
        rows[method] = measure(maps, inputs, categories, boxes, model)
        print(
            f"{method:20s} {time.perf_counter() - began:6.0f} s  "
            + "  ".join(f"{k} {v:.3f}" for k, v in rows[method].items()),
            flush=True,
        )

    layers = SANITY_LAYERS[:3] if args.quick else SANITY_LAYERS
    curves: Dict[str, np.ndarray] = {}
    for method in methods:
        began = time.perf_counter()
        result = sanity_check(
            method_factory(method, progress),
            model,
            inputs[:1],
            [ClassifierOutputTarget(categories[0])],
            layers=layers,
            seed=SEED,
            original=cat_maps[method],
        )
        curves[method] = result.spearman_mean
        print(
            f"sanity {method:13s} {time.perf_counter() - began:6.0f} s  "
            + " ".join(f"{v:+.2f}" for v in result.spearman_mean),
            flush=True,
        )
    seconds = time.perf_counter() - start

    args.output_dir.mkdir(parents=True, exist_ok=True)
    table = args.output_dir / "metrics.md"
    table.write_text(markdown(rows, photos, labels, {m: float(c[-1]) for m, c in curves.items()}, seconds, args.quick))
    plot = args.output_dir / "sanity_check.png"
    title = f"Sanity check: {MODEL} at {LAYER}, the cat photo ({labels[0]}), seed {SEED}"
    cv2.imwrite(str(plot), plot_sanity(curves, layers, title))
    print(f"wrote {table} and {plot} in {seconds / 60:.1f} min")


if __name__ == "__main__":
    main()
