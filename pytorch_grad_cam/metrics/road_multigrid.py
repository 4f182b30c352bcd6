"""The multigrid preconditioner of the ROAD imputer's linear system (see
:mod:`pytorch_grad_cam.metrics.road_imputer` for the system and its solve).

The system's matrix is applied as a 3×3 stencil (:class:`_Stencil`). One geometric
multigrid V-cycle (:class:`_Multigrid`) preconditions the conjugate gradients: its
coarse grids keep the first and the last node of each axis (so that constants are
interpolated exactly up to the image's edges, where the missing region has nothing to
pin it), their operators are the Galerkin products Pᵀ·A·P of the masked system (probed
with 9 comb vectors, a 3×3 stencil per node), the coarsest (≤ 8 × 8) is solved exactly
by Cholesky, and one Jacobi sweep smooths before and after.

Everything here is internal to the metrics package: the imputer and tests reach these
names, users do not.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F


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
            (dy - 1, dx - 1, float(kernel[dy, dx])) for dy in range(3) for dx in range(3) if kernel[dy, dx] != 0
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
    combs = (rows == colours[:, None])[:, None, :, None] & (columns == colours[:, None])[None, :, None, :]
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
