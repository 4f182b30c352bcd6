"""BaseCAM: the template every CAM method shares.

A call goes through four steps:

1. **check** the input and the targets (:mod:`pytorch_grad_cam.scoring`);
2. **record**: one forward pass with hooks on the target layers and, for gradient
   methods, one backward pass of the targets' scores (:mod:`pytorch_grad_cam.recording`),
   returning a :class:`~pytorch_grad_cam.recording.Record`;
3. **map** each layer: the method's channel weights (:meth:`BaseCAM.get_cam_weights`)
   or its own map (:meth:`BaseCAM.get_cam_image`), then ReLU, per-image min-max and a
   bilinear resize to the input;
4. **aggregate** the layers' maps (their mean, min-max again), and average test-time
   augmentations where asked.

A method states only step 3 (and, where it needs more, one of the documented hooks
below). Everything stays in torch on the model's device; the result becomes numpy once,
when it is returned. Nothing of a call is kept on the object but ``outputs`` (the last
call's model output, which grad-cam's users read).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import ContextManager, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam import inputs, several_targets
from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients, ReshapeTransform
from pytorch_grad_cam.augmentation import augmented_maps
from pytorch_grad_cam.checks import check_input, check_layers_ran, check_outputs, layer_grid
from pytorch_grad_cam.differentiable import differentiable_maps
from pytorch_grad_cam.layer_search import prepare_layers
from pytorch_grad_cam.layers import LayerSpec, resolve_target_layers, unwrap_parallel
from pytorch_grad_cam.model_state import autograd_from, compute_dtype, evaluation_mode, prepare_input
from pytorch_grad_cam.precision import full_precision
from pytorch_grad_cam.recording import Record, disconnected_error, gradient_to_layers
from pytorch_grad_cam.scoring import Target, check_targets, score, top_class_targets
from pytorch_grad_cam.utils.image import min_max_scale, resize_maps
from pytorch_grad_cam.utils.structures import detached
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

__all__ = ["BaseCAM", "Target", "LayerSpec", "weighted_map"]


class BaseCAM:
    """The CAM template; subclasses state their channel weights or their map.

    Args:
        model: the network; its mode, flags, modules, hooks and buffers are left as
            found (``use_cuda=True`` is the one exception: it moves the model to CUDA,
            as grad-cam's ``use_cuda`` did). Every call computes in eval mode. A model
            wrapped in ``nn.DataParallel``/``DistributedDataParallel`` or
            ``torch.compile`` is unwrapped: the CAM runs the module inside
            (``self.model``), eagerly, in the calling process.
        target_layers: a module, a dotted name, or a list of them, inside ``model``;
            None: the first call picks one and warns which (the last module whose
            output is a spatial grid; for a vision transformer, its last block's first
            norm with the transform read from the model; see
            :mod:`pytorch_grad_cam.layer_search`).
        reshape_transform: maps a layer's output (and gradient) to (B, C, h, w) (or
            (B, C, d, h, w)), see ``utils.reshape_transforms``; None: none, or, for layers
            that output a vision transformer's patch tokens, the one read from the model
            on the first call (with a warning).
        compute_input_gradient: grad-cam's spelling of the class flag below, for
            subclasses written for it (True / False switch the flag on / off).
        uses_gradients: the same for the class flag ``uses_gradients``.
        tta_transforms: a ``ttach.Compose`` used by ``aug_smooth=True`` (None: flip x
            [0.9, 1, 1.1]).
        detach: accepted as grad-cam's; recorded tensors are always detached here.
        target_layer: the older spelling of ``target_layers`` (one module).
        use_cuda: move the model to CUDA and compute there. Without it, computation
            runs on the device of the model's parameters.

    Raises:
        TypeError: if ``model`` is not a module or ``reshape_transform`` not callable.
        ValueError: on missing, duplicated or foreign target layers.
        RuntimeError: if ``use_cuda=True`` and CUDA is not available.

    A method extends the template through these documented hooks, never through another
    class's private members: :meth:`get_cam_weights` or :meth:`get_cam_image` (most
    methods), :meth:`layer_map` (a map that needs more of the record, AblationCAM),
    :meth:`compute_cam_per_layer` and :meth:`aggregate_multi_layers` (FullGrad,
    RefineCAM), :meth:`default_targets` (FinerCAM), :meth:`reduce_gradient` (FullGrad),
    :meth:`backward` and :meth:`forward_context` (ShapleyCAM), and the class flags below.
    """

    #: Whether the method needs dL/dA (one backward pass) or only activations.
    uses_gradients: bool = True
    #: Whether the method needs targets (with ``targets=None``: each image's top class,
    #: which needs a tensor output). Class-agnostic methods (EigenCAM) never build or
    #: call targets, so they work on models whose output is not a tensor (detectors).
    needs_targets: bool = True
    #: Whether the backward pass also computes the input's gradient (FullGrad).
    compute_input_gradient: bool = False
    #: Whether a target layer that is not run, or that no gradient reaches, is allowed
    #: (it then adds nothing) rather than an error; FullGrad, whose layers are every
    #: bias layer, sets it.
    allow_unreached_layers: bool = False
    #: False: the method reads only the target layers' gradients (FullGrad), so their
    #: outputs are not copied or kept. Honoured with ``compute_input_gradient``, whose
    #: backward pass runs through every layer to the input.
    record_activations: bool = True
    #: Whether the method reads a vision transformer's attention maps (LeGrad, rollout)
    #: instead of a layer's grid; such a method refuses a CNN.
    needs_attention: bool = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: Union[LayerSpec, Sequence[LayerSpec], None] = None,
        reshape_transform: Optional[ReshapeTransform] = None,
        compute_input_gradient: bool = False,
        uses_gradients: bool = True,
        tta_transforms: Optional[object] = None,
        detach: bool = True,
        *,
        target_layer: Optional[LayerSpec] = None,
        use_cuda: bool = False,
    ) -> None:
        # grad-cam's constructor flags, for subclasses written for it: a non-default
        # value switches the class's flag; the defaults leave a subclass's own flags.
        if compute_input_gradient:
            self.compute_input_gradient = True
        if not uses_gradients:
            self.uses_gradients = False
        #: The augmentations of ``aug_smooth=True`` (None: flip x [0.9, 1, 1.1]).
        self.tta_transforms = tta_transforms
        #: Accepted as grad-cam's; recorded tensors are always detached here (ShapleyCAM
        #: builds its double backward itself), so it changes nothing.
        self.detach = detach
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        if reshape_transform is not None and not callable(reshape_transform):
            raise TypeError("reshape_transform must be a function of a tensor, or None")
        resolved = resolve_target_layers(model, target_layers, target_layer)
        self.target_layers: List[nn.Module] = resolved or []
        if use_cuda:
            if not torch.cuda.is_available():
                raise RuntimeError(
                    "use_cuda=True but CUDA is not available on this machine; pass use_cuda=False to compute on the CPU"
                )
            model = model.cuda()  # the documented exception to "the model is left as found"
        self.model = unwrap_parallel(model)
        self.reshape_transform = reshape_transform
        #: The last call's model output (detached; the mean over augmented copies).
        self.outputs: object = None

    # ------------------------------------------------------------------ method hooks
    def get_cam_weights(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: List[Target],
        activations: torch.Tensor,
        grads: torch.Tensor,
    ) -> torch.Tensor:
        """Channel weights (B, K) for ``activations`` (B, K, *spatial); subclasses state this.

        Raises:
            NotImplementedError: in BaseCAM itself.
        """
        raise NotImplementedError(f"{type(self).__name__} must define get_cam_weights or get_cam_image")

    def get_cam_image(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: List[Target],
        activations: torch.Tensor,
        grads: torch.Tensor,
        eigen_smooth: bool = False,
    ) -> torch.Tensor:
        """The raw map (B, *spatial) of one layer: Σ_k w_k·A_k, or with ``eigen_smooth``
        the first-principal-component projection of (w_k·A_k)."""
        weights = self.get_cam_weights(input_tensor, target_layer, targets, activations, grads)
        return weighted_map(weights, activations, eigen_smooth)

    def layer_map(self, record: Record, index: int, eigen_smooth: bool) -> torch.Tensor:
        """The raw map (B, *spatial) of ``record.layers[index]``: :meth:`get_cam_image` on
        its activations and gradients (zeros for a gradient-free method), in float32
        (float64 for a float64 model).

        Raises:
            ValueError: if the layer's activations are not a grid of the input's kind.
        """
        layer = record.layers[index]
        activations = layer_grid(record, index, self.reshape_transform)
        grads = record.gradients[index]
        grads = torch.zeros_like(activations) if grads is None else grads.to(activations.dtype)
        return self.get_cam_image(record.input_tensor, layer, record.targets, activations, grads, eigen_smooth)

    def compute_cam_per_layer(self, record: Record, eigen_smooth: bool) -> List[torch.Tensor]:
        """One map (N, *spatial) per target layer: :meth:`layer_map`, ReLU, per-image
        min-max, resized to the input."""
        size = record.input_tensor.shape[2:]
        cams = []
        for index in range(len(record.layers)):
            cam = torch.as_tensor(self.layer_map(record, index, eigen_smooth))
            cam = min_max_scale(torch.relu(cam.to(compute_dtype(cam))))
            cams.append(resize_maps(cam, size))
        return cams

    def aggregate_multi_layers(self, cams: List[torch.Tensor]) -> torch.Tensor:
        """The maps of several layers combined: their mean, then min-max again."""
        if len(cams) == 1:
            return min_max_scale(cams[0])
        total = cams[0] + cams[1]  # the mean, without stacking the layers' maps into one more copy
        for cam in cams[2:]:
            total += cam
        return min_max_scale(total / len(cams))

    def default_targets(self, outputs: object, copies: int) -> List[Target]:
        """The targets used when none are given: each image's top class."""
        return top_class_targets(outputs, copies)

    def reduce_gradient(self, record: Record, target_layer: nn.Module, grads: torch.Tensor) -> Optional[torch.Tensor]:
        """What is kept of ``target_layer``'s output gradient (after ``reshape_transform``),
        called inside the backward pass as the gradient arrives. Returns ``grads`` here; a
        method needing only a reduction of it (FullGrad's bias term) returns that, so the
        full gradient is freed as soon as the backward pass is done with it."""
        return grads

    def backward(self, loss: torch.Tensor, record: Record, recorder: ActivationsAndGradients) -> None:
        """One backward pass of ``loss`` to the target layers (the recorder's tensor hooks
        catch the gradients) and, with ``compute_input_gradient``, to the input
        (``record.input_gradient``). A method needing more (ShapleyCAM) overrides it."""
        wanted = record.input_tensor if self.compute_input_gradient else None
        record.input_gradient = gradient_to_layers(loss, recorder, wanted)

    def forward_context(self) -> ContextManager:
        """A context the record step runs in (ShapleyCAM: twice-differentiable attention)."""
        return nullcontext()

    score = staticmethod(score)
    differentiable = differentiable_maps  # maps you can train with: see pytorch_grad_cam.differentiable

    # ------------------------------------------------------------------ the call
    def __call__(
        self,
        input_tensor: torch.Tensor,
        targets: Optional[Sequence[Target]] = None,
        aug_smooth: Union[bool, object] = False,
        eigen_smooth: bool = False,
        *,
        target_category: Union[int, Sequence[int], None] = None,
        image_input: inputs.ImageInput = None,
    ) -> np.ndarray:
        """Compute the CAM of every image in the batch.

        Args:
            input_tensor: (B, C, H, W) (or (B, C, D, H, W), or (B, C, L) signals) float tensor; or
                a tuple/dict of the model's inputs, ``image_input`` naming the map's (:mod:`.inputs`).
            targets: one callable per image mapping that image's output to a scalar
                (``ClassifierOutputTarget(281)``); None explains each image's top class.
            aug_smooth: True for test-time augmentation (flip x [0.9, 1, 1.1]), or a
                ``ttach.Compose`` of your own.
            eigen_smooth: replace the weighted channel sum by its first principal component.
            target_category: the older spelling: an int for every image or a list of B ints.

        Returns:
            numpy.float32 array (B, H, W) (or (B, D, H, W), (B, L)), each map in [0, 1].

        Raises:
            TypeError/ValueError: on an input that is not a finite 3D/4D/5D float tensor,
                targets whose number is not B, both ``targets`` and ``target_category``,
                a target layer whose output is not 4D/5D without a fitting
                ``reshape_transform``, or a model output with NaN/Inf; for a model
                output that is not a tensor with ``targets=None`` or the library's
                targets (wrap the model in ``utils.model_wrappers.OutputSelector``);
                for the gradient methods, a target layer the score does not depend on.
            IndexError: on a class index outside the model output.
        """
        if inputs.is_several(input_tensor):
            return inputs.explain(self, input_tensor, targets, aug_smooth, eigen_smooth, target_category, image_input)
        input_tensor = check_input(input_tensor, self.model)
        targets = check_targets(targets, target_category, input_tensor.shape[0])
        # Eval mode covers the whole call: the passes of every method and augmented copy.
        with torch.inference_mode(False), evaluation_mode(self.model):
            prepared = prepare_input(input_tensor, self.model)
            prepare_layers(self, prepared, targets)
            if aug_smooth is not False and aug_smooth is not None:
                transforms = (
                    self.tta_transforms if aug_smooth is True and self.tta_transforms is not None else aug_smooth
                )
                cams = augmented_maps(self._explain, prepared, targets, eigen_smooth, transforms)
            else:
                cams = self._explain(prepared, targets, eigen_smooth)
        return cams.detach().cpu().numpy().astype(np.float32, copy=False)

    def forward(
        self,
        input_tensor: torch.Tensor,
        targets: Optional[Sequence[Target]] = None,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        """grad-cam's ``forward(input_tensor, targets, eigen_smooth)``, in that positional
        order (``__call__``'s third positional argument is ``aug_smooth``); returns and
        raises as ``__call__``."""
        return self(input_tensor, targets, eigen_smooth=eigen_smooth)

    def explain_targets(
        self, input_tensor: torch.Tensor, targets: Sequence[Target], eigen_smooth: bool = False
    ) -> np.ndarray:
        """The maps of one image for each of several targets (a detector's boxes, a CLIP
        model's prompts): what ``self(image repeated K times, targets)`` returns, from one
        forward pass and the K scores' gradients at the target layers where the method
        allows (see :mod:`pytorch_grad_cam.several_targets`).

        Returns:
            numpy.float32 array (K, H, W) (or (K, D, H, W), (K, L)), each map in [0, 1].

        Raises:
            ValueError: if ``input_tensor`` holds more than one image or ``targets`` is
                empty; others as ``__call__``.
        """
        image, targets = several_targets.one_image_and_targets(input_tensor, targets, self.model)
        if not several_targets.shares_one_forward(self, BaseCAM):
            return several_targets.maps_one_by_one(self, image, targets, eigen_smooth)
        with torch.inference_mode(False), evaluation_mode(self.model):
            prepared = prepare_input(image, self.model)
            prepare_layers(self, prepared, targets[:1])
            record = several_targets.record_several_targets(self, prepared, targets)
            self.outputs = record.outputs
            with torch.no_grad(), full_precision():
                cams = self.aggregate_multi_layers(self.compute_cam_per_layer(record, eigen_smooth))
        return cams.detach().cpu().numpy().astype(np.float32, copy=False)

    def _explain(
        self, input_tensor: torch.Tensor, targets: Optional[List[Target]], eigen_smooth: bool, copies: int = 1
    ) -> torch.Tensor:
        """Maps (N, *spatial) in [0, 1] for N = copies x B images (``copies`` > 1: the
        batch holds augmented copies of B images, and default targets come from their
        mean output)."""
        with self.forward_context():
            record = self.record(input_tensor, targets, copies)
        self.outputs = _mean_over_copies(record.outputs, copies)
        with torch.no_grad(), full_precision():
            return self.aggregate_multi_layers(self.compute_cam_per_layer(record, eigen_smooth))

    def record(self, input_tensor: torch.Tensor, targets: Optional[List[Target]], copies: int = 1) -> Record:
        """The record step: one forward pass through hooks on the target layers and, for
        gradient methods, the backward pass of the targets' scores.

        Returns:
            The :class:`~pytorch_grad_cam.recording.Record` of this pass; the hooks are gone.

        Raises:
            ValueError: if a target layer is not run, or (gradient methods) the score does
                not depend on it; others as ``__call__``.
        """
        wants_input_gradient = self.compute_input_gradient and self.uses_gradients
        if wants_input_gradient:
            input_tensor = input_tensor.detach().requires_grad_(True)
        record = Record(input_tensor=input_tensor, layers=list(self.target_layers))
        layers = record.layers
        with ActivationsAndGradients(
            self.model,
            layers,
            self.reshape_transform,
            record_gradients=self.uses_gradients,
            record_activations=self.record_activations or not wants_input_gradient,
            reduce_gradient=lambda index, grads: self.reduce_gradient(record, layers[index], grads),
        ) as recorder:
            with torch.enable_grad() if self.uses_gradients else torch.no_grad():
                # The graph starts at the first target layer, unless the input's gradient is wanted.
                lazy = self.uses_gradients and not wants_input_gradient
                with autograd_from(layers) if lazy else nullcontext():
                    outputs = self.model(input_tensor)
                check_outputs(outputs)
                if not self.allow_unreached_layers:
                    check_layers_ran(layers, recorder.layer_outputs)
                record.targets = self._targets_for(outputs, targets, copies)
                if self.uses_gradients:
                    self._backward_scores(outputs, record, recorder)
                elif record.targets is not None:
                    # The targets' errors (a class outside the output, a box not detected)
                    # come from the real input, before any perturbed copy is scored.
                    self.score(record.targets, outputs)
            record.take(recorder)
        record.outputs = detached(outputs)
        record.input_tensor = input_tensor.detach()
        if record.input_gradient is not None:
            # grad-cam's methods read the input's gradient as ``input_tensor.grad``.
            record.input_tensor.grad = record.input_gradient
        return record

    def _targets_for(self, outputs: object, targets: Optional[List[Target]], copies: int) -> Optional[List[Target]]:
        if targets is None:
            return self.default_targets(outputs, copies) if self.needs_targets else None
        return list(targets) * copies

    def _backward_scores(self, outputs: object, record: Record, recorder: ActivationsAndGradients) -> None:
        scores = self.score(record.targets, outputs)
        if not scores.requires_grad:
            if torch.is_tensor(outputs) and not outputs.requires_grad:
                raise disconnected_error(self.model, record.layers[0])
            raise ValueError(
                "the target scores do not depend on the target layers; check that the targets use the model output"
            )
        self.backward(scores.sum(), record, recorder)
        recorder.finish_gradients()
        # Structural, not numeric: a gradient that is exactly zero (a dead ReLU, a
        # constant target) is recorded as zeros; no gradient at all means the layer's
        # output is not in the graph of the score.
        if not self.allow_unreached_layers:
            for layer, grads in zip(record.layers, recorder.gradients):
                if grads is None:
                    raise disconnected_error(self.model, layer)

    # ------------------------------------------------------------------ lifetime
    def release(self) -> None:
        """Drop what the last call kept (``outputs``). Hooks live only during a call."""
        self.outputs = None

    def __enter__(self) -> "BaseCAM":
        return self

    def __exit__(self, exc_type: object, exc_value: object, traceback: object) -> None:
        self.release()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to release
            pass


def weighted_map(weights: object, activations: torch.Tensor, eigen_smooth: bool = False) -> torch.Tensor:
    """Σ_k w_k·A_k (B, *spatial) for weights (B, K) (a tensor, or numpy from a method of
    one's own) and activations (B, K, *spatial); with ``eigen_smooth`` the first
    principal component of (w_k·A_k) instead of the sum."""
    weights = torch.as_tensor(weights, device=activations.device, dtype=activations.dtype)
    weighted = weights.reshape(*weights.shape, *[1] * (activations.ndim - 2)) * activations
    return get_2d_projection(weighted) if eigen_smooth else weighted.sum(dim=1)


def _mean_over_copies(outputs: object, copies: int) -> object:
    if torch.is_tensor(outputs) and copies > 1:
        return outputs.reshape(copies, -1, *outputs.shape[1:]).mean(dim=0)
    return outputs
