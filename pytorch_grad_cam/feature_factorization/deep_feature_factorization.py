"""Deep Feature Factorization (Collins et al., 2018): factor a layer's activations,
channels × positions, into a few non-negative *concepts* (channel profiles) and, for
each concept, a map of where it is in every image.

The factorization is a non-negative matrix factorization written in torch (coordinate
descent on the Frobenius loss, as scikit-learn's default solver), run on the
activations' device; no scikit-learn at run time (docs/decisions.md, D10).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Callable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients, ReshapeTransform
from pytorch_grad_cam.layers import LayerSpec, resolve_target_layers, unwrap_parallel
from pytorch_grad_cam.model_state import evaluation_mode, model_device, model_float_dtype
from pytorch_grad_cam.utils.image import (
    create_labels_legend,
    scale_cam_image,
    show_factorization_on_image,
)

ArrayLike = Union[torch.Tensor, np.ndarray]


def non_negative_matrix_factorization(
    matrix: torch.Tensor,
    n_components: int,
    *,
    max_iter: int = 200,
    tol: float = 1e-4,
    seed: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """W (m, n) ≥ 0 and H (n, N) ≥ 0 with W·H ≈ ``matrix`` (m, N) ≥ 0 in the Frobenius norm.

    Coordinate descent (HALS): each column of W, then each row of H, is set to its exact
    non-negative minimiser with the others fixed, as scikit-learn's ``NMF(solver='cd')``
    does. The start is scikit-learn's ``init='random'``: |N(0, 1)|·sqrt(mean(V)/n), drawn
    from a CPU ``torch.Generator`` seeded with ``seed`` (the global RNG is never used, and
    every device starts from the same numbers). It stops after ``max_iter`` sweeps or once
    the sweep's projected-gradient violation is at most ``tol`` times the first sweep's
    (scikit-learn's criterion).

    Args:
        matrix: (m, N) non-negative float tensor; computed in its dtype and on its device.
        n_components: the rank n.

    Returns:
        (W, H), of the matrix's dtype and device.
    """
    rows, columns = matrix.shape
    generator = torch.Generator().manual_seed(seed)
    scale = math.sqrt(max(float(matrix.mean()), 0.0) / n_components)
    start = dict(generator=generator, dtype=torch.float64)
    factors = scale * torch.randn(n_components, columns, **start).abs()
    weights = scale * torch.randn(rows, n_components, **start).abs()
    factors = factors.to(device=matrix.device, dtype=matrix.dtype)
    weights = weights.to(device=matrix.device, dtype=matrix.dtype)
    # H is updated through its transpose (a view), so both updates are one routine on rows.
    factors_t = factors.t()
    initial_violation = None
    for _ in range(max_iter):
        violation = _coordinate_descent_sweep(weights, matrix @ factors_t, factors @ factors_t)
        violation = violation + _coordinate_descent_sweep(factors_t, matrix.t() @ weights, weights.t() @ weights)
        violation = float(violation)
        if initial_violation is None:
            initial_violation = violation
        if initial_violation == 0 or violation / initial_violation <= tol:
            break
    return weights, factors


def _coordinate_descent_sweep(factor: torch.Tensor, target_products: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """One sweep over the columns of ``factor`` (F, shape (m, n), updated in place) for
    min ‖X − F·Gᵀ‖² with F ≥ 0, given X·G (m, n) and Gᵀ·G (n, n). Returns the sum of
    |projected gradient| at the start of the sweep (the convergence measure)."""
    gradient = factor @ gram - target_products
    violation = torch.where(factor == 0, gradient.clamp(max=0), gradient).abs().sum()
    # A component that is all zero has no curvature: it stays where it is.
    curvatures = gram.diagonal().tolist()
    for column, curvature in enumerate(curvatures):
        if curvature <= 0:
            continue
        step = torch.addmv(target_products[:, column], factor, gram[:, column], beta=-1)
        factor[:, column].sub_(step.mul_(1.0 / curvature)).clamp_(min=0)
    return violation


def dff(activations: ArrayLike, n_components: int = 5) -> Tuple[ArrayLike, ArrayLike]:
    """Factor activations (B, C, h, w) into ``n_components`` concepts.

    V = the activations as channels × (B·h·w) (NaN/Inf set to 0), each channel shifted by
    its minimum (offset_c) so that V ≥ 0; V ≈ W·H by
    :func:`non_negative_matrix_factorization` (seed 0) in float64 (float32 on MPS).

    Args:
        activations: (B, C, h, w) tensor (computed on its device) or numpy array.
        n_components: the number of concepts n.

    Returns:
        ``(concepts, explanations)``: concepts = W + offset (C, n), one channel profile per
        concept; explanations = H as (B, n, h, w), each concept's strength at each position.
        float32, of the input's kind (numpy, or tensors on the input's device).

    Raises:
        ValueError: if ``activations`` is not 4D or ``n_components`` is not a positive integer.
    """
    if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)) or n_components < 1:
        raise ValueError(f"n_components must be a positive integer, got {n_components!r}")
    is_numpy = isinstance(activations, np.ndarray)
    if is_numpy:
        tensor = torch.from_numpy(np.array(activations, dtype=np.float32))
    elif torch.is_tensor(activations):
        tensor = activations.detach()
    else:
        raise TypeError(f"activations must be a torch tensor or a numpy array, not {type(activations).__name__}")
    if tensor.ndim != 4:
        raise ValueError(
            f"activations must be (B, C, h, w), got shape {tuple(tensor.shape)}; for "
            "transformer tokens pass a reshape_transform"
        )
    batch, channels, height, width = tensor.shape
    precise = torch.float32 if tensor.device.type == "mps" else torch.float64
    matrix = torch.nan_to_num(tensor.to(precise), nan=0.0, posinf=0.0, neginf=0.0)
    matrix = matrix.transpose(0, 1).reshape(channels, -1)
    offset = matrix.min(dim=1, keepdim=True).values
    weights, factors = non_negative_matrix_factorization(matrix - offset, int(n_components))
    concepts = (weights + offset).float()
    explanations = factors.reshape(-1, batch, height, width).transpose(0, 1).float()
    if is_numpy:
        return concepts.cpu().numpy(), np.ascontiguousarray(explanations.cpu().numpy())
    return concepts, explanations.contiguous()


class DeepFeatureFactorization:
    """Deep Feature Factorization of one layer's activations, with optional concept scores.

    Args:
        model: the network; its mode, modules and hooks are left as found (every call
            computes in eval mode and gives each submodule its own flag back).
        target_layer: one module of ``model`` (or its dotted name) whose output is factored.
        reshape_transform: maps the layer's output to (B, C, h, w) (transformers).
        computation_on_concepts: optional function of the (n, C) concepts, typically the
            classifier head (``model.fc``), whose outputs (n, classes) score each concept.

    Computation runs on the model's device: the input is moved there, and the concepts are
    given to ``computation_on_concepts`` on its own device (a module's parameters' device).

    Raises:
        ValueError: if the layer is not inside ``model`` or more than one layer is given.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerSpec,
        reshape_transform: Optional[ReshapeTransform] = None,
        computation_on_concepts: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        if target_layer is None:
            raise ValueError("pass target_layer=..., one module of the model (e.g. model.layer4)")
        layers = resolve_target_layers(model, target_layer)
        if len(layers) != 1:
            raise ValueError(f"DeepFeatureFactorization factors one layer; got {len(layers)}. Pass a single module")
        if reshape_transform is not None and not callable(reshape_transform):
            raise TypeError("reshape_transform must be a function of a tensor, or None")
        self.model = unwrap_parallel(model)
        self.target_layer = layers[0]
        self.reshape_transform = reshape_transform
        self.computation_on_concepts = computation_on_concepts

    def __call__(
        self, input_tensor: torch.Tensor, n_components: int = 16
    ) -> Union[Tuple[np.ndarray, List[np.ndarray]], Tuple[np.ndarray, List[np.ndarray], np.ndarray]]:
        """Factor the target layer's activations of ``input_tensor``.

        Args:
            input_tensor: (B, C, H, W) float tensor.
            n_components: the number of concepts n.

        Returns:
            ``(concepts, explanations)``, or ``(concepts, explanations, concept_outputs)``
            with ``computation_on_concepts``: concepts (C, n) float32; explanations a list
            of B float32 arrays (n, H, W), each concept map min-max scaled to [0, 1] and
            resized bilinearly to the input; concept_outputs (n, classes) =
            ``computation_on_concepts(concepts.T)``, computed under ``no_grad``.

        Raises:
            TypeError/ValueError: on an input that is not a 4D float tensor, a target layer
                the forward pass does not call, or activations that are not (B, C, h, w).
        """
        if not torch.is_tensor(input_tensor):
            raise TypeError(
                f"input_tensor must be a torch.Tensor, not {type(input_tensor).__name__}; "
                "use pytorch_grad_cam.utils.image.preprocess_image(img)"
            )
        if input_tensor.ndim != 4 or not input_tensor.is_floating_point():
            raise ValueError(
                f"input_tensor must be a (B, C, H, W) float tensor, got {input_tensor.dtype} of "
                f"shape {tuple(input_tensor.shape)}; add the batch dimension with input_tensor[None]"
            )
        device = model_device(self.model)
        dtype = model_float_dtype(self.model) or input_tensor.dtype
        batch, _, height, width = input_tensor.shape
        with torch.inference_mode(False), evaluation_mode(self.model), torch.no_grad():
            images = input_tensor.to(device=device, dtype=dtype)
            with ActivationsAndGradients(
                self.model, [self.target_layer], self.reshape_transform, record_gradients=False
            ) as recorder:
                self.model(images)
                activations = recorder.activations[0]
            if activations is None:
                raise ValueError(
                    f"target layer {type(self.target_layer).__name__} was not called during the "
                    "forward pass; choose a module that the model's forward() uses"
                )
            if activations.ndim != 4:
                hint = (
                    "pass reshape_transform=... that returns (B, C, h, w)"
                    if self.reshape_transform is None
                    else "the reshape_transform must return (B, C, h, w)"
                )
                raise ValueError(
                    f"target layer {type(self.target_layer).__name__} gives activations of shape "
                    f"{tuple(activations.shape)}, not (B, C, h, w); {hint}"
                )
            concepts, explanations = dff(activations.float(), n_components)
            spatial = explanations.shape[2:]
            maps = scale_cam_image(explanations.reshape(-1, *spatial), (width, height))
            maps = maps.reshape(batch, -1, height, width).cpu().numpy()
            result = (concepts.cpu().numpy(), list(maps))
            if self.computation_on_concepts is None:
                return result
            return result + (self._concept_outputs(concepts, device),)

    def _concept_outputs(self, concepts: torch.Tensor, device: torch.device) -> np.ndarray:
        head = self.computation_on_concepts
        is_module = isinstance(head, nn.Module)
        head_device = model_device(head) if is_module and any(True for _ in head.parameters()) else device
        dtype = (model_float_dtype(head) if is_module else None) or torch.float32
        with evaluation_mode(head) if is_module else nullcontext():
            outputs = head(concepts.t().to(device=head_device, dtype=dtype).contiguous())
        return torch.as_tensor(outputs).detach().float().cpu().numpy()

    # No hooks outlive a call; these keep the reference's lifetime API working.
    def release(self) -> None:
        """Nothing to release: the hooks exist only during a call."""

    def __enter__(self) -> "DeepFeatureFactorization":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def run_dff_on_image(
    model: nn.Module,
    target_layer: LayerSpec,
    classifier: Callable[[torch.Tensor], torch.Tensor],
    img_pil: object,
    img_tensor: torch.Tensor,
    reshape_transform: Optional[ReshapeTransform] = None,
    n_components: int = 5,
    top_k: int = 2,
) -> np.ndarray:
    """Factor one image and draw its concepts next to it, labelled with their top classes.

    Args:
        model: the network; labels come from ``model.config.id2label`` (HuggingFace
            models), otherwise they are the class indices.
        target_layer: the layer to factor.
        classifier: the head that scores concepts (``model.fc``, ``model.classifier``).
        img_pil: the image as a PIL image or an (H, W, 3) RGB array (uint8, or float in
            [0, 1]) of the input's size.
        img_tensor: the preprocessed image, (C, H, W) (or (1, C, H, W)).
        reshape_transform: for transformer layers; None for CNNs.
        n_components: the number of concepts.
        top_k: classes listed per concept.

    Returns:
        uint8 RGB (H, 3W, 3): the image, the concepts over it, and the legend.
    """
    batch = img_tensor if img_tensor.ndim == 4 else img_tensor[None]
    factorization = DeepFeatureFactorization(model, target_layer, reshape_transform, computation_on_concepts=classifier)
    _, explanations, concept_outputs = factorization(batch, n_components)
    scores = torch.softmax(torch.from_numpy(concept_outputs), dim=-1).numpy()
    labels: Union[Mapping, Sequence] = getattr(getattr(model, "config", None), "id2label", None) or [
        str(index) for index in range(scores.shape[-1])
    ]
    concept_labels = create_labels_legend(scores, labels, top_k=top_k)
    if hasattr(img_pil, "convert"):  # a PIL image (RGBA, grey...) as RGB
        img_pil = img_pil.convert("RGB")
    image = np.asarray(img_pil)
    if np.issubdtype(image.dtype, np.integer):
        original = image.astype(np.uint8)
        rgb = np.float32(image) / 255
    else:
        rgb = np.float32(image)
        original = np.uint8(np.clip(255 * rgb, 0, 255))
    visualization = show_factorization_on_image(rgb, explanations[0], image_weight=0.3, concept_labels=concept_labels)
    return np.hstack((original, visualization))
