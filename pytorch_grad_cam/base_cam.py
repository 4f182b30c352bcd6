"""BaseCAM: the pipeline every CAM method shares.

One forward pass with hooks on the target layers, the targets resolved, one backward
pass (gradient methods only), a map per layer from the method's weights (or its own
map), ReLU, per-image min-max scaling, bilinear resizing to the input, the mean over
layers, and optional test-time-augmentation / principal-component smoothing. A method
subclass states only :meth:`get_cam_weights` (or overrides :meth:`get_cam_image`).

Everything stays in torch on the model's device; the result is converted to numpy
once, when it is returned.
"""
from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping
from contextlib import contextmanager, nullcontext
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients, ReshapeTransform
from pytorch_grad_cam.layer_search import find_target_layer
from pytorch_grad_cam.utils.image import min_max_scale, resize_maps
from pytorch_grad_cam.utils.model_targets import (
    BinaryClassifierOutputTarget,
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
    RawScoresOutputTarget,
    SemanticSegmentationTarget,
    SimilarityToConceptTarget,
)
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

Target = Callable[[torch.Tensor], torch.Tensor]
LayerSpec = Union[nn.Module, str]


#: Wrappers that run replicas of ``.module`` (in worker threads, or one per process).
_PARALLEL_WRAPPERS = (nn.DataParallel, nn.parallel.DistributedDataParallel)


def unwrap_parallel(model: nn.Module) -> nn.Module:
    """The model inside ``nn.DataParallel`` / ``DistributedDataParallel`` wrappers.

    A CAM explains one forward pass of the network itself: DataParallel's replicas run
    in worker threads (where our hooks do not record) and DDP adds gradient
    synchronisation that a CAM's partial backward pass never completes.
    """
    while isinstance(model, _PARALLEL_WRAPPERS):
        model = model.module
    return model


def resolve_target_layers(
    model: nn.Module,
    target_layers: Union[LayerSpec, Sequence[LayerSpec], None],
    target_layer: Optional[LayerSpec] = None,
) -> Optional[List[nn.Module]]:
    """Turn the user's layer arguments into a list of modules inside ``model``.

    Layers may be given as modules or as dotted names (``"layer4.2"``). For a model
    wrapped in ``nn.DataParallel``/``DistributedDataParallel`` a name may carry the
    wrapper's ``module.`` prefix or not.

    Returns:
        The target modules, in the order given; None when no layer is given (BaseCAM
        then finds one at its first call).

    Raises:
        ValueError: if neither or both of ``target_layers``/``target_layer`` are given,
            the list is empty, or a layer (module or name) is not inside ``model``.
    """
    if target_layers is not None and target_layer is not None:
        raise ValueError("pass target_layers=[...] or target_layer=..., not both")
    layers = target_layers if target_layers is not None else target_layer
    if layers is None:
        return None  # found at the first call (pytorch_grad_cam.layer_search)
    if isinstance(layers, (nn.Module, str)):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise ValueError("target_layers is empty; pass at least one module of the model")
    named = dict(model.named_modules())
    inner = unwrap_parallel(model)
    if inner is not model:
        named.update((name, module) for name, module in inner.named_modules() if name)
    member_ids = {id(module) for module in named.values()}
    resolved = []
    for layer in layers:
        if isinstance(layer, str):
            if layer not in named:
                examples = ", ".join(repr(name) for name in list(named)[1:6])
                raise ValueError(
                    f"layer {layer!r} is not inside the model; pass a name from "
                    f"model.named_modules() (for example {examples})"
                )
            layer = named[layer]
        elif not isinstance(layer, nn.Module):
            raise TypeError(
                f"a target layer must be an nn.Module or a dotted name, not {type(layer).__name__}"
            )
        elif id(layer) not in member_ids:
            raise ValueError(
                f"layer {type(layer).__name__} is not inside the model; pass a module "
                "from model.named_modules()"
            )
        # The wrapper itself outputs what the wrapped model outputs.
        resolved.append(inner if layer is model else layer)
    return resolved


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU if it has none."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def model_float_dtype(model: nn.Module) -> Optional[torch.dtype]:
    """The dtype of the model's first floating-point parameter, or None."""
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return None


