"""What the explorer computes, without gradio: the bundled photos and checked uploads,
the model's top classes and a search of its labels, the maps of several methods with
their metrics, the Python snippet and the ``cam.py`` command that reproduce a view, and
the files to download (.npz maps, .png overlays). The page (:mod:`.app`) only shows it.

A map here is the library's own call, word for word what the snippet says: the photo
read by the command line's reader, resized whole to the model's input and normalised,
and ``cam(input_tensor, targets=[ClassifierOutputTarget(category)], ...)[0]``.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from pytorch_grad_cam import get_method
from pytorch_grad_cam.cli.jobs import (
    UnreadableImage,
    cam_overlay,
    encode_image,
    make_cam,
    method_options,
    model_input,
    predict,
    read_photo,
)
from pytorch_grad_cam.cli.metrics import METRICS, compute_metrics
from pytorch_grad_cam.explorer.models import LoadedModel
from pytorch_grad_cam.utils.hooks import Hooks
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

__all__ = [
    "method_arguments",
    "photo_line",
    "png_name",
    "save_files",
    "cancellable",
    "BUNDLED_PHOTOS",
    "MAX_UPLOAD_BYTES",
    "MAX_UPLOAD_PIXELS",
    "UploadRejected",
    "View",
    "bundled_photos",
    "check_upload",
    "top_classes",
    "search_labels",
    "compute_view",
    "python_snippet",
    "cam_command",
    "write_downloads",
]

#: The photos that come with the package (the README's examples).
BUNDLED_PHOTOS = Path(__file__).resolve().parents[2] / "examples"
#: The largest upload taken: bytes of the file, and pixels of the image it holds.
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_UPLOAD_PIXELS = 40_000_000
#: The smoothing options the page offers (cam.py's --aug-smooth and --eigen-smooth).
SMOOTHING = ("aug smooth", "eigen smooth")


class Cancelled(Exception):
    """The view was cancelled (the page's Cancel button) before it was done."""


def cancellable(modules: Sequence[torch.nn.Module], cancelled: Callable[[], bool]) -> Hooks:
    """Hooks that raise :class:`Cancelled` before any of ``modules`` runs once
    ``cancelled()`` is true: a run stops at its next forward pass. Use it as a context
    manager (the hooks are removed when it ends, also when it raises)."""

    def stop_if_cancelled(*_: object) -> None:
        if cancelled():
            raise Cancelled("the view was cancelled")

    hooks = Hooks()
    for module in modules:
        hooks.forward_pre(module, stop_if_cancelled)
    return hooks


class UploadRejected(ValueError):
    """An uploaded file that is not a whole image of a size the explorer takes; the
    message says why in one line, for the page."""


def bundled_photos() -> Dict[str, Path]:
    """The bundled photos by file name ('cat.jpg'), sorted."""
    return {path.name: path for path in sorted(BUNDLED_PHOTOS.glob("*.jpg"))}


def _too_many_pixels(path: Path, max_pixels: int) -> Optional[str]:
    """Why the image at ``path`` is too large, read from its header without decoding it
    ('8000x8000 pixels'), or None where it is not (or Pillow does not know the format:
    the decoder then judges it)."""
    from PIL import Image, UnidentifiedImageError

    # A file OpenCV does not recognise by its signature is left to the reader's message,
    # and never given to Pillow: ultralytics, once imported, replaces Image.open with one
    # that tries to install a HEIF plugin for any format Pillow does not know.
    if not cv2.haveImageReader(str(path)):
        return None
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Image.DecompressionBombError:  # Pillow's own limit, far above ours
        return f"over {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:g} megapixels"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, ImportError):
        return None
    return f"{width}x{height} pixels" if width * height > max_pixels else None


def check_upload(path: Path, max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_UPLOAD_PIXELS) -> np.ndarray:
    """The uploaded image at ``path`` as an RGB float32 photo in [0, 1], read by the
    command line's reader, after its size is checked from the file and from its header
    (a huge image is refused before it is decoded).

    Raises:
        UploadRejected: for a file over ``max_bytes``, an image over ``max_pixels``, or a
            file the reader refuses (not an image, truncated, empty); the message names why.
    """
    path = Path(path)
    name = path.name
    size = path.stat().st_size if path.is_file() else 0
    if size > max_bytes:
        raise UploadRejected(
            f"{name}: {size / 2**20:.1f} MB is too large; upload an image under {max_bytes // 2**20} MB"
        )
    too_many = _too_many_pixels(path, max_pixels)
    if too_many is not None:
        raise UploadRejected(f"{name}: {too_many} is too large; upload an image under {max_pixels / 1e6:g} megapixels")
    try:
        photo = read_photo(path)
    except UnreadableImage as error:
        raise UploadRejected(f"{name}: {error.reason}; upload a JPEG, PNG, BMP, TIFF or WebP image") from None
    if photo.shape[0] * photo.shape[1] > max_pixels:
        raise UploadRejected(f"{name}: {photo.shape[1]}x{photo.shape[0]} pixels is too large")
    return photo


