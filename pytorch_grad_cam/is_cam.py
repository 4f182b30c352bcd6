"""IS-CAM (Naidu et al., 2020), integrated Score-CAM: each channel's mask is scaled along
a path from the zero image, and the scores along it are averaged, as the paper's code
and torchcam 0.5 do it (the mask accumulated: step i adds (i/N)·M_k):

    M_k = min-max(upsample(A_k))                          (ScoreCAM's mask)
    s_k = (1/N) Σ_{i=1..N} y_c(X ⊙ (c_i·M_k)),  c_i = Σ_{j=0..i} j/N = i(i+1)/(2N)
    w = softmax_k(s),  L = ReLU(Σ_k w_k·A_k)
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
from torch import nn

from pytorch_grad_cam.activations_and_gradients import ReshapeTransform
from pytorch_grad_cam.base_cam import Target
from pytorch_grad_cam.layers import LayerSpec
from pytorch_grad_cam.noise import check_samples
from pytorch_grad_cam.perturbation_cam import PerturbationCAM
from pytorch_grad_cam.score_cam import distinct_masks, masked_chunk_size, normalised_masks
from pytorch_grad_cam.utils.image import ChannelsLastCalls

__all__ = ["ISCAM", "path_scales"]


def path_scales(num_samples: int, like: torch.Tensor) -> torch.Tensor:
    """c_i = i(i + 1) / (2N) for i = 1..N (N = ``num_samples``), on ``like``'s device and dtype."""
    steps = torch.arange(1, num_samples + 1, device=like.device, dtype=torch.float64)
    return (steps * (steps + 1) / (2 * num_samples)).to(like.dtype)


class ISCAM(PerturbationCAM):
    """w = softmax_k((1/N) Σ_i y_c(X ⊙ c_i·M_k)), M_k ScoreCAM's mask, c_i = i(i+1)/(2N).

    As in ScoreCAM, each distinct mask is scored once (channels with equal maps, and
    the all-zero masks of constant channels, share their scores): ``num_samples`` x
    (distinct masks) forwards per image, in chunks of at most ``batch_size`` (fewer
    where ScoreCAM's :data:`~pytorch_grad_cam.score_cam.MASKED_BATCH_BYTES` is reached),
    so memory is bounded as ScoreCAM's.

    Args (besides those of :class:`~pytorch_grad_cam.perturbation_cam.PerturbationCAM`):
        num_samples: N, the steps along the path (default :attr:`num_samples`, torchcam's).

    Raises:
        ValueError: if ``num_samples`` or ``batch_size`` is not a positive integer.
    """

    #: N when the constructor is not given ``num_samples``.
    num_samples: int = 10
    #: The masked images go to the model in ``channels_last`` on the CPU, as ScoreCAM's.
    channels_last: bool = True

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

    def get_cam_weights(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: List[Target],
        activations: torch.Tensor,
        grads: torch.Tensor,
    ) -> torch.Tensor:
        batch = activations.shape[0]
        size = tuple(input_tensor.shape[2:])
        steps = self.num_samples
        plans = [distinct_masks(activations[index], size) for index in range(batch)]
        total = sum(len(kept) * steps + int(has_zero) for kept, _, has_zero in plans)
        chunk = masked_chunk_size(self.batch_size, input_tensor)
        run_model = ChannelsLastCalls(self.channels_last)
        scales = path_scales(steps, input_tensor)
        weights = []
        with self.progress_bar(total, "IS-CAM") as bar:
            for index, (kept, group, has_zero) in enumerate(plans):
                image = input_tensor[index : index + 1]
                scored = len(kept) * steps  # entry q: mask q // N at step q % N; then the zero mask

                def run_chunk(
                    start: int,
                    stop: int,
                    index: int = index,
                    image: torch.Tensor = image,
                    kept: torch.Tensor = kept,
                    scored: int = scored,
                ) -> object:
                    parts = []
                    if start < scored:
                        entries = torch.arange(start, min(stop, scored), device=image.device)
                        first, last = start // steps, (min(stop, scored) - 1) // steps + 1
                        masks = normalised_masks(activations[index, kept[first:last]], size).to(image.dtype)
                        parts.append(
                            masks[entries // steps - first] * scales[entries % steps].view(-1, *[1] * len(size))
                        )
                    if stop > scored:  # the all-zero mask: every step scores the zero image
                        parts.append(image.new_zeros((1, *size)))
                    masks = torch.cat(parts) if len(parts) > 1 else parts[0]
                    return run_model(self.model, image * masks.unsqueeze(1))

                scores = self.batched_scores(scored + int(has_zero), run_chunk, targets[index], bar, chunk)
                per_mask = scores[:scored].reshape(len(kept), steps).mean(dim=1)
                weights.append(torch.softmax(torch.cat([per_mask, scores[scored:]])[group], dim=0))
        return torch.stack(weights)
