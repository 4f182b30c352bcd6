"""Models that take several inputs: ``cam((image, mask))`` runs ``model(image, mask)``
and ``cam({"rgb": rgb, "depth": depth})`` runs ``model(rgb=rgb, depth=depth)``.

The CAM engine explains one tensor, "the image"; here several inputs are brought to
that form. The image inputs (``image_input``: a position or key, or a list of them;
default: the first float input with a grid, (B, C, L), (B, C, H, W) or (B, C, D, H, W),
with every other float input of its batch and grid size) are joined along the channel
dimension into that tensor, so that the map is at their resolution, ``aug_smooth``
transforms them (and only them) alike, and ScoreCAM masks them. The model then runs
through :class:`BoundModel`, which splits the channels back into the image inputs and
adds the other inputs (tensors of any dtype and size, and non-tensors such as an int
flag, passed through as given). Each image is explained on its own, its other inputs
repeated for its augmented or perturbed copies, so every method works unchanged and a
batch gives what its images give one at a time (docs/decisions.md, G23).
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.model_state import evaluation_mode, model_device, model_float_dtype
from pytorch_grad_cam.scoring import check_targets

__all__ = ["ImageInput", "is_several", "ModelInputs", "BoundModel", "explain"]

#: Which inputs are the image inputs: a position (tuple/list) or key (dict), a list of them, or None.
ImageInput = Union[int, str, Sequence[Union[int, str]], None]


def is_several(input_tensor: object) -> bool:
    """Whether ``input_tensor`` is several inputs of a model: a tuple, list or dict that
    holds a tensor (a nested list of numbers is a mistake the input check names)."""
    if isinstance(input_tensor, Mapping):
        return any(torch.is_tensor(value) for value in input_tensor.values())
    return isinstance(input_tensor, (tuple, list)) and any(torch.is_tensor(value) for value in input_tensor)


def _is_grid(value: object) -> bool:
    return torch.is_tensor(value) and value.is_floating_point() and value.ndim in (3, 4, 5)


class ModelInputs:
    """Several inputs of a model, checked, on the model's device, with the image inputs found.

    Args:
        inputs: a tuple/list (``model(*inputs)``) or dict (``model(**inputs)``).
        image_input: see the module docstring.
        model: the model (its device and float dtype).

    Raises:
        ValueError: on no inputs, a key that is not among them, tensors whose batch sizes
            differ (naming both), image inputs of different batch or grid size, no image
            input, or NaN/Inf in a float input.
    """

    def __init__(self, inputs: object, image_input: ImageInput, model: nn.Module) -> None:
        self.is_dict = isinstance(inputs, Mapping)
        items = list(inputs.items()) if self.is_dict else list(enumerate(inputs))
        if not items:
            raise ValueError("input_tensor is an empty tuple/dict; pass the model's inputs")
        device, dtype = model_device(model), model_float_dtype(model)
        self.values: Dict[Union[int, str], object] = {key: _prepared(value, device, dtype) for key, value in items}
        self.batch = _common_batch(self.values)
        self.image_keys = _image_keys(self.values, image_input)
        self.split_sizes = [self.values[key].shape[1] for key in self.image_keys]

    def image(self) -> torch.Tensor:
        """The image inputs joined along the channel dimension (B, ΣC, *grid)."""
        images = [self.values[key] for key in self.image_keys]
        return torch.cat(images, dim=1) if len(images) > 1 else images[0]

    def row(self, index: int) -> Dict[Union[int, str], object]:
        """Every input with a batch dimension cut to image ``index`` (1 row)."""
        return {key: _rows(value, index, self.batch) for key, value in self.values.items()}


def _prepared(value: object, device: torch.device, dtype: Optional[torch.dtype]) -> object:
    """A tensor on the model's device, detached (float ones in its float dtype), checked finite."""
    if not torch.is_tensor(value):
        return value
    value = value.detach().to(device=device, dtype=dtype if value.is_floating_point() and dtype else None)
    if value.is_floating_point() and not torch.isfinite(value).all():
        raise ValueError(f"an input of shape {tuple(value.shape)} contains NaN or Inf; clean the input first")
    return value.clone() if value.is_inference() else value


def _common_batch(values: Mapping[Union[int, str], object]) -> int:
    """The batch size every tensor input (but 0-d ones) shares."""
    first: Optional[Tuple[object, int]] = None
    for key, value in values.items():
        if torch.is_tensor(value) and value.ndim > 0:
            if first is None:
                first = (key, value.shape[0])
            elif value.shape[0] != first[1]:
                raise ValueError(
                    f"the inputs' batch sizes differ: input {first[0]!r} has {first[1]} rows and input "
                    f"{key!r} has {value.shape[0]}; pass the same number of images in every input"
                )
    if first is None or first[1] == 0:
        raise ValueError("input_tensor holds no batched tensor (or a batch of size 0); pass (B, ...) tensors")
    return first[1]


