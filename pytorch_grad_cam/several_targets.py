"""Several targets of one image (the boxes a detector found, the prompts of a CLIP
model, the top classes): one forward pass, then the gradient of every target's score
at the target layers.

The plain way is a batched call with the image repeated once per target, which runs
the forward pass and the backward pass over K copies. Here the forward pass runs once;
the K scores are taken from its output, and their gradients with respect to the target
layers' outputs come from backward passes that stop at the target layers: the network
before them is not differentiated. On a CPU the K backward passes run one by one from the
same graph (measured faster there than autograd's vectorised pass); elsewhere one
vectorised pass, or one pass per score where autograd cannot vectorise an operation of
the model.

A method shares the forward pass when the template's record step is all it needs:
gradients at the target layers, its own map from them (:meth:`BaseCAM.get_cam_weights`,
:meth:`BaseCAM.get_cam_image`, :meth:`BaseCAM.layer_map`). A method that overrides
:meth:`BaseCAM.backward`, :meth:`BaseCAM.reduce_gradient` or
:meth:`BaseCAM.forward_context`, or needs the input's gradient (FullGrad, ShapleyCAM,
FinerCAM, RefineCAM), and the perturbation methods, are given the repeated image in one
batched call (ScoreCAM then masks the image once and scores every target on the same
masked copies); a method that needs no target (EigenCAM) computes the image's map once.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch

from pytorch_grad_cam import sparse_backward
from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
from pytorch_grad_cam.checks import check_input, check_layers_ran, check_outputs
from pytorch_grad_cam.model_state import autograd_from
from pytorch_grad_cam.recording import Record, disconnected_error
from pytorch_grad_cam.scoring import Target, check_targets
from pytorch_grad_cam.utils.structures import detached, rebuild, tensor_parts

# ``cam`` below is a BaseCAM (typed Any: the template imports this module, not the reverse).
__all__ = ["maps_one_by_one", "one_image_and_targets", "record_several_targets", "shares_one_forward"]

# The hooks whose override means a method needs more than the template's record step.
_RECORD_HOOKS = ("backward", "reduce_gradient", "forward_context", "record", "_backward_scores")


def shares_one_forward(cam: Any, template: type) -> bool:
    """Whether ``cam``'s maps for several targets of one image can come from one forward
    pass and the targets' gradients at the target layers (see the module's text):
    ``template`` is the class whose record step that is (BaseCAM)."""
    overridden = any(getattr(type(cam), name) is not getattr(template, name) for name in _RECORD_HOOKS)
    return cam.uses_gradients and cam.record_activations and not cam.compute_input_gradient and not overridden


def one_image_and_targets(
    input_tensor: object, targets: Sequence[Target], model: Optional[torch.nn.Module] = None
) -> Tuple[torch.Tensor, List[Target]]:
    """The checked arguments of ``explain_targets``: a (1, C, *spatial) image (a (1, C, L)
    signal for a ``model`` that takes signals), a list of targets.

    Raises:
        TypeError: for several inputs (a tuple or dict: ``explain_targets`` takes one tensor).
        ValueError: for a batch of more than one image or no target; others as ``__call__``.
    """
    if isinstance(input_tensor, (tuple, list, dict)):
        raise TypeError("explain_targets takes one input tensor; for a model of several inputs call the CAM per target")
    image = check_input(input_tensor, model)
    if image.shape[0] != 1:
        raise ValueError(f"explain_targets takes one image, (1, C, H, W); got a batch of {image.shape[0]}")
    targets = check_targets(targets, None, len(targets) if isinstance(targets, (list, tuple)) else 1)
    if not targets:
        raise ValueError("targets is empty; pass one target per map wanted")
    return image, targets


def maps_one_by_one(cam: Any, image: torch.Tensor, targets: List[Target], eigen_smooth: bool) -> np.ndarray:
    """The maps of a method that does not share the forward pass: the image repeated once
    per target in one call, or (a method that needs no target) the image's map, repeated."""
    if cam.needs_targets:
        return cam(image.expand(len(targets), *image.shape[1:]).contiguous(), targets, eigen_smooth=eigen_smooth)
    return np.repeat(cam(image, eigen_smooth=eigen_smooth), len(targets), axis=0)