def top_classes(loaded: LoadedModel, input_tensor: torch.Tensor, k: int = 5) -> List[Tuple[int, str, float]]:
    """The ``k`` most probable classes (index, name, softmax probability), best first.

    Raises:
        CLIError: if the model does not return (1, classes) scores.
    """
    probabilities = predict(loaded.model, input_tensor)
    labels = loaded.labels()
    values, indices = probabilities.topk(min(k, probabilities.numel()))
    named = dict(enumerate(labels))  # registered labels may be fewer than the outputs
    return [(int(i), named.get(int(i), f"class {int(i)}"), float(value)) for value, i in zip(values, indices)]


def search_labels(labels: Sequence[str], query: str, limit: int = 20) -> List[Tuple[int, str]]:
    """The classes whose name holds ``query`` (case-insensitive), as (index, name), at
    most ``limit``; a whole number is the class of that index."""
    query = query.strip().lower()
    if not query:
        return []
    if query.isdigit():
        return [(int(query), labels[int(query)])] if int(query) < len(labels) else []
    return [(index, name) for index, name in enumerate(labels) if query in name.lower()][:limit]


@dataclass
class View:
    """What the page shows for one run: the photo, the model's input, the class explained,
    and per method its map (at the input's size, in [0, 1]), its overlay (RGB uint8 at the
    photo's size) and its metrics."""

    model_name: str
    photo_path: Path
    photo: np.ndarray
    input_tensor: torch.Tensor
    layer: str
    category: int
    smoothing: Tuple[str, ...] = ()
    maps: Dict[str, np.ndarray] = field(default_factory=dict)
    overlays: Dict[str, np.ndarray] = field(default_factory=dict)
    metrics: Dict[str, Dict[str, float]] = field(default_factory=dict)


def compute_view(
    loaded: LoadedModel,
    photo_path: Path,
    photo: np.ndarray,
    layer: str,
    methods: Sequence[str],
    category: int,
    smoothing: Sequence[str] = (),
    metrics: Sequence[str] = (),
    cancelled: Callable[[], bool] = lambda: False,
) -> View:
    """Every method's map of ``category`` at ``layer`` for the photo, with its overlay and
    ``metrics`` (names of :data:`pytorch_grad_cam.cli.metrics.METRICS`). The perturbation
    methods show a tqdm bar (which the page follows). ``cancelled()`` is asked before
    each forward pass of the model: once it is true, the view stops there.

    Raises:
        Cancelled: when ``cancelled()`` turned true (the model's hooks are removed all the same).
        ValueError: for an unknown method, layer, metric or smoothing option, and the
            methods' own argument errors.
    """
    for option in smoothing:
        if option not in SMOOTHING:
            raise ValueError(f"unknown smoothing {option!r}; choose from {', '.join(SMOOTHING)}")
    for name in metrics:
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
    device = next(loaded.model.parameters(), torch.empty(0)).device
    view = View(
        loaded.spec.name, Path(photo_path), photo, model_input(photo, loaded.spec.entry()).to(device),
        layer, int(category), tuple(smoothing),
    )  # fmt: skip
    module = loaded.module(layer)
    with cancellable([loaded.model], cancelled):
        for method in methods:
            _one_method(view, loaded, module, method, metrics)
    return view


def _one_method(view: View, loaded: LoadedModel, module: torch.nn.Module, method: str, metrics: Sequence[str]) -> None:
    """Add ``method``'s map, overlay and metrics to ``view``."""
    smoothing = view.smoothing
    with make_cam(method, loaded.model, module, loaded.reshape_transform, batch_size=32, progress=True) as cam:
        grayscale = cam(
            view.input_tensor,
            targets=[ClassifierOutputTarget(view.category)],
            aug_smooth="aug smooth" in smoothing,
            eigen_smooth="eigen smooth" in smoothing,
        )[0]
    view.maps[method] = grayscale
    view.overlays[method] = cam_overlay(view.photo, grayscale)
    if metrics:
        view.metrics[method] = compute_metrics(metrics, loaded.model, view.input_tensor, grayscale, view.category)


def _model_lines(loaded: LoadedModel) -> Tuple[str, str, str, str]:
    """The snippet's lines that build the model, and its input's size, mean and std (code)."""
    spec = loaded.spec
    if spec.zoo:
        build = f'from pytorch_grad_cam.cli.model_zoo import MODELS, load_model\n\nentry = MODELS["{spec.name}"]\n'
        build += f'model = load_model(entry, "{spec.name}")'
        if loaded.random_weights:
            build += "  # random weights offline: pass weights=PATH for trained ones"
        return build, "entry.input_size", "entry.mean", "entry.std"
    function = spec.build
    build = f"from {function.__module__} import {function.__qualname__.split('.')[0]}\n\n"
    build += f"model = {function.__qualname__}().eval()"
    return build, repr(spec.input_size), repr(spec.mean), repr(spec.std)


