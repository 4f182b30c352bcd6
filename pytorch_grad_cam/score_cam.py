"""ScoreCAM (Wang et al., 2020): each activation map, upsampled and normalised, masks
the input; the softmax of the masked inputs' target scores weights the channels."""
from typing import List

import torch
from torch import nn

from pytorch_grad_cam.base_cam import PerturbationCAM, Target
from pytorch_grad_cam.utils.image import resize_maps


class ScoreCAM(PerturbationCAM):
    """M_k = min-max(upsample(A_k)); s_k = target(model(input·M_k)); w = softmax_k(s).

    Masks are built per chunk of ``batch_size`` channels, so memory is one forward
    pass at ``batch_size`` plus the activations, never all K masked inputs.
    """

    def get_cam_weights(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: List[Target],
        activations: torch.Tensor,
        grads: torch.Tensor,
    ) -> torch.Tensor:
        batch, channels = activations.shape[:2]
        size = input_tensor.shape[2:]
        weights = []
        with self.progress_bar(batch * channels, "ScoreCAM") as bar:
            for index in range(batch):
                image = input_tensor[index : index + 1]

                def run_chunk(start: int, stop: int, index: int = index, image: torch.Tensor = image):
                    upsampled = resize_maps(activations[index, start:stop], size, align_corners=True)
                    flat = upsampled.flatten(1)
                    low = flat.min(dim=1).values
                    high = flat.max(dim=1).values
                    shape = (-1,) + (1,) * (upsampled.ndim - 1)
                    masks = (upsampled - low.view(shape)) / (high - low + 1e-8).view(shape)
                    return self.model(image * masks.unsqueeze(1).to(image.dtype))

                scores = self.batched_scores(channels, run_chunk, targets[index], bar)
                weights.append(torch.softmax(scores, dim=0))
        return torch.stack(weights)
