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

import os
import sys
import tempfile
from pathlib import Path

# Before ultralytics is imported: no network, no settings file in the home or the repository.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), "pytorch_grad_cam-yolo-config"))
os.environ.setdefault("YOLO_VERBOSE", "False")

import torch  # noqa: E402
from detection_common import example_arguments, load_photo, report  # noqa: E402

from pytorch_grad_cam.detection import explain_detections  # noqa: E402

PHOTO = Path(__file__).resolve().parents[1] / "examples" / "cat.jpg"
OUTPUT = "yolo_detections.jpg"


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
    args = example_arguments(__doc__, str(PHOTO), "a trained ultralytics .pt file", 0.25, 640, OUTPUT)

    import ultralytics  # after the environment above is set

    torch.manual_seed(0)
    if args.weights is None:
        print("yolov8n has random weights: random weights explain nothing, the maps show the mechanics only; "
              "pass --weights PATH for a trained model", file=sys.stderr)  # fmt: skip
    yolo = ultralytics.YOLO(args.weights or "yolov8n.yaml", verbose=False)

    rgb = load_photo(args.image_path, args.size, multiple=32)  # YOLO's strides divide both sides
    images = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0)  # YOLO takes RGB in [0, 1]
    if args.weights is None:
        calibrate_random_yolo(yolo, images)
    yolo.model.eval()  # the detection pass (no CAM yet) must see the model as the maps do
    detections = explain_detections(
        yolo, images, method=args.method, confidence=args.confidence, max_detections=args.max_detections
    )[0]
    names = [yolo.names[index] for index in range(len(yolo.names))]
    report(rgb, detections, names, args.confidence, args.output_dir, OUTPUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
