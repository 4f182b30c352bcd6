"""Independent reference implementations of the CAM methods' formulas, written from
their definitions (FullGrad, ShapleyCAM, FinerCAM and RefineCAM included), for the tests.

Nothing here imports the library: activations and gradients are captured by
replacing a layer's output with a fresh leaf tensor and calling
``torch.autograd.grad``; the maps, scalings and resizes are computed in float64
numpy (OpenCV's ``cv2.resize(INTER_LINEAR)`` for the half-pixel-centred bilinear
resize, an explicit interpolation matrix for ScoreCAM's ``align_corners=True``).
FinerCAM's target and AblationCAM's ablated scores are computed on a float64 copy of
the model, the latter by a forward hook that replaces the layer's output.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import pytest
import torch
from torch import nn

EPS_SCALE = 1e-7  # the min-max step: (x - min) / (max + 1e-7)


# ---------------------------------------------------------------- threads
@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one CPU thread. These tests use small models, which gain little
    from a second thread; on a shared 2-core machine, OpenMP threads waiting for each
    other make them many times slower (an EfficientNet backward: 0.13 s on one
    thread, 3.8 s on two, measured with the cores busy)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module", autouse=True)
def single_thread_module() -> Iterator[None]:
    """Import into a test module to run all of it on one thread (see one_thread)."""
    with one_thread():
        yield


# ---------------------------------------------------------------- capture
def capture_score(
    model: nn.Module,
    layer: nn.Module,
    input_tensor: torch.Tensor,
    score: Callable[[torch.Tensor], torch.Tensor],
    transform: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A, G, logits) for one layer: the layer's output A (after ``transform``) and
    dL/dA for L = sum over the batch of ``score(logits)`` (one score per image), via a
    leaf substituted for the output. Runs in the model's own dtype."""
    leaves: List[torch.Tensor] = []

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        leaf = output.detach().clone().requires_grad_(True)
        leaves.append(leaf)
        return leaf.clone()  # a non-leaf copy, so in-place ops downstream are allowed

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(input_tensor)
            (grad,) = torch.autograd.grad(score(logits).sum(), leaves[-1])
    finally:
        handle.remove()
    activations = transform(leaves[-1].detach()).double().numpy()
    grads = transform(grad).double().numpy()
    return activations, grads, logits.detach().double().numpy()


