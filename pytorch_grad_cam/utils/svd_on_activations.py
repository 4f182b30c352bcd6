"""The first-principal-component projection behind EigenCAM, EigenGradCAM and
``eigen_smooth``: batched, in torch, on the tensor's device."""
from __future__ import annotations

from typing import Union

import numpy as np
import torch

ArrayLike = Union[torch.Tensor, np.ndarray]


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
    is_numpy = isinstance(activation_batch, np.ndarray)
    activations = torch.from_numpy(activation_batch) if is_numpy else activation_batch
    if activations.ndim < 3:
        raise ValueError(
            f"activations of shape {tuple(activations.shape)} have no spatial dimensions; "
            "pass a (B, K, h, w) batch"
        )
    batch, channels, *spatial = activations.shape
    matrix = torch.nan_to_num(activations.float(), nan=0.0, posinf=0.0, neginf=0.0)
    matrix = matrix.reshape(batch, channels, -1).transpose(1, 2)  # (B, positions, K)
    matrix = matrix - matrix.mean(dim=1, keepdim=True)
    projection = (matrix @ _top_right_singular_vector(matrix).unsqueeze(-1)).squeeze(-1)
    agreement = (projection * matrix.sum(dim=2)).sum(dim=1, keepdim=True)
    projection = torch.where(agreement < 0, -projection, projection)
    projection = projection.reshape(batch, *spatial)
    return projection.cpu().numpy() if is_numpy else projection


def _top_right_singular_vector(matrix: torch.Tensor) -> torch.Tensor:
    """The first right-singular vector (B, K) of each (positions, K) matrix of a batch.

    With no more channels than positions (the usual case: 256 channels at 56 x 56) it
    is the top eigenvector of the small (K, K) Gram matrix X^T X: one matrix product
    and a K x K symmetric eigendecomposition, about five times cheaper than the SVD of
    X and as accurate for the top vector. Otherwise (2048 channels at 7 x 7) it is the
    first left-singular vector of the tall X^T, whose thin SVD LAPACK computes about
    twice as fast as that of the wide X. Neither forms a (positions x positions) matrix.
    """
    positions, channels = matrix.shape[-2:]
    if channels <= positions:
        gram = matrix.transpose(1, 2) @ matrix
        _, eigenvectors = torch.linalg.eigh(gram)  # eigenvalues in ascending order
        return eigenvectors[..., -1]
    u, _, _ = torch.linalg.svd(matrix.transpose(1, 2), full_matrices=False)
    return u[..., 0]
