"""The command line's video task: ``--video-model r3d_18 [--video-path clip.mp4]`` explains
a clip with a torchvision Kinetics-400 video model, window by window over time
(:func:`pytorch_grad_cam.video.explain_video`), and writes the overlays as an animation
(``<method>_video.gif``, or another format by ``--video-format``) and the maps
(``<method>_video.npz``); a folder as ``--video-path``: every video under it, mirrored
into ``--output-dir`` (``sub/a.<method>.gif``, ``.npz``), skipping what is written.

Without ``--video-path`` the clip is generated: 16 frames in which a red disc crosses
frames 5 to 10 only (:func:`pytorch_grad_cam.utils.video.moving_object_clip`). The model
has random weights (seed 0) unless ``--weights`` names a state dict of its architecture
(torchvision's Kinetics files, for one); random weights explain nothing, and the run says so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Dict, FrozenSet, List, Optional, Tuple

import cv2
import numpy as np
import torch
import torchvision.models.video as video_models
from torch import nn

from pytorch_grad_cam.cli.jobs import CLIError, check_method, choose_device, make_cam, note, one_line
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.video import (
    ANIMATION_SUFFIXES,
    VIDEO_SUFFIXES,
    moving_object_clip,
    read_video,
    show_cam_on_video,
    write_animation,
)
from pytorch_grad_cam.video import explain_video, window_starts

__all__ = ["VIDEO_MODELS", "add_video_options", "check_video_arguments", "run_video", "wants_video"]

#: --video-model: torchvision's Kinetics-400 architectures, and the default layer of each:
#: layer3 keeps a quarter of the window's frames (layer4, the automatic choice, an eighth:
#: 2 frames of 16, too few for a map that follows the clip).
VIDEO_MODELS: Dict[str, Tuple[Callable[..., nn.Module], str]] = {
    "r3d_18": (video_models.r3d_18, "layer3"),
    "mc3_18": (video_models.mc3_18, "layer3"),
    "r2plus1d_18": (video_models.r2plus1d_18, "layer3"),
}
#: Kinetics-400's normalisation (torchvision's video weights).
MEAN, STD = np.float32([0.43216, 0.394666, 0.37645]), np.float32([0.22803, 0.22145, 0.216989])
#: The options that do not apply to the video task.
NOT_FOR_VIDEO = {
    "image_path": "--image-path",
    "image_dir": "--image-dir (it takes images; give a folder of videos as --video-path)",
    "aug_smooth": "--aug-smooth",
    "metrics": "--metrics",
    "detector": "--detector (another task)",
    "clip": "--clip (another task)",
    "prompts": "--prompts",
    "image_size": "--image-size",
    "confidence": "--confidence",
}
FORMATS = [suffix[1:] for suffix in (*ANIMATION_SUFFIXES[:2], *VIDEO_SUFFIXES)]


def add_video_options(parser: argparse.ArgumentParser) -> None:
    """``--video-model`` and the options only it reads."""
    group = parser.add_argument_group(
        "video models (--video-model; --model, --image-dir, --metrics and --aug-smooth do not apply)"
    )
    group.add_argument(
        "--video-model",
        choices=list(VIDEO_MODELS),
        help="explain a clip with this torchvision Kinetics-400 model (random weights, which explain "
        "nothing, unless --weights gives its state dict; target layer default: layer3)",
    )
    group.add_argument(
        "--video-path",
        type=Path,
        metavar="FILE",
        help="the clip (mp4, avi, gif, webp; implies --video-model r3d_18), or a folder of them (each "
        "written as sub/a.<method>.gif and .npz under --output-dir); default: a generated 16-frame clip "
        "with a red disc in frames 5-10 only",
    )
    group.add_argument(
        "--window",
        type=int,
        default=16,
        metavar="N",
        help="frames per model call (the model's clip length; default: 16); a longer clip is explained "
        "window by window, each window's map explaining the model's decision on that window",
    )
    group.add_argument("--frame-size", type=int, default=112, metavar="N", help="frames go in at NxN (default: 112)")
    group.add_argument("--max-frames", type=int, metavar="N", help="read at most N frames of --video-path")
    group.add_argument("--video-format", choices=FORMATS, default="gif", help="the overlays' file (default: gif)")


def wants_video(args: argparse.Namespace) -> bool:
    """Whether the command line asks for the video task."""
    return getattr(args, "video_model", None) is not None or getattr(args, "video_path", None) is not None


def check_video_arguments(args: argparse.Namespace, explicit: FrozenSet[str]) -> None:
    """Refuse what the video task cannot do, before anything is built.

    Raises:
        CLIError: (exit code 2) naming an option that does not apply, or a bad number.
    """
    for name, option in NOT_FOR_VIDEO.items():
        if getattr(args, name, None):
            raise CLIError(f"{option} does not apply with --video-model", code=2)
    for name, option in (("model", "--model"), ("max_detections", "--max-detections")):
        if name in explicit:
            raise CLIError(f"{option} does not apply with --video-model (it names the model)", code=2)
    for name in ("window", "frame_size", "max_frames"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be at least 1, got {value}", code=2)
    if "," in args.method:
        raise CLIError(f"--method {args.method}: one method per video", code=2)


def _category(text: Optional[str]) -> Optional[int]:
    """``--category`` as a Kinetics-400 index: None, an index 0-399 or a class name.

    Raises:
        CLIError: (exit code 2) for anything else."""
    if text is None:
        return None
    names = video_models.R3D_18_Weights.KINETICS400_V1.meta["categories"]
    index = int(text) if text.strip().isdigit() else (names.index(text.strip()) if text.strip() in names else -1)
    if not 0 <= index < len(names):
        raise CLIError(f"--category {text}: pass a Kinetics-400 class index 0-399 or name (e.g. 'abseiling')", code=2)
    return index


def _build(name: str, weights: Optional[Path]) -> nn.Module:
    """The video model in eval mode: random weights (seed 0) or the state dict ``weights``.

    Raises:
        CLIError: for weights that are missing, unreadable or of another architecture.
    """
    torch.manual_seed(0)
    model = VIDEO_MODELS[name][0](weights=None)
    if weights is None:
        note(
            f"{name} has random weights: random weights explain nothing, the maps show the mechanics only; "
            f"pass --weights with a state dict of {name} (torchvision's Kinetics-400 file) for a trained model"
        )
        return model.eval()
    if not Path(weights).is_file():
        raise CLIError(f"--weights {weights}: no such file")
    try:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except (RuntimeError, OSError, ValueError, TypeError) as error:
        raise CLIError(f"--weights {weights}: not a {name} state dict ({one_line(error)[:200]})") from None
    return model.eval()


def _clip(args: argparse.Namespace, source: Optional[Path]) -> Tuple[np.ndarray, float, str]:
    """The frames (T, H, W, 3) float in [0, 1] of ``source`` (None: the generated clip),
    their fps, and a name for messages.

    Raises:
        CLIError: for a file that is missing or not a video."""
    if source is None:
        return moving_object_clip(frames=16, size=args.frame_size), 8.0, "a generated clip (red disc in frames 5-10)"
    try:
        frames, fps = read_video(source, max_frames=args.max_frames)
    except (FileNotFoundError, ValueError) as error:
        raise CLIError(f"--video-path: {error}") from None
    return frames, fps or 8.0, str(source)


def _model_input(frames: np.ndarray, size: int) -> torch.Tensor:
    """(1, 3, T, size, size): the frames resized (area) and normalised as Kinetics-400's."""
    resized = np.stack([cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA) for frame in frames])
    return torch.from_numpy((resized - MEAN) / STD).permute(3, 0, 1, 2)[None].contiguous()