def record_several_targets(cam: Any, image: torch.Tensor, targets: List[Target]) -> Record:
    """The record of ``image`` (1, C, *spatial) explained for each of ``targets``, as if
    the image had been repeated once per target: input, activations and targets have K
    rows (the activations are views of the one forward pass's), the gradients are each
    target's own.

    Raises:
        ValueError: if a target layer is not run, or a target's score does not depend on it.
    """
    layers = list(cam.target_layers)
    record = Record(input_tensor=image, layers=layers)
    with ActivationsAndGradients(cam.model, layers, cam.reshape_transform) as recorder:
        with torch.enable_grad(), sparse_backward.skipping_zero_parts():
            with autograd_from(layers):
                outputs = cam.model(image)
            check_outputs(outputs)
            check_layers_ran(layers, recorder.layer_outputs)
            scores = torch.cat([cam.score([target], outputs) for target in targets])
            if not scores.requires_grad:
                raise disconnected_error(cam.model, layers[0])
            # The gradients are read from what autograd returns, not from the recorder's
            # hooks (they would see vectorised tensors).
            recorder.record_gradients = False
            gradients = _gradients_per_target(scores, recorder.layer_outputs)
        count = len(targets)
        for index, (layer, grads) in enumerate(zip(layers, gradients)):
            if grads is None:
                raise disconnected_error(cam.model, layer)
            record.gradients.append(recorder.reshape(grads))
            record.activations.append(_repeated(recorder.activations[index], count))
            record.layer_outputs.append(detached(recorder.layer_outputs[index]))
        record.call_gradients = [[grads] for grads in record.gradients]
    record.targets = list(targets)
    record.outputs = detached(outputs)
    record.input_tensor = _repeated(image.detach(), count)
    return record


def _gradients_per_target(scores: torch.Tensor, layer_outputs: Sequence[object]) -> List[Optional[object]]:
    """Per target layer, the gradients of the K ``scores`` with respect to its output,
    stacked along the batch dimension (K x the output's batch of 1), in the output's
    structure; None for a layer no score reaches."""
    parts = [tensor_parts(output) if not torch.is_tensor(output) else {None: output} for output in layer_outputs]
    keys = [(index, key) for index, found in enumerate(parts) for key in found if found[key].requires_grad]
    inputs = [parts[index][key] for index, key in keys]
    count = scores.shape[0]
    grads = _batched_vjp(scores, inputs)
    received = {where: grad for where, grad in zip(keys, grads)}
    gradients: List[Optional[object]] = []
    for index, found in enumerate(parts):
        reached = any(received.get((index, key)) is not None for key in found)
        # No gradient at all: zeros where the layer is in the scores' graph (a path that
        # carries only zeros, skipped: sparse_backward), an error where it is not.
        if not reached and not any(sparse_backward.in_graph(scores, value) for value in found.values()):
            gradients.append(None)
            continue
        stacked = {}
        for key, value in found.items():
            grad = received.get((index, key))
            grad = torch.zeros((count, *value.shape), dtype=value.dtype, device=value.device) if grad is None else grad
            stacked[key] = grad.reshape(count * value.shape[0], *value.shape[1:])
        output = layer_outputs[index]
        gradients.append(stacked[None] if torch.is_tensor(output) else rebuild(output, stacked))
    return gradients


def _batched_vjp(
    scores: torch.Tensor, inputs: List[torch.Tensor], vectorise: Optional[bool] = None
) -> List[Optional[torch.Tensor]]:
    """d scores[k] / d inputs for every k, (K, *input shape) each.

    ``vectorise`` (default: off the CPU) runs one vectorised backward pass
    (``is_grads_batched``), falling back to one pass per score where autograd cannot
    vectorise an operation of the graph; otherwise one pass per score from the same graph.
    On a CPU the passes one by one are the faster (the README's Detection table).
    """
    count = scores.shape[0]
    if vectorise is None:
        vectorise = scores.device.type != "cpu"
    if vectorise:
        eye = torch.eye(count, dtype=scores.dtype, device=scores.device)
        try:
            return list(
                torch.autograd.grad(
                    scores, inputs, grad_outputs=eye, is_grads_batched=True, allow_unused=True, retain_graph=True
                )
            )
        except RuntimeError:
            pass
    per_score = [
        torch.autograd.grad(scores[k], inputs, allow_unused=True, retain_graph=k < count - 1) for k in range(count)
    ]
    stacked: List[Optional[torch.Tensor]] = []
    for i, value in enumerate(inputs):
        got = [grads[i] for grads in per_score]
        # A score that skipped this input (sparse_backward) has a zero gradient there.
        parts = [torch.zeros_like(value) if grad is None else grad for grad in got]
        stacked.append(None if all(grad is None for grad in got) else torch.stack(parts))
    return stacked


def _repeated(tensor: Optional[torch.Tensor], count: int) -> Optional[torch.Tensor]:
    """``tensor`` (1, ...) as K rows: a view, no copy."""
    return None if tensor is None else tensor.expand(count, *tensor.shape[1:])
