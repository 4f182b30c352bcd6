"""ROAD (RemOve And Debias): remove pixels by a CAM's ranking, fill them in by linear
interpolation from their neighbours (plus a little noise), and see how the model's
confidence changes.

The filling-in is a sparse linear system per image (COMPAT §13): for every missing pixel
p, (Σ_{q∈N(p)} w_q)·x_p − Σ_{q∈N(p) missing} w_q·x_q = Σ_{q∈N(p) known} w_q·v_q, with
w = 1/6 for the 4 axial and 1/12 for the 4 diagonal in-bounds neighbours. Its matrix is
symmetric (w depends only on the offset and w(d) = w(−d)) and weakly diagonally dominant,
so it is positive semi-definite, and definite unless every pixel of the image is missing.
Here it is solved for all images and channels at once, in torch on the input's device, by
conjugate gradients preconditioned with one geometric multigrid V-cycle, applying the
matrix as a 3×3 stencil. The V-cycle's coarse grids keep the first and the last node of
each axis (so that constants are interpolated exactly up to the image's edges, where
the missing region has nothing to pin it), their operators are the Galerkin products
Pᵀ·A·P of the masked system (probed with 9 comb vectors, a 3×3 stencil per node), the
coarsest (≤ 8 × 8) is solved exactly by Cholesky, and one Jacobi sweep smooths before and
after: on ROAD's masks at 224 × 224 conjugate gradients then stop after 5–12 iterations
(18–28 with the earlier re-discretised coarse grids). The reference solves the system on
the CPU with a sparse direct solver, one image at a time.

The solver stops at a relative residual of 1e-5 (:data:`DEFAULT_TOLERANCE`), not at
float32's limit: on 224 × 224 images with ROAD's masks (20–80 % of the pixels missing,
in blobs) the imputed values then lie within 2e-4–3.4e-4 (measured) of the exact
(float64 sparse direct) solution, the order float32 itself reaches at 1e-6 (1.3e-4–
2.8e-4), 30× below the 0.01 noise ROAD adds to every imputed pixel. tests/test_metrics_compat.py checks the default against a direct solve to 1e-3.
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from pytorch_grad_cam.metrics.cams import CamsLike, as_cam_batch
from pytorch_grad_cam.metrics.perturbation_confidence import (
    DEFAULT_BATCH_SIZE,
    AveragerAcrossThresholds,
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
    Targets,
    model_scores,
    resolve_targets,
)

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

_DEFAULT_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)

#: The relative residual at which the imputer stops (see the module's docstring).
DEFAULT_TOLERANCE = 1e-5


def _kernel(weighting: Optional[Sequence[Tuple[Offset, float]]]) -> torch.Tensor:
    """The 3×3 float64 neighbour-weight kernel of ``weighting`` (None: the reference's)."""
    kernel = torch.zeros(3, 3, dtype=torch.float64)
    for (dy, dx), weight in neighbors_weights if weighting is None else weighting:
        if not (abs(dy) <= 1 and abs(dx) <= 1 and (dy, dx) != (0, 0)):
            raise ValueError(
                f"weighting offsets must be one of the 8 neighbours (dy, dx) in {{-1, 0, 1}}², "
                f"got {(dy, dx)}"
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


class _Stencil:
    """x ↦ Σ_d w_d·x(p + d) over in-bounds neighbours (zero outside the image), on (..., H, W)."""

    def __init__(self, kernel: torch.Tensor) -> None:
        self.kernel = kernel
        # The reference's kernel is (1/12)·(outer([1,2,1],[1,2,1]) − 4·centre): two 3-tap
        # passes instead of eight shifted products.
        separable = torch.outer(torch.tensor([1.0, 2, 1]), torch.tensor([1.0, 2, 1])).double() / 12
        separable[1, 1] = 0
        self.separable = torch.allclose(kernel, separable, rtol=0, atol=1e-15)
        self.taps = [
            (dy - 1, dx - 1, float(kernel[dy, dx]))
            for dy in range(3)
            for dx in range(3)
            if kernel[dy, dx] != 0
        ]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if self.separable:
            # In-place adds of shifted slices (no padded copy): rows = [1 2 1] along x,
            # then [1 2 1]/12 along y, minus the centre's 4/12.
            rows = x * 2
            rows[..., 1:].add_(x[..., :-1])
            rows[..., :-1].add_(x[..., 1:])
            out = rows * (2 / 12)
            out[..., 1:, :].add_(rows[..., :-1, :], alpha=1 / 12)
            out[..., :-1, :].add_(rows[..., 1:, :], alpha=1 / 12)
            return out.sub_(x, alpha=4 / 12)
        padded = F.pad(x, (1, 1, 1, 1))
        out = torch.zeros_like(x)
        for dy, dx, weight in self.taps:
            out.add_(padded[..., 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width], alpha=weight)
        return out


def _coarse_length(length: int) -> int:
    """The coarse grid's nodes sit on fine nodes 0, 2, 4, ... and on the last fine node."""
    return length // 2 + 1


def _along(dim: int, ndim: int, index: slice) -> tuple:
    """An indexing tuple taking ``index`` along ``dim`` (negative) of an ``ndim``-D tensor."""
    return (slice(None),) * (ndim + dim) + (index,)


def _restrict_axis(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The transpose of :func:`_prolong_axis` along ``dim`` (full weighting:
    out[i] = x[2i−1]/2 + x[2i] + x[2i+1]/2; for an even length the last node counts whole)."""
    length, n = x.shape[dim], x.ndim
    coarse = _coarse_length(length)
    shape = list(x.shape)
    shape[dim] = coarse
    out = x.new_empty(shape)
    last = length - 1 if length % 2 == 0 else length  # the uniform part: fine nodes [0, last)
    out[_along(dim, n, slice(0, coarse - (length % 2 == 0)))] = x[_along(dim, n, slice(0, last, 2))]
    if length % 2 == 0:
        out[_along(dim, n, slice(coarse - 1, coarse))] = x[_along(dim, n, slice(length - 1, length))]
    odd = x[_along(dim, n, slice(1, last - 1, 2))]  # between coarse nodes i and i + 1
    middles = odd.shape[dim]
    out[_along(dim, n, slice(0, middles))].add_(odd, alpha=0.5)
    out[_along(dim, n, slice(1, middles + 1))].add_(odd, alpha=0.5)
    return out


def _prolong_axis(x: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """Linear interpolation along ``dim`` from the coarse nodes of :func:`_coarse_length`:
    out[2i] = x[i], out[2i+1] = (x[i] + x[i+1])/2, and for an even ``length`` the last
    fine node is the last coarse node (so constants, and linear functions, are
    interpolated exactly up to the image's edge)."""
    n, coarse = x.ndim, x.shape[dim]
    shape = list(x.shape)
    shape[dim] = length
    out = x.new_empty(shape)
    last = length - 1 if length % 2 == 0 else length
    out[_along(dim, n, slice(0, last, 2))] = x[_along(dim, n, slice(0, coarse - (length % 2 == 0)))]
    if length % 2 == 0:
        out[_along(dim, n, slice(length - 1, length))] = x[_along(dim, n, slice(coarse - 1, coarse))]
    odd = out[_along(dim, n, slice(1, last - 1, 2))]
    middles = odd.shape[dim]
    odd.copy_(x[_along(dim, n, slice(0, middles))]).add_(x[_along(dim, n, slice(1, middles + 1))]).mul_(0.5)
    return out


def _restrict(x: torch.Tensor) -> torch.Tensor:
    """Full weighting, the transpose of :func:`_prolong`: (..., H, W) → (..., H//2 + 1, W//2 + 1)."""
    return _restrict_axis(_restrict_axis(x, -1), -2)


def _prolong(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear interpolation from the coarse grid (coarse node i sits on fine node 2i, and
    the last on the last): (..., H//2 + 1, W//2 + 1) → (..., H, W)."""
    return _prolong_axis(_prolong_axis(x, size[1], -1), size[0], -2)


class _Operator:
    """A 9-point operator with coefficients that vary over the grid: x ↦ Σ_d c_d ⊙ x(p + d)
    (zero outside the grid), coefficients (N, 9, H, W) in row-major (dy, dx) order; the
    diagonal is (dy, dx) = (0, 0). Applied to (N, C, H, W): the C channels share it."""

    def __init__(self, coefficients: torch.Tensor) -> None:
        self.coefficients = coefficients
        self.taps = [
            (dy, dx, coefficients[:, 3 * (dy + 1) + dx + 1, None])
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if (dy, dx) != (0, 0) and bool(coefficients[:, 3 * (dy + 1) + dx + 1].any())
        ]
        self.diagonal = coefficients[:, 4, None]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1))
        out = self.diagonal * x
        for dy, dx, coefficient in self.taps:
            out.addcmul_(coefficient, padded[..., 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width])
        return out


class _Level:
    """One grid of the multigrid hierarchy: its operator on the unknowns, which nodes
    are unknown (active), and the Jacobi step ω·D⁻¹."""

    def __init__(self, apply, diagonal: torch.Tensor, smoothing: float) -> None:
        self.apply = apply  # x ↦ A·x, zero on inactive nodes for any x
        self.missing = (diagonal > 0).to(diagonal.dtype)  # (N, 1, H, W)
        self.size = tuple(diagonal.shape[-2:])
        inverse = torch.where(diagonal > 0, 1 / diagonal.clamp_min(torch.finfo(diagonal.dtype).tiny), 0.0)
        self.step = inverse * smoothing


class _FineOperator:
    """The system matrix on the unknowns: m ⊙ (D·x − W·x) for a constant 3×3 stencil W."""

    def __init__(self, missing: torch.Tensor, stencil: _Stencil) -> None:
        ones = torch.ones((1, 1, *missing.shape[-2:]), device=missing.device, dtype=missing.dtype)
        self.degree = stencil(ones)  # Σ of in-bounds neighbour weights
        self.negative_missing = -missing
        self.diagonal = self.degree * missing
        self.stencil = stencil

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # (W·x − D·x) ⊙ (−m): the sign folded into the mask saves a pass over x.
        return self.stencil(x).addcmul_(self.degree, x, value=-1).mul_(self.negative_missing)


def _galerkin(level: _Level) -> torch.Tensor:
    """The coefficients (N, 9, h, w) of the coarse operator Pᵀ·A·P of ``level`` (P: bilinear
    prolongation restricted to the level's unknowns), probed with 9 comb vectors: with
    coarse nodes coloured by (i mod 3, j mod 3), each node's 3 × 3 neighbourhood holds
    exactly one node of each colour, so A_c·comb reads one coefficient per node."""
    missing = level.missing
    coarse = tuple(_coarse_length(side) for side in level.size)
    device, dtype = missing.device, missing.dtype
    rows = torch.arange(coarse[0], device=device) % 3
    columns = torch.arange(coarse[1], device=device) % 3
    colours = torch.arange(3, device=device)
    # The 9 combs as channels of one probe: comb (a, b) is 1 on the nodes of colour (a, b).
    combs = ((rows == colours[:, None])[:, None, :, None] & (columns == colours[:, None])[None, :, None, :])
    combs = combs.reshape(1, 9, *coarse).to(dtype)
    probes = _restrict(level.apply(_prolong(combs, level.size) * missing) * missing)
    coefficients = torch.zeros((missing.shape[0], 9, *coarse), device=device, dtype=dtype)
    for colour in range(9):
        dy = (colour // 3 - rows + 1) % 3 - 1  # the offset to the row of this colour within 1
        dx = (colour % 3 - columns + 1) % 3 - 1
        index = (3 * (dy + 1)[:, None] + (dx + 1)[None, :]).expand(missing.shape[0], 1, *coarse)
        coefficients.scatter_(1, index, probes[:, colour : colour + 1])
    # Round-off can leave tiny couplings to inactive nodes: keep the operator's rows and
    # columns of inactive nodes exactly zero.
    active = (coefficients[:, 4:5] > 1e-6 * coefficients[:, 4:5].amax((2, 3), keepdim=True)).to(dtype)
    padded = F.pad(active, (1, 1, 1, 1))
    for offset in range(9):
        dy, dx = offset // 3 - 1, offset % 3 - 1
        neighbour = padded[..., 1 + dy : 1 + dy + coarse[0], 1 + dx : 1 + dx + coarse[1]]
        coefficients[:, offset : offset + 1] *= active * neighbour
    return coefficients


class _DenseSolve:
    """The exact solve on the coarsest grid: a Cholesky factorisation of the (N, n, n)
    matrix of its operator (identity rows for inactive nodes, a 1e-6 relative shift so
    that an image without any known pixel, whose system is singular, still factorises)."""

    def __init__(self, coefficients: torch.Tensor) -> None:
        batch, _, height, width = coefficients.shape
        n = height * width
        dense = torch.zeros((batch, n, n), device=coefficients.device, dtype=torch.float64)
        nodes = torch.arange(n, device=coefficients.device).reshape(height, width)
        for offset in range(9):
            dy, dx = offset // 3 - 1, offset % 3 - 1
            rows = nodes[max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)]
            values = coefficients[:, offset, max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)]
            dense[:, rows.flatten(), (rows + dy * width + dx).flatten()] = values.flatten(1).double()
        diagonal = dense.diagonal(dim1=1, dim2=2)
        scale = diagonal.amax(1, keepdim=True).clamp_min(1e-30)
        diagonal += torch.where(diagonal > 0, 1e-6 * scale, scale)
        self.factor = torch.linalg.cholesky(dense).to(coefficients.dtype)
        self.size = (height, width)

    def __call__(self, residual: torch.Tensor) -> torch.Tensor:
        batch, channels = residual.shape[:2]
        flat = residual.reshape(batch, channels, -1).transpose(1, 2)
        return torch.cholesky_solve(flat, self.factor).transpose(1, 2).reshape(residual.shape)


class _Multigrid:
    """A symmetric V-cycle: Jacobi smoothing, bilinear prolongation onto the unknowns and
    its transpose, Galerkin coarse operators (Pᵀ·A·P), an exact solve on the coarsest
    grid. A symmetric positive-definite preconditioner for conjugate gradients."""

    smoothing = 1.0
    sweeps = 1
    coarsest = 8

    def __init__(self, missing: torch.Tensor, stencil: _Stencil) -> None:
        fine = _FineOperator(missing, stencil)
        self.levels = [_Level(fine, fine.diagonal, self.smoothing)]
        coefficients = None
        while max(self.levels[-1].size) > self.coarsest:
            coefficients = _galerkin(self.levels[-1])
            operator = _Operator(coefficients)
            self.levels.append(_Level(operator, operator.diagonal, self.smoothing))
        self.exact = _DenseSolve(coefficients) if coefficients is not None else None

    def __call__(self, residual: torch.Tensor) -> torch.Tensor:
        return self._cycle(0, residual)

    def _cycle(self, index: int, residual: torch.Tensor) -> torch.Tensor:
        # ``residual`` is zero on the level's inactive nodes, and so is every operator
        # product: only the prolongation needs the mask.
        level = self.levels[index]
        if index == len(self.levels) - 1:
            if self.exact is not None:
                return self.exact(residual)
            correction = level.step * residual
            for _ in range(8):
                correction.addcmul_(level.step, residual - level.apply(correction))
            return correction
        correction = level.step * residual
        for _ in range(self.sweeps - 1):
            correction.addcmul_(level.step, residual - level.apply(correction))
        coarse_residual = _restrict(residual - level.apply(correction))
        correction.addcmul_(level.missing, _prolong(self._cycle(index + 1, coarse_residual), level.size))
        for _ in range(self.sweeps):
            correction.addcmul_(level.step, residual - level.apply(correction))
        return correction


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
            the default 1e-5 keeps the imputed values within ~3e-4 of the exact solution
            on ROAD's masks (see the module's docstring).
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


# --------------------------------------------------------------------------- metrics
def _road_imputer(imputer: Optional[NoisyLinearImputer]) -> NoisyLinearImputer:
    return NoisyLinearImputer() if imputer is None else imputer


class ROADMostRelevantFirst(PerturbationConfidenceMetric):
    """ROAD MoRF: the score change when the most relevant (100 − ``percentile``) % of the
    pixels are imputed by :class:`NoisyLinearImputer` (lower is better).

    Args:
        percentile: the map percentile above which pixels are removed, or ``'auto'``.
        imputer: the imputer (default ``NoisyLinearImputer()``; e.g.
            ``NoisyLinearImputer(noise=0)`` for a deterministic metric).
    """

    def __init__(self, percentile: float = 80, *, imputer: Optional[NoisyLinearImputer] = None) -> None:
        super().__init__(RemoveMostRelevantFirst(percentile, _road_imputer(imputer)))


class ROADLeastRelevantFirst(PerturbationConfidenceMetric):
    """ROAD LeRF: the score change when all but the most relevant ``percentile`` % of the
    pixels are imputed (higher is better).

    Args:
        percentile: the share (in %) of the most relevant pixels kept, or ``'auto'``.
        imputer: as :class:`ROADMostRelevantFirst`.
    """

    def __init__(self, percentile: float = 20, *, imputer: Optional[NoisyLinearImputer] = None) -> None:
        super().__init__(RemoveLeastRelevantFirst(percentile, _road_imputer(imputer)))


class ROADMostRelevantFirstAverage(AveragerAcrossThresholds):
    """:class:`ROADMostRelevantFirst` averaged over ``percentiles``; returns (B,)."""

    def __init__(
        self,
        percentiles: Sequence[float] = _DEFAULT_PERCENTILES,
        *,
        imputer: Optional[NoisyLinearImputer] = None,
    ) -> None:
        imputer = _road_imputer(imputer)
        super().__init__(lambda p: ROADMostRelevantFirst(p, imputer=imputer), percentiles)


class ROADLeastRelevantFirstAverage(AveragerAcrossThresholds):
    """:class:`ROADLeastRelevantFirst` averaged over ``percentiles``; returns (B,)."""

    def __init__(
        self,
        percentiles: Sequence[float] = _DEFAULT_PERCENTILES,
        *,
        imputer: Optional[NoisyLinearImputer] = None,
    ) -> None:
        imputer = _road_imputer(imputer)
        super().__init__(lambda p: ROADLeastRelevantFirst(p, imputer=imputer), percentiles)


class ROADCombined:
    """(LeRF average − MoRF average) / 2 over ``percentiles``: higher is better.

    The unperturbed scores cancel in the difference, so only the 2 × len(percentiles)
    perturbed batches are run through the model (LeRF first, then MoRF, as the reference
    draws its noise).

    Args:
        percentiles: the percentiles of both averages.
        imputer: as :class:`ROADMostRelevantFirst`.
    """

    def __init__(
        self,
        percentiles: Sequence[float] = _DEFAULT_PERCENTILES,
        *,
        imputer: Optional[NoisyLinearImputer] = None,
    ) -> None:
        self.percentiles = tuple(percentiles)
        if not self.percentiles:
            raise ValueError("percentiles is empty; pass at least one percentile")
        self.imputer = _road_imputer(imputer)

    def __call__(
        self,
        input_tensor: torch.Tensor,
        cams: CamsLike,
        targets: Targets,
        model: torch.nn.Module,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> np.ndarray:
        """Args as :class:`PerturbationConfidenceMetric`.

        Returns:
            numpy float32 (B,) (or (B, K) for vector-valued targets).

        Raises:
            ValueError: on cams or targets that do not match the batch.
        """
        maps = as_cam_batch(cams, input_tensor)
        targets = resolve_targets(targets, model, input_tensor, batch_size)
        totals = []
        for removal in (RemoveLeastRelevantFirst, RemoveMostRelevantFirst):
            scores = [
                model_scores(model, removal(p, self.imputer).perturb_batch(input_tensor, maps), targets, batch_size)
                for p in self.percentiles
            ]
            totals.append(torch.stack(scores).mean(0))
        return ((totals[0] - totals[1]) / 2).cpu().numpy().astype(np.float32)