def _image_keys(values: Mapping[Union[int, str], object], image_input: ImageInput) -> List[Union[int, str]]:
    """The keys of the image inputs (see the module docstring)."""
    if image_input is None:
        grids = [key for key, value in values.items() if _is_grid(value)]
        if not grids:
            shapes = {key: tuple(v.shape) if torch.is_tensor(v) else type(v).__name__ for key, v in values.items()}
            raise ValueError(
                f"no input is a float (B, C, L), (B, C, H, W) or (B, C, D, H, W) tensor (got {shapes}); "
                "pass image_input=<position or key> of the input the map should cover"
            )
        first = values[grids[0]]
        return [key for key in grids if values[key].shape[2:] == first.shape[2:] and values[key].ndim == first.ndim]
    keys = [image_input] if isinstance(image_input, (int, str)) else list(image_input)
    for key in keys:
        if key not in values or not _is_grid(values[key]):
            raise ValueError(
                f"image_input {key!r} is not a float (B, C, L)/(B, C, H, W)/(B, C, D, H, W) input; the inputs "
                f"are {list(values)}"
            )
    grids = {tuple(values[key].shape[2:]) for key in keys}
    if len(grids) > 1 or len({values[key].ndim for key in keys}) > 1:
        raise ValueError(f"the image inputs {keys} have different grid sizes {sorted(grids)}; name inputs of one size")
    return keys


def _rows(value: object, index: int, batch: int) -> object:
    if torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == batch:
        return value[index : index + 1]
    return value


class BoundModel(nn.Module):
    """``model`` as a function of the image inputs (joined along channels) of one image:
    its other inputs are bound, each repeated for the N rows it is called with (augmented
    or perturbed copies of that image). It shares the model's modules, parameters and
    buffers by name (layer names are the model's), changes nothing in the model, and
    cannot be traced by ``torch.fx`` (AblationCAM then re-runs the whole model).
    """

    def __init__(self, model: nn.Module, inputs: ModelInputs, row: Dict[Union[int, str], object]) -> None:
        super().__init__()
        # torch's registries, shared and never changed: the same names and objects
        self._modules = model._modules  # noqa: SLF001
        self._parameters = model._parameters  # noqa: SLF001
        self._buffers = model._buffers  # noqa: SLF001
        object.__setattr__(self, "inner", model)
        self.keys, self.sizes, self.row, self.is_dict = inputs.image_keys, inputs.split_sizes, row, inputs.is_dict

    def forward(self, image: torch.Tensor) -> object:
        """The model's output on ``image`` (N, ΣC, *grid) and the bound inputs."""
        count = image.shape[0]
        values = {
            key: value.repeat(count, *[1] * (value.ndim - 1)) if torch.is_tensor(value) and value.ndim else value
            for key, value in self.row.items()
        }
        values.update(zip(self.keys, image.split(self.sizes, dim=1)))
        if self.is_dict:
            return self.inner(**values)
        return self.inner(*[values[key] for key in sorted(values)])


def explain(
    cam: object,
    inputs: object,
    targets: Optional[Sequence[object]],
    aug_smooth: object,
    eigen_smooth: bool,
    target_category: object,
    image_input: ImageInput,
) -> np.ndarray:
    """``cam``'s maps (B, *grid) of several inputs, one image at a time (see the module
    docstring); ``cam.outputs`` is the batch's outputs (concatenated where tensors).

    Raises:
        ValueError: as :class:`ModelInputs`; others as the CAM's call.
    """
    # The template's own __call__ (the first class in the MRO's base-first order that
    # defines one): a subclass's __call__ (FinerCAM's options) has already run around this.
    # Found, not imported: base_cam imports this module.
    template = next(kind.__call__ for kind in reversed(type(cam).__mro__) if "__call__" in vars(kind))
    original = cam.model
    model_inputs = ModelInputs(inputs, image_input, original)
    targets = check_targets(targets, target_category, model_inputs.batch)
    image = model_inputs.image()
    maps, outputs = [], []
    try:
        # The user's model itself (not only its modules) computes in eval mode.
        with evaluation_mode(original):
            for index in range(model_inputs.batch):
                cam.model = BoundModel(original, model_inputs, model_inputs.row(index))
                chosen = None if targets is None else targets[index : index + 1]
                maps.append(template(cam, image[index : index + 1], chosen, aug_smooth, eigen_smooth))
                outputs.append(cam.outputs)
    finally:
        cam.model = original
    joined = all(torch.is_tensor(output) for output in outputs)
    cam.outputs = torch.cat(outputs) if joined else outputs
    return np.concatenate(maps)
