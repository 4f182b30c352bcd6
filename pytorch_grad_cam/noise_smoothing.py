"""Noise smoothing for any method (SmoothGrad, Smilkov et al., 2017; VarGrad, Adebayo
et al., 2018): the method's raw map of each layer (before ReLU and scaling) on
``num_samples`` noisy copies x + δ_s, δ_s ~ N(0, std²) per pixel, reduced per image:

    smoothgrad:    (1/n) Σ_s m(x + δ_s)
    smoothgrad_sq: (1/n) Σ_s m(x + δ_s)²
    vargrad:       (1/n) Σ_s m(x + δ_s)² - ((1/n) Σ_s m(x + δ_s))²

then ReLU, per-image min-max and the resize as for every method. Usage:
``NoiseSmooth(model, layers, base_method=GradCAM, num_samples=16, std=0.3, seed=0)(x)``.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Type, Union

import torch
from torch import nn

from pytorch_grad_cam.activations_and_gradients import ReshapeTransform
from pytorch_grad_cam.base_cam import BaseCAM, Target
from pytorch_grad_cam.base_method_cam import BaseMethodCAM
from pytorch_grad_cam.grad_cam import GradCAM
from pytorch_grad_cam.layers import LayerSpec
from pytorch_grad_cam.noise import Seed, check_samples, check_std, noise_generator, noisy_records
from pytorch_grad_cam.recording import Record

__all__ = ["NoiseSmooth", "STATISTICS"]

#: The reductions over the noisy copies' maps (see the module's docstring).
STATISTICS = ("smoothgrad", "smoothgrad_sq", "vargrad")


class NoiseSmooth(BaseMethodCAM):
    """``base_method``'s maps averaged (or their variance taken) over noisy copies.

    Args (besides ``model``, ``target_layers`` and ``reshape_transform``):
        base_method: the CAM class whose maps are smoothed (GradCAM by default; any
            registered method works, a gradient method is the usual choice).
        num_samples: noisy copies per image.
        std: the noise's standard deviation, in the input's units (SmoothGrad suggests
            10-20 % of the input's range).
        statistic: "smoothgrad", "smoothgrad_sq" or "vargrad".
        seed: an int (default 0: each image's own generator, the same draws at every
            call), None (torch's global generator) or a ``torch.Generator``
            (:mod:`pytorch_grad_cam.noise`); copy s of image b is drawn (s x B + b)-th
            (with an int, s-th from b's generator).
        noise_batch_size: noisy copies per forward (and backward) pass.
        **kwargs: for ``base_method`` (``batch_size`` for ScoreCAM...).

    The clean input is run once too: its output is ``outputs``, and ``targets=None``
    explains its top class on every copy.

    Raises:
        ValueError: on a ``statistic`` not in :data:`STATISTICS`, ``num_samples`` or
            ``noise_batch_size`` not a positive integer, ``std`` not a finite number >= 0.
        TypeError: if ``seed`` is not None, an int or a torch.Generator.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Union[LayerSpec, Sequence[LayerSpec], None] = None,
        reshape_transform: Optional[ReshapeTransform] = None,
        base_method: Type[BaseCAM] = GradCAM,
        *,
        num_samples: int = 8,
        std: float = 0.3,
        statistic: str = "smoothgrad",
        seed: Seed = 0,
        noise_batch_size: int = 16,
        **kwargs: object,
    ) -> None:
        if statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
        super().__init__(model, target_layers, reshape_transform, base_method, **kwargs)
        self.num_samples = check_samples(num_samples)
        self.std = check_std(std)
        self.statistic = statistic
        noise_generator(seed)  # a wrong type fails here, not at the first call
        self.seed = seed
        self.noise_batch_size = check_samples(noise_batch_size, "noise_batch_size")

    def layer_map(self, record: Record, index: int, eigen_smooth: bool) -> torch.Tensor:
        """The statistic of the base method's raw maps of ``record.layers[index]`` over
        the noisy copies (all layers' maps come from the same passes, made at the first
        layer's turn).

        Raises:
            As the base method's maps, on the noisy copies.
        """
        key = ("noise_smooth", eigen_smooth)
        if key not in record.extras:
            record.extras[key] = self.noisy_maps(record, eigen_smooth)
        return record.extras[key][index]

    def noisy_maps(self, record: Record, eigen_smooth: bool) -> List[torch.Tensor]:
        """Per target layer, the statistic (N, *spatial) of the base method's raw maps of
        the noisy copies of ``record.input_tensor`` (the targets: ``record.targets``)."""

        def noisy_record(noisy: torch.Tensor, targets: Optional[List[Target]]) -> Record:
            with self.forward_context():
                return BaseCAM.record(self, noisy, targets)

        count = record.input_tensor.shape[0]
        sums: List[Optional[torch.Tensor]] = [None] * len(record.layers)
        copies = noisy_records(
            noisy_record,
            record.input_tensor,
            record.targets,
            self.num_samples,
            self.std,
            self.seed,
            self.noise_batch_size,
        )
        for images, noisy in copies:
            for index in range(len(record.layers)):
                with torch.no_grad():
                    maps = torch.as_tensor(self.base.layer_map(noisy, index, eigen_smooth)).to(torch.float64)
                moments = torch.stack([maps, maps**2])
                if sums[index] is None:
                    sums[index] = moments.new_zeros((2, count, *maps.shape[1:]))
                sums[index].index_add_(1, images, moments)
        results = []
        for total in sums:
            mean, mean_square = total / self.num_samples
            if self.statistic == "smoothgrad":
                results.append(mean)
            elif self.statistic == "smoothgrad_sq":
                results.append(mean_square)
            else:
                results.append((mean_square - mean**2).clamp_min(0))
        dtype = torch.float64 if record.input_tensor.dtype == torch.float64 else torch.float32
        return [result.to(dtype) for result in results]
