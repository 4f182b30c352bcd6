"""Seedable Gaussian noise for the methods that average over noisy copies
(SmoothGradCAM++, SS-CAM, :class:`~pytorch_grad_cam.noise_smoothing.NoiseSmooth`).

Where the draws come from (``seed``):

- an ``int`` (the default, 0): each image of a call draws from a fresh CPU generator
  seeded with it, so an image's map is the same at every call, alone or in any batch,
  on any device;
- ``None``: torch's global generator of the input's device, in the order the method
  documents, so ``torch.manual_seed(s)`` before a call fixes the draws, and another
  library drawing from that generator in the same order and shapes draws the same
  numbers;
- a ``torch.Generator``: used as it is (advanced by each call), in the documented order.

Each noise tensor is drawn on its own, one per noisy copy, so the draws do not depend
on ``batch_size``.
"""

from __future__ import annotations

from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from pytorch_grad_cam.recording import Record
from pytorch_grad_cam.scoring import Target, perturbed

__all__ = ["Seed", "noise_generator", "image_generators", "gaussian", "check_samples", "check_std", "noisy_records"]

#: What a ``seed`` argument accepts (see the module's docstring).
Seed = Union[None, int, torch.Generator]


def noise_generator(seed: Seed) -> Optional[torch.Generator]:
    """A generator for ``seed``: None (the global one), a new CPU generator seeded with
    an ``int``, or the given generator.

    Raises:
        TypeError: if ``seed`` is none of these.
    """
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return torch.Generator().manual_seed(int(seed))
    raise TypeError(f"seed must be None, an int or a torch.Generator, got {type(seed).__name__}")


def image_generators(seed: Seed, count: int) -> List[Optional[torch.Generator]]:
    """The generator each of ``count`` images draws from: its own, seeded with an
    ``int`` seed; otherwise one shared (None: the global one).

    Raises:
        TypeError: if ``seed`` is not None, an int or a torch.Generator.
    """
    if seed is None or isinstance(seed, torch.Generator):
        return [seed] * count
    return [noise_generator(seed) for _ in range(count)]


def gaussian(
    shape: Sequence[int], std: float, generator: Optional[torch.Generator], like: torch.Tensor
) -> torch.Tensor:
    """``std`` x N(0, 1) noise of ``shape``, drawn from ``generator`` (on its device; None:
    the global generator of ``like``'s device) in float32 (float64 for a float64 ``like``,
    so a half-precision model gets the float32 draws, rounded); returns it on ``like``'s
    device and dtype."""
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    if generator is None:
        noise = torch.randn(tuple(shape), device=like.device, dtype=dtype)
    else:
        noise = torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=dtype)
    return (noise * std).to(like.device, like.dtype)


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
    the image's shape, drawn in the order of q from image b's generator
    (:func:`image_generators`): with an int seed, the s-th draw of b's own generator.
    The copies are scored as perturbed ones (:func:`~pytorch_grad_cam.scoring.perturbed`).

    Yields:
        (images, record): which image (B-indexed, (n,)) each of the n copies of this
        pass is, and ``record(noisy_copies, their_targets)``.
    """
    count = input_tensor.shape[0]
    generators = image_generators(seed, count)
    total = num_samples * count
    for start in range(0, total, batch_size):
        images = torch.arange(start, min(start + batch_size, total), device=input_tensor.device) % count
        shape = input_tensor.shape[1:]
        noise = torch.stack([gaussian(shape, std, generators[b], input_tensor) for b in images.tolist()])
        chosen = None if targets is None else [targets[i] for i in images.tolist()]
        with perturbed():  # a detected box that vanishes from a noisy copy scores 0 there
            copies = record(input_tensor[images] + noise, chosen)
        yield images, copies
