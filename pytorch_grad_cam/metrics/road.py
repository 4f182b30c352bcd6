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
matrix as a 3×3 stencil. The reference solves it on the CPU with a sparse direct solver,
one image at a time.

The solver stops at a relative residual of 1e-5 (:data:`DEFAULT_TOLERANCE`), not at
float32's limit: on 224 × 224 images with ROAD's masks (20–80 % of the pixels missing,
in blobs) the imputed values then lie within 2e-4–3.4e-4 (measured) of the exact
(float64 sparse direct) solution, the order float32 itself reaches at 1e-6 (1.3e-4–
2.8e-4), 30× below the 0.01 noise ROAD adds to every imputed pixel, in ~15 % fewer
iterations than 1e-6. tests/test_metrics_compat.py checks the default against a direct solve to 1e-3.
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
        padded = F.pad(x, (1, 1, 1, 1))
        if self.separable:
            rows = padded[..., :, :-2] + padded[..., :, 2:]
            rows.add_(padded[..., :, 1:-1], alpha=2)
            out = rows[..., :-2, :] + rows[..., 2:, :]
            out.add_(rows[..., 1:-1, :], alpha=2).sub_(x, alpha=4)
            return out.mul_(1 / 12)
        out = torch.zeros_like(x)
        for dy, dx, weight in self.taps:
            out.add_(padded[..., 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width], alpha=weight)
        return out


def _restrict_last(x: torch.Tensor) -> torch.Tensor:
    """Full weighting along the last axis: out[i] = x[2i−1]/2 + x[2i] + x[2i+1]/2."""
    length = x.shape[-1]
    coarse = (length + 1) // 2
    padded = F.pad(x, (1, 2 * coarse - length))
    out = padded[..., 0 : 2 * coarse : 2] + padded[..., 2 : 2 * coarse + 1 : 2]
    return out.mul_(0.5).add_(padded[..., 1 : 2 * coarse : 2])


def _prolong_last(x: torch.Tensor, length: int) -> torch.Tensor:
    """Linear interpolation along the last axis, the transpose of :func:`_restrict_last`:
    out[2i] = x[i], out[2i+1] = (x[i] + x[i+1])/2 (x is 0 past its end)."""
    odd = F.pad(x[..., 1:], (0, 1)).add_(x).mul_(0.5)
    return torch.stack((x, odd), dim=-1).flatten(-2)[..., :length]


def _restrict(x: torch.Tensor) -> torch.Tensor:
    """Full weighting, the transpose of :func:`_prolong`: (..., H, W) → (..., ⌈H/2⌉, ⌈W/2⌉)."""
    return _restrict_last(_restrict_last(x).transpose(-1, -2)).transpose(-1, -2)


def _prolong(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear interpolation from the coarse grid (coarse node i sits on fine node 2i):
    (..., ⌈H/2⌉, ⌈W/2⌉) → (..., H, W)."""
    return _prolong_last(_prolong_last(x, size[1]).transpose(-1, -2), size[0]).transpose(-1, -2)


class _Level:
    """One grid of the multigrid hierarchy: which nodes are unknown, and the Jacobi step."""

    def __init__(self, missing: torch.Tensor, stencil: _Stencil, smoothing: float) -> None:
        self.missing = missing  # (N, 1, H, W) 0/1
        self.negative_missing = -missing
        self.size = tuple(missing.shape[-2:])
        ones = torch.ones((1, 1, *self.size), device=missing.device, dtype=missing.dtype)
        self.degree = stencil(ones)  # Σ of in-bounds neighbour weights
        inverse = torch.where(self.degree > 0, 1 / self.degree, torch.zeros_like(self.degree))
        self.step = missing * inverse * smoothing
        self.stencil = stencil

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The system matrix on the unknowns: m ⊙ (D·x − W·x), for x zero on known pixels."""
        # (W·x − D·x) ⊙ (−m): the sign folded into the mask saves a pass over x.
        return self.stencil(x).addcmul_(self.degree, x, value=-1).mul_(self.negative_missing)


class _Multigrid:
    """A symmetric V-cycle (damped Jacobi, full weighting, bilinear prolongation,
    re-discretised coarse grids): a symmetric positive-definite preconditioner."""

    smoothing = 1.0
    coarsest = 8
    coarsest_sweeps = 4

    def __init__(self, missing: torch.Tensor, stencil: _Stencil) -> None:
        self.levels = [_Level(missing, stencil, self.smoothing)]
        while max(self.levels[-1].size) > self.coarsest:
            # Coarse node i is fine node 2i, unknown where that one is.
            coarse = self.levels[-1].missing[..., ::2, ::2]
            self.levels.append(_Level(coarse, stencil, self.smoothing))

    def __call__(self, residual: torch.Tensor) -> torch.Tensor:
        return self._cycle(0, residual)

    def _cycle(self, index: int, residual: torch.Tensor) -> torch.Tensor:
        level = self.levels[index]
        correction = level.step * residual
        if index == len(self.levels) - 1:
            for _ in range(self.coarsest_sweeps - 1):
                correction += level.step * (residual - level.apply(correction))
            return correction
        coarse_residual = _restrict(residual - level.apply(correction))
        coarse_residual *= self.levels[index + 1].missing
        correction += level.missing * _prolong(self._cycle(index + 1, coarse_residual), level.size)
        correction += level.step * (residual - level.apply(correction))
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
        solution.add_(alpha * direction)
        residual.sub_(alpha * product)
        preconditioned = preconditioner(residual)
        rz_next = (residual * preconditioned).sum((2, 3), keepdim=True)
        beta = torch.where(rz > 0, rz_next / rz.clamp_min(tiny), torch.zeros_like(rz))
        direction = preconditioned + beta * direction
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
