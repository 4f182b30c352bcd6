"""Seedable Gaussian noise for the methods that average over noisy copies
(SmoothGradCAM++, SS-CAM, :class:`~pytorch_grad_cam.noise_smoothing.NoiseSmooth`).

Where the draws come from (``seed``):

- ``None``: torch's global generator of the input's device, so ``torch.manual_seed(s)``
  before a call fixes the draws, and another library drawing from the same generator in
  the same order and shapes draws the same numbers;
- an ``int``: a fresh CPU generator seeded with it at every call (every call draws the
  same numbers, on any device);
- a ``torch.Generator``: used as it is, and advanced by each call.

Each noise tensor is drawn on its own, one per noisy copy and in the order the method
documents, so the draws do not depend on ``batch_size``.
"""

from __future__ import annotations

from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from pytorch_grad_cam.recording import Record
from pytorch_grad_cam.scoring import Target

__all__ = ["Seed", "noise_generator", "gaussian", "check_samples", "check_std", "noisy_records"]

#: What a ``seed`` argument accepts (see the module's docstring).
Seed = Union[None, int, torch.Generator]


def noise_generator(seed: Seed) -> Optional[torch.Generator]:
    """The generator one call draws from: None (the global one), a new CPU generator
    seeded with an ``int``, or the given generator.

    Raises:
        TypeError: if ``seed`` is none of these.
    """
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return torch.Generator().manual_seed(int(seed))
    raise TypeError(f"seed must be None, an int or a torch.Generator, got {type(seed).__name__}")


def gaussian(
    shape: Sequence[int], std: float, generator: Optional[torch.Generator], like: torch.Tensor
) -> torch.Tensor:
    """``std`` x N(0, 1) noise of ``shape``, drawn from ``generator`` (on its device; None:
    the global generator of ``like``'s device); returns it on ``like``'s device and dtype."""
    if generator is None:
        return torch.randn(tuple(shape), device=like.device, dtype=like.dtype) * std
    noise = torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=like.dtype)
    return noise.to(like.device) * std


def check_samples(value: object, name: str = "num_samples") -> int:
    """``value`` as an int.

    Raises:
        ValueError: if it is not a positive integer.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_std(value: object, name: str = "std") -> float:
    """``value`` as a float.

    Raises:
        ValueError: if it is not a finite number >= 0.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def noisy_records(
    record: Callable[[torch.Tensor, List[Target]], Record],
    input_tensor: torch.Tensor,
    targets: Optional[List[Target]],
    num_samples: int,
    std: float,
    seed: Seed,
    batch_size: int,
) -> Iterator[Tuple[torch.Tensor, Record]]:
    """The records of ``num_samples`` noisy copies of each image, ``batch_size`` copies
    per pass.

    Copy q = s x B + b (sample s, image b of B) is image b plus ``std`` x N(0, 1) noise of
    the image's shape; the copies' noise is drawn in the order of q.

    Yields:
        (images, record): which image (B-indexed, (n,)) each of the n copies of this
        pass is, and ``record(noisy_copies, their_targets)``.
    """
    generator = noise_generator(seed)
    count = input_tensor.shape[0]
    total = num_samples * count
    for start in range(0, total, batch_size):
        images = torch.arange(start, min(start + batch_size, total), device=input_tensor.device) % count
        noise = torch.stack([gaussian(input_tensor.shape[1:], std, generator, input_tensor) for _ in images])
        chosen = None if targets is None else [targets[i] for i in images.tolist()]
        yield images, record(input_tensor[images] + noise, chosen)
