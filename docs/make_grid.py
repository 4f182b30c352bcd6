"""Render the README's comparison grids with the pretrained EfficientNet-Lite0 (offline):

- docs/methods_grid.jpg: rows = the bundled photos, columns = every registered layer
  method (the attention methods, class flag ``needs_attention``, explain vision
  transformers and are left out of this CNN's grid);
- docs/smoothing_grid.jpg: GradCAM plain | aug smooth | eigen smooth | aug + eigen smooth.

Each photo is explained for its top class, at --target-layer (default: _swish, the
model's shared ReLU6 module, whose last call is the head's activation; cam.py's default
for this model, _bn1, is the batch norm before it, and its mostly negative values defeat
XGradCAM, EigenCAM and ScoreCAM).

    python docs/make_grid.py            # or: make grid   (a few minutes on a CPU, mostly ScoreCAM)
    python docs/make_grid.py --target-layer _bn1 --output-dir /tmp
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Dict, List, Sequence

import cv2
import numpy as np
import torch

from pytorch_grad_cam import METHODS
from pytorch_grad_cam.cli import app as cli
from pytorch_grad_cam.cli.model_zoo import MODELS, imagenet_classes, load_model

ROOT = Path(__file__).resolve().parents[1]
GRID_METHODS = [name for name, cls in METHODS.items() if not cls.needs_attention]
PHOTOS = [ROOT / "examples" / name for name in ("cat.jpg", "coffee.jpg", "motorcycle.jpg")]
MODEL = "efficientnet_lite0"
LAYER = "_swish"
SMOOTHING = {
    "GradCAM": (False, False),
    "aug smooth": (True, False),
    "eigen smooth": (False, True),
    "aug + eigen": (True, True),
}
CELL = (200, 133)  # (width, height): the photos are about 3:2
HEADER = 26
GAP = 3


def label(image: np.ndarray, text: str) -> np.ndarray:
    """``image`` (RGB) with ``text`` on a dark strip along its bottom edge."""
    image = image.copy()
    cv2.rectangle(image, (0, image.shape[0] - 20), (image.shape[1], image.shape[0]), (0, 0, 0), cv2.FILLED)
    cv2.putText(image, text, (5, image.shape[0] - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return image


def assemble(columns: Sequence[str], rows: List[List[np.ndarray]]) -> np.ndarray:
    """A white sheet: a header of column names, then the rows of equally sized cells."""
    width, height = CELL
    sheet = np.full((HEADER + len(rows) * (height + GAP), len(columns) * (width + GAP) - GAP, 3), 255, np.uint8)
    for column, name in enumerate(columns):
        x = column * (width + GAP)
        (text_width, _), _ = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, 0.55, 1)
        cv2.putText(
            sheet,
            name,
            (x + (width - text_width) // 2, HEADER - 8),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.55,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    for row, cells in enumerate(rows):
        y = HEADER + row * (height + GAP)
        for column, cell in enumerate(cells):
            x = column * (width + GAP)
            sheet[y : y + height, x : x + width] = cell
    return sheet


def render(device: torch.device, progress: bool, layer_name: str = LAYER) -> Dict[str, np.ndarray]:
    """Both grids, as RGB images by file name, explaining the layer named ``layer_name``."""
    entry = MODELS[MODEL]
    model = load_model(entry, MODEL, progress=progress).to(device)
    layer, _ = cli.select_layer(model, entry, layer_name)
    methods_rows, smoothing_rows = [], []
    for path in PHOTOS:
        photo = cli.read_photo(path)
        input_tensor = cli.model_input(photo, entry).to(device)
        category = cli.top_predictions(cli.predict(model, input_tensor), 1)[0][0]
        print(f"{path.name}: {cli.class_label(category, 1000)}", flush=True)
        cell = cv2.resize(photo, CELL, interpolation=cv2.INTER_AREA)

        def cam(method: str, aug_smooth: bool = False, eigen_smooth: bool = False) -> np.ndarray:
            grayscale = cli.compute_cam(
                method,
                model,
                layer,
                input_tensor,
                category,
                aug_smooth=aug_smooth,
                eigen_smooth=eigen_smooth,
                batch_size=64,
                progress=progress,
            )
            return cli.cam_overlay(cell, grayscale)

        first = label(np.uint8(255 * cell), imagenet_classes()[category])
        methods_rows.append([first] + [cam(method) for method in GRID_METHODS])
        smoothing_rows.append([first] + [cam("gradcam", *flags) for flags in SMOOTHING.values()])
    return {
        "methods_grid.jpg": assemble(["photo", *GRID_METHODS], methods_rows),
        "smoothing_grid.jpg": assemble(["photo", *SMOOTHING], smoothing_rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=ROOT / "docs")
    parser.add_argument(
        "--target-layer", default=LAYER, metavar="NAME", help=f"dotted name of the layer to explain (default: {LAYER})"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        sheets = render(torch.device(args.device), not args.no_progress, args.target_layer)
    except cli.CLIError as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    print(f"rendered at layer {args.target_layer} in {time.perf_counter() - start:.0f} s")
    for name, sheet in sheets.items():
        path = args.output_dir / name
        bgr = cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, 85])
        print(f"wrote {path} ({sheet.shape[1]}x{sheet.shape[0]}, {path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
