"""The steps that the one-photo command (:mod:`pytorch_grad_cam.cli.app`) and folder mode
(:mod:`pytorch_grad_cam.cli.folder`) share, written once: the user-error type, checking
the model, method and category named on the command line, reading an image, the model's
input, the class probabilities and labels, the model and its layer, and a CAM object
with its options. Both import this module; it imports neither of them.

Reading an image: :func:`read_image` is the one reader. A file that cannot be decoded as
a whole image (missing, empty, truncated, not an image) raises :class:`UnreadableImage`,
whose message names the file: the one-photo command prints it as its error line, folder
mode records its ``reason`` and goes on. A truncated JPEG is found by its missing
end-of-image marker, because OpenCV would decode it into a partly grey picture without a
word.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple

import cv2
import numpy as np
import torch
from torch import nn

from pytorch_grad_cam import PerturbationCAM, get_method
from pytorch_grad_cam.cli.model_zoo import (
    ModelEntry,
    ReshapeTransform,
    WeightsMismatch,
    WeightsUnavailable,
    imagenet_classes,
    layer_name,
    load_model,
)
from pytorch_grad_cam.utils.image import preprocess_image, show_cam_on_image

#: The number of classes of an ImageNet classifier's output, whose classes have names.
IMAGENET_CLASSES = 1000


class CLIError(Exception):
    """A user error, reported as one line on stderr with exit code ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(" ".join(str(message).split()))  # one line, whatever the source said
        self.code = code


class UnreadableImage(CLIError):
    """An image file that cannot be decoded as a whole image.

    Attributes:
        path: the file.
        reason: why, without the file's name (folder mode's results.csv status).

    The message is ``<path>: <reason>``, then ``hint`` (what would work instead).
    """

    def __init__(self, path: Path, reason: str, hint: str = "") -> None:
        super().__init__(f"{path}: {reason}{hint}")
        self.path = path
        self.reason = reason


def note(message: str) -> None:
    """One informational line on stderr."""
    print(f"note: {message}", file=sys.stderr)


