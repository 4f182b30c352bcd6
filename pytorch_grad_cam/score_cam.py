"""ScoreCAM (Wang et al., 2020): each activation map, upsampled and normalised, masks
the input; the softmax of the masked inputs' target scores weights the channels.

The masks, their chunks and the scoring loop are
:class:`~pytorch_grad_cam.perturbation_cam.PerturbationCAM`'s; this file states the recipe.
"""

import torch

from pytorch_grad_cam.perturbation_cam import (
    MASKED_BATCH_BYTES,
    CopyRecipe,
    PerturbationCAM,
    distinct_masks,
    masked_chunk_size,
    normalised_masks,
)

__all__ = ["ScoreCAM", "MASKED_BATCH_BYTES", "distinct_masks", "masked_chunk_size", "normalised_masks"]


class ScoreCAM(PerturbationCAM):
    """M_k = min-max(upsample(A_k)); s_k = target(model(input·M_k)); w = softmax_k(s).

    Each distinct mask is scored once: channels with equal activation maps, and the
    constant channels (whose masks are all zero), share one score, exactly as if each
    were scored; a batch that holds one image several times (one per target:
    ``explain_targets``) masks it once and scores each target on the same copies. Masks
    are built per chunk of at most ``batch_size`` channels (fewer where the masked
    images would exceed :data:`~pytorch_grad_cam.perturbation_cam.MASKED_BATCH_BYTES`),
    so memory is one forward pass of that chunk plus the activations, never all K
    masked inputs. On the CPU the masked images go to the model in ``channels_last``
    memory format (see :attr:`channels_last`).
    """

    title = "ScoreCAM"

    def copy_recipe(self, input_tensor: torch.Tensor) -> CopyRecipe:
        """input·M_k, one copy a mask."""
        return lambda row, masks, draws: input_tensor[row : row + 1] * masks.unsqueeze(1)
