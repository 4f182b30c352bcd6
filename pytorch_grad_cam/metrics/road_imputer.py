"""The ROAD imputer: fill removed pixels by linear interpolation from their neighbours,
plus a little noise (:class:`NoisyLinearImputer`).

The filling-in is a sparse linear system per image (docs/decisions.md, D8): for every
missing pixel p, (Σ_{q∈N(p)} w_q)·x_p − Σ_{q∈N(p) missing} w_q·x_q = Σ_{q∈N(p) known} w_q·v_q,
with w = 1/6 for the 4 axial and 1/12 for the 4 diagonal in-bounds neighbours. Its
matrix is symmetric (w depends only on the offset and w(d) = w(−d)) and weakly
diagonally dominant, so it is positive semi-definite, and definite unless every pixel of
the image is missing. Here it is solved for all images and channels at once, in torch on
the input's device, by conjugate gradients preconditioned with one geometric multigrid
V-cycle (:mod:`pytorch_grad_cam.metrics.road_multigrid`). The reference solves the
system on the CPU with a sparse direct solver, one image at a time.

The solver stops at a relative residual of 1e-5 (:data:`DEFAULT_TOLERANCE`), not at
float32's limit: on ROAD's masks the imputed values then lie as close to the exact
(float64 sparse direct) solution as float32 itself gets, well below the 0.01 noise ROAD
adds to every imputed pixel. tests/test_metrics_compat.py checks the default against a
direct solve to 1e-3.
"""

from __future__ import annotations

import warnings
from typing import Optional, Sequence, Tuple

import torch

from pytorch_grad_cam.metrics.road_multigrid import _Multigrid, _Stencil

Offset = Tuple[int, int]

