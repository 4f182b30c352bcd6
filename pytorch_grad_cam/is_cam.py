"""IS-CAM (Naidu et al., 2020), integrated Score-CAM: each channel's mask is scaled along
a path from the zero image, and the scores along it are averaged, as the paper's code
and torchcam 0.5 do it (the mask accumulated: step i adds (i/N)·M_k):

    M_k = min-max(upsample(A_k))                          (ScoreCAM's mask)
    s_k = (1/N) Σ_{i=1..N} y_c(X ⊙ (c_i·M_k)),  c_i = Σ_{j=0..i} j/N = i(i+1)/(2N)
    w = softmax_k(s),  L = ReLU(Σ_k w_k·A_k)
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from pytorch_grad_cam.activations_and_gradients import ReshapeTransform
from pytorch_grad_cam.layers import LayerSpec
from pytorch_grad_cam.noise import check_samples
from pytorch_grad_cam.perturbation_cam import CopyRecipe, PerturbationCAM

__all__ = ["ISCAM", "path_scales"]


def path_scales(num_samples: int, like: torch.Tensor) -> torch.Tensor:
    """c_i = i(i + 1) / (2N) for i = 1..N (N = ``num_samples``), on ``like``'s device and dtype."""
    steps = torch.arange(1, num_samples + 1, device=like.device, dtype=torch.float64)
    return (steps * (steps + 1) / (2 * num_samples)).to(like.dtype)


class ISCAM(PerturbationCAM):
    """w = softmax_k((1/N) Σ_i y_c(X ⊙ c_i·M_k)), M_k ScoreCAM's mask, c_i = i(i+1)/(2N).

    As in ScoreCAM, each distinct mask is scored once (channels with equal maps, and
    the all-zero masks of constant channels, share their scores; the zero image is
    scored once, not at every step), and an image repeated once per target is masked
    once: ``num_samples`` x (distinct masks) forwards per image, mask by mask, in chunks
    of at most ``batch_size`` (fewer where
    :data:`~pytorch_grad_cam.perturbation_cam.MASKED_BATCH_BYTES` is reached), so memory
    is bounded as ScoreCAM's.

    Args (besides those of :class:`~pytorch_grad_cam.perturbation_cam.PerturbationCAM`):
        num_samples: N, the steps along the path (default :attr:`num_samples`, torchcam's).

    Raises:
        ValueError: if ``num_samples`` or ``batch_size`` is not a positive integer.
    """

    #: N when the constructor is not given ``num_samples``.
    num_samples: int = 10
    title = "IS-CAM"

    def __init__(
        self,
        model: nn.Module,
        target_layers: Union[LayerSpec, Sequence[LayerSpec], None] = None,
        reshape_transform: Optional[ReshapeTransform] = None,
        *,
        num_samples: Optional[int] = None,
        target_layer: Optional[LayerSpec] = None,
        use_cuda: bool = False,
        batch_size: int = 32,
        progress: bool = True,
    ) -> None:
        super().__init__(
            model,
            target_layers,
            reshape_transform,
            target_layer=target_layer,
            use_cuda=use_cuda,
            batch_size=batch_size,
            progress=progress,
        )
        self.num_samples = check_samples(self.num_samples if num_samples is None else num_samples)

    def copy_recipe(self, input_tensor: torch.Tensor) -> CopyRecipe:
        """X ⊙ (c_d·M_k) at step d (:func:`path_scales`)."""
        scales = path_scales(self.num_samples, input_tensor)
        spatial = [1] * (input_tensor.ndim - 2)
        return lambda row, masks, draws: (
            input_tensor[row : row + 1] * (masks * scales[draws].view(-1, *spatial)).unsqueeze(1)
        )

    def draws_per_mask(self) -> int:
        """N, the steps along the path."""
        return self.num_samples
