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

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never the network

import numpy as np  # noqa: E402
import torch  # noqa: E402
from detection_common import example_arguments, load_photo, report  # noqa: E402

from pytorch_grad_cam.detection import explain_detections  # noqa: E402

PHOTO = Path(__file__).resolve().parents[1] / "examples" / "cat.jpg"
OUTPUT = "detr_detections.jpg"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    args = example_arguments(__doc__, str(PHOTO), "a local save_pretrained folder", 0.7, 512, OUTPUT)

    import transformers

    torch.manual_seed(0)
    if args.weights is None:
        print("DETR has random weights: random weights explain nothing, the maps show the mechanics only; "
              "pass --weights FOLDER for a trained model", file=sys.stderr)  # fmt: skip
        model = small_detr()
    else:
        model = transformers.DetrForObjectDetection.from_pretrained(args.weights, local_files_only=True).eval()

    rgb = load_photo(args.image_path, args.size)
    normalised = (rgb - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    images = torch.from_numpy(normalised).permute(2, 0, 1).unsqueeze(0)  # DETR takes normalised pixel values
    detections = explain_detections(
        model, images, method=args.method, confidence=args.confidence, max_detections=args.max_detections
    )[0]
    names = [model.config.id2label[index] for index in range(model.config.num_labels)]
    report(rgb, detections, names, args.confidence, args.output_dir, OUTPUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
