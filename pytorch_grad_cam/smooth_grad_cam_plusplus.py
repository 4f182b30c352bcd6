"""SmoothGradCAM++ (Omeiza et al., 2019): GradCAM++ whose gradient powers are averaged
over noisy copies of the input (SmoothGrad), as torchcam 0.5 defines it.

For n copies x + δ_s, δ_s ~ N(0, std²) per pixel, and D^p = (1/n) Σ_s (∂y_c/∂A)^p
(the gradient at the copy, to the power p):

    α = D² / (2·D² + (Σ_ij A)·D³ + 1e-6)   (0 where D² = 0)
    w_k = Σ_ij relu(D¹)·α,   L = ReLU(Σ_k w_k·A_k)

with A the activations of the clean input. The numerator D² (the paper writes D¹
there) follows torchcam, so that one copy with ``std=0`` is GradCAM++ exactly.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
from torch import nn

from pytorch_grad_cam.activations_and_gradients import ReshapeTransform
from pytorch_grad_cam.base_cam import BaseCAM, Target, weighted_map
from pytorch_grad_cam.checks import layer_grid
from pytorch_grad_cam.grad_cam_plusplus import plusplus_weights
from pytorch_grad_cam.layers import LayerSpec
from pytorch_grad_cam.noise import Seed, check_samples, check_std, noise_generator, noisy_records
from pytorch_grad_cam.recording import Record

__all__ = ["SmoothGradCAMPlusPlus"]


class SmoothGradCAMPlusPlus(BaseCAM):
    """GradCAM++ with the gradient's powers averaged over ``num_samples`` noisy copies.

    Args (besides those of :class:`BaseCAM`):
        num_samples: noisy copies per image (default :attr:`num_samples`, torchcam's).
        std: the noise's standard deviation, in the input's units (default :attr:`std`).
        seed: where the noise comes from: an int (default 0: each image's own generator,
            the same draws at every call), None (torch's global generator) or a
            ``torch.Generator`` (:mod:`pytorch_grad_cam.noise`). Copy s of image b is drawn
            (s x B + b)-th (with an int, s-th from b's generator), a tensor of the image's shape.
        batch_size: noisy copies per forward and backward pass.

    Raises:
        ValueError: if ``num_samples`` or ``batch_size`` is not a positive integer, or
            ``std`` is not a finite number >= 0.
        TypeError: if ``seed`` is not None, an int or a torch.Generator.
    """

    not_differentiable = (
        "its gradient powers are averaged over noisy copies inside its own backward passes, outside "
        "one graph; for a map that carries gradients use GradCAMPlusPlus"
    )

    #: Noisy copies per image when the constructor is not given ``num_samples``.
    num_samples: int = 4
    #: The noise's standard deviation when the constructor is not given ``std``.
    std: float = 0.3

    def __init__(
        self,
        model: nn.Module,
        target_layers: Union[LayerSpec, Sequence[LayerSpec], None] = None,
        reshape_transform: Optional[ReshapeTransform] = None,
        *,
        num_samples: Optional[int] = None,
        std: Optional[float] = None,
        seed: Seed = 0,
        batch_size: int = 16,
        tta_transforms: Optional[object] = None,
        target_layer: Optional[LayerSpec] = None,
        use_cuda: bool = False,
    ) -> None:
        super().__init__(
            model,
            target_layers,
            reshape_transform,
            tta_transforms=tta_transforms,
            target_layer=target_layer,
            use_cuda=use_cuda,
        )
        self.num_samples = check_samples(self.num_samples if num_samples is None else num_samples)
        self.std = check_std(self.std if std is None else std)
        noise_generator(seed)  # a wrong type fails here, not at the first call
        self.seed = seed
        self.batch_size = check_samples(batch_size, "batch_size")

    def record(self, input_tensor: torch.Tensor, targets: Optional[List[Target]], copies: int = 1) -> Record:
        """The clean input's record (its activations, outputs and targets), with
        ``extras["gradient_moments"]``: per layer, the means of G, G², G³ over the noisy
        copies (each (N, K, *spatial)).

        Raises:
            As :meth:`BaseCAM.record`, for the clean input and for the copies.
        """
        record = super().record(input_tensor, targets, copies)
        sums: List[Optional[torch.Tensor]] = [None] * len(record.layers)
        base_record = super().record
        copies_of = noisy_records(
            base_record, record.input_tensor, record.targets, self.num_samples, self.std, self.seed, self.batch_size
        )
        for images, noisy in copies_of:
            for index, grads in enumerate(noisy.gradients):
                grads = grads.to(torch.float64 if grads.dtype == torch.float64 else torch.float32)
                powers = torch.stack([grads, grads**2, grads**3])
                if sums[index] is None:
                    sums[index] = powers.new_zeros((3, input_tensor.shape[0], *powers.shape[2:]))
                sums[index].index_add_(1, images, powers)
        record.extras["gradient_moments"] = [total / self.num_samples for total in sums]
        return record

    def layer_map(self, record: Record, index: int, eigen_smooth: bool) -> torch.Tensor:
        """Σ_k w_k·A_k with GradCAM++'s weights of the averaged gradient powers (see the
        module's docstring), A the clean input's activations.

        Raises:
            ValueError: if the layer's activations are not a grid of the input's rank.
        """
        activations = layer_grid(record, index, self.reshape_transform)
        first, second, third = record.extras["gradient_moments"][index].to(activations.dtype)
        weights = plusplus_weights(activations, first, second, third)
        return weighted_map(weights, activations, eigen_smooth)