@contextmanager
def _autograd_from(layers: Sequence[nn.Module]) -> Iterator[None]:
    """Run a forward pass without autograd until the first of ``layers`` is called.

    Gradients are wanted only with respect to the target layers' outputs, and those
    depend only on what comes after them; so the network before the first target layer
    builds no graph and keeps no activations for a backward pass (the memory of a plain
    forward there), and each target layer switches recording on as it is called.
    Only this thread's forward passes are affected (grad mode is per thread).
    """
    thread = threading.get_ident()

    def record_from_here(module: nn.Module, inputs: tuple) -> None:
        if threading.get_ident() == thread:
            torch.set_grad_enabled(True)

    handles = [layer.register_forward_pre_hook(record_from_here) for layer in layers]
    try:
        with torch.no_grad():
            yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Compute in eval mode, then give each submodule back its own train/eval flag.

    Only the modules found in training mode are switched (their ``training`` flag set
    directly, as ``model.eval()`` would, without calling overridable ``train()``
    methods), and exactly those are switched back, also when the body raises. A model
    already in eval mode is not written to at all, so threads sharing it are safe.
    """
    switched = [module for module in model.modules() if module.training]
    for module in switched:
        module.training = False
    try:
        yield
    finally:
        for module in switched:
            module.training = True


#: Targets (exact types) whose call on (N, classes) outputs gives the N row scores.
_ROW_WISE_TARGETS = (ClassifierOutputTarget, ClassifierOutputSoftmaxTarget)

#: The library's targets that index a tensor of scores (a dict output breaks them).
_TENSOR_TARGETS = (
    ClassifierOutputTarget,
    ClassifierOutputSoftmaxTarget,
    BinaryClassifierOutputTarget,
    RawScoresOutputTarget,
    SemanticSegmentationTarget,
    SimilarityToConceptTarget,
)

_SELECT_HINT = (
    "wrap the model so that it returns the tensor of scores: "
    "pytorch_grad_cam.utils.model_wrappers.OutputSelector(model, 'logits') "
    "(or another key, an index, or a function of the output)"
)


def describe_output(outputs: object) -> str:
    """``FakeModelOutput with keys ['logits', 'hidden']``, ``tuple of 2``, ``int``..."""
    kind = type(outputs).__name__
    if isinstance(outputs, Mapping):
        return f"{kind} with keys {list(outputs.keys())}"
    if isinstance(outputs, (list, tuple)):
        return f"{kind} of {len(outputs)}"
    return kind


def per_image_outputs(outputs: object, count: int, targets: Sequence[Target]) -> Sequence[object]:
    """The ``count`` per-image outputs handed to the targets.

    A tensor, list or tuple is indexed along its first dimension (a list of per-image
    detections stays one entry per image). A dict (or a dict-like ``ModelOutput``) gives
    image i the plain dict of its values' i-th rows (values that are not batched
    tensors are passed whole), so targets of one's own can read dict outputs.

    Raises:
        TypeError: if a target of this library, which needs a tensor of scores, is given
            a dict or another output that is not a tensor, list or tuple, or the output
            is none of tensor, list, tuple or dict.
        ValueError: if a list/tuple output does not hold one entry per image.
    """
    if torch.is_tensor(outputs):
        return outputs
    if isinstance(outputs, (list, tuple)):
        if len(outputs) != count:
            raise ValueError(
                f"the model returns {describe_output(outputs)}, but the batch has {count} "
                f"images; a list/tuple output must hold one entry per image, else {_SELECT_HINT}"
            )
        return outputs
    needs_tensor = next((t for t in targets if isinstance(t, _TENSOR_TARGETS)), None)
    if needs_tensor is not None:
        raise TypeError(
            f"{needs_tensor!r} needs the model output to be a tensor of scores, but the "
            f"model returns {describe_output(outputs)}; {_SELECT_HINT}"
        )
    if isinstance(outputs, Mapping):
        return [
            {
                key: value[index]
                if torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == count
                else value
                for key, value in outputs.items()
            }
            for index in range(count)
        ]
    raise TypeError(
        f"the model returns {describe_output(outputs)}, which a target cannot take per "
        f"image; {_SELECT_HINT}"
    )


def _tensors_in(output: object) -> List[torch.Tensor]:
    """The tensors of a layer output: the tensor itself, or those inside a dict/tuple."""
    if torch.is_tensor(output):
        return [output]
    if isinstance(output, Mapping):
        return [v for v in output.values() if torch.is_tensor(v)]
    if isinstance(output, (list, tuple)):
        return [v for v in output if torch.is_tensor(v)]
    return []


def _detached(outputs: object) -> object:
    """``outputs`` with every tensor inside (dicts, lists, tuples) detached."""
    if torch.is_tensor(outputs):
        return outputs.detach()
    if isinstance(outputs, Mapping):
        items = {key: _detached(value) for key, value in outputs.items()}
        try:
            return type(outputs)(items)
        except Exception:  # noqa: BLE001 - a dict type whose constructor differs
            return items
    if isinstance(outputs, (list, tuple)):
        values = [_detached(value) for value in outputs]
        return type(outputs)(*values) if hasattr(outputs, "_fields") else type(outputs)(values)
    return outputs


class BaseCAM:
    """The CAM pipeline; subclasses state their channel weights or their map.

    Args:
        model: the network; its mode, flags, modules and hooks are left as found.
            Every call computes in eval mode (see :func:`evaluation_mode`). A model
            wrapped in ``nn.DataParallel``/``DistributedDataParallel`` is unwrapped:
            the CAM runs ``model.module`` (``self.model``) in the calling process.
        target_layers: a module, a dotted name, or a list of them, inside ``model``;
            None: the first call picks the last module whose output is a spatial grid
            (see ``pytorch_grad_cam.layer_search``) and warns which.
        reshape_transform: maps a layer's output (and gradient) to (B, C, h, w) (or
            (B, C, d, h, w)); needed for transformers, see ``utils.reshape_transforms``.
        target_layer: the older spelling of ``target_layers`` (one module).
        use_cuda: move the model to CUDA and compute there. Without it, computation
            runs on the device of the model's parameters.

    Raises:
        ValueError: on missing, duplicated or foreign target layers.
        RuntimeError: if ``use_cuda=True`` and CUDA is not available.
    """

    #: Whether the method needs dL/dA (one backward pass) or only activations.
    uses_gradients: bool = True
    #: Whether the method needs targets (with ``targets=None``: each image's top class,
    #: which needs a tensor output). Class-agnostic methods (EigenCAM) never build or
    #: call targets, so they work on models whose output is not a tensor (detectors).
    needs_targets: bool = True
    #: Whether the backward pass also computes the input's gradient (FullGrad).
    compute_input_gradient: bool = False
    #: Whether a target layer no gradient reaches is allowed (its gradient is then zero)
    #: rather than an error; FullGrad, whose layers are every bias layer, sets it.
    allow_unreached_layers: bool = False
    #: False: the method reads only the target layers' gradients (FullGrad), so their
    #: outputs are not copied or kept (``recorded`` then holds (None, grads)). Honoured
    #: with ``compute_input_gradient``, whose backward pass runs through every layer to
    #: the input; otherwise the layers are recorded as usual.
    record_activations: bool = True

    def __init__(
        self,
        model: nn.Module,
        target_layers: Union[LayerSpec, Sequence[LayerSpec], None] = None,
        reshape_transform: Optional[ReshapeTransform] = None,
        *,
        target_layer: Optional[LayerSpec] = None,
        use_cuda: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        if reshape_transform is not None and not callable(reshape_transform):
            raise TypeError("reshape_transform must be a function of a tensor, or None")
        resolved = resolve_target_layers(model, target_layers, target_layer)
        # No layer given: the first call finds one (see pytorch_grad_cam.layer_search).
        self._find_target_layers = resolved is None
        self.target_layers: List[nn.Module] = resolved or []
        self._input_gradient: Optional[torch.Tensor] = None
        if use_cuda:
            if not torch.cuda.is_available():
                raise RuntimeError(
                    "use_cuda=True but CUDA is not available on this machine; "
                    "pass use_cuda=False to compute on the CPU"
                )
            model = model.cuda()
        self.model = unwrap_parallel(model)
        self.reshape_transform = reshape_transform
        self.outputs: Optional[torch.Tensor] = None
        # Raw (not reshaped) outputs of the target layers during the current call;
        # methods that perturb a layer (AblationCAM) read them.
        self._layer_outputs: Dict[nn.Module, torch.Tensor] = {}

    # ----------------------------------------------------------------- method API
    def get_cam_weights(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: List[Target],
        activations: torch.Tensor,
        grads: torch.Tensor,
    ) -> torch.Tensor:
        """Channel weights (B, K) for ``activations`` (B, K, *spatial); subclasses state this."""
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
        # A subclass of one's own may compute its weights in numpy, as the reference's do.
        weights = torch.as_tensor(weights, device=activations.device, dtype=activations.dtype)
        weighted = weights.reshape(*weights.shape, *[1] * (activations.ndim - 2)) * activations
        if eigen_smooth:
            return get_2d_projection(weighted)
        return weighted.sum(dim=1)

    def reduce_gradient(
        self, input_tensor: torch.Tensor, target_layer: nn.Module, grads: torch.Tensor
    ) -> Optional[torch.Tensor]:
        """What is kept of ``target_layer``'s output gradient (after ``reshape_transform``),
        called inside the backward pass as the gradient arrives. Returns ``grads`` itself
        here; a method needing only a reduction of it (FullGrad's bias term) returns that,
        so the full gradient is freed as soon as the backward pass is done with it."""
        return grads

    # ----------------------------------------------------------------- public call
    def __call__(
        self,
        input_tensor: torch.Tensor,
        targets: Optional[Sequence[Target]] = None,
        aug_smooth: Union[bool, "object"] = False,
        eigen_smooth: bool = False,
        *,
        target_category: Union[int, Sequence[int], None] = None,
    ) -> np.ndarray:
        """Compute the CAM of every image in the batch.

        Args:
            input_tensor: (B, C, H, W) (or (B, C, D, H, W)) float tensor.
            targets: one callable per image mapping that image's output to a scalar
                (``ClassifierOutputTarget(281)``); None explains each image's top class.
            aug_smooth: True for test-time augmentation (flip x [0.9, 1, 1.1]), or a
                ``ttach.Compose`` of your own.
            eigen_smooth: replace the weighted channel sum by its first principal component.
            target_category: the older spelling: an int for every image or a list of B ints.

        Returns:
            numpy.float32 array (B, H, W) (or (B, D, H, W)), each map in [0, 1].

        Raises:
            TypeError/ValueError: on an input that is not a finite 4D/5D float tensor,
                targets whose number is not B, both ``targets`` and ``target_category``,
                a target layer whose output is not 4D/5D without a fitting
                ``reshape_transform``, or a model output with NaN/Inf; for a model
                output that is not a tensor with ``targets=None`` or the library's
                targets (wrap the model in ``utils.model_wrappers.OutputSelector``);
                for the gradient methods, a target layer the score does not depend on.
            IndexError: on a class index outside the model output.

        Every call computes in eval mode and gives each submodule its own train/eval
        flag back afterwards, also when it raises.
        """
        input_tensor = self._check_input(input_tensor)
        batch = input_tensor.shape[0]
        targets = self._check_targets(targets, target_category, batch)
        device = model_device(self.model)
        dtype = model_float_dtype(self.model) or input_tensor.dtype
        # Eval mode covers the whole call: the forward and backward passes, the extra
        # passes of ScoreCAM/AblationCAM and every augmented copy.
        with torch.inference_mode(False), evaluation_mode(self.model):
            input_tensor = input_tensor.to(device=device, dtype=dtype)
            if input_tensor.is_inference():
                input_tensor = input_tensor.clone()
            if self._find_target_layers:
                self._choose_target_layer(input_tensor, targets)
            try:
                if aug_smooth is not False and aug_smooth is not None:
                    cams = self._forward_augmented(input_tensor, targets, eigen_smooth, aug_smooth)
                else:
                    cams = self._forward(input_tensor, targets, eigen_smooth)
            finally:
                self._layer_outputs = {}
        return cams.detach().cpu().numpy().astype(np.float32, copy=False)

    def forward(
        self,
        input_tensor: torch.Tensor,
        targets: Optional[Sequence[Target]] = None,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        """The reference's ``forward(input_tensor, targets, eigen_smooth)``, in that
        positional order (``__call__``'s third positional argument is ``aug_smooth``)."""
        return self(input_tensor, targets, eigen_smooth=eigen_smooth)

    # ----------------------------------------------------------------- pipeline
    def _forward(
        self,
        input_tensor: torch.Tensor,
        targets: Optional[List[Target]],
        eigen_smooth: bool,
        copies: int = 1,
    ) -> torch.Tensor:
        """Maps (N, *spatial) in [0, 1] for an input of N = copies x B images; with
        ``copies`` > 1 the batch holds augmented copies of B images, and default
        targets come from their mean output."""
        grad_mode = torch.enable_grad() if self.uses_gradients else torch.no_grad()
        if self.compute_input_gradient and self.uses_gradients:
            input_tensor = input_tensor.detach().requires_grad_(True)
        record_activations = self.record_activations or not (
            self.compute_input_gradient and self.uses_gradients
        )
        layers = self.target_layers

        def reduce(index: int, grads: torch.Tensor) -> Optional[torch.Tensor]:
            return self.reduce_gradient(input_tensor, layers[index], grads)

        with ActivationsAndGradients(
            self.model,
            self.target_layers,
            self.reshape_transform,
            self.uses_gradients,
            record_activations=record_activations,
            reduce_gradient=reduce,
        ) as recorder, grad_mode:
            # The graph starts at the first target layer, unless the input's gradient is wanted.
            lazy_graph = self.uses_gradients and not self.compute_input_gradient
            with _autograd_from(self.target_layers) if lazy_graph else nullcontext():
                outputs = self.model(input_tensor)
            self._check_outputs(outputs)
            if targets is None and self.needs_targets:
                targets = self.default_targets(outputs, copies)
            elif targets is not None and copies > 1:
                targets = list(targets) * copies
            self._check_layers_ran(recorder)
            self._input_gradient = None
            if self.uses_gradients:
                scores = self.score(targets, outputs)
                if not scores.requires_grad:
                    if torch.is_tensor(outputs) and not outputs.requires_grad:
                        self._raise_disconnected(self.target_layers[0])
                    raise ValueError(
                        "the target scores do not depend on the target layers; check that "
                        "the targets use the model output"
                    )
                self.backward(scores.sum(), input_tensor, recorder)
                recorder.finish_gradients()
                # Structural, not numeric: a gradient that is exactly zero (a dead ReLU,
                # a constant target) is recorded as zeros; no gradient at all means the
                # layer's output is not in the graph of the score.
                for layer, grads in zip(self.target_layers, recorder.gradients):
                    if grads is None and not self.allow_unreached_layers:
                        self._raise_disconnected(layer)
            self.outputs = self._mean_over_copies(outputs, copies)
            self._layer_outputs = dict(zip(self.target_layers, recorder.layer_outputs))
            recorded = list(zip(recorder.activations, recorder.gradients))
        # The hooks are gone before the maps are computed: the extra forward passes of
        # ScoreCAM/AblationCAM must not overwrite what the first pass recorded (for the
        # next target layer) nor pay for recording themselves.
        with torch.no_grad():
            cams = self.compute_cam_per_layer(input_tensor.detach(), targets, recorded, eigen_smooth)
            return self.aggregate_multi_layers(cams)

    def backward(
        self, loss: torch.Tensor, input_tensor: torch.Tensor, recorder: ActivationsAndGradients
    ) -> None:
        """One backward pass of ``loss`` to the target layers' outputs (their tensor hooks
        record the gradients) and, with ``compute_input_gradient``, to the input
        (kept as ``self._input_gradient``). Methods needing more (ShapleyCAM) override it."""
        if recorder.record_activations:
            inputs = [t for out in recorder.layer_outputs for t in _tensors_in(out) if t.requires_grad]
        else:
            # The outputs may have been changed in place since (ReLU(inplace=True)), so
            # they are not asked for: their tensor hooks, registered before any change,
            # catch their gradients as the backward pass goes through them to the input.
            # A layer it does not go through (one after a no_grad part or a detach) is
            # then asked for where its gradient arrived when it returned its output.
            inputs = []
        if self.compute_input_gradient:
            inputs.append(input_tensor)
        missing = not recorder.record_activations
        grads = torch.autograd.grad(loss, inputs, allow_unused=True, retain_graph=missing)
        if missing:
            edges = [
                edge
                for edge, reached in zip(recorder.gradient_edges, recorder.reached)
                if edge is not None and not reached
            ]
            if edges:
                torch.autograd.grad(loss, edges, allow_unused=True)
        if self.compute_input_gradient:
            self._input_gradient = (
                torch.zeros_like(input_tensor) if grads[-1] is None else grads[-1].detach()
            )

    def compute_cam_per_layer(
        self,
        input_tensor: torch.Tensor,
        targets: Optional[List[Target]],
        recorded: List[tuple],
        eigen_smooth: bool,
    ) -> List[torch.Tensor]:
        """One map (N, *spatial) per target layer: the method's raw map, ReLU, per-image
        min-max, resized to the input. ``recorded`` holds (activations, grads) per layer."""
        cams = []
        for layer, (activations, grads) in zip(self.target_layers, recorded):
            activations = self._checked_activations(activations, layer)
            grads = torch.zeros_like(activations) if grads is None else grads.float()
            cam = self.get_cam_image(input_tensor, layer, targets, activations, grads, eigen_smooth)
            cam = torch.as_tensor(cam, device=activations.device)
            cam = min_max_scale(torch.relu(cam.float()))
            cams.append(resize_maps(cam, input_tensor.shape[2:]))
        return cams

    def aggregate_multi_layers(self, cams: List[torch.Tensor]) -> torch.Tensor:
        """The maps of several layers combined: their mean, then min-max again."""
        cam = torch.stack(cams).mean(dim=0) if len(cams) > 1 else cams[0]
        return min_max_scale(cam)

    def _forward_augmented(
        self,
        input_tensor: torch.Tensor,
        targets: Optional[List[Target]],
        eigen_smooth: bool,
        transforms: object,
    ) -> torch.Tensor:
        """Test-time augmentation: all augmented copies in one batched pass, each map
        de-augmented back to the original geometry, then averaged."""
        import ttach as tta

        if transforms is True:
            transforms = tta.Compose([tta.HorizontalFlip(), tta.Multiply(factors=[0.9, 1, 1.1])])
        transformers = list(transforms)
        batch = input_tensor.shape[0]
        augmented = torch.cat([t.augment_image(input_tensor) for t in transformers])
        cams = self._forward(augmented, targets, eigen_smooth, copies=len(transformers))
        restored = [
            t.deaugment_mask(chunk.unsqueeze(1)).squeeze(1)
            for t, chunk in zip(transformers, cams.split(batch))
        ]
        return torch.stack(restored).mean(dim=0)

    def _choose_target_layer(
        self, input_tensor: torch.Tensor, targets: Optional[List[Target]]
    ) -> None:
        """Find the target layer with one dry forward of the first image (and, for
        gradient methods, a backward of its target) and say which was chosen.

        A warning, not logging: it is shown once by default, where a user who omitted
        the layer looks, and says how to silence it (pass the layer)."""
        score = None
        if self.uses_gradients and (targets is not None or self.needs_targets):

            def score(outputs: object) -> torch.Tensor:
                chosen = targets[:1] if targets is not None else self.default_targets(outputs, 1)
                return self.score(chosen, outputs).sum()

        name, layer = find_target_layer(
            self.model, input_tensor[:1], self.reshape_transform, score
        )
        self.target_layers = [layer]
        self._find_target_layers = False
        warnings.warn(
            f"{type(self).__name__}: target_layers not given; using {name!r} "
            f"({type(layer).__name__}), the last module whose output is a spatial grid; "
            f"pass target_layers=['{name}'] (or another layer) to choose",
            stacklevel=3,
        )

    # ----------------------------------------------------------------- helpers
    @staticmethod
    def score(targets: Sequence[Target], outputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """The (N,) scores target_i(outputs[i]), kept on the device and in float32.

        One class-score target (``ClassifierOutputTarget``, ``ClassifierOutputSoftmaxTarget``)
        shared by every row of (N, classes) outputs scores them in one indexing operation:
        it indexes the last dimension, so that is exactly N calls on single rows.

        Raises:
            ValueError: if a target does not return one number.
        """
        shared = targets[0] if targets else None
        if (
            type(shared) in _ROW_WISE_TARGETS
            and all(target is shared for target in targets)
            and torch.is_tensor(outputs)
            and outputs.ndim == 2
            and outputs.shape[0] == len(targets)
        ):
            return shared(outputs).float()
        scores = []
        for target, output in zip(targets, per_image_outputs(outputs, len(targets), targets)):
            value = target(output)
            if not torch.is_tensor(value) or value.numel() != 1:
                shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
                raise ValueError(
                    f"target {target!r} returned {shape}; a target must map one image's "
                    "output to a scalar tensor"
                )
            scores.append(value.reshape(()))
        return torch.stack(scores).float()

    @staticmethod
    def _check_input(input_tensor: torch.Tensor) -> torch.Tensor:
        if not isinstance(input_tensor, torch.Tensor):
            raise TypeError(
                f"input_tensor must be a torch.Tensor, not {type(input_tensor).__name__}; "
                "use pytorch_grad_cam.utils.image.preprocess_image(img)"
            )
        if input_tensor.ndim not in (4, 5):
            raise ValueError(
                f"input_tensor must be (B, C, H, W) (or (B, C, D, H, W)), got shape "
                f"{tuple(input_tensor.shape)}; add the batch dimension with input_tensor[None]"
            )
        if not input_tensor.is_floating_point():
            raise TypeError(
                f"input_tensor must be a float tensor, got {input_tensor.dtype}; "
                "convert it with input_tensor.float()"
            )
        if input_tensor.shape[0] == 0:
            raise ValueError("input_tensor holds no image (batch size 0)")
        if not torch.isfinite(input_tensor).all():
            raise ValueError("input_tensor contains NaN or Inf; clean the input first")
        return input_tensor

    @staticmethod
    def _check_targets(
        targets: Optional[Sequence[Target]],
        target_category: Union[int, Sequence[int], None],
        batch: int,
    ) -> Optional[List[Target]]:
        if targets is not None and target_category is not None:
            raise ValueError("pass targets=[...] or target_category=..., not both")
        if target_category is not None:
            if isinstance(target_category, (int, np.integer)):
                targets = [ClassifierOutputTarget(int(target_category))] * batch
            else:
                categories = list(target_category)
                if len(categories) != batch:
                    raise ValueError(
                        f"target_category has {len(categories)} entries but the batch has "
                        f"{batch} images; pass one category per image (or a single int for all)"
                    )
                targets = [ClassifierOutputTarget(int(c)) for c in categories]
        if targets is None:
            return None
        if callable(targets) and not isinstance(targets, (list, tuple)):
            raise TypeError(
                "targets must be a list with one target per image, e.g. "
                f"[ClassifierOutputTarget(281)] * {batch}"
            )
        targets = list(targets)
        if len(targets) != batch:
            raise ValueError(
                f"targets has {len(targets)} entries but the batch has {batch} images; "
                "pass one target per image"
            )
        for target in targets:
            if not callable(target):
                raise TypeError(
                    f"target {target!r} is not callable; pass e.g. ClassifierOutputTarget(k)"
                )
        return targets

    @staticmethod
    def _check_outputs(outputs: object) -> None:
        if torch.is_tensor(outputs) and outputs.is_floating_point():
            finite = torch.isfinite(outputs.detach().reshape(outputs.shape[0], -1)).all(dim=1)
            if not bool(finite.all()):
                bad = torch.nonzero(~finite).flatten().tolist()
                raise ValueError(
                    f"the model output contains NaN or Inf for image(s) {bad}; check the "
                    "input and the model (a float16 model may overflow)"
                )

    def default_targets(self, outputs: object, copies: int) -> List[Target]:
        """The targets used when none are given: each image's top class."""
        return self._top_class_targets(outputs, copies)

    @staticmethod
    def _top_class_targets(outputs: torch.Tensor, copies: int) -> List[Target]:
        if not torch.is_tensor(outputs):
            raise ValueError(
                f"targets=None explains the top class of a (B, classes) tensor output, but "
                f"the model returns {describe_output(outputs)}; {_SELECT_HINT}, or pass "
                "targets=[...] of your own that read this output"
            )
        if outputs.ndim != 2:
            raise ValueError(
                "targets=None explains the top class of a (B, classes) output; this model "
                "returns something else, so pass targets=[...] explicitly"
            )
        mean_scores = outputs.detach().reshape(copies, -1, outputs.shape[-1]).mean(dim=0)
        categories = mean_scores.argmax(dim=-1).tolist()
        return [ClassifierOutputTarget(c) for c in categories] * copies

    @staticmethod
    def _mean_over_copies(outputs: object, copies: int) -> object:
        if not torch.is_tensor(outputs):
            return _detached(outputs)
        outputs = outputs.detach()
        if copies > 1:
            outputs = outputs.reshape(copies, -1, *outputs.shape[1:]).mean(dim=0)
        return outputs

    def _check_layers_ran(self, recorder: ActivationsAndGradients) -> None:
        for layer, output in zip(self.target_layers, recorder.layer_outputs):
            if output is None:
                raise ValueError(
                    f"target layer {type(layer).__name__} was not called during the forward "
                    "pass; choose a module that the model's forward() uses"
                )

    def _layer_name(self, layer: nn.Module) -> str:
        for name, module in self.model.named_modules():
            if module is layer:
                return repr(name) if name else "(the model itself)"
        return "(unnamed)"

    def _raise_disconnected(self, layer: nn.Module) -> None:
        raise ValueError(
            f"the target's score does not depend on target layer {self._layer_name(layer)} "
            f"({type(layer).__name__}): no gradient reaches its output (a branch or head "
            "the scored output never reads, or a part the model runs under torch.no_grad() "
            "or detaches); choose a layer on the path from the input to the scored output"
        )

    def _checked_activations(self, activations: torch.Tensor, layer: nn.Module) -> torch.Tensor:
        if activations.ndim not in (4, 5):
            hint = (
                "pass reshape_transform=... that returns (B, C, h, w) (for ViT "
                "pytorch_grad_cam.utils.reshape_transforms.vit_reshape_transform, for Swin "
                "swin_reshape_transform)"
                if self.reshape_transform is None
                else "the reshape_transform must return (B, C, h, w) or (B, C, d, h, w)"
            )
            raise ValueError(
                f"target layer {type(layer).__name__} gives activations of shape "
                f"{tuple(activations.shape)}, not (B, C, h, w); {hint}"
            )
        return activations.float()

    # ----------------------------------------------------------------- lifetime
    def release(self) -> None:
        """Drop what the last call kept. Hooks live only during a call, so none remain."""
        self._layer_outputs = {}
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


class PerturbationCAM(BaseCAM):
    """Base of the gradient-free methods that score K perturbed copies per image
    (ScoreCAM, AblationCAM): the copies run in chunks of ``batch_size`` with a
    progress bar, and their scores stay on the device.

    Args:
        batch_size: copies per extra forward pass (also settable as ``cam.batch_size``).
        progress: show a tqdm progress bar over the extra forward passes.

    Raises:
        ValueError: if ``batch_size`` is not a positive integer.
    """

    uses_gradients = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: Union[LayerSpec, Sequence[LayerSpec], None] = None,
        reshape_transform: Optional[ReshapeTransform] = None,
        *,
        target_layer: Optional[LayerSpec] = None,
        use_cuda: bool = False,
        batch_size: int = 32,
        progress: bool = True,
    ) -> None:
        super().__init__(
            model, target_layers, reshape_transform, target_layer=target_layer, use_cuda=use_cuda
        )
        self.batch_size = batch_size
        self.progress = progress

    @property
    def batch_size(self) -> int:
        """How many perturbed copies go through the network at once."""
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"batch_size must be a positive integer, got {value!r}")
        self._batch_size = int(value)

    def progress_bar(self, total: int, description: str) -> "object":
        """A tqdm bar over ``total`` perturbed copies (disabled when ``progress`` is off)."""
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=description, unit="copy", disable=not self.progress, leave=False)

    def batched_scores(
        self,
        count: int,
        run_chunk: Callable[[int, int], object],
        target: Target,
        bar: "object",
        chunk: Optional[int] = None,
    ) -> torch.Tensor:
        """Scores (count,) of ``target`` on ``run_chunk(start, stop)``'s outputs, computed
        ``chunk`` (default ``batch_size``) copies at a time under ``no_grad``; they stay
        on the device."""
        chunk = chunk or self.batch_size
        chunks = []
        with torch.no_grad():
            for start in range(0, count, chunk):
                stop = min(start + chunk, count)
                outputs = run_chunk(start, stop)
                chunks.append(self.score([target] * (stop - start), outputs))
                bar.update(stop - start)
        return torch.cat(chunks)
