"""The principal-component projections behind EigenCAM, EigenGradCAM, SegEigenCAM,
KPCA-CAM and ``eigen_smooth``: batched, in torch, on the tensor's device.

Each function accepts a torch tensor or a numpy array of shape (B, K, *spatial),
never changes it, sets NaN/Inf to 0, and returns (B, *spatial) of the kind it got:
a float32 tensor on the input's device, or a float32 numpy array. They compute in
float32 (KPCA in float64) of any input dtype, with ``torch.autocast`` switched off.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np
import torch

from pytorch_grad_cam.precision import full_precision

ArrayLike = Union[torch.Tensor, np.ndarray]

#: The kernels of ``get_2d_projection_kernel`` (scikit-learn's names).
KERNELS = ("linear", "poly", "rbf", "sigmoid", "cosine")


@full_precision()  # under the caller's autocast too: a bfloat16 product flips signs
def get_2d_projection(activation_batch: ArrayLike) -> ArrayLike:
    """Project each image's activations on their first principal component.

    For every image, X = activations reshaped to (positions, channels), NaN set to 0,
    each channel (column) centred; the map is X @ v with v the first right-singular
    vector of X. The sign of v is arbitrary, so it is chosen to make the projection
    correlate non-negatively with the channel sum of X (the map is high where the
    activation is strong).

    Args:
        activation_batch: (B, K, *spatial) tensor or array, spatial 2D or 3D.

    Returns:
        (B, *spatial) float32, of the same kind (torch on the same device, or numpy)
        as the input.

    Raises:
        ValueError: if ``activation_batch`` has fewer than 3 dimensions.
    """
    matrix, spatial, is_numpy = _centred_positions_by_channels(activation_batch)
    projection = (matrix @ _top_right_singular_vector(matrix).unsqueeze(-1)).squeeze(-1)
    agreement = (projection * matrix.sum(dim=2)).sum(dim=1, keepdim=True)
    projection = torch.where(agreement < 0, -projection, projection)
    return _as_input_kind(projection.reshape(-1, *spatial), is_numpy)


@full_precision()  # under the caller's autocast too: a bfloat16 product flips signs
def get_2d_projection_with_sign_correction(activation_batch: ArrayLike) -> ArrayLike:
    """The first-principal-component projection of :func:`get_2d_projection`, with
    the sign chosen per image so that the largest magnitude is positive: a map whose
    |min| exceeds its |max| is negated (SegEigenCAM's rule).

    Args and returns as :func:`get_2d_projection`.
    """
    matrix, spatial, is_numpy = _centred_positions_by_channels(activation_batch)
    projection = (matrix @ _top_right_singular_vector(matrix).unsqueeze(-1)).squeeze(-1)
    flip = projection.min(dim=1, keepdim=True).values.abs() > projection.max(dim=1, keepdim=True).values.abs()
    projection = torch.where(flip, -projection, projection)
    return _as_input_kind(projection.reshape(-1, *spatial), is_numpy)


@full_precision()  # under the caller's autocast too: a bfloat16 product flips signs
def get_2d_projection_kernel(
    activation_batch: ArrayLike, kernel: str = "sigmoid", gamma: Optional[float] = None
) -> ArrayLike:
    """Project each image's activations on their first kernel principal component.

    Per image: X = activations as (n positions, K channels), NaN set to 0, columns
    centred; the (n, n) kernel matrix of the rows (``linear`` x·y, ``poly``
    (γ x·y + 1)³, ``rbf`` exp(-γ‖x - y‖²), ``sigmoid`` tanh(γ x·y + 1), ``cosine``
    x·y / (‖x‖‖y‖), a zero row giving 0), double-centred; its top eigenpair (λ, v),
    λ clipped at 0 (and set to 0 within the centring's rounding error, so that a
    constant map gives 0, not noise) and v signed so that its largest-magnitude entry
    is positive; the map is v·√λ. This is scikit-learn's ``KernelPCA(n_components=1)`` (degree 3,
    coef0 1), batched on the device.

    The kernel and its eigendecomposition are computed in float64 (except on devices
    without it): the top eigenvector of an (n, n) matrix is sensitive to rounding
    when the two largest eigenvalues are close. Memory and time grow as n² and n³:
    fine for layer grids up to about 28 x 28 (784 positions), slow beyond ~64 x 64.

    Args:
        activation_batch: (B, K, *spatial) tensor or array.
        kernel: one of ``linear``, ``poly``, ``rbf``, ``sigmoid``, ``cosine``.
        gamma: the kernel coefficient; None means 1 / K.

    Returns:
        (B, *spatial) float32 of the input's kind.

    Raises:
        ValueError: on an unknown ``kernel`` or an input without spatial dimensions.
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    device = activation_batch.device if torch.is_tensor(activation_batch) else torch.device("cpu")
    precise = torch.float32 if device.type == "mps" else torch.float64
    x, spatial, is_numpy = _centred_positions_by_channels(activation_batch, precise)
    positions, channels = x.shape[1:]
    gamma = 1.0 / channels if gamma is None else float(gamma)
    if kernel == "cosine":
        norms = x.norm(dim=2, keepdim=True)
        x = x / torch.where(norms > 0, norms, torch.ones_like(norms))
    gram = x @ x.transpose(1, 2)
    if kernel == "poly":
        gram = (gamma * gram + 1) ** 3
    elif kernel == "sigmoid":
        gram = torch.tanh(gamma * gram + 1)
    elif kernel == "rbf":
        squared = x.pow(2).sum(dim=2)
        distances = (squared.unsqueeze(2) + squared.unsqueeze(1) - 2 * gram).clamp(min=0)
        gram = torch.exp(-gamma * distances)
    centred = (
        gram - gram.mean(dim=1, keepdim=True) - gram.mean(dim=2, keepdim=True) + gram.mean(dim=(1, 2), keepdim=True)
    )
    eigenvalues, eigenvectors = torch.linalg.eigh(centred)  # ascending
    # An eigenvalue within the rounding error of the centring (a constant map, whose
    # centred kernel is 0 up to rounding) is 0: its "component" would be noise.
    rounding = 16 * positions * torch.finfo(precise).eps * gram.abs().amax(dim=(1, 2))
    top_value = torch.where(eigenvalues[:, -1] > rounding, eigenvalues[:, -1], torch.zeros_like(rounding))
    top_vector = eigenvectors[..., -1]
    largest = top_vector.gather(1, top_vector.abs().argmax(dim=1, keepdim=True))
    top_vector = torch.where(largest < 0, -top_vector, top_vector)
    projection = (top_vector * top_value.sqrt().unsqueeze(1)).float()
    return _as_input_kind(projection.reshape(-1, *spatial), is_numpy)