def python_snippet(view: View, loaded: LoadedModel, photo_name: Optional[str] = None) -> str:
    """Python code that computes the view's maps with the library: the photo read and
    resized as the explorer does, the same layer, class, smoothing and methods; it leaves
    them in ``maps`` (method name -> (h, w) array). ``photo_name``: the path written
    (default: the view's photo path)."""
    photo = photo_name if photo_name is not None else str(view.photo_path)
    build, size, mean, std = _model_lines(loaded)
    classes = {method: get_method(method) for method in view.maps}
    lines = [
        "import cv2",
        "import numpy as np",
        "",
        f"from pytorch_grad_cam import {', '.join(sorted({cls.__name__ for cls in classes.values()}))}",
        "from pytorch_grad_cam.utils.image import preprocess_image",
        "from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget",
        build,
        photo_line(photo),
        f"height, width = {size}",
        "resized = cv2.resize(photo, (width, height), interpolation=cv2.INTER_AREA)",
        f"input_tensor = preprocess_image(resized, mean={mean}, std={std})",
        f"layer = dict(model.named_modules())[{view.layer!r}]",
        f"targets = [ClassifierOutputTarget({view.category})]",
    ]
    transform = ""
    if loaded.reshape_transform is not None:
        lines.append("reshape_transform = ...  # the reshape_transform your model was registered with")
        transform = ", reshape_transform=reshape_transform"
    lines.append("maps = {}")
    smoothing = f"aug_smooth={'aug smooth' in view.smoothing}, eigen_smooth={'eigen smooth' in view.smoothing}"
    for method, cls in classes.items():
        options = method_arguments(method)
        lines.append(f"with {cls.__name__}(model=model, target_layers=[layer]{transform}{options}) as cam:")
        lines.append(f"    maps[{method!r}] = cam(input_tensor, targets=targets, {smoothing})[0]")
    return "\n".join(lines) + "\n"


def cam_command(view: View, loaded: LoadedModel, photo_name: Optional[str] = None) -> str:
    """The ``cam.py`` command of each method of the view (cam.py explains one method per
    photo), one per line; for a model that cam.py does not know, a line that says so."""
    if not loaded.spec.zoo:
        return f"# cam.py knows the zoo's models only; {loaded.spec.name} is yours: run the Python snippet"
    photo = photo_name if photo_name is not None else str(view.photo_path)
    commands = []
    for method in view.maps:
        words = ["python", "cam.py", "--image-path", photo, "--model", loaded.spec.name, "--method", method]
        words += ["--target-layer", view.layer, "--category", str(view.category)]
        words += ["--aug-smooth"] * ("aug smooth" in view.smoothing) + ["--eigen-smooth"] * (
            "eigen smooth" in view.smoothing
        )
        if view.metrics:
            words += ["--metrics", ",".join(next(iter(view.metrics.values())))]
        commands.append(shlex.join(words))
    return "\n".join(commands)


def write_downloads(view: View, folder: Path) -> List[Path]:
    """The view's files in ``folder`` (created if needed): ``maps.npz`` (one array per
    method name, plus ``category`` and ``layer``) and ``<method>.png`` (each overlay).

    Raises:
        OSError: if the folder or a file cannot be written.
    """
    arrays = {"category": np.int64(view.category), "layer": np.str_(view.layer), **view.maps}
    return save_files(folder, arrays, {png_name(method): overlay for method, overlay in view.overlays.items()})


def png_name(method: str) -> str:
    """A method's name as a file name's stem ('gradcam++' -> 'gradcampp')."""
    return method.replace("+", "p")


def save_files(folder: Path, arrays: Dict[str, np.ndarray], pictures: Dict[str, np.ndarray]) -> List[Path]:
    """``folder/maps.npz`` (``arrays``, compressed) and ``folder/<stem>.png`` for each RGB
    picture of ``pictures`` (stem -> picture), the folder created if needed; their paths,
    the .npz first (the downloads of every mode of the page).

    Raises:
        OSError: if the folder or a file cannot be written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / "maps.npz", **arrays)
    paths = [folder / "maps.npz"]
    for stem, picture in pictures.items():
        paths.append(folder / f"{stem}.png")
        paths[-1].write_bytes(encode_image(picture, ".png"))
    return paths


def photo_line(photo: str) -> str:
    """The snippets' line that reads the photo at path ``photo`` as the page does: RGB,
    float32 in [0, 1] (what the command line's reader gives for a readable photo)."""
    return f"photo = np.float32(cv2.cvtColor(cv2.imread({photo!r}), cv2.COLOR_BGR2RGB)) / 255"


def method_arguments(method: str) -> str:
    """The keyword arguments the page gives ``method``'s constructor, as the snippets
    write them after the model and layer (', batch_size=32', or '')."""
    return "".join(f", {key}={value!r}" for key, value in method_options(get_method(method), 32, False).items())
