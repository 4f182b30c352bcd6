"""Per-object maps of a HuggingFace DETR detector (DetrForObjectDetection): one map per
detected box.

    python usage_examples/detection_detr_example.py --image-path examples/cat.jpg --method gradcam

Writes ``detr_detections.jpg`` (each box with its class, score and map) into
--output-dir and prints one line per detection (label, score, box). The model is a
small DETR built from a config (a ResNet of 8-32 channels, one encoder and one decoder
layer, 10 object queries) with random weights (seed 0) unless you pass --weights FOLDER
(a local folder saved by ``save_pretrained``, e.g. of facebook/detr-resnet-50, loaded
with ``from_pretrained``): nothing is downloaded (HF_HUB_OFFLINE=1).

Random weights explain nothing: their maps show the mechanics only. Their class
confidences are spread thin over the classes, so with random weights --confidence
defaults to 0 and the --max-detections (3) best boxes are kept (1 box on the bundled cat: NMS merges the
random queries' overlapping boxes); with --weights it defaults to 0.7. The photo is resized so that its longer side is --size pixels and
normalised with ImageNet's mean and std, as DetrImageProcessor does by default.
"""

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never the network

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from pytorch_grad_cam.detection import draw_detections, explain_detections  # noqa: E402

PHOTO = Path(__file__).resolve().parents[1] / "examples" / "cat.jpg"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


def small_detr() -> torch.nn.Module:
    """A small DETR with random weights: a tiny ResNet backbone (no timm, no download)."""
    import transformers

    backbone = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], layer_type="basic", out_features=["stage4"]
    )
    config = transformers.DetrConfig(
        backbone_config=backbone, use_timm_backbone=False, use_pretrained_backbone=False,
        d_model=32, encoder_layers=1, encoder_ffn_dim=32, encoder_attention_heads=2,
        decoder_layers=1, decoder_ffn_dim=32, decoder_attention_heads=2, num_queries=10,
        init_std=0.2,  # with the default 0.02 every query predicts the same box
    )  # fmt: skip
    return transformers.DetrForObjectDetection(config).eval()  # built in training mode: dropout on


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-path", default=str(PHOTO), help="the photo (default: examples/cat.jpg)")
    parser.add_argument("--method", default="gradcam", help="a name in pytorch_grad_cam.METHODS")
    parser.add_argument("--weights", default=None, help="a local save_pretrained folder (default: random weights)")
    parser.add_argument("--confidence", type=float, default=None, help="default: 0.7, or 0 with random weights")
    parser.add_argument("--max-detections", type=int, default=3, help="the most boxes explained")
    parser.add_argument("--size", type=int, default=512, help="the longer side of the model's input, in pixels")
    parser.add_argument("--output-dir", default=".", help="where detr_detections.jpg goes")
    args = parser.parse_args()

    import transformers

    torch.manual_seed(0)
    if args.weights is None:
        print("DETR has random weights: random weights explain nothing, the maps show the mechanics only; "
              "pass --weights FOLDER for a trained model", file=sys.stderr)  # fmt: skip
        model = small_detr()
    else:
        model = transformers.DetrForObjectDetection.from_pretrained(args.weights, local_files_only=True).eval()
    confidence = args.confidence if args.confidence is not None else (0.7 if args.weights else 0.0)

    rgb = load_photo(args.image_path, args.size)
    normalised = (rgb - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    images = torch.from_numpy(normalised).permute(2, 0, 1).unsqueeze(0)  # DETR takes normalised pixel values
    detections = explain_detections(
        model, images, method=args.method, confidence=confidence, max_detections=args.max_detections
    )[0]
    names = [model.config.id2label[index] for index in range(model.config.num_labels)]
    for detection in detections:
        box = ", ".join(f"{value:.1f}" for value in detection.box)
        print(f"{names[detection.label]} ({detection.label}) score {detection.score:.3g} box [{box}]")
    if not detections:
        print(f"no detection at confidence {confidence}; try a lower --confidence")

    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, "detr_detections.jpg")
    cv2.imwrite(path, cv2.cvtColor(draw_detections(rgb, detections, class_names=names), cv2.COLOR_RGB2BGR))
    print(f"wrote {path} ({rgb.shape[1]}x{rgb.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
