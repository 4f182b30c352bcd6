"""Faithfulness and localisation metrics for CAMs.

Every metric takes ``(input_tensor, cams, targets, model, ...)`` in that order and
returns one number per image (numpy float32, shape (B,)). ``cams`` may be a numpy
array (B, H, W), a list of (H, W) arrays, or a torch tensor; float, bool or uint8.
"""

# grad-cam's metrics, at its import paths.
from pytorch_grad_cam.metrics.arcc import ARCC, Coherency, Complexity, batch_pearson_coherency
from pytorch_grad_cam.metrics.cam_mult_image import (
    CamMultImageConfidenceChange,
    DropInConfidence,
    IncreaseInConfidence,
    multiply_tensor_with_cam,
)

# Faithfulness and localisation protocols: Deletion/Insertion, the pointing games,
# relevance mass and rank accuracy, and the model-randomisation sanity check.
from pytorch_grad_cam.metrics.deletion_insertion import DeletionMetric, InsertionMetric, gaussian_blur
from pytorch_grad_cam.metrics.localisation import region_masks, relevance_mass, relevance_rank_accuracy
from pytorch_grad_cam.metrics.perturbation_confidence import (
    AveragerAcrossThresholds,
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)
from pytorch_grad_cam.metrics.pointing_game import energy_pointing_game, pointing_game
from pytorch_grad_cam.metrics.road import (
    NoisyLinearImputer,
    ROADCombined,
    ROADLeastRelevantFirst,
    ROADLeastRelevantFirstAverage,
    ROADMostRelevantFirst,
    ROADMostRelevantFirstAverage,
)
from pytorch_grad_cam.metrics.sanity import (
    SanityCheckResult,
    sanity_check,
    spearman_rank_correlation,
    structural_similarity,
)

__all__ = [
    "ARCC",
    "AveragerAcrossThresholds",
    "batch_pearson_coherency",
    "CamMultImageConfidenceChange",
    "Coherency",
    "Complexity",
    "DeletionMetric",
    "DropInConfidence",
    "energy_pointing_game",
    "gaussian_blur",
    "IncreaseInConfidence",
    "InsertionMetric",
    "multiply_tensor_with_cam",
    "NoisyLinearImputer",
    "PerturbationConfidenceMetric",
    "pointing_game",
    "region_masks",
    "relevance_mass",
    "relevance_rank_accuracy",
    "RemoveLeastRelevantFirst",
    "RemoveMostRelevantFirst",
    "ROADCombined",
    "ROADLeastRelevantFirst",
    "ROADLeastRelevantFirstAverage",
    "ROADMostRelevantFirst",
    "ROADMostRelevantFirstAverage",
    "sanity_check",
    "SanityCheckResult",
    "spearman_rank_correlation",
    "structural_similarity",
]