#: The reference's neighbour weights: (offset (dy, dx), weight) for the 8 neighbours.
neighbors_weights: Tuple[Tuple[Offset, float], ...] = (
    ((1, 1), 1 / 12),
    ((0, 1), 1 / 6),
    ((-1, 1), 1 / 12),
    ((1, -1), 1 / 12),
    ((0, -1), 1 / 6),
    ((-1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((-1, 0), 1 / 6),
)

#: The relative residual at which the imputer stops (see the module's docstring).
DEFAULT_TOLERANCE = 1e-5


def _kernel(weighting: Optional[Sequence[Tuple[Offset, float]]]) -> torch.Tensor:
    """The 3×3 float64 neighbour-weight kernel of ``weighting`` (None: the reference's)."""
    kernel = torch.zeros(3, 3, dtype=torch.float64)
    for (dy, dx), weight in neighbors_weights if weighting is None else weighting:
        if not (abs(dy) <= 1 and abs(dx) <= 1 and (dy, dx) != (0, 0)):
            raise ValueError(
                f"weighting offsets must be one of the 8 neighbours (dy, dx) in {{-1, 0, 1}}², got {(dy, dx)}"
            )
        if not weight > 0:
            raise ValueError(f"neighbour weights must be positive, got {weight} at {(dy, dx)}")
        kernel[dy + 1, dx + 1] += float(weight)
    if not torch.equal(kernel, kernel.flip(0, 1)):
        raise ValueError(
            "weighting must be symmetric (the weight of (dy, dx) equal to that of (-dy, -dx)), "
            "so that the interpolation system is symmetric"
        )
    return kernel


def solve_interpolation(
    images: torch.Tensor,
    known: torch.Tensor,
    weighting: Optional[Sequence[Tuple[Offset, float]]] = None,
    tolerance: float = DEFAULT_TOLERANCE,
    max_iterations: int = 200,
    dtype: Optional[torch.dtype] = None,
) -> Tuple[torch.Tensor, int]:
    """Fill the missing pixels of ``images`` by the linear interpolation system, no noise.

    Args:
        images: (B, C, H, W) float tensor; values at missing pixels are ignored.
        known: (B, H, W) bool, True where a pixel is kept.
        weighting: neighbour weights ``[((dy, dx), w), ...]`` (symmetric, positive);
            None for the reference's 1/6 axial, 1/12 diagonal.
        tolerance: stop when every system's residual norm is at most
            ``tolerance`` × the norm of its right-hand side (per image and channel).
        max_iterations: cap on the conjugate-gradient iterations (a warning if reached).
        dtype: the precision of the solve; None for the images' (at least float32).

    Returns:
        ``(filled, iterations)``: a new tensor like ``images``, known pixels unchanged and
        missing ones the solution (computed on ``images``' device); pixels of an
        image with no known pixel at all become 0 (the minimum-norm solution of its
        singular system). ``iterations`` is the number of conjugate-gradient steps.
    """
    if dtype is None:
        dtype = torch.promote_types(images.dtype, torch.float32)
    stencil = _Stencil(_kernel(weighting).to(images.device))
    missing = (~known).to(dtype)[:, None]
    values = images.to(dtype) * (1 - missing)
    # Systems are (image, channel) pairs; the mask is shared by an image's channels.
    preconditioner = _Multigrid(missing, stencil)
    level = preconditioner.levels[0]
    rhs = stencil(values).mul_(missing)
    solution = torch.zeros_like(rhs)
    residual = rhs.clone()
    rhs_norm = rhs.flatten(2).norm(dim=2)[..., None, None]
    limit = tolerance * rhs_norm
    direction = preconditioner(residual)
    rz = (residual * direction).sum((2, 3), keepdim=True)
    tiny = torch.finfo(dtype).tiny
    iterations = 0
    while not bool((residual.flatten(2).norm(dim=2)[..., None, None] <= limit).all()):
        if iterations == max_iterations:
            worst = (residual.flatten(2).norm(dim=2) / rhs_norm[..., 0, 0].clamp_min(tiny)).max()
            warnings.warn(
                f"ROAD imputation stopped after {max_iterations} iterations at a relative "
                f"residual of {float(worst):.1e} (tolerance {tolerance:.0e})",
                RuntimeWarning,
                stacklevel=2,
            )
            break
        iterations += 1
        product = level.apply(direction)
        curvature = (direction * product).sum((2, 3), keepdim=True)
        alpha = torch.where(curvature > 0, rz / curvature.clamp_min(tiny), torch.zeros_like(rz))
        solution.addcmul_(alpha, direction)
        residual.addcmul_(alpha, product, value=-1)
        preconditioned = preconditioner(residual)
        rz_next = (residual * preconditioned).sum((2, 3), keepdim=True)
        beta = torch.where(rz > 0, rz_next / rz.clamp_min(tiny), torch.zeros_like(rz))
        direction = direction.mul_(beta).add_(preconditioned)
        rz = rz_next
    filled = values + solution * missing
    return filled.to(images.dtype), iterations


class NoisyLinearImputer:
    """Fill missing pixels from their neighbours (the ROAD imputer), plus Gaussian noise.

    Args:
        noise: standard deviation of the N(0, 1)·noise added to every imputed pixel and
            channel (drawn from torch's generator: ``torch.manual_seed`` makes it
            repeatable; known pixels get none). 0 for a deterministic fill.
        weighting: neighbour weights ``[((dy, dx), w), ...]``, symmetric and positive; None
            for the reference's (1/6 axial, 1/12 diagonal). The reference ignores this
            argument; here it is used.
        tolerance: relative residual at which the solver stops (per image and channel);
            the default keeps the imputed values as close to the exact solution as
            float32 gets on ROAD's masks (see the module's docstring).
        max_iterations: cap on the solver's iterations.
    """

    def __init__(
        self,
        noise: float = 0.01,
        weighting: Optional[Sequence[Tuple[Offset, float]]] = None,
        *,
        tolerance: float = DEFAULT_TOLERANCE,
        max_iterations: int = 200,
    ) -> None:
        self.noise = float(noise)
        self.weighting = weighting
        _kernel(weighting)  # validate now, not at the first call
        self.tolerance = tolerance
        self.max_iterations = max_iterations
        self.last_iterations = 0

    def impute_batch(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Impute a batch: ``images`` (B, C, H, W), ``masks`` (B, H, W) with 1 (> 0.5) for
        kept pixels and 0 for missing ones.

        Returns:
            A new (B, C, H, W) tensor on ``images``' device and dtype.

        Raises:
            ValueError: if the shapes do not match.
        """
        if images.ndim != 4 or masks.shape != (images.shape[0], *images.shape[2:]):
            raise ValueError(
                f"impute_batch takes images (B, C, H, W) and masks (B, H, W); got "
                f"{tuple(images.shape)} and {tuple(masks.shape)}"
            )
        known = torch.as_tensor(masks, device=images.device) > 0.5
        filled, self.last_iterations = solve_interpolation(
            images, known, self.weighting, self.tolerance, self.max_iterations
        )
        if self.noise:
            # One draw per image, in batch order: a batch gets the same noise as the same
            # images imputed one by one after the same seed.
            noise = torch.stack(
                [torch.randn(images.shape[1:], device=images.device, dtype=images.dtype) for _ in images]
            )
            filled = filled + self.noise * noise * (~known)[:, None]
        return filled

    def __call__(self, img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The reference's per-image call: ``img`` (C, H, W), ``mask`` (H, W) (1 keep,
        0 impute). Returns the imputed (C, H, W) tensor."""
        mask = torch.as_tensor(mask)
        return self.impute_batch(img[None], mask.to(img.device)[None])[0]
