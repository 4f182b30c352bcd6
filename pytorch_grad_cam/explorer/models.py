"""The models the explorer offers: the command line's zoo and the models the user's own
Python code registers with :func:`register_model`; each built once and kept, with its
layer tree (every module with its output shape, from one forward pass with hooks) and
its automatic layer. Nothing here imports gradio: the tests call it without a browser.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.cli.model_zoo import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MODELS,
    ModelEntry,
    ReshapeTransform,
    WeightsUnavailable,
    imagenet_classes,
    layer_name,
    load_model,
)
from pytorch_grad_cam.utils.hooks import Hooks

__all__ = [
    "ExplorerModel",
    "LayerNode",
    "LoadedModel",
    "register_model",
    "model_names",
    "loaded_model",
    "forget",
    "REGISTERED",
]


@dataclass(frozen=True)
class ExplorerModel:
    """One model the explorer can choose.

    Attributes:
        name: the name shown (and the ``--model`` of cam.py for a zoo model).
        build: makes the model (it is put in eval mode).
        target_layers: ``model -> layer`` explained by default; None: the automatic choice
            (:func:`automatic_layer`, the layer the library chooses when given none).
        reshape_transform: turns the layers' outputs into (B, C, h, w) (transformers).
        labels: the class names, one per output; None: ImageNet's for 1000 outputs, else 'class i'.
        input_size, mean, std: how a photo becomes the model's input (resized whole, normalised).
        random_weights: whether the weights are random (the page says so).
        zoo: whether cam.py knows the model by ``name`` (its command is shown).
    """

    name: str
    build: Callable[[], nn.Module]
    target_layers: Optional[Callable[[nn.Module], nn.Module]] = None
    reshape_transform: Optional[ReshapeTransform] = None
    labels: Optional[Sequence[str]] = None
    input_size: Tuple[int, int] = (224, 224)
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD
    random_weights: bool = False
    zoo: bool = False

    def entry(self) -> ModelEntry:
        """The model as the command line's :class:`ModelEntry` (its input: size, mean, std)."""
        return ModelEntry(
            architecture=self.build,
            target_layer=self.target_layers or (lambda model: model),
            input_size=self.input_size,
            mean=self.mean,
            std=self.std,
            reshape_transform=self.reshape_transform,
        )


#: The models registered by the user's code (:func:`register_model`), by name.
REGISTERED: Dict[str, ExplorerModel] = {}


