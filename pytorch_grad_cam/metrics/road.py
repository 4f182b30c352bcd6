"""ROAD (RemOve And Debias): remove pixels by a CAM's ranking, fill them in from their
neighbours (:class:`NoisyLinearImputer`, in :mod:`pytorch_grad_cam.metrics.road_imputer`)
and see how the model's confidence changes.

This module holds the metrics and keeps the reference's import path for the imputer.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

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

# The imputer's names, at the reference's import path.
# The solver's internals stay importable here, where tests/test_metrics_compat.py
# checks them; they are not part of the API.
from pytorch_grad_cam.metrics.road_imputer import (  # noqa: F401
    DEFAULT_TOLERANCE,
    NoisyLinearImputer,
    Offset,
    _kernel,  # noqa: F401
    neighbors_weights,
    solve_interpolation,
)
from pytorch_grad_cam.metrics.road_multigrid import _Multigrid, _prolong, _restrict, _Stencil  # noqa: F401

_DEFAULT_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


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