def one_line(error: BaseException) -> str:
    """``Type: message`` of ``error``, on one line."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


# ----------------------------------------------------------------- what the command line names
def model_entry(models: Dict[str, ModelEntry], name: str) -> ModelEntry:
    """The entry of ``--model name``.

    Raises:
        CLIError: (exit code 2) if ``name`` is not one of ``models``.
    """
    if name not in models:
        raise CLIError(f"--model {name!r} is not one of {', '.join(models)}", code=2)
    return models[name]


def check_method(name: str) -> str:
    """``name`` as a registered method name (lower case).

    Raises:
        CLIError: (exit code 2) for a name that is no method, with the registry's hint.
    """
    try:
        get_method(name)
    except ValueError as error:
        raise CLIError(f"--method: {error}", code=2) from None
    return name.lower()


def resolve_category(text: Optional[str]) -> Optional[int]:
    """``--category``: None, an index, or an ImageNet class name (case-insensitive).

    Raises:
        CLIError: for a name that is not one class (with the closest names).
    """
    if text is None:
        return None
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    names = imagenet_classes()
    classes = [name.lower() for name in names]
    exact = [index for index, name in enumerate(names) if name == text]
    matches = exact or [index for index, name in enumerate(classes) if name == text.lower()]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise CLIError(f"--category {text!r} names several ImageNet classes ({matches}); pass the index")
    close = difflib.get_close_matches(text.lower(), classes, n=3, cutoff=0.6)
    hint = f"; did you mean {' / '.join(repr(name) for name in close)}?" if close else "; pass an index 0-999"
    raise CLIError(f"--category {text!r} is not an ImageNet class name{hint}")


def check_category(category: Optional[int], classes: int) -> None:
    """Nothing if ``category`` is None or one of the model's ``classes`` outputs.

    Raises:
        CLIError: for a category outside 0..classes-1.
    """
    if category is not None and not 0 <= category < classes:
        raise CLIError(f"--category {category} is outside the model's {classes} classes (0-{classes - 1})")


def choose_device(device: Optional[str], use_cuda: bool) -> torch.device:
    """``--device`` if given (it must work), else CUDA for ``--use-cuda`` where available, else the CPU.

    Raises:
        CLIError: if ``device`` is not a usable torch device.
    """
    if device is None:
        if use_cuda and not torch.cuda.is_available():
            note("--use-cuda: CUDA is not available on this machine; running on the CPU")
        return torch.device("cuda" if use_cuda and torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
        torch.empty(1, device=chosen)
    except (RuntimeError, AssertionError) as error:
        raise CLIError(f"--device {device}: not usable here ({error}); use --device cpu") from None
    return chosen


# ----------------------------------------------------------------- images
def jpeg_is_complete(data: bytes) -> bool:
    """Whether JPEG ``data`` has its end-of-image marker after the first scan. OpenCV
    decodes a truncated JPEG into a partly grey picture without an error; this finds it.
    Data that is not a JPEG counts as complete (its decoder judges it)."""
    if data[:2] != b"\xff\xd8":
        return True
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return False
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xD9:
            return True
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            position += 2
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == 0xDA:  # start of scan: the entropy-coded data runs to the end marker
            return data.find(b"\xff\xd9", position + 2 + length) != -1
        position += 2 + length
    return False


def read_image(path: Path) -> np.ndarray:
    """The image at ``path`` as RGB uint8 (H, W, 3), decoded by OpenCV (IMREAD_COLOR).

    Raises:
        UnreadableImage: if the file is missing, a folder, unreadable, empty, a truncated
            JPEG, or not an image OpenCV can decode; its message names the file.
    """
    path = Path(path)
    if not path.exists():
        raise UnreadableImage(path, "no such file")
    if path.is_dir():
        raise UnreadableImage(path, "a directory, not an image")
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as error:
        raise UnreadableImage(path, f"cannot read it ({error.strerror or error})") from None
    if data.size == 0:
        raise UnreadableImage(path, "empty file")
    if not jpeg_is_complete(data.tobytes()):
        raise UnreadableImage(path, "truncated JPEG (no end-of-image marker)")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise UnreadableImage(path, "not an image that OpenCV can decode", " (JPEG, PNG, BMP, TIFF, WebP, ...)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def to_float(rgb: np.ndarray) -> np.ndarray:
    """An RGB uint8 image as float32 in [0, 1]."""
    return np.float32(rgb) / 255


def read_photo(path: Path) -> np.ndarray:
    """The photo at ``path`` as an RGB float32 (H, W, 3) array in [0, 1] (:func:`read_image`).

    Raises:
        UnreadableImage: (a CLIError) if it cannot be decoded as a whole image.
    """
    return to_float(read_image(path))


def model_input(photo: np.ndarray, entry: ModelEntry) -> torch.Tensor:
    """The model's input (1, 3, h, w) for an RGB float photo in [0, 1]: the whole photo
    resized with INTER_AREA to ``entry.input_size`` and normalised. Resizing (not
    cropping) keeps all of the photo in the explanation."""
    height, width = entry.input_size
    resized = cv2.resize(photo, (width, height), interpolation=cv2.INTER_AREA)
    return preprocess_image(resized, mean=entry.mean, std=entry.std)


def resize_to(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """``image`` (h, w) or (h, w, C) resized bilinearly to ``size`` = (height, width)."""
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def cam_overlay(photo: np.ndarray, grayscale: np.ndarray) -> np.ndarray:
    """The CAM ``grayscale`` (any size) as a heatmap over ``photo`` (RGB float), at the photo's size."""
    return show_cam_on_image(photo, np.clip(resize_to(grayscale, photo.shape[:2]), 0, 1), use_rgb=True)


def encode_image(rgb: np.ndarray, suffix: str = ".jpg", options: Iterable[int] = ()) -> bytes:
    """An RGB (or grey) uint8 image encoded by OpenCV for the file ``suffix`` (``.jpg``, ``.png``).

    Raises:
        CLIError: if OpenCV cannot encode it.
    """
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    ok, encoded = cv2.imencode(suffix, bgr, list(options))
    if not ok:
        raise CLIError(f"cannot encode a {suffix} image of shape {rgb.shape}")
    return encoded.tobytes()


# ----------------------------------------------------------------- classes
def probabilities_of(logits: object, batch: int) -> Optional[torch.Tensor]:
    """Softmax probabilities (B, C) on the CPU of (B, C) logits, or None for any other output."""
    if torch.is_tensor(logits) and logits.ndim == 2 and logits.shape[0] == batch:
        return logits.detach().float().softmax(dim=1).cpu()
    return None