def _centred_positions_by_channels(
    activation_batch: ArrayLike, dtype: torch.dtype = torch.float32
) -> Tuple[torch.Tensor, Tuple[int, ...], bool]:
    """(B, positions, K) of ``dtype`` with NaN/Inf set to 0 and each channel centred
    over the positions, a new tensor (the caller's array or tensor is never written);
    also the spatial shape and whether the input was numpy."""
    is_numpy = isinstance(activation_batch, np.ndarray)
    if is_numpy:
        # A float32 copy: the caller's array is never shared, also when read-only.
        activations = torch.from_numpy(np.array(activation_batch, dtype=np.float32))
    elif torch.is_tensor(activation_batch):
        activations = activation_batch
    else:
        raise TypeError(f"activations must be a torch tensor or a numpy array, not {type(activation_batch).__name__}")
    if activations.ndim < 3:
        raise ValueError(
            f"activations of shape {tuple(activations.shape)} have no spatial dimensions; pass a (B, K, h, w) batch"
        )
    batch, channels, *spatial = activations.shape
    matrix = torch.nan_to_num(activations.to(dtype), nan=0.0, posinf=0.0, neginf=0.0)
    matrix = matrix.reshape(batch, channels, -1).transpose(1, 2)  # (B, positions, K)
    return matrix - matrix.mean(dim=1, keepdim=True), tuple(spatial), is_numpy


def _as_input_kind(projection: torch.Tensor, is_numpy: bool) -> ArrayLike:
    return projection.cpu().numpy() if is_numpy else projection


def _top_right_singular_vector(matrix: torch.Tensor) -> torch.Tensor:
    """The first right-singular vector (B, K) of each (positions, K) matrix of a batch.

    With no more channels than positions (the usual case: 256 channels at 56 x 56) it
    is the top eigenvector of the small (K, K) Gram matrix X^T X: one matrix product
    and a K x K symmetric eigendecomposition, cheaper than the SVD of X and as accurate
    for the top vector. Otherwise (2048 channels at 7 x 7) it is the first
    left-singular vector of the tall X^T, whose thin SVD LAPACK computes faster than
    that of the wide X. Neither forms a (positions x positions) matrix.
    """
    positions, channels = matrix.shape[-2:]
    if channels <= positions:
        gram = matrix.transpose(1, 2) @ matrix
        _, eigenvectors = torch.linalg.eigh(gram)  # eigenvalues in ascending order
        return eigenvectors[..., -1]
    u, _, _ = torch.linalg.svd(matrix.transpose(1, 2), full_matrices=False)
    return u[..., 0]