def _window_classes(model: nn.Module, clip: torch.Tensor, window: int, device: torch.device) -> List[int]:
    """Each window's top class (one forward pass per window, without gradients); printed."""
    categories = video_models.R3D_18_Weights.KINETICS400_V1.meta["categories"]
    frames, tops = clip.shape[2], []
    length = min(window, frames)
    for start in window_starts(frames, length):
        with torch.no_grad():
            probabilities = model(clip[:, :, start : start + length].to(device)).softmax(dim=1)[0]
        top = int(probabilities.argmax())
        tops.append(top)
        print(
            f"  frames {start}-{start + length - 1}: {categories[top]} ({top}) {100 * float(probabilities[top]):.1f}%"
        )
    return tops


def run_video(args: argparse.Namespace, explicit: FrozenSet[str] = frozenset()) -> List[Path]:
    """Explain a clip (or a folder of them) as the arguments say: print each window's top Kinetics class, write
    ``<method>_video.<format>`` (each frame with its map) and ``<method>_video.npz`` (maps
    (T, N, N) at the model's input size, window starts, classes, fps). With a folder as
    ``--video-path``: every video under it (recursive), into ``--output-dir`` mirroring its
    tree as ``sub/a.<method>.<format>`` and ``.npz``; those already written are skipped,
    and a file OpenCV cannot read is reported and skipped.

    Returns:
        The animations written.

    Raises:
        CLIError: on any user error (in folder mode, also when no video was written).
    """
    check_video_arguments(args, explicit)
    method = check_method(args.method)
    category = _category(args.category)
    name = args.video_model or "r3d_18"
    device = choose_device(args.device, args.use_cuda)
    jobs, done = _jobs(args, method)
    model = _build(name, args.weights).to(device)
    layer_path = args.target_layer or VIDEO_MODELS[name][1]
    modules = dict(model.named_modules())
    if layer_path not in modules or not layer_path:
        raise CLIError(f"--target-layer {layer_path!r} is not a layer of {name}; e.g. layer2, layer3, layer4.1")
    targets = None if category is None else [ClassifierOutputTarget(category)]
    options = {"batch_size": args.batch_size, "progress": not args.no_progress}
    written = []
    with make_cam(method, model, modules[layer_path], **options) as cam:
        for source, stem in jobs:
            try:
                frames, fps, title = _clip(args, source)
            except CLIError as error:
                if len(jobs) == 1 and source == args.video_path:
                    raise
                print(f"skipped {source}: {error}", file=sys.stderr)
                continue
            clip = _model_input(frames, args.frame_size)
            print(f"{name} on {title} ({len(frames)} frames, windows of {min(args.window, len(frames))}):")
            tops = _window_classes(model, clip, args.window, device)
            print(
                f"{method} at layer {layer_path} for "
                + ("each window's top class" if targets is None else f"{category}")
            )
            try:
                maps = explain_video(cam, clip, targets, clip_length=args.window, eigen_smooth=args.eigen_smooth)[0]
            except (ValueError, TypeError, IndexError) as error:
                raise CLIError(f"{method} at layer {layer_path}: {error}") from None
            written.append(_write(stem, frames, maps, fps, args.video_format, tops, args.window))
    if not written and jobs and not done:
        raise CLIError(f"--video-path {args.video_path}: no video could be read")
    return written


