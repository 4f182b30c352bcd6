"""Per-object maps of a torchvision detector (Faster R-CNN, MobileNetV3-Large 320 FPN):
one map per detected box.

    python usage_examples/detection_torchvision_example.py --image-path examples/coffee.jpg --method gradcam

Writes ``torchvision_detections.jpg`` (each box with its class, score and map) into
--output-dir and prints one line per detection (label, score, box). The model is
``fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None)`` (91 COCO
classes) with random weights (seed 0) unless you pass --weights PATH (a state dict of
that model, e.g. torchvision's COCO_V1 weights saved with torch.save): nothing is
downloaded.

Random weights explain nothing: their maps show the mechanics only. Their class
confidences are all near 1/91, so with random weights --confidence defaults to 0 and the
--max-detections (3) best boxes are kept (3 boxes on the bundled coffee cup); with
--weights it defaults to 0.5. The photo is
resized so that its longer side is --size pixels, and the model's own transform is told
to keep that size (min_size and max_size), so boxes and maps are in the photo's pixels.
"""

import argparse
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from torchvision.models.detection import (
    FasterRCNN_MobileNet_V3_Large_320_FPN_Weights,
    fasterrcnn_mobilenet_v3_large_320_fpn,
)

from pytorch_grad_cam.detection import draw_detections, explain_detections

PHOTO = Path(__file__).resolve().parents[1] / "examples" / "coffee.jpg"
#: The COCO names ship inside torchvision (no download): index 0 is the background.
NAMES = FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1.meta["categories"]


def load_photo(path: str, size: int) -> np.ndarray:
    """The photo as (H, W, 3) RGB floats in [0, 1], its longer side ``size`` pixels."""
    bgr = cv2.imread(path)
    if bgr is None:
        raise SystemExit(f"{path}: not an image (or no such file); pass --image-path PATH")
    height, width = bgr.shape[:2]
    scale = size / max(height, width)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    rgb = cv2.cvtColor(cv2.resize(bgr, new_size, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    return np.float32(rgb) / 255


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-path", default=str(PHOTO), help="the photo (default: examples/coffee.jpg)")
    parser.add_argument("--method", default="gradcam", help="a name in pytorch_grad_cam.METHODS")
    parser.add_argument("--weights", default=None, help="a state dict of the model (default: random weights)")
    parser.add_argument("--confidence", type=float, default=None, help="default: 0.5, or 0 with random weights")
    parser.add_argument("--max-detections", type=int, default=3, help="the most boxes explained")
    parser.add_argument("--size", type=int, default=320, help="the longer side of the model's input, in pixels")
    parser.add_argument("--output-dir", default=".", help="where torchvision_detections.jpg goes")
    args = parser.parse_args()

    rgb = load_photo(args.image_path, args.size)
    torch.manual_seed(0)
    model = fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=len(NAMES), min_size=min(rgb.shape[:2]), max_size=args.size
    )
    if args.weights is None:
        print("fasterrcnn_mobilenet_v3_large_320_fpn has random weights: random weights explain nothing, the maps "
              "show the mechanics only; pass --weights PATH for a trained model", file=sys.stderr)  # fmt: skip
    else:
        model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    model.eval()  # built in training mode; the detection pass must see the model as the maps do
    confidence = args.confidence if args.confidence is not None else (0.5 if args.weights else 0.0)

    images = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0)  # torchvision takes RGB in [0, 1]
    detections = explain_detections(
        model, images, method=args.method, confidence=confidence, max_detections=args.max_detections
    )[0]
    for detection in detections:
        box = ", ".join(f"{value:.1f}" for value in detection.box)
        print(f"{NAMES[detection.label]} ({detection.label}) score {detection.score:.3g} box [{box}]")
    if not detections:
        print(f"no detection at confidence {confidence}; try a lower --confidence")

    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, "torchvision_detections.jpg")
    cv2.imwrite(path, cv2.cvtColor(draw_detections(rgb, detections, class_names=NAMES), cv2.COLOR_RGB2BGR))
    print(f"wrote {path} ({rgb.shape[1]}x{rgb.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
