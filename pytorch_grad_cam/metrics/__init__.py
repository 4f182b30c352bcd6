"""Faithfulness and localisation metrics for CAMs.

Every metric takes ``(input_tensor, cams, targets, model, ...)`` in that order and
returns one number per image (numpy float32, shape (B,)). ``cams`` may be a numpy
array (B, H, W), a list of (H, W) arrays, or a torch tensor; float, bool or uint8.
"""
from pytorch_grad_cam.metrics.arcc import ARCC, Coherency, Complexity, batch_pearson_coherency
from pytorch_grad_cam.metrics.cam_mult_image import (
    CamMultImageConfidenceChange,
    DropInConfidence,
    IncreaseInConfidence,
    multiply_tensor_with_cam,
)
from pytorch_grad_cam.metrics.perturbation_confidence import (
    AveragerAcrossThresholds,
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)
from pytorch_grad_cam.metrics.road import (
    NoisyLinearImputer,
    ROADCombined,
    ROADLeastRelevantFirst,
    ROADLeastRelevantFirstAverage,
    ROADMostRelevantFirst,
    ROADMostRelevantFirstAverage,
)

__all__ = [
    "ARCC",
    "AveragerAcrossThresholds",
    "CamMultImageConfidenceChange",
    "Coherency",
    "Complexity",
    "DropInConfidence",
    "IncreaseInConfidence",
    "NoisyLinearImputer",
    "PerturbationConfidenceMetric",
    "ROADCombined",
    "ROADLeastRelevantFirst",
    "ROADLeastRelevantFirstAverage",
    "ROADMostRelevantFirst",
    "ROADMostRelevantFirstAverage",
    "RemoveLeastRelevantFirst",
    "RemoveMostRelevantFirst",
    "batch_pearson_coherency",
    "multiply_tensor_with_cam",
]