#: The files a folder given as --video-path is searched for.
VIDEO_FILES = (".mp4", ".avi", ".mov", ".mkv", ".gif", ".webp")


def _jobs(args: argparse.Namespace, method: str) -> Tuple[List[Tuple[Optional[Path], Path]], int]:
    """(source, output stem) of each clip to explain: the generated clip (source None), the
    file, or each video under the folder not yet done (the stem mirrors its place); and
    how many were done before.

    Raises:
        CLIError: for a folder without a video file."""
    output_dir = Path(args.output_dir)
    folder = args.video_path
    if folder is None or not folder.is_dir():
        return [(folder, output_dir / f"{method}_video")], 0
    sources = sorted(path for path in folder.rglob("*") if path.suffix.lower() in VIDEO_FILES and path.is_file())
    if not sources:
        raise CLIError(f"--video-path {folder}: no video file ({', '.join(VIDEO_FILES)}) under it", code=2)
    jobs, done = [], 0
    for source in sources:
        stem = output_dir / source.relative_to(folder).parent / f"{source.stem}.{method}"
        outputs = (stem.parent / f"{stem.name}.npz", stem.parent / f"{stem.name}.{args.video_format}")
        if all(path.is_file() for path in outputs):
            done += 1
            continue
        jobs.append((source, stem))
    print(f"{len(sources)} videos under {folder}; {done} already done, {len(jobs)} to explain")
    return jobs, done


def _write(stem: Path, frames: np.ndarray, maps: np.ndarray, fps: float, kind: str, tops: list, window: int) -> Path:
    """The animation ``stem.<kind>`` (frames at their own size, maps resized to them) and
    ``stem.npz``; the animation's path.

    Raises:
        CLIError: if a file cannot be written."""
    height, width = frames.shape[1:3]
    resized = np.stack([cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR) for m in maps])
    overlays = show_cam_on_video(frames, np.clip(resized, 0, 1))
    animation, arrays = stem.parent / f"{stem.name}.{kind}", stem.parent / f"{stem.name}.npz"
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        write_animation(animation, overlays, fps)
        starts = window_starts(len(frames), min(window, len(frames)))
        np.savez_compressed(arrays, maps=maps, window_starts=np.array(starts), classes=np.array(tops), fps=fps)
    except OSError as error:
        raise CLIError(f"cannot write into {stem.parent} ({error})") from None
    print(f"wrote {animation}, {arrays}")
    return animation
