"""Faithfulness and localisation metrics for CAMs.

Every metric takes ``(input_tensor, cams, targets, model, ...)`` in that order and
returns one number per image (numpy float32, shape (B,)). ``cams`` may be a numpy
array (B, H, W), a list of (H, W) arrays, or a torch tensor; float, bool or uint8.
"""

# Faithfulness and localisation protocols: Deletion/Insertion, the pointing games,
# relevance mass and rank accuracy, and the model-randomisation sanity check.
from pytorch_grad_cam.metrics.deletion_insertion import DeletionMetric, InsertionMetric, gaussian_blur
from pytorch_grad_cam.metrics.localisation import region_masks, relevance_mass, relevance_rank_accuracy
from pytorch_grad_cam.metrics.pointing_game import energy_pointing_game, pointing_game
from pytorch_grad_cam.metrics.sanity import (
    SanityCheckResult,
    sanity_check,
    spearman_rank_correlation,
    structural_similarity,
)

__all__ = [
    "DeletionMetric",
    "InsertionMetric",
    "SanityCheckResult",
    "energy_pointing_game",
    "gaussian_blur",
    "pointing_game",
    "region_masks",
    "relevance_mass",
    "relevance_rank_accuracy",
    "sanity_check",
    "spearman_rank_correlation",
    "structural_similarity",
]
