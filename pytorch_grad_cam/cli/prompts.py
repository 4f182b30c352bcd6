"""The command line's prompt task: ``--clip NAME --prompts "a cat,a dog"`` explains one
photo for each text prompt with an open_clip model (one map per prompt, and which prompt
wins where), through :func:`pytorch_grad_cam.vision_language.explain_prompts`.

open_clip is imported here, when the task runs, never by the library. The model is built
from its config with random weights (seed 0) unless ``--weights`` names open_clip
pretrained weights (a local checkpoint file, or a tag such as ``openai``, which open_clip
downloads); random weights explain nothing, and the run says so.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import List, Tuple

import cv2
import numpy as np
import torch

from pytorch_grad_cam.cli.detect import BUNDLED_PHOTO
from pytorch_grad_cam.cli.jobs import CLIError, check_method, choose_device, encode_image, note, read_photo
from pytorch_grad_cam.utils.image import preprocess_image
from pytorch_grad_cam.vision_language import PromptMaps, draw_prompt_maps, explain_prompts

__all__ = ["add_prompt_options", "check_prompt_arguments", "parse_prompts", "run_prompts", "square"]

#: The options that do not apply to the prompt task (the photo's maps are per prompt).
NOT_FOR_PROMPTS = {
    "category": "--category",
    "image_size": "--image-size",
    "confidence": "--confidence",
    "aug_smooth": "--aug-smooth",
    "eigen_smooth": "--eigen-smooth",
    "metrics": "--metrics",
    "image_dir": "--image-dir",
    "target_layer": "--target-layer",
}


def add_prompt_options(parser: argparse.ArgumentParser) -> None:
    """``--clip`` and ``--prompts``."""
    group = parser.add_argument_group(
        "image-text models (--clip; --model, --category, --metrics and smoothing do not apply)"
    )
    group.add_argument(
        "--clip",
        metavar="NAME",
        help="explain the photo for each of --prompts with this open_clip model (e.g. ViT-B-32; "
        "random weights unless --weights names a checkpoint file or an open_clip tag)",
    )
    group.add_argument(
        "--prompts",
        type=parse_prompts,
        metavar="TEXTS",
        help='with --clip: comma-separated text prompts, e.g. "a photo of a cat,a photo of a dog"',
    )


def parse_prompts(text: str) -> List[str]:
    """The comma-separated prompts, stripped; at least one.

    Raises:
        argparse.ArgumentTypeError: if no prompt is left.
    """
    prompts = [prompt.strip() for prompt in text.split(",") if prompt.strip()]
    if not prompts:
        raise argparse.ArgumentTypeError(f"{text!r}: no prompt; pass comma-separated texts")
    return prompts


def check_prompt_arguments(args: argparse.Namespace) -> None:
    """Refuse what the prompt task cannot do, before anything is built.

    Raises:
        CLIError: for --prompts without --clip (or the reverse), a missing open_clip, or
            an option that does not apply (named).
    """
    if args.prompts is not None and args.clip is None:
        raise CLIError("--prompts needs --clip NAME (an open_clip model, e.g. ViT-B-32)", code=2)
    if args.prompts is None:
        raise CLIError('--clip needs --prompts "text one,text two"', code=2)
    for name, option in NOT_FOR_PROMPTS.items():
        if getattr(args, name, None):
            raise CLIError(f"{option} does not apply with --clip (one map per prompt)", code=2)
    if importlib.util.find_spec("open_clip") is None:
        raise CLIError("--clip needs open_clip: pip install open_clip_torch", code=2)


def square(photo: np.ndarray, size: int) -> np.ndarray:
    """The photo's centre square resized to ``size`` x ``size`` (CLIP's own crop)."""
    height, width = photo.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return cv2.resize(photo[top : top + side, left : left + side], (size, size), interpolation=cv2.INTER_AREA)


def _build(name: str, weights: object) -> Tuple[torch.nn.Module, object]:
    """The open_clip model and its tokenizer.

    Raises:
        CLIError: for an unknown model name or weights open_clip cannot load.
    """
    import open_clip

    if name not in open_clip.list_models():
        raise CLIError(f"--clip {name}: not an open_clip model; e.g. ViT-B-32, RN50 (open_clip.list_models())", code=2)
    torch.manual_seed(0)
    try:
        model = open_clip.create_model(name, pretrained=None if weights is None else str(weights))
    except (RuntimeError, OSError, ValueError) as error:
        raise CLIError(f"--weights {weights}: open_clip cannot load it ({str(error).splitlines()[0]})") from None
    if weights is None:
        note(
            f"{name} has random weights: random weights explain nothing, the maps show the mechanics only; "
            "pass --weights with a checkpoint file or an open_clip tag (e.g. openai) for a trained model"
        )
    return model.eval(), open_clip.get_tokenizer(name)


def run_prompts(args: argparse.Namespace) -> PromptMaps:
    """Explain ``args.image_path`` for each of ``args.prompts`` with the open_clip model
    ``args.clip``: print one line per prompt (its cosine with the photo, the share of
    pixels it wins), write ``<method>_prompts.jpg`` (photo, one overlay per prompt, the
    winners) and ``<method>_prompts.npz`` (maps, raw maps, cosines, winners, prompts).

    Returns:
        The :class:`~pytorch_grad_cam.vision_language.PromptMaps`.

    Raises:
        CLIError: on any user error.
    """
    check_prompt_arguments(args)
    method = check_method(args.method)
    photo = read_photo(args.image_path if args.image_path is not None else BUNDLED_PHOTO)
    device = choose_device(args.device, args.use_cuda)
    model, tokenizer = _build(args.clip, args.weights)
    model = model.to(device)
    config = model.visual.preprocess_cfg
    rgb = square(photo, int(config["size"][0]) if isinstance(config["size"], (list, tuple)) else int(config["size"]))
    image = preprocess_image(rgb, mean=config["mean"], std=config["std"]).to(device)
    options = {"batch_size": args.batch_size, "progress": not args.no_progress} if method in PERTURBING else {}
    try:
        result = explain_prompts(model, image, args.prompts, method=method, tokenizer=tokenizer, **options)
    except (ValueError, TypeError) as error:
        raise CLIError(f"{method} with --clip {args.clip}: {error}") from None
    for index, prompt in enumerate(result.prompts):
        share = 100 * float((result.winners[0] == index).mean())
        print(f"{prompt!r}: cosine {result.scores[0, index]:.4f}, wins {share:.1f}% of the pixels")
    _write(Path(args.output_dir), method, rgb, result)
    return result


#: The methods whose constructors take ``batch_size`` and ``progress``.
PERTURBING = {"scorecam", "ablationcam"}


def _write(output_dir: Path, method: str, rgb: np.ndarray, result: PromptMaps) -> None:
    """The picture and the maps of the prompt task.

    Raises:
        CLIError: if a file cannot be written.
    """
    picture = draw_prompt_maps(rgb, result)
    arrays = {"maps": result.maps[0], "scores": result.scores[0], "winners": result.winners[0]}
    if result.raw_maps is not None:
        arrays["raw_maps"] = result.raw_maps[0]
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / f"{method}_prompts.jpg").write_bytes(encode_image(picture, ".jpg"))
        np.savez_compressed(output_dir / f"{method}_prompts.npz", prompts=np.array(result.prompts), **arrays)
    except OSError as error:
        raise CLIError(f"cannot write into {output_dir} ({error.strerror or error})") from None
    print(f"wrote {output_dir / f'{method}_prompts.jpg'}, {output_dir / f'{method}_prompts.npz'}")
