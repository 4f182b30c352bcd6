"""PerturbationCAM: the base of the gradient-free methods that score K perturbed
copies of each image (ScoreCAM, AblationCAM): the copies run in chunks of
``batch_size`` under ``no_grad`` with a progress bar, and their scores stay on the device.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.activations_and_gradients import ReshapeTransform
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.layers import LayerSpec
from pytorch_grad_cam.precision import callers_precision
from pytorch_grad_cam.recording import Record
from pytorch_grad_cam.scoring import Target, perturbed, score

__all__ = ["PerturbationCAM", "same_rows"]


class PerturbationCAM(BaseCAM):
    """A gradient-free method that scores perturbed copies of each image.

    Args (besides those of :class:`BaseCAM`):
        batch_size: copies per extra forward pass (also settable as ``cam.batch_size``).
        progress: show a tqdm progress bar over the extra forward passes.

    Raises:
        ValueError: if ``batch_size`` is not a positive integer.
    """

    uses_gradients = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: Union[LayerSpec, Sequence[LayerSpec], None] = None,
        reshape_transform: Optional[ReshapeTransform] = None,
        *,
        target_layer: Optional[LayerSpec] = None,
        use_cuda: bool = False,
        batch_size: int = 32,
        progress: bool = True,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, target_layer=target_layer, use_cuda=use_cuda)
        self.batch_size = batch_size
        self.progress = progress

    @property
    def batch_size(self) -> int:
        """How many perturbed copies go through the network at once."""
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"batch_size must be a positive integer, got {value!r}")
        self._batch_size = int(value)

    def compute_cam_per_layer(self, record: Record, eigen_smooth: bool) -> List[torch.Tensor]:
        """The template's maps per layer, with the perturbed copies run as the caller runs
        the model: under the caller's ``torch.autocast``, if any (the template computes
        maps with autocast off; see :mod:`pytorch_grad_cam.precision`). The scores are
        float32 either way, and the projections switch autocast off for themselves."""
        with callers_precision():
            return super().compute_cam_per_layer(record, eigen_smooth)

    def progress_bar(self, total: int, description: str) -> object:
        """A tqdm bar over ``total`` perturbed copies (disabled when ``progress`` is off)."""
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=description, unit="copy", disable=not self.progress, leave=False)

    def batched_scores(
        self,
        count: int,
        run_chunk: Callable[[int, int], object],
        target: Union[Target, Sequence[Target]],
        bar: object,
        chunk: Optional[int] = None,
    ) -> torch.Tensor:
        """Scores (count,) of ``target`` on ``run_chunk(start, stop)``'s outputs, computed
        ``chunk`` (default ``batch_size``) copies at a time under ``no_grad`` and
        :func:`~pytorch_grad_cam.scoring.perturbed`; they stay on the device. A list of
        T targets (of the same image) scores every output once per target: (T, count)."""
        several = isinstance(target, (list, tuple))
        targets = list(target) if several else [target]
        chunk = chunk or self.batch_size
        chunks = []
        with torch.no_grad(), perturbed():
            for start in range(0, count, chunk):
                stop = min(start + chunk, count)
                outputs = run_chunk(start, stop)
                chunks.append(torch.stack([score([each] * (stop - start), outputs) for each in targets]))
                bar.update(stop - start)
        scores = torch.cat(chunks, dim=1)
        return scores if several else scores[0]


def same_rows(*tensors: torch.Tensor) -> List[List[int]]:
    """The rows of a batch grouped by equality (every tensor's row bit for bit equal):
    an image repeated once per target (``explain_targets``) is perturbed once, and its
    targets score the same copies."""
    groups: List[List[int]] = []
    for row in range(tensors[0].shape[0]):
        for group in groups:
            if all(torch.equal(tensor[group[0]], tensor[row]) for tensor in tensors):
                group.append(row)
                break
        else:
            groups.append([row])
    return groups