def predict_batch(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Class probabilities (B, C) on the CPU for ``inputs`` (B, 3, h, w), from one forward pass under no_grad.

    Raises:
        CLIError: if the model does not return (B, C) class scores.
    """
    with torch.no_grad():
        probabilities = probabilities_of(model(inputs), inputs.shape[0])
    if probabilities is None:
        rows = "1" if inputs.shape[0] == 1 else "batch"
        raise CLIError(f"the model does not return ({rows}, classes) scores; cam.py explains classifiers")
    return probabilities


def predict(model: nn.Module, input_tensor: torch.Tensor) -> torch.Tensor:
    """Class probabilities (C,) for a one-image input (1, 3, h, w).

    Raises:
        CLIError: if the model does not return (1, C) class scores.
    """
    return predict_batch(model, input_tensor)[0]


def class_name(index: int, classes: int) -> str:
    """The ImageNet name of class ``index`` ('tabby') for 1000-class outputs, else 'class <index>'."""
    return imagenet_classes()[index] if classes == IMAGENET_CLASSES else f"class {index}"


def class_label(index: int, classes: int) -> str:
    """'tabby (281)' for ImageNet outputs, 'class 3' otherwise."""
    if classes == IMAGENET_CLASSES:
        return f"{class_name(index, classes)} ({index})"
    return class_name(index, classes)


# ----------------------------------------------------------------- the model, its layer, the CAM
def build_model(name: str, entry: ModelEntry, weights: Optional[Path], progress: bool) -> nn.Module:
    """:func:`load_model` (in eval mode), with every way it can fail turned into one CLIError line.

    Raises:
        CLIError: for missing or unfitting ``weights``, pretrained weights that cannot be
            had, or a model package that is not installed.
    """
    if weights is not None and not Path(weights).is_file():
        raise CLIError(f"--weights {weights}: no such file")
    try:
        model = load_model(entry, name, weights, progress)
    except WeightsUnavailable as error:
        raise CLIError(
            f"{error}. To run offline use --model efficientnet_lite0 (its ImageNet weights come "
            f"with a pip package) or --weights PATH to a {name} state dict"
        ) from None
    except WeightsMismatch as error:
        raise CLIError(f"--weights: {error}") from None
    except OSError as error:
        raise CLIError(f"--weights {weights}: cannot read it ({error})") from None
    except ModuleNotFoundError as error:
        raise CLIError(f'--model {name} needs the Python module {error.name!r}: pip install "grad-cam[demo]"') from None
    if weights is None and entry.pretrained is None:
        note(f"{name} has random weights (no trained weights offline); pass --weights PATH for trained ones")
    return model


def select_layer(model: nn.Module, entry: ModelEntry, name: Optional[str]) -> Tuple[nn.Module, str]:
    """The layer named ``name`` (dotted, as in named_modules), or the entry's default, and its name.

    Raises:
        CLIError: for a name that is not a module of the model (with the closest names).
    """
    if name is None:
        layer = entry.target_layer(model)
        return layer, layer_name(model, layer)
    modules = dict(model.named_modules())
    if name in modules and name:
        return modules[name], name
    close = difflib.get_close_matches(name, [n for n in modules if n], n=3, cutoff=0.5)
    hint = f"did you mean {' / '.join(close)}?" if close else "see model.named_modules()"
    raise CLIError(f"--target-layer {name!r} is not a layer of this model; {hint}")


def method_options(method: type, batch_size: int, progress: bool) -> Dict[str, object]:
    """The constructor options of the CAM class ``method`` beyond (model, layers,
    reshape_transform): ``batch_size`` and ``progress`` for the perturbation methods
    (ScoreCAM, AblationCAM, ...), none for the others."""
    return {"batch_size": batch_size, "progress": progress} if issubclass(method, PerturbationCAM) else {}


def make_cam(
    method_name: str,
    model: nn.Module,
    layer: nn.Module,
    reshape_transform: Optional[ReshapeTransform] = None,
    *,
    batch_size: int = 32,
    progress: bool = True,
) -> object:
    """A CAM object of the registered method ``method_name`` on ``layer`` of ``model``
    (a context manager: ``with`` it, or enter it in an ExitStack, to remove its hooks).

    Raises:
        ValueError: for an unknown method, and the method's own argument errors.
    """
    method = get_method(method_name)
    return method(model, [layer], reshape_transform, **method_options(method, batch_size, progress))
