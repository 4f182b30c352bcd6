"""Targets: callables that map ONE image's model output to the scalar whose
explanation is wanted. A list of them, one per image, is the ``targets`` argument."""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch


def _check_class(category: int, model_output: torch.Tensor) -> None:
    classes = model_output.shape[-1]
    if not -classes <= category < classes:
        raise IndexError(
            f"class index {category} is outside the model output of {classes} classes; "
            f"pass a category in [0, {classes - 1}]"
        )


class ClassifierOutputTarget:
    """The raw score (logit) of class ``category``."""

    def __init__(self, category: int) -> None:
        self.category = int(category)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        _check_class(self.category, model_output)
        return model_output[..., self.category]

    def __repr__(self) -> str:
        return f"ClassifierOutputTarget({self.category})"


class ClassifierOutputSoftmaxTarget:
    """The softmax probability of class ``category``."""

    def __init__(self, category: int) -> None:
        self.category = int(category)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        _check_class(self.category, model_output)
        return torch.softmax(model_output, dim=-1)[..., self.category]

    def __repr__(self) -> str:
        return f"ClassifierOutputSoftmaxTarget({self.category})"


class BinaryClassifierOutputTarget:
    """For a model with one output logit: the logit for ``category`` 1, minus it for 0."""

    def __init__(self, category: int) -> None:
        if category not in (0, 1):
            raise ValueError(f"a binary classifier's category is 0 or 1, not {category}")
        self.category = int(category)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        sign = 1.0 if self.category == 1 else -1.0
        return model_output.reshape(-1)[0] * sign

    def __repr__(self) -> str:
        return f"BinaryClassifierOutputTarget({self.category})"


class RawScoresOutputTarget:
    """The sum of the whole output (for models with one score, or any scalar-like output)."""

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return model_output.sum()


class SemanticSegmentationTarget:
    """Segmentation: the sum of class ``category``'s scores (C, H, W) inside ``mask`` (H, W)."""

    def __init__(self, category: int, mask: Union[np.ndarray, torch.Tensor]) -> None:
        self.category = int(category)
        self.mask = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        if model_output.ndim != 3:
            raise ValueError(
                "SemanticSegmentationTarget expects one image's (classes, H, W) output, "
                f"got shape {tuple(model_output.shape)}"
            )
        _check_class(self.category, model_output.movedim(0, -1))
        mask = self.mask.to(device=model_output.device, dtype=model_output.dtype)
        if mask.shape != model_output.shape[1:]:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not match the output's "
                f"{tuple(model_output.shape[1:])}; pass an (H, W) mask of the output size"
            )
        return (model_output[self.category] * mask).sum()


class SimilarityToConceptTarget:
    """Embedding models: the cosine similarity between the output and a concept vector."""

    def __init__(self, concept_features: Union[torch.Tensor, Sequence[float]]) -> None:
        self.concept_features = torch.as_tensor(concept_features)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        concept = self.concept_features.to(device=model_output.device, dtype=model_output.dtype)
        return torch.nn.functional.cosine_similarity(
            model_output.reshape(-1), concept.reshape(-1), dim=0
        )


class FinerWeightedTarget:
    """FinerCAM's target: the main class's logit minus α times similar classes' logits,
    weighted by their softmax probabilities (not detached):
    Σ_j p_j·(z_main − α·z_j) / (Σ_j p_j + 1e-9). With α = 0 it is z_main."""

    def __init__(self, main_category: int, comparison_categories: Sequence[int], alpha: float) -> None:
        self.main_category = int(main_category)
        self.comparison_categories = [int(c) for c in comparison_categories]
        self.alpha = alpha

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        probabilities = torch.softmax(model_output, dim=-1)
        main = model_output[..., self.main_category]
        total = 0.0
        for category in self.comparison_categories:
            total = total + probabilities[..., category] * (main - self.alpha * model_output[..., category])
        weight = sum(probabilities[..., c] for c in self.comparison_categories)
        return total / (weight + 1e-9)

    def __repr__(self) -> str:
        return (
            f"FinerWeightedTarget({self.main_category}, {self.comparison_categories}, "
            f"alpha={self.alpha})"
        )