def capture(
    model: nn.Module,
    layer: nn.Module,
    input_tensor: torch.Tensor,
    classes: Sequence[int],
    transform: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A, G, logits) for one layer: the layer's output A (after ``transform``) and
    dL/dA for L = sum_b logits[b, classes[b]], via a leaf substituted for the output."""
    return capture_score(
        model, layer, input_tensor, lambda logits: logits[torch.arange(len(classes)), list(classes)], transform
    )


def float64_copy(model: nn.Module, layers: Sequence[nn.Module]) -> Tuple[nn.Module, List[nn.Module]]:
    """A float64 deep copy of ``model`` and the copies of ``layers`` inside it."""
    names = {id(module): name for name, module in model.named_modules()}
    model64 = copy.deepcopy(model).double()
    return model64, [model64.get_submodule(names[id(layer)]) for layer in layers]


def run_with_layer_output(
    model: nn.Module, layer: nn.Module, image: torch.Tensor, layer_output: torch.Tensor
) -> np.ndarray:
    """Logits of ``model`` on copies of ``image`` (1, C, ...) with ``layer``'s output
    replaced by the batch ``layer_output`` (the definition of an ablated score), by a
    forward hook that returns ``layer_output`` in place of what the layer computed."""
    # A copy, so that in-place operations after the layer leave ``layer_output`` as it was.
    handle = layer.register_forward_hook(lambda module, inputs, output: layer_output.clone())
    try:
        with torch.no_grad():
            batch = image.expand(layer_output.shape[0], *image.shape[1:])
            return model(batch).double().numpy()
    finally:
        handle.remove()


# ---------------------------------------------------------------- numerics
def min_max(x: np.ndarray) -> np.ndarray:
    x = x - x.min()
    return x / (x.max() + EPS_SCALE)


def interpolation_matrix(size_in: int, size_out: int, align_corners: bool) -> np.ndarray:
    """(size_out, size_in) matrix of 1D linear interpolation."""
    matrix = np.zeros((size_out, size_in))
    for i in range(size_out):
        if align_corners:
            source = i * (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
        else:
            source = max((i + 0.5) * size_in / size_out - 0.5, 0.0)
        low = min(int(np.floor(source)), size_in - 1)
        high = min(low + 1, size_in - 1)
        frac = source - low
        matrix[i, low] += 1 - frac
        matrix[i, high] += frac
    return matrix


def resize_half_pixel(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bilinear (2D, via OpenCV) or trilinear (3D, separable) resize with half-pixel centres."""
    if x.ndim == 2:
        return cv2.resize(x, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    for axis, n in enumerate(size):
        matrix = interpolation_matrix(x.shape[axis], n, align_corners=False)
        x = np.moveaxis(np.tensordot(matrix, x, axes=([1], [axis])), 0, axis)
    return x


def pc_projection(weighted: np.ndarray) -> np.ndarray:
    """First-principal-component projection of one image's (K, *spatial) maps, with
    the sign rule (docs/decisions.md, G18) (non-negative correlation with the row sums)."""
    channels = weighted.shape[0]
    matrix = np.nan_to_num(weighted.reshape(channels, -1).T)
    matrix = matrix - matrix.mean(axis=0)
    _, _, vt = np.linalg.svd(matrix, full_matrices=False)
    projection = matrix @ vt[0]
    if (projection * matrix.sum(axis=1)).sum() < 0:
        projection = -projection
    return projection.reshape(weighted.shape[1:])


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def finish_layer(raw: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """ReLU, min-max, resize: one layer's map of one image."""
    return resize_half_pixel(min_max(np.maximum(raw, 0)), size)


# ---------------------------------------------------------------- channel weights
def gradcam_weights(A: np.ndarray, G: np.ndarray) -> np.ndarray:
    return G.reshape(G.shape[0], -1).mean(axis=1)


def gradcam_plusplus_weights(A: np.ndarray, G: np.ndarray) -> np.ndarray:
    sum_a = A.reshape(A.shape[0], -1).sum(axis=1).reshape(-1, *[1] * (A.ndim - 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        alpha = G**2 / (2 * G**2 + sum_a * G**3 + 1e-6)
    alpha = np.where(G != 0, alpha, 0.0)
    return (np.maximum(G, 0) * alpha).reshape(G.shape[0], -1).sum(axis=1)


def xgradcam_weights(A: np.ndarray, G: np.ndarray) -> np.ndarray:
    flat_a = A.reshape(A.shape[0], -1)
    return (G.reshape(G.shape[0], -1) * flat_a).sum(axis=1) / (flat_a.sum(axis=1) + 1e-7)


# ---------------------------------------------------------------- conditioning
UNIT_ROUNDOFF_32 = 2.0**-24  # float32: a rounding moves a value by at most this, relatively


def xgradcam_weight_errors(A: np.ndarray, G: np.ndarray) -> np.ndarray:
    """The float32 rounding scale of each XGradCAM weight w_k = sum G*A / (sum A + 1e-7):
    numerator and denominator off by one rounding of their magnitude, u * sum |terms|
    (in any summation order the error is of this size; pairwise and blocked sums stay
    under it). Where sum A nearly cancels, as on LayerNorm outputs, w_k's error grows
    as 1 / |sum A|."""
    flat_a, flat_g = A.reshape(A.shape[0], -1), G.reshape(G.shape[0], -1)
    denominator = np.abs(flat_a.sum(axis=1) + 1e-7)
    weights = np.abs(xgradcam_weights(A, G))
    numerator_error = np.abs(flat_g * flat_a).sum(axis=1)
    denominator_error = np.abs(flat_a).sum(axis=1)
    return UNIT_ROUNDOFF_32 * (numerator_error + weights * denominator_error) / denominator


def weight_rounding_tolerance(
    A: np.ndarray, weights: np.ndarray, errors: np.ndarray, size: Sequence[int], samples: int = 16
) -> float:
    """How far one image's finished map (ReLU, min-max, resize) moves when each channel
    weight w_k moves by its rounding scale: the largest change over ``samples`` draws of
    w_k + z_k * errors_k, z ~ N(0, 1) from a fixed seed. The min-max scaling removes a
    common scale of the weights, so a badly conditioned channel that dominates the map
    moves it far less than the first-order bound sum_k errors_k |A_k| / range."""
    base = finish_layer(weighted_map(weights, A, eigen_smooth=False), size)
    draws = np.random.default_rng(0).standard_normal((samples, len(weights)))
    return max(
        float(np.abs(finish_layer(weighted_map(weights + z * errors, A, eigen_smooth=False), size) - base).max())
        for z in draws
    )


def scorecam_weights(model: nn.Module, image: torch.Tensor, A: np.ndarray, category: int) -> np.ndarray:
    """softmax_k of the target score on image * M_k, M_k = min-max(align-corners upsample(A_k))."""
    height, width = image.shape[2:]
    rows = interpolation_matrix(A.shape[1], height, align_corners=True)
    cols = interpolation_matrix(A.shape[2], width, align_corners=True)
    upsampled = np.einsum("hi,kij,wj->khw", rows, A, cols)
    low = upsampled.min(axis=(1, 2), keepdims=True)
    high = upsampled.max(axis=(1, 2), keepdims=True)
    masks = torch.from_numpy((upsampled - low) / (high - low + 1e-8)).float()
    with torch.no_grad():
        scores = model(image * masks[:, None]).double().numpy()[:, category]
    return softmax(scores)


def raw_layer_output(model: nn.Module, layer: nn.Module, input_tensor: torch.Tensor) -> torch.Tensor:
    """What ``layer`` outputs (before any reshape) for ``input_tensor``."""
    outputs: List[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda module, inputs, output: outputs.append(output.detach().clone()))
    try:
        with torch.no_grad():
            model(input_tensor)
    finally:
        handle.remove()
    return outputs[-1]


def ablate_channels(raw_output: torch.Tensor, value: float) -> torch.Tensor:
    """K copies of a CNN layer's (1, K, ...) output, copy k with channel k set to ``value``."""
    channels = raw_output.shape[1]
    ablated = raw_output.repeat(channels, *[1] * (raw_output.ndim - 1))
    for k in range(channels):
        ablated[k, k] = value
    return ablated


#: An ablated channel that a ReLU-like activation switches off is set this far below min(A).
ABLATION_OFFSET = 1e7


def ablation_value(A: np.ndarray, switched_off: Optional[bool]) -> float:
    """What an ablated channel of one image's activations A becomes: min(A) - 1e7 where
    A has negative values and every use of the layer's output reaches a ReLU-like
    activation through element-wise steps (``switched_off``, stated by the test for its
    model), else 0. A signed A without the flag is the test's mistake: raises."""
    low = float(A.min())
    if low >= 0:
        return 0.0
    if switched_off is None:
        raise ValueError(
            "the layer's activations are signed: state switched_off=True/False (whether every "
            "use of the layer's output reaches a ReLU-like activation) for AblationCAM's reference"
        )
    return low - ABLATION_OFFSET if switched_off else 0.0


def ablationcam_weights(
    model: nn.Module,
    layer: nn.Module,
    image: torch.Tensor,
    A: np.ndarray,
    category: int,
    switched_off: Optional[bool],
    ablate: Callable[[torch.Tensor, float], torch.Tensor] = ablate_channels,
) -> np.ndarray:
    """(s - s_k) / s, s the target score and s_k the score with channel k of the layer
    output set to :func:`ablation_value`, both computed on ``model`` (the reference
    passes a float64 copy) in its dtype, with the layer's output replaced by a hook.
    ``ablate`` makes the K ablated copies of the layer's raw output."""
    image = image.to(next(model.parameters()).dtype)
    raw_output = raw_layer_output(model, layer, image)
    value = ablation_value(A, switched_off)
    base = run_with_layer_output(model, layer, image, raw_output)[0, category]
    scores = run_with_layer_output(model, layer, image, ablate(raw_output, value))[:, category]
    return (base - scores) / base


def ablationcam_reference_and_tolerances(
    model: nn.Module,
    layer: nn.Module,
    input_tensor: torch.Tensor,
    classes: Sequence[int],
    switched_off: Optional[bool] = None,
    transform: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    ablate: Callable[[torch.Tensor, float], torch.Tensor] = ablate_channels,
) -> Tuple[np.ndarray, List[float]]:
    """AblationCAM's map of one layer (as :func:`reference_cam`'s, float64 ablated
    scores) and, per image, how far float32 rounding of its weights can move the
    finished map: the weights evaluated once more in the model's dtype give each
    weight's rounding scale |w32 - w64| (s - s_k nearly cancels where a channel matters
    little, so a deep float32 network's scores carry errors the division magnifies),
    fed to :func:`weight_rounding_tolerance`."""
    model64, (layer64,) = float64_copy(model, [layer])
    A, _, _ = capture(model, layer, input_tensor, classes, transform)
    size = tuple(input_tensor.shape[2:])
    maps, tolerances = [], []
    for b, category in enumerate(classes):
        image = input_tensor[b : b + 1]
        exact = ablationcam_weights(model64, layer64, image, A[b], category, switched_off, ablate)
        rounded = ablationcam_weights(model, layer, image, A[b], category, switched_off, ablate)
        maps.append(min_max(finish_layer(weighted_map(exact, A[b], eigen_smooth=False), size)))
        tolerances.append(weight_rounding_tolerance(A[b], exact, np.abs(rounded - exact), size))
    return np.stack(maps), tolerances


# ---------------------------------------------------------------- the drop-in methods
#: RandomCAM draws its (B, K) weights from torch's global generator: the reference
#: seeds it with this before its draw, and a test seeds it before the engine's call.
RANDOM_SEED = 0


def random_cam_weights(batch: int, channels: int) -> np.ndarray:
    """RandomCAM's weights: U(-1, 1) of shape (batch, channels), one draw per layer."""
    return (torch.rand(batch, channels) * 2 - 1).double().numpy()


def fem_weights(A: np.ndarray, k: float = 2) -> np.ndarray:
    """FEM: the fraction of positions where A_k > mean_k + k * std_k (population std, strict)."""
    flat = A.reshape(A.shape[0], -1)
    threshold = flat.mean(axis=1, keepdims=True) + k * flat.std(axis=1, ddof=0, keepdims=True)
    return (flat > threshold).mean(axis=1)


def sign_corrected_projection(weighted: np.ndarray) -> np.ndarray:
    """The first principal component of (K, *spatial) maps, negated where |min| > |max|
    (whatever sign the SVD returned)."""
    channels = weighted.shape[0]
    matrix = np.nan_to_num(weighted.reshape(channels, -1).T)
    matrix = matrix - matrix.mean(axis=0)
    _, _, vt = np.linalg.svd(matrix, full_matrices=False)
    projection = matrix @ vt[0]
    if abs(projection.min()) > abs(projection.max()):
        projection = -projection
    return projection.reshape(weighted.shape[1:])


def kernel_matrix(x: np.ndarray, kernel: str, gamma: float) -> np.ndarray:
    """The (n, n) kernel of the rows of x (scikit-learn's kernels, degree 3, coef0 1)."""
    if kernel == "linear":
        return x @ x.T
    if kernel == "poly":
        return (gamma * (x @ x.T) + 1) ** 3
    if kernel == "sigmoid":
        return np.tanh(gamma * (x @ x.T) + 1)
    if kernel == "rbf":
        distances = ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
        return np.exp(-gamma * distances)
    if kernel == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        unit = x / np.where(norms > 0, norms, 1.0)
        return unit @ unit.T
    raise KeyError(kernel)


def kernel_pca_projection(A: np.ndarray, kernel: str = "sigmoid", gamma=None) -> np.ndarray:
    """Kernel PCA's first component of one image's (K, *spatial) activations, from
    Kernel PCA: centred positions, kernel, Kc = K - 1n K - K 1n + 1n K 1n, top
    eigenpair (λ >= 0), the largest |v| entry positive, v * sqrt(λ)."""
    channels = A.shape[0]
    x = np.nan_to_num(A.reshape(channels, -1).T)
    x = x - x.mean(axis=0)
    n = x.shape[0]
    gram = kernel_matrix(x, kernel, 1.0 / channels if gamma is None else gamma)
    ones = np.full((n, n), 1.0 / n)
    centred = gram - ones @ gram - gram @ ones + ones @ gram @ ones
    values, vectors = np.linalg.eigh(centred)
    value, vector = max(values[-1], 0.0), vectors[:, -1]
    if vector[np.argmax(np.abs(vector))] < 0:
        vector = -vector
    return (vector * np.sqrt(value)).reshape(A.shape[1:])


# ---------------------------------------------------------------- FullGrad, ShapleyCAM, FinerCAM, RefineCAM
def capture_with_hessian(
    model: nn.Module,
    layer: nn.Module,
    input_tensor: torch.Tensor,
    classes: Sequence[int],
    transform: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A, G, H·A) for ShapleyCAM, in float64 on a copy of the model: G = dL/dA and the
    Hessian-vector product d(G·v)/dA at v = A (fixed), by double backward through a
    leaf substituted for the layer output; attention runs on torch's math backend (the
    fused kernels have no double backward). ``transform`` folds all three alike."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model64 = copy.deepcopy(model).double()
    inner = dict(model.named_modules())
    layer64 = dict(model64.named_modules())[next(name for name, m in inner.items() if m is layer)]
    leaves: List[torch.Tensor] = []

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        leaf = output.detach().clone().requires_grad_(True)
        leaves.append(leaf)
        return leaf.clone()

    handle = layer64.register_forward_hook(hook)
    try:
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            logits = model64(input_tensor.double())
            loss = logits[torch.arange(len(classes)), list(classes)].sum()
            (grad,) = torch.autograd.grad(loss, leaves[-1], create_graph=True)
            if grad.requires_grad:
                (hvp,) = torch.autograd.grad(grad, leaves[-1], grad_outputs=leaves[-1].detach(), allow_unused=True)
            else:
                hvp = None
    finally:
        handle.remove()
    hvp = torch.zeros_like(grad) if hvp is None else hvp
    leaf = leaves[-1].detach()
    return tuple(transform(t.detach()).numpy() for t in (leaf, grad, hvp))


def shapleycam_weights(G: np.ndarray, hvp: np.ndarray) -> np.ndarray:
    """w_k = mean over positions of (G - 1/2 H·A)_k."""
    return (G - 0.5 * hvp).reshape(G.shape[0], -1).mean(axis=1)


def bias_layer_bias(module: nn.Module):
    """The bias a convolution or (eval-mode) batch norm adds per channel, in float64;
    None for other modules and bias-free ones."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return None if module.bias is None else module.bias.detach().double()
    if (
        isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d))
        and module.bias is not None
        and module.running_mean is not None
    ):
        mean, var = module.running_mean.double(), module.running_var.double()
        return module.bias.detach().double() - mean * module.weight.detach().double() / torch.sqrt(var + module.eps)
    return None


def scaled_channel_maps(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """(K, *spatial) -> (K, *size): each channel min-max scaled, then resized."""
    return np.stack([resize_half_pixel(min_max(channel), size) for channel in x])


def fullgrad_reference(model: nn.Module, input_tensor: torch.Tensor, classes: Sequence[int]) -> np.ndarray:
    """FullGrad in float64 on a copy of the model: per image,
    minmax(sum_c s(|dL/dX * X|_c) + sum over the bias layers the forward runs of
    sum_c s(|b_c * dL/dO_c|)), s = per-channel min-max and resize, O the layer's
    output; no ReLU. Target layers and reshape transforms play no part."""
    model64 = copy.deepcopy(model).double()
    x = input_tensor.double().clone().requires_grad_(True)
    recorded: List[Tuple[torch.Tensor, torch.Tensor]] = []
    handles = []
    for module in model64.modules():
        bias = bias_layer_bias(module)
        if bias is not None:
            # The output as the layer returned it; the network gets a copy, so that
            # in-place operations after the layer (``out += skip``, ``relu_``) do not
            # turn the recorded tensor into a later one.
            handles.append(
                module.register_forward_hook(
                    lambda m, i, output, bias=bias: recorded.append((bias, output)) or output.clone()
                )
            )
    try:
        with torch.enable_grad():
            logits = model64(x)
            loss = logits[torch.arange(len(classes)), list(classes)].sum()
            grads = torch.autograd.grad(loss, [x] + [out for _, out in recorded], allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    size = tuple(input_tensor.shape[2:])
    inputs = (grads[0] * x).abs().detach().numpy()
    maps = []
    for b in range(len(classes)):
        total = scaled_channel_maps(inputs[b], size).sum(axis=0)
        for (bias, _), grad in zip(recorded, grads[1:]):
            if grad is None or grad.ndim != x.ndim:
                continue
            term = (bias.reshape(-1, *[1] * (grad.ndim - 2)) * grad[b]).abs().numpy()
            total = total + scaled_channel_maps(term, size).sum(axis=0)
        maps.append(min_max(total))
    return np.stack(maps)


def weighted_map(weights: np.ndarray, A: np.ndarray, eigen_smooth: bool) -> np.ndarray:
    weighted = weights.reshape(-1, *[1] * (A.ndim - 1)) * A
    return pc_projection(weighted) if eigen_smooth else weighted.sum(axis=0)


def reference_cam(
    method: str,
    model: nn.Module,
    layers: Sequence[nn.Module],
    input_tensor: torch.Tensor,
    classes: Sequence[int],
    eigen_smooth: bool = False,
    transform: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    ablate: Callable[[torch.Tensor, float], torch.Tensor] = ablate_channels,
    switched_off: Optional[bool] = None,
) -> np.ndarray:
    """The (B, *spatial) CAM of ``method`` (a registry name; FinerCAM and RefineCAM have
    their own references below) for given ``classes``: per layer ReLU, min-max, resize;
    the mean over layers, min-max. ``transform`` turns a layer's output into
    (B, K, *spatial) maps (a reshape_transform); ``ablate`` makes AblationCAM's K
    ablated copies of one image's raw layer output and ``switched_off`` says whether
    every use of the layers' outputs reaches a ReLU-like activation (see
    :func:`ablation_value`; needed for AblationCAM on signed activations)."""
    size = tuple(input_tensor.shape[2:])
    if method == "fullgrad":
        return fullgrad_reference(model, input_tensor, classes)
    if method in ("finercam", "refinecam"):
        raise KeyError(f"{method}: use {method}_reference")
    if method == "randomcam":
        torch.manual_seed(RANDOM_SEED)
    model64, layers64 = float64_copy(model, layers) if method == "ablationcam" else (None, [None] * len(layers))
    per_layer = []
    for layer, layer64 in zip(layers, layers64):
        if method == "shapleycam":
            A, G, hessian_products = capture_with_hessian(model, layer, input_tensor, classes, transform)
        else:
            A, G, _ = capture(model, layer, input_tensor, classes, transform)
        random_weights = random_cam_weights(*A.shape[:2]) if method == "randomcam" else None
        maps = []
        for b, category in enumerate(classes):
            a, g = A[b], G[b]
            if method == "gradcam":
                raw = weighted_map(gradcam_weights(a, g), a, eigen_smooth)
            elif method == "gradcam++":
                raw = weighted_map(gradcam_plusplus_weights(a, g), a, eigen_smooth)
            elif method == "xgradcam":
                raw = weighted_map(xgradcam_weights(a, g), a, eigen_smooth)
            elif method == "layercam":
                weighted = np.maximum(g, 0) * a
                raw = pc_projection(weighted) if eigen_smooth else weighted.sum(axis=0)
            elif method == "eigencam":
                raw = pc_projection(a)
            elif method == "eigengradcam":
                raw = pc_projection(g * a)
            elif method == "scorecam":
                weights = scorecam_weights(model, input_tensor[b : b + 1], a, category)
                raw = weighted_map(weights, a, eigen_smooth)
            elif method == "ablationcam":
                weights = ablationcam_weights(
                    model64, layer64, input_tensor[b : b + 1], a, category, switched_off, ablate
                )
                raw = weighted_map(weights, a, eigen_smooth)
            elif method == "hirescam":
                raw = pc_projection(g * a) if eigen_smooth else (g * a).sum(axis=0)
            elif method == "gradcamelementwise":
                weighted = np.maximum(g * a, 0)
                raw = pc_projection(weighted) if eigen_smooth else weighted.sum(axis=0)
            elif method == "randomcam":
                raw = weighted_map(random_weights[b], a, eigen_smooth)
            elif method == "fem":
                raw = weighted_map(fem_weights(a), a, False)
            elif method == "kpcacam":
                raw = kernel_pca_projection(a)
            elif method == "segeigencam":
                raw = sign_corrected_projection(np.abs(g) * a)
            elif method == "shapleycam":
                raw = weighted_map(shapleycam_weights(g, hessian_products[b]), a, eigen_smooth)
            else:
                raise KeyError(method)
            maps.append(finish_layer(raw, size))
        per_layer.append(np.stack(maps))
    mean = np.mean(per_layer, axis=0)
    return np.stack([min_max(m) for m in mean])


# ---------------------------------------------------------------- FinerCAM
def finer_choice(
    logits: np.ndarray, ranks: Sequence[int], target_idx: Optional[int] = None, margin: float = 1e-5
) -> List[Tuple[int, List[int]]]:
    """FinerCAM's default classes per image, (main class, comparison classes): the
    classes sorted by |z - z_ref| (z_ref the top logit, or z[target_idx]), the main
    class first in that order (or ``target_idx``), the comparison classes those at
    positions ``ranks`` of the order (positions past the last class dropped). Asserts
    that the distances that decide the order are ``margin`` apart, so that float32
    logits (within ~1e-7 of float64 ones for the small test models) order the classes
    the same way."""
    chosen = []
    for z in logits:
        reference = z.max() if target_idx is None else z[target_idx]
        distance = np.abs(z - reference)
        order = np.argsort(distance, kind="stable")
        deciding = np.sort(distance)[: max(ranks) + 2]
        assert np.diff(deciding).min() > margin, "classes nearly tied: choose another input"
        main = int(order[0]) if target_idx is None else int(target_idx)
        chosen.append((main, [int(order[r]) for r in ranks if r < len(z)]))
    return chosen


def finer_score(logits: torch.Tensor, chosen: Sequence[Tuple[int, List[int]]], alpha: float) -> torch.Tensor:
    """FinerCAM's target per image, from its definition: with p = softmax(z) (gradients
    flow through p), sum_j p_j (z_main - alpha z_j) / (sum_j p_j + 1e-9) over the
    comparison classes j; z_main alone where there is no comparison class."""
    p = torch.softmax(logits, dim=-1)
    scores = []
    for b, (main, others) in enumerate(chosen):
        if not others:
            scores.append(logits[b, main])
            continue
        numerator = sum(p[b, j] * (logits[b, main] - alpha * logits[b, j]) for j in others)
        scores.append(numerator / (sum(p[b, j] for j in others) + 1e-9))
    return torch.stack(scores)


def finercam_reference(
    model: nn.Module,
    layers: Sequence[nn.Module],
    input_tensor: torch.Tensor,
    alpha: float = 1.0,
    ranks: Sequence[int] = (1, 2, 3),
    target_idx: Optional[int] = None,
    eigen_smooth: bool = False,
    transform: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> Tuple[np.ndarray, List[Tuple[int, List[int]]]]:
    """FinerCAM with its default targets (targets=None) and GradCAM as the base method,
    on a float64 copy of the model: the classes of :func:`finer_choice`, the gradient
    of :func:`finer_score` with respect to each layer's output (after ``transform``,
    a reshape_transform) by autograd, GradCAM's map of it per layer (ReLU, min-max,
    resize), the mean over layers, min-max. Returns (maps (B, *spatial), the chosen
    classes)."""
    model64, layers64 = float64_copy(model, layers)
    input64 = input_tensor.double()
    with torch.no_grad():
        chosen = finer_choice(model64(input64).numpy(), ranks, target_idx)
    size = tuple(input_tensor.shape[2:])
    per_layer = []
    for layer64 in layers64:
        A, G, _ = capture_score(model64, layer64, input64, lambda logits: finer_score(logits, chosen, alpha), transform)
        per_layer.append(
            np.stack([finish_layer(weighted_map(gradcam_weights(a, g), a, eigen_smooth), size) for a, g in zip(A, G)])
        )
    mean = np.mean(per_layer, axis=0)
    return np.stack([min_max(m) for m in mean]), chosen


# ---------------------------------------------------------------- RefineCAM
def refinecam_reference(
    model: nn.Module,
    layers: Sequence[nn.Module],
    input_tensor: torch.Tensor,
    classes: Sequence[int],
    eigen_smooth: bool = False,
    transform: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> np.ndarray:
    """RefineCAM with GradCAM++ as the base method, on two or more layers: each layer's
    GradCAM++ map (of its output after ``transform``; ReLU, min-max, resize;
    eigen-smoothed per layer with ``eigen_smooth``), min-max scaled, multiplied
    element-wise over the layers, and the product min-max scaled."""
    assert len(layers) >= 2, "RefineCAM refines one layer's map by another's: give two or more"
    size = tuple(input_tensor.shape[2:])
    product = 1.0
    for layer in layers:
        A, G, _ = capture(model, layer, input_tensor, classes, transform)
        maps = np.stack(
            [
                min_max(finish_layer(weighted_map(gradcam_plusplus_weights(a, g), a, eigen_smooth), size))
                for a, g in zip(A, G)
            ]
        )
        product = product * maps
    return np.stack([min_max(m) for m in product])
