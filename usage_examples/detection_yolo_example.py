"""Per-object maps of an ultralytics YOLOv8n detector: one map per detected box.

    python usage_examples/detection_yolo_example.py --image-path examples/cat.jpg --method gradcam

Writes ``yolo_detections.jpg`` (each box with its class, score and map) into
--output-dir and prints one line per detection (label, score, box). The model is
``YOLO("yolov8n.yaml")`` with random weights (seed 0) unless you pass --weights PATH
(a trained ``.pt`` file such as yolov8n.pt): nothing is downloaded, and ultralytics'
settings file goes to a temporary directory, not your home or the repository.

Random weights explain nothing: their maps show the mechanics only. To make those
mechanics visible, the random model's batch norm statistics are set from the photo and
its class logits scaled down (calibrate_random_yolo; never done to trained weights).
Its confidences mean nothing either, so with random weights --confidence defaults to 0
and the --max-detections (3) best boxes are kept (3 boxes on the bundled cat); with
--weights it defaults to 0.25. The photo is resized so that its longer side is --size
pixels and both sides are multiples of 32 (the head's largest stride).
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

# Before ultralytics is imported: no network, no settings file in the home or the repository.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), "pytorch_grad_cam-yolo-config"))
os.environ.setdefault("YOLO_VERBOSE", "False")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from pytorch_grad_cam.detection import draw_detections, explain_detections  # noqa: E402

PHOTO = Path(__file__).resolve().parents[1] / "examples" / "cat.jpg"


def load_photo(path: str, size: int) -> np.ndarray:
    """The photo as (H, W, 3) RGB floats in [0, 1], its longer side ``size`` pixels and
    both sides multiples of 32."""
    bgr = cv2.imread(path)
    if bgr is None:
        raise SystemExit(f"{path}: not an image (or no such file); pass --image-path PATH")
    height, width = bgr.shape[:2]
    scale = size / max(height, width)
    new_width, new_height = (max(32, int(round(side * scale / 32)) * 32) for side in (width, height))
    rgb = cv2.cvtColor(cv2.resize(bgr, (new_width, new_height), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    return np.float32(rgb) / 255


def calibrate_random_yolo(yolo: object, images: torch.Tensor) -> None:
    """Only for the random-weights demo, to make the random model behave like a trained one:
    PyTorch's initialisation shrinks activations layer by layer (the head sees ~1e-9 and
    every map is zero), so batch norm's running statistics are set from one training-mode
    pass on ``images``; then the class logits are brought to a trained model's range
    (else nearly every confidence saturates at 1, where the gradient vanishes). Never do
    this to a trained model."""
    norms = [module for module in yolo.model.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: exactly this pass's statistics
    yolo.model.train()
    with torch.no_grad():
        yolo.model(images)
        for branch in yolo.model.model[-1].cv3:  # the detect head's class branches
            branch[-1].bias.zero_()
            branch[-1].weight.mul_(0.1)
    for norm in norms:
        norm.momentum = 0.03
    yolo.model.eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-path", default=str(PHOTO), help="the photo (default: examples/cat.jpg)")
    parser.add_argument("--method", default="gradcam", help="a name in pytorch_grad_cam.METHODS")
    parser.add_argument("--weights", default=None, help="a trained ultralytics .pt file (default: random weights)")
    parser.add_argument("--confidence", type=float, default=None, help="default: 0.25, or 0 with random weights")
    parser.add_argument("--max-detections", type=int, default=3, help="the most boxes explained")
    parser.add_argument("--size", type=int, default=640, help="the longer side of the model's input, in pixels")
    parser.add_argument("--output-dir", default=".", help="where yolo_detections.jpg goes")
    args = parser.parse_args()

    import ultralytics  # after the environment above is set

    torch.manual_seed(0)
    if args.weights is None:
        print("yolov8n has random weights: random weights explain nothing, the maps show the mechanics only; "
              "pass --weights PATH for a trained model", file=sys.stderr)  # fmt: skip
    yolo = ultralytics.YOLO(args.weights or "yolov8n.yaml", verbose=False)
    confidence = args.confidence if args.confidence is not None else (0.25 if args.weights else 0.0)

    rgb = load_photo(args.image_path, args.size)
    images = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0)  # YOLO takes RGB in [0, 1]
    if args.weights is None:
        calibrate_random_yolo(yolo, images)
    yolo.model.eval()  # the detection pass (no CAM yet) must see the model as the maps do
    detections = explain_detections(
        yolo, images, method=args.method, confidence=confidence, max_detections=args.max_detections
    )[0]
    names = [yolo.names[index] for index in range(len(yolo.names))]
    for detection in detections:
        box = ", ".join(f"{value:.1f}" for value in detection.box)
        print(f"{names[detection.label]} ({detection.label}) score {detection.score:.3g} box [{box}]")
    if not detections:
        print(f"no detection at confidence {confidence}; try a lower --confidence")

    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, "yolo_detections.jpg")
    cv2.imwrite(path, cv2.cvtColor(draw_detections(rgb, detections, class_names=names), cv2.COLOR_RGB2BGR))
    print(f"wrote {path} ({rgb.shape[1]}x{rgb.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