def register_model(
    name: str,
    build: Callable[[], nn.Module],
    target_layers: Optional[Callable[[nn.Module], nn.Module]] = None,
    reshape_transform: Optional[ReshapeTransform] = None,
    labels: Optional[Sequence[str]] = None,
    *,
    input_size: Tuple[int, int] = (224, 224),
    mean: Tuple[float, ...] = IMAGENET_MEAN,
    std: Tuple[float, ...] = IMAGENET_STD,
    random_weights: bool = False,
) -> ExplorerModel:
    """Offer the model that ``build()`` makes in the explorer under ``name`` (a file passed
    to ``pytorch-grad-cam explore --models FILE.py`` calls this). A name registered again
    replaces the earlier model.

    Returns:
        The :class:`ExplorerModel` registered.

    Raises:
        ValueError: for an empty name, a name of the zoo, or a ``build`` that is not callable.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"register_model: name must be a non-empty string, got {name!r}")
    if name in MODELS:
        raise ValueError(f"register_model: {name!r} is a model of the zoo already; choose another name")
    if not callable(build):
        raise ValueError(f"register_model: build must be a function that returns the model, got {build!r}")
    model = ExplorerModel(
        name, build, target_layers, reshape_transform, None if labels is None else tuple(labels),
        tuple(input_size), tuple(mean), tuple(std), random_weights,
    )  # fmt: skip
    REGISTERED[name] = model
    _LOADED.pop(name, None)
    return model


def _zoo_model(name: str, entry: ModelEntry) -> ExplorerModel:
    return ExplorerModel(
        name,
        entry.architecture,
        entry.target_layer,
        entry.reshape_transform,
        None,
        entry.input_size,
        entry.mean,
        entry.std,
        random_weights=entry.pretrained is None,
        zoo=True,
    )


def model_names() -> List[str]:
    """Every model the explorer offers: efficientnet_lite0 first (trained weights offline),
    the rest of the zoo, then the registered ones."""
    zoo = sorted(MODELS, key=lambda name: name != "efficientnet_lite0")
    return [*zoo, *REGISTERED]


def explorer_model(name: str) -> ExplorerModel:
    """The model offered as ``name``.

    Raises:
        ValueError: naming the models offered, for any other name.
    """
    if name in REGISTERED:
        return REGISTERED[name]
    if name in MODELS:
        return _zoo_model(name, MODELS[name])
    raise ValueError(f"model {name!r} is not offered; choose one of {', '.join(model_names())}")


@dataclass(frozen=True)
class LayerNode:
    """One module in the layer tree: dotted name, depth, class name, output shape
    (without the batch; None where the output is no tensor or the module did not run),
    and whether the output is a spatial grid (more than one position) a map can be made on."""

    name: str
    depth: int
    kind: str
    shape: Optional[Tuple[int, ...]]
    spatial: bool

    def label(self) -> str:
        """The tree line: the dotted name indented by depth (a search finds it by its whole
        name), the class, the shape and a mark for a spatial output."""
        shape = "x".join(map(str, self.shape)) if self.shape else "-"
        mark = "  [spatial]" if self.spatial else ""
        return f"{'  ' * self.depth}{self.name} ({self.kind}, {shape}){mark}"


@dataclass
class LoadedModel:
    """A built model with what the explorer reads of it once: its layer tree and the
    layer preselected (the model's default layer, or the automatic choice)."""

    spec: ExplorerModel
    model: nn.Module
    random_weights: bool
    layers: List[LayerNode] = field(default_factory=list)
    default_layer: str = ""
    reshape_transform: Optional[ReshapeTransform] = None
    classes: int = 0

    def labels(self) -> List[str]:
        """The names of the model's outputs: the registered labels, else ImageNet's for
        1000 outputs, else 'class i'."""
        if self.spec.labels is not None:
            return list(self.spec.labels)
        if self.classes == 1000:
            return imagenet_classes()
        return [f"class {index}" for index in range(self.classes)]

    def module(self, name: str) -> nn.Module:
        """The module called ``name`` (dotted).

        Raises:
            ValueError: for a name that is no module of the model.
        """
        modules = dict(self.model.named_modules())
        if not name or name not in modules:
            raise ValueError(f"layer {name!r} is not a module of {self.spec.name}")
        return modules[name]


def _is_grid(output: object, reshape_transform: Optional[ReshapeTransform]) -> bool:
    """Whether ``output`` is (or the transform makes it) a (1, C, h, w) grid with h*w > 1."""
    try:
        shaped = output if reshape_transform is None else reshape_transform(output)
    except Exception:  # noqa: BLE001 - the transform does not fit this layer's output
        return False
    return torch.is_tensor(shaped) and shaped.ndim == 4 and shaped.shape[0] == 1 and shaped.shape[2:].numel() > 1


def layer_tree(
    model: nn.Module, input_tensor: torch.Tensor, reshape_transform: Optional[ReshapeTransform] = None
) -> List[LayerNode]:
    """Every module of ``model`` (not the model itself) in definition order, with the shape
    of its output on ``input_tensor`` (one forward pass under no_grad; hooks removed after).
    A module run several times keeps its last output's shape."""
    outputs: Dict[str, object] = {}
    with Hooks() as hooks, torch.no_grad():
        for name, module in model.named_modules():
            if name:
                hooks.forward(module, lambda _m, _i, out, name=name: outputs.__setitem__(name, out))
        model(input_tensor)
        nodes = []
        for name, module in model.named_modules():
            if not name:
                continue
            output = outputs.get(name)
            shape = tuple(output.shape[1:]) if torch.is_tensor(output) else None
            nodes.append(
                LayerNode(name, name.count("."), type(module).__name__, shape, _is_grid(output, reshape_transform))
            )
    return nodes


def automatic_layer(
    model: nn.Module, input_tensor: torch.Tensor, reshape_transform: Optional[ReshapeTransform] = None
) -> Tuple[str, Optional[ReshapeTransform]]:
    """The layer the library chooses when given none (a GradCAM without target layers, called
    once on ``input_tensor`` for its top class), by dotted name, and the reshape transform
    it goes with (for a vision transformer, one read from the model).

    Raises:
        ValueError: if the model has no layer a map can be made on.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the library's note on what it chose: the page shows the choice
        with GradCAM(model, reshape_transform=reshape_transform) as cam:
            cam(input_tensor)
            return layer_name(model, cam.target_layers[0]), cam.reshape_transform


def _build(spec: ExplorerModel) -> Tuple[nn.Module, bool]:
    """The model of ``spec`` in eval mode and whether its weights are random: a zoo model
    whose trained weights cannot be had offline is built with random ones."""
    if not spec.zoo:
        return spec.build().eval(), spec.random_weights
    entry = MODELS[spec.name]
    try:
        return load_model(entry, spec.name, progress=False), entry.pretrained is None
    except WeightsUnavailable:
        return entry.architecture().eval(), True


_LOADED: Dict[str, LoadedModel] = {}
_LOCK = threading.Lock()


def forget(name: str) -> None:
    """Drop the built model ``name`` (it is built again on next use)."""
    with _LOCK:
        _LOADED.pop(name, None)


def loaded_model(name: str) -> LoadedModel:
    """The model offered as ``name``, built on first use and kept, with its layer tree and
    preselected layer.

    Raises:
        ValueError: for a name not offered, or a model without any spatial layer.
        ModuleNotFoundError: if the package providing a zoo model is not installed.
    """
    with _LOCK:
        if name in _LOADED:
            return _LOADED[name]
        spec = explorer_model(name)
        model, random_weights = _build(spec)
        device = next(model.parameters(), torch.empty(0)).device
        probe = torch.randn(1, 3, *spec.input_size, generator=torch.Generator().manual_seed(0)).to(device)
        loaded = LoadedModel(spec, model, random_weights, reshape_transform=spec.reshape_transform)
        loaded.layers = layer_tree(model, probe, spec.reshape_transform)
        with torch.no_grad():
            output = model(probe)
        loaded.classes = int(output.shape[-1]) if torch.is_tensor(output) and output.ndim == 2 else 0
        if spec.target_layers is not None:
            loaded.default_layer = layer_name(model, spec.target_layers(model))
        else:
            loaded.default_layer, loaded.reshape_transform = automatic_layer(model, probe, spec.reshape_transform)
        _LOADED[name] = loaded
        return loaded
