"""The explorer's image-text mode, without gradio: an open_clip model built as
``cam.py --clip`` builds it (random weights, seed 0), the photo's maps for comma-separated
text prompts (one per prompt per method, with its cosine score, and which prompt wins
where), the Python snippet and the ``cam.py --clip`` command that reproduce them, and
the files to download. A map here is
:func:`pytorch_grad_cam.vision_language.explain_prompts`' own.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from pytorch_grad_cam import get_method
from pytorch_grad_cam.cli.jobs import method_options
from pytorch_grad_cam.cli.prompts import parse_prompts, square
from pytorch_grad_cam.explorer.session import cancellable, method_arguments, photo_line, png_name, save_files
from pytorch_grad_cam.utils.image import preprocess_image, show_cam_on_image
from pytorch_grad_cam.vision_language import PromptMaps, draw_prompt_maps, explain_prompts

__all__ = [
    "CLIP_MODELS",
    "CLIP_PREFIX",
    "LoadedClip",
    "PromptView",
    "clip_choices",
    "clip_name",
    "compute_prompt_view",
    "loaded_clip",
    "prompt_command",
    "prompt_snippet",
    "read_prompts",
    "write_prompt_downloads",
]

#: How the model list names an image-text model ("clip: ViT-B-32").
CLIP_PREFIX = "clip: "
#: The open_clip models offered.
CLIP_MODELS = ("ViT-B-32",)


def clip_choices() -> List[str]:
    """The model list's image-text entries (none without open_clip)."""
    return [CLIP_PREFIX + name for name in CLIP_MODELS] if importlib.util.find_spec("open_clip") else []


def clip_name(choice: str) -> Optional[str]:
    """The open_clip model a model-list entry names ('clip: ViT-B-32' -> 'ViT-B-32'), or None."""
    name = choice[len(CLIP_PREFIX) :] if choice.startswith(CLIP_PREFIX) else None
    return name if name in CLIP_MODELS else None


def read_prompts(text: str) -> List[str]:
    """The comma-separated prompts of ``text``, stripped (as ``cam.py --prompts`` reads them).

    Raises:
        ValueError: if no prompt is left.
    """
    try:
        return parse_prompts(text or "")
    except argparse.ArgumentTypeError as error:
        raise ValueError(str(error)) from None


@dataclass
class LoadedClip:
    """An open_clip model (random weights, seed 0), its tokenizer, and its input: the side
    of the centre square, the mean and std."""

    name: str
    model: torch.nn.Module
    tokenizer: Any
    size: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]

    def square(self, photo: np.ndarray) -> np.ndarray:
        """The photo's centre square at the model's size (cam.py --clip's crop)."""
        return square(photo, self.size)


_LOADED: Dict[str, LoadedClip] = {}
_LOCK = threading.Lock()


def loaded_clip(name: str) -> LoadedClip:
    """The open_clip model ``name`` built from its config with seed 0 (the global random
    state left as it was), on first use, and kept.

    Raises:
        ValueError: for a model not offered.
        ModuleNotFoundError: without open_clip.
    """
    if name not in CLIP_MODELS:
        raise ValueError(f"image-text model {name!r} is not offered; choose one of {', '.join(CLIP_MODELS)}")
    with _LOCK:
        if name not in _LOADED:
            import open_clip

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = open_clip.create_model(name, pretrained=None).eval()
            config = model.visual.preprocess_cfg
            size = config["size"][0] if isinstance(config["size"], (list, tuple)) else config["size"]
            _LOADED[name] = LoadedClip(
                name, model, open_clip.get_tokenizer(name), int(size), tuple(config["mean"]), tuple(config["std"])
            )
        return _LOADED[name]


@dataclass
class PromptView:
    """One image-text run: the photo's centre square, the prompts, and per method the
    library's :class:`PromptMaps` and the maps (P, h, w); the overlays by caption (one per
    prompt per method, and each method's picture of which prompt wins where)."""

    clip: str
    photo_path: Path
    square: np.ndarray
    input_tensor: torch.Tensor
    prompts: List[str]
    results: Dict[str, PromptMaps] = field(default_factory=dict)
    maps: Dict[str, np.ndarray] = field(default_factory=dict)
    overlays: Dict[str, np.ndarray] = field(default_factory=dict)


