"""Explaining CLIP: one map per text prompt, and which prompt wins where, for an
open_clip model.

    python usage_examples/clip_prompts_example.py --image-path examples/cat.jpg \\
        --prompts "a photo of a cat,a photo of a dog,a photo of grass" --model ViT-B-32 --weights openai

Writes ``clip_prompts.jpg`` into --output-dir: the photo, one overlay per prompt
(captioned with the prompt and its cosine similarity to the photo), and the winners map
(each pixel in the colour of the prompt whose map is largest there) with a legend. It
prints one line per prompt: its cosine and the share of pixels it wins.

The model is ``open_clip.create_model(--model)`` with random weights (seed 0) unless
--weights names open_clip pretrained weights (a tag such as ``openai``, which open_clip
downloads, or a local checkpoint file): nothing is downloaded without it. Random weights
explain nothing: their maps show the mechanics only. The photo is centre-cropped to a
square and resized to --size pixels (default: the model's own input size; another size
resizes the model's position embeddings), then normalised as the model expects.
"""

import argparse
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import open_clip
import torch

from pytorch_grad_cam.utils.image import preprocess_image
from pytorch_grad_cam.vision_language import draw_prompt_maps, explain_prompts

PHOTO = Path(__file__).resolve().parents[1] / "examples" / "cat.jpg"
OUTPUT = "clip_prompts.jpg"


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-path", default=str(PHOTO), help="the photo (default: examples/cat.jpg)")
    parser.add_argument(
        "--prompts", default="a photo of a cat,a photo of a dog,a photo of grass", help="comma-separated prompts"
    )
    parser.add_argument("--model", default="ViT-B-32", help="an open_clip model name (open_clip.list_models())")
    parser.add_argument("--weights", default=None, help="open_clip pretrained weights: a tag or a checkpoint file")
    parser.add_argument("--method", default="gradcam", help="a name in pytorch_grad_cam.METHODS")
    parser.add_argument("--size", type=int, default=None, help="the model's input side (default: its own)")
    parser.add_argument("--output-dir", default=".", help=f"where {OUTPUT} goes")
    return parser.parse_args()


def square_photo(path: str, size: int) -> np.ndarray:
    """The photo's centre square, resized to ``size`` x ``size``, RGB floats in [0, 1]."""
    bgr = cv2.imread(path)
    if bgr is None:
        raise SystemExit(f"{path}: not an image (or no such file); pass --image-path PATH")
    height, width = bgr.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = cv2.resize(bgr[top : top + side, left : left + side], (size, size), interpolation=cv2.INTER_AREA)
    return np.float32(cv2.cvtColor(square, cv2.COLOR_BGR2RGB)) / 255


def main() -> int:
    args = arguments()
    prompts = [prompt.strip() for prompt in args.prompts.split(",") if prompt.strip()]
    torch.manual_seed(0)
    model = open_clip.create_model(args.model, pretrained=args.weights, force_image_size=args.size)
    if args.weights is None:
        print(f"{args.model} has random weights: random weights explain nothing, the maps show the mechanics "
              "only; pass --weights openai (or another tag of open_clip.list_pretrained()) for a trained model",
              file=sys.stderr)  # fmt: skip
    model.eval()
    tokenizer = open_clip.get_tokenizer(args.model)
    size = model.visual.preprocess_cfg["size"][0] if args.size is None else args.size
    rgb = square_photo(args.image_path, size)
    image = preprocess_image(rgb, mean=model.visual.preprocess_cfg["mean"], std=model.visual.preprocess_cfg["std"])

    result = explain_prompts(model, image, prompts, method=args.method, tokenizer=tokenizer)
    for index, prompt in enumerate(result.prompts):
        share = 100 * float((result.winners[0] == index).mean())
        print(f"{prompt!r}: cosine {result.scores[0, index]:.4f}, wins {share:.1f}% of the pixels")
    picture = draw_prompt_maps(rgb, result)
    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, OUTPUT)
    cv2.imwrite(path, cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    print(f"wrote {path} ({picture.shape[1]}x{picture.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
