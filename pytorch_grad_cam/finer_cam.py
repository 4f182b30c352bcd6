"""FinerCAM (Zhang et al., 2025): explain what separates the main class from the
classes the model finds most similar, by a base method's map of the target
z_main − α·z_similar (``FinerWeightedTarget``)."""

from __future__ import annotations

from typing import List, Optional, Sequence, Type

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.base_cam import BaseCAM, Target
from pytorch_grad_cam.base_method_cam import BaseMethodCAM
from pytorch_grad_cam.grad_cam import GradCAM
from pytorch_grad_cam.scoring import top_class_targets
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, FinerWeightedTarget


class FinerCAM(BaseMethodCAM):
    """``base_method``'s map (GradCAM by default) for FinerWeightedTarget(main, similar,
    α). With ``targets=None``: classes are ranked by |z − z_ref| (z_ref the top logit, or
    ``z[target_idx]``); rank 0 is the main class and ``comparison_categories`` are
    *ranks* (1, 2, 3: the three logits closest to the main one); ranks past the last
    class are dropped."""

    def __init__(
        self,
        model: nn.Module,
        target_layers=None,
        reshape_transform=None,
        base_method: Type[BaseCAM] = GradCAM,
        **kwargs,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, base_method, **kwargs)
        self.alpha: float = 1.0
        self.comparison_categories: Sequence[int] = (1, 2, 3)
        self.target_idx: Optional[int] = None

    def __call__(
        self,
        input_tensor,
        targets=None,
        aug_smooth=False,
        eigen_smooth=False,
        *,
        alpha: float = 1.0,
        comparison_categories: Sequence[int] = (1, 2, 3),
        target_idx: Optional[int] = None,
        target_category=None,
        image_input=None,
    ) -> np.ndarray:
        # The call's options, read by default_targets during this call only.
        self.alpha, self.comparison_categories, self.target_idx = alpha, comparison_categories, target_idx
        try:
            return super().__call__(
                input_tensor,
                targets,
                aug_smooth,
                eigen_smooth,
                target_category=target_category,
                image_input=image_input,
            )
        finally:
            self.alpha, self.comparison_categories, self.target_idx = 1.0, (1, 2, 3), None

    def forward(
        self,
        input_tensor,
        targets=None,
        eigen_smooth=False,
        alpha=1.0,
        comparison_categories=(1, 2, 3),
        target_idx=None,
    ) -> np.ndarray:
        return self(
            input_tensor,
            targets,
            eigen_smooth=eigen_smooth,
            alpha=alpha,
            comparison_categories=comparison_categories,
            target_idx=target_idx,
        )

    def default_targets(self, outputs: object, copies: int) -> List[Target]:
        if not torch.is_tensor(outputs) or outputs.ndim != 2:
            return top_class_targets(outputs, copies)  # its clear error
        scores = outputs.detach().reshape(copies, -1, outputs.shape[-1]).mean(dim=0)
        if self.target_idx is None:
            reference = scores.max(dim=-1, keepdim=True).values
        else:
            reference = scores[:, self.target_idx : self.target_idx + 1]
        order = (scores - reference).abs().argsort(dim=-1, stable=True).tolist()
        # Ranks past the last class are dropped (a 3-class model has ranks 1 and 2 only);
        # with no class left to compare against, the main class's own logit is explained.
        ranks = [rank for rank in self.comparison_categories if rank < scores.shape[-1]]
        targets: List[Target] = []
        for ranked in order:
            main = ranked[0] if self.target_idx is None else self.target_idx
            if ranks:
                targets.append(FinerWeightedTarget(main, [ranked[rank] for rank in ranks], self.alpha))
            else:
                targets.append(ClassifierOutputTarget(main))
        return targets * copies