def compute_prompt_view(
    clip: LoadedClip,
    photo_path: Path,
    photo: np.ndarray,
    methods: Sequence[str],
    prompts: Sequence[str],
    cancelled: Callable[[], bool] = lambda: False,
) -> PromptView:
    """Each method's map of each prompt (``explain_prompts``), their cosines and winners.
    ``cancelled()`` is asked before each forward pass of the model.

    Raises:
        ValueError: for no prompt, an unknown method or one that ignores the target (EigenCAM).
        Cancelled: once ``cancelled()`` turned true.
    """
    if not prompts:
        raise ValueError("no prompt; type comma-separated texts, e.g. a photo of a cat, a photo of a dog")
    rgb = clip.square(photo)
    view = PromptView(
        clip.name, Path(photo_path), rgb, preprocess_image(rgb, mean=clip.mean, std=clip.std), list(prompts)
    )

    # The wrappers call the model's parts, not its forward: each part checks.
    with cancellable(list(clip.model.children()), cancelled):
        for method in methods:
            options = method_options(get_method(method), 32, True)
            result = explain_prompts(
                clip.model, view.input_tensor, view.prompts, method, tokenizer=clip.tokenizer, **options
            )
            view.results[method], view.maps[method] = result, result.maps[0]
            for prompt, heat, score in zip(result.prompts, result.maps[0], result.scores[0]):
                view.overlays[f"{method}: {prompt} (cosine {score:.3f})"] = show_cam_on_image(rgb, heat, use_rgb=True)
            view.overlays[f"{method}: which prompt wins where"] = draw_prompt_maps(rgb, result)
    return view


def prompt_snippet(view: PromptView, photo_name: Optional[str] = None) -> str:
    """Python code that computes the view's maps with the library (the model built as
    cam.py --clip builds it, the photo's centre square); it leaves ``maps`` (method ->
    (P, h, w)) and ``results`` (method -> PromptMaps, with the cosines and the winners)."""
    photo = photo_name if photo_name is not None else str(view.photo_path)
    lines = [
        "import cv2",
        "import numpy as np",
        "import open_clip",
        "import torch",
        "",
        "from pytorch_grad_cam.cli.prompts import square",
        "from pytorch_grad_cam.utils.image import preprocess_image",
        "from pytorch_grad_cam.vision_language import explain_prompts",
        "",
        "torch.manual_seed(0)  # random weights, as cam.py --clip builds them: pretrained='openai' for trained ones",
        f"model = open_clip.create_model({view.clip!r}, pretrained=None).eval()",
        f"tokenizer = open_clip.get_tokenizer({view.clip!r})",
        "config = model.visual.preprocess_cfg",
        photo_line(photo),
        f"rgb = square(photo, {view.square.shape[0]})",
        'input_tensor = preprocess_image(rgb, mean=config["mean"], std=config["std"])',
        f"prompts = {view.prompts!r}",
        "results, maps = {}, {}",
    ]
    for method in view.maps:
        options = method_arguments(method)
        lines.append(
            f"results[{method!r}] = explain_prompts(model, input_tensor, prompts, {method!r}, tokenizer=tokenizer{options})"
        )
        lines.append(f"maps[{method!r}] = results[{method!r}].maps[0]  # (prompts, h, w)")
    return "\n".join(lines) + "\n"


def prompt_command(view: PromptView, photo_name: Optional[str] = None) -> str:
    """The ``cam.py --clip NAME --prompts ...`` command of each method, one per line."""
    photo = photo_name if photo_name is not None else str(view.photo_path)
    return "\n".join(
        shlex.join(
            ["python", "cam.py", "--clip", view.clip, "--prompts", ",".join(view.prompts), "--image-path", photo]
            + ["--method", method]
        )
        for method in view.maps
    )


def write_prompt_downloads(view: PromptView, folder: Path) -> List[Path]:
    """The view's files in ``folder`` (created if needed): ``maps.npz`` (``prompts``; per
    method its maps (P, h, w), ``<method>_scores`` (P,) cosines and ``<method>_winners``
    (h, w)) and a PNG per overlay.

    Raises:
        OSError: if the folder or a file cannot be written.
    """
    arrays: Dict[str, np.ndarray] = {"prompts": np.array(view.prompts)}
    for method, result in view.results.items():
        arrays[method] = result.maps[0]
        arrays[f"{method}_scores"] = result.scores[0]
        arrays[f"{method}_winners"] = result.winners[0]
    pictures = {
        f"{png_name(caption.split(':')[0])}_{number}": overlay
        for number, (caption, overlay) in enumerate(view.overlays.items())
    }
    return save_files(folder, arrays, pictures)
