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

import sys
from pathlib import Path

import torch
from detection_common import example_arguments, load_photo, report
from torchvision.models.detection import (
    FasterRCNN_MobileNet_V3_Large_320_FPN_Weights,
    fasterrcnn_mobilenet_v3_large_320_fpn,
)

from pytorch_grad_cam.detection import explain_detections

PHOTO = Path(__file__).resolve().parents[1] / "examples" / "coffee.jpg"
OUTPUT = "torchvision_detections.jpg"
#: The COCO names ship inside torchvision (no download): index 0 is the background.
NAMES = FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1.meta["categories"]


def main() -> int:
    args = example_arguments(__doc__, str(PHOTO), "a state dict of the model", 0.5, 320, OUTPUT)
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

    images = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0)  # torchvision takes RGB in [0, 1]
    detections = explain_detections(
        model, images, method=args.method, confidence=args.confidence, max_detections=args.max_detections
    )[0]
    report(rgb, detections, NAMES, args.confidence, args.output_dir, OUTPUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
