"""SS-CAM (Wang et al., 2020), smoothed Score-CAM: ScoreCAM's masks with Gaussian noise
added, each channel's score averaged over the noisy masks, as torchcam 0.5 defines it:

    M_k = min-max(upsample(A_k))                  (ScoreCAM's mask)
    s_k = (1/N) Σ_{i=1..N} y_c(X ⊙ (M_k + δ_ik)),  δ_ik ~ N(0, std²) per pixel
    w = softmax_k(s),  L = ReLU(Σ_k w_k·A_k)

The noise δ_ik has the mask's shape (1, *spatial), shared by the image's colour channels.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
from torch import nn

from pytorch_grad_cam.activations_and_gradients import ReshapeTransform
from pytorch_grad_cam.layers import LayerSpec
from pytorch_grad_cam.noise import Seed, check_samples, check_std, gaussian, image_generators, noise_generator
from pytorch_grad_cam.perturbation_cam import CopyRecipe, PerturbationCAM, same_rows

__all__ = ["SSCAM"]


class SSCAM(PerturbationCAM):
    """w = softmax_k((1/N) Σ_i y_c(X ⊙ (M_k + δ_ik))), M_k ScoreCAM's mask.

    Every channel's masks are scored (no two channels share noise), ``num_samples`` x K
    forwards per image, sample by sample, in chunks of at most ``batch_size`` masked
    images (fewer where they would exceed
    :data:`~pytorch_grad_cam.perturbation_cam.MASKED_BATCH_BYTES`), so memory is bounded
    as ScoreCAM's. The noise is drawn per image, then per sample i, then per channel k in
    order, one (1, *spatial) tensor each; with ``seed=None`` and one image that is
    torchcam's order (the same numbers where the mask's pixel count is a multiple of 16,
    or its chunks match ours). With an int seed an image repeated once per target
    (``explain_targets``) draws the same noise for each, so it is masked once and each
    target scores the same copies; with a shared generator each row draws its own.

    Args (besides those of :class:`~pytorch_grad_cam.perturbation_cam.PerturbationCAM`):
        num_samples: N, noisy masks per channel (default :attr:`num_samples`, torchcam's).
        std: the noise's standard deviation, in mask units (default :attr:`std`).
        seed: an int (default 0: each image's own generator, the same draws at every
            call), None (torch's global generator) or a ``torch.Generator``
            (:mod:`pytorch_grad_cam.noise`).

    Raises:
        ValueError: if ``num_samples`` or ``batch_size`` is not a positive integer, or
            ``std`` not a finite number >= 0.
        TypeError: if ``seed`` is not None, an int or a torch.Generator.
    """

    #: N when the constructor is not given ``num_samples``.
    num_samples: int = 35
    #: The noise's standard deviation when the constructor is not given ``std``.
    std: float = 2.0
    title = "SS-CAM"
    #: Each channel's copies have their own noise: equal masks do not share scores.
    shares_masks = False
    #: Sample by sample: the noise's order.
    draws_outer = True

    def __init__(
        self,
        model: nn.Module,
        target_layers: Union[LayerSpec, Sequence[LayerSpec], None] = None,
        reshape_transform: Optional[ReshapeTransform] = None,
        *,
        num_samples: Optional[int] = None,
        std: Optional[float] = None,
        seed: Seed = 0,
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
        self.std = check_std(self.std if std is None else std)
        noise_generator(seed)  # a wrong type fails here, not at the first call
        self.seed = seed

    def copy_recipe(self, input_tensor: torch.Tensor) -> CopyRecipe:
        """X ⊙ (M_k + δ), δ drawn per copy in order from image ``row``'s generator."""
        generators = image_generators(self.seed, input_tensor.shape[0])
        spatial = tuple(input_tensor.shape[2:])

        def recipe(row: int, masks: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
            image = input_tensor[row : row + 1]
            noise = torch.stack([gaussian((1, *spatial), self.std, generators[row], image) for _ in range(len(masks))])
            return image * (masks.unsqueeze(1) + noise)

        return recipe

    def draws_per_mask(self) -> int:
        """N, the noisy masks per channel."""
        return self.num_samples

    def reduce_draws(self, scores: torch.Tensor) -> torch.Tensor:
        """The mean over the samples, summed sample by sample."""
        return sum(scores.unbind(dim=-1)) / self.num_samples

    def row_groups(self, input_tensor: torch.Tensor, activations: torch.Tensor) -> List[List[int]]:
        """Equal rows share copies where each image draws from its own generator (an
        int seed: equal rows draw equal noise); with a shared one, every row its own."""
        if self.seed is None or isinstance(self.seed, torch.Generator):
            return [[row] for row in range(input_tensor.shape[0])]
        return same_rows(input_tensor, activations)
