"""The model-parameter randomisation test (Adebayo et al. 2018, "Sanity checks for
saliency maps"): a map that explains the model must change when the model's learned
parameters are destroyed.

:func:`sanity_check` re-initialises the parameterised layers of a copy of the model,
cascading from the output towards the input, recomputes the map after each step and
compares it with the original map by Spearman rank correlation and SSIM. A method
that passes shows curves falling towards 0; one that stays high (an edge detector)
does not depend on what the model learned.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pytorch_grad_cam.base_cam import Target

__all__ = ["SanityCheckResult", "sanity_check", "spearman_rank_correlation", "structural_similarity"]


def spearman_rank_correlation(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation of each pair of maps (or vectors).

    Ranks with ties averaged, then Pearson's correlation of the ranks: the same number
    as ``scipy.stats.spearmanr``, except that a constant map (which has no order to
    share) gives 0 where scipy gives NaN.

    Args:
        first: a tensor (B, ...); each item is flattened.
        second: a tensor of the same shape.

    Returns:
        float32 tensor (B,) in [-1, 1], on the inputs' device.

    Raises:
        ValueError: if the shapes differ.
    """
    if first.shape != second.shape:
        raise ValueError(f"the maps differ in shape: {tuple(first.shape)} vs {tuple(second.shape)}")
    ranks_first = _average_ranks(first.reshape(first.shape[0], -1).double())
    ranks_second = _average_ranks(second.reshape(second.shape[0], -1).double())
    ranks_first = ranks_first - ranks_first.mean(dim=1, keepdim=True)
    ranks_second = ranks_second - ranks_second.mean(dim=1, keepdim=True)
    norms = ranks_first.norm(dim=1) * ranks_second.norm(dim=1)
    correlation = (ranks_first * ranks_second).sum(dim=1) / norms.clamp(min=1e-300)
    return torch.where(norms > 0, correlation, 0.0).clamp(-1, 1).float()


def structural_similarity(
    first: torch.Tensor, second: torch.Tensor, window: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """The mean SSIM of each pair of maps with values in [0, 1] (Wang et al. 2004).

    A Gaussian window (``window`` = 11 pixels, ``sigma`` = 1.5), the standard constants
    C1 = 0.01², C2 = 0.03² (data range 1), population (co)variances, the mean over the
    pixels whose window lies inside the map: the same number as
    ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1)``.

    Args:
        first: a tensor (B, H, W), H and W >= ``window``.
        second: a tensor of the same shape.
        window: the window's side, odd.
        sigma: the Gaussian's standard deviation in pixels.

    Returns:
        float32 tensor (B,) (1 for identical maps, near 0 for independent ones).

    Raises:
        ValueError: if the shapes differ, are not (B, H, W), or a side is below ``window``.
    """
    if first.shape != second.shape or first.ndim != 3:
        raise ValueError(f"the maps must both be (B, H, W); got {tuple(first.shape)} and {tuple(second.shape)}")
    if window % 2 != 1 or min(first.shape[1:]) < window:
        raise ValueError(
            f"SSIM needs maps of at least {window}x{window} pixels and an odd window; "
            f"got maps {tuple(first.shape[1:])} and window {window}"
        )
    offsets = torch.arange(window, device=first.device, dtype=torch.float64) - window // 2
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()

    def local_mean(maps: torch.Tensor) -> torch.Tensor:
        rows = F.conv2d(maps[:, None], kernel.reshape(1, 1, -1, 1))
        return F.conv2d(rows, kernel.reshape(1, 1, 1, -1))[:, 0]

    x, y = first.double(), second.double()
    mean_x, mean_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mean_x**2
    var_y = local_mean(y * y) - mean_y**2
    cov = local_mean(x * y) - mean_x * mean_y
    c1, c2 = 0.01**2, 0.03**2
    ssim = ((2 * mean_x * mean_y + c1) * (2 * cov + c2)) / ((mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2))
    return ssim.mean(dim=(1, 2)).float()


@dataclass
class SanityCheckResult:
    """The curves of :func:`sanity_check`; step i has randomised ``layers[: i + 1]``.

    Attributes:
        layers: the names (in ``model.named_modules()``) of the layers randomised, in
            the order they were randomised.
        spearman: numpy float32 (B, steps), each image's map against its original map.
        ssim: numpy float32 (B, steps).
        spearman_mean: numpy float32 (steps,), the mean over the images.
        ssim_mean: numpy float32 (steps,).
        original: numpy float32 (B, H, W), the maps of the intact model.
        maps: numpy float32 (steps, B, H, W), the maps after each step, if
            ``keep_maps=True`` was passed; else None.
    """

    layers: List[str]
    spearman: np.ndarray
    ssim: np.ndarray
    spearman_mean: np.ndarray
    ssim_mean: np.ndarray
    original: np.ndarray
    maps: Optional[np.ndarray] = None


def sanity_check(
    cam_factory: Callable[[nn.Module], Callable[..., np.ndarray]],
    model: nn.Module,
    input_tensor: torch.Tensor,
    targets: Optional[Sequence[Target]] = None,
    *,
    layers: Optional[Sequence[str]] = None,
    seed: int = 0,
    keep_maps: bool = False,
    original: Optional[object] = None,
) -> SanityCheckResult:
    """Cascading model-parameter randomisation: the map after each layer is destroyed.

    The work happens on a deep copy of ``model``; ``model`` itself is left exactly as
    found (parameters, buffers, modes), and so is torch's global random state (the
    randomisation runs in a forked generator seeded with ``seed``).

    The copy carries the model's own hooks, if it has any (deepcopy copies them).

    ``cam_factory`` is called with the **copy**, first intact and then after each
    step, and must build the CAM on the model it is given, taking the target layers
    from it: ``lambda m: GradCAM(m, [m.layer4[-1]])``, not ``[model.layer4[-1]]`` (a
    layer of the original is not inside the copy, and BaseCAM says so).

    Each parameterised layer (a module holding parameters of its own) is re-initialised
    with its ``reset_parameters()`` where it has one (BatchNorm also resets its running
    statistics); otherwise each of its parameters is drawn from a normal distribution
    with the parameter's own mean and standard deviation (1 where it has none).

    Args:
        cam_factory: a function of a model returning a CAM object, called as
            ``cam(input_tensor, targets=targets)`` and returning (B, H, W) maps in [0, 1].
        model: the network.
        input_tensor: (B, C, H, W) images.
        targets: one target per image, as for the CAM; None lets the CAM choose (its top
            class, which then changes as the model is randomised: pass fixed targets to
            explain the same class throughout, as the paper does).
        layers: the dotted names of the layers to randomise, in that order; by default
            every parameterised layer, from the output towards the input (the reverse
            of ``model.named_modules()`` order).
        seed: the seed of the randomisation (and of any randomness in the CAM).
        keep_maps: keep the map of every step in the result.
        original: the maps (B, H, W) of the intact model for these images and targets, if
            they are already computed (numpy or torch): they are used instead of
            computing them again. None computes them.

    Returns:
        A :class:`SanityCheckResult`: the layer names and the Spearman and SSIM curves,
        per image and averaged.

    Raises:
        ValueError: if a name in ``layers`` is not a parameterised layer of the model,
            the model has no parameterised layer, the factory builds its CAM on a model
            other than the one it was given, or ``original`` is not (B, H, W) of the maps' size.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    working = copy.deepcopy(model)
    modules = dict(working.named_modules())
    layers = _layers_to_randomise(modules, layers)
    devices = sorted({p.device.index for p in working.parameters() if p.device.type == "cuda"} - {None})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if original is None:
            original = _maps_of(cam_factory, working, input_tensor, targets)
        else:
            original = _given_maps(original, input_tensor)
        scores, kept = [], []  # per step: (Spearman, SSIM) and, if kept, the maps
        for name in layers:
            _randomise(modules[name])
            maps = _maps_of(cam_factory, working, input_tensor, targets)
            scores.append(_compare_with_original(original, maps))
            if keep_maps:
                kept.append(maps)
    return _result(layers, original, scores, kept if keep_maps else None)


def _layers_to_randomise(modules: Dict[str, nn.Module], layers: Optional[Sequence[str]]) -> List[str]:
    """The names of the layers to randomise, in order: ``layers`` checked against the
    parameterised layers of ``modules`` (a model's ``named_modules()``), or by default
    all of them from the output towards the input. Raises ValueError on an unknown name
    or a model without parameterised layers."""
    parameterised = [name for name, module in modules.items() if _own_parameters(module)]
    if layers is None:
        layers = parameterised[::-1]
    else:
        layers = list(layers)
        unknown = [name for name in layers if name not in parameterised]
        if unknown:
            raise ValueError(f"layers {unknown} are not parameterised layers of the model; choose from {parameterised}")
    if not layers:
        raise ValueError("the model has no layer with parameters to randomise")
    return layers


def _given_maps(original: object, input_tensor: torch.Tensor) -> torch.Tensor:
    """The caller's maps of the intact model as float32 on the input's device; raises
    ValueError unless they are (B, H, W) for the B images of ``input_tensor``."""
    if not torch.is_tensor(original):
        original = torch.as_tensor(np.asarray(original, dtype=np.float32))
    original = original.float().to(input_tensor.device)
    if original.ndim != 3 or original.shape[0] != input_tensor.shape[0]:
        raise ValueError(
            f"original must be the (B, H, W) maps of the {input_tensor.shape[0]} images, "
            f"got shape {tuple(original.shape)}"
        )
    return original


def _compare_with_original(original: torch.Tensor, maps: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each image's (Spearman, SSIM) of ``maps`` against ``original``, two (B,) tensors;
    raises ValueError if the shapes differ."""
    if maps.shape != original.shape:
        raise ValueError(
            f"original has shape {tuple(original.shape)} but the method's maps are "
            f"{tuple(maps.shape)}; pass the maps of the intact model for the same images"
        )
    return spearman_rank_correlation(original, maps), structural_similarity(original, maps)


def _result(
    layers: List[str],
    original: torch.Tensor,
    scores: List[Tuple[torch.Tensor, torch.Tensor]],
    kept: Optional[List[torch.Tensor]],
) -> SanityCheckResult:
    """The :class:`SanityCheckResult` of the steps' (Spearman, SSIM) ``scores``, as numpy."""
    spearman_curves = torch.stack([spearman for spearman, _ in scores], dim=1).cpu().numpy()
    ssim_curves = torch.stack([ssim for _, ssim in scores], dim=1).cpu().numpy()
    return SanityCheckResult(
        layers=list(layers),
        spearman=spearman_curves,
        ssim=ssim_curves,
        spearman_mean=spearman_curves.mean(axis=0),
        ssim_mean=ssim_curves.mean(axis=0),
        original=original.cpu().numpy(),
        maps=torch.stack(kept).cpu().numpy() if kept is not None else None,
    )


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n along dim 1, tied values sharing the mean of their ranks."""
    ordered, order = values.sort(dim=1, stable=True)
    count = values.shape[1]
    positions = torch.arange(count, device=values.device).expand_as(order)
    starts_group = torch.ones_like(ordered, dtype=torch.bool)
    starts_group[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends_group = torch.ones_like(ordered, dtype=torch.bool)
    ends_group[:, :-1] = ordered[:, :-1] != ordered[:, 1:]
    # Each position's group runs from the last group start at or before it to the
    # first group end at or after it.
    first = torch.where(starts_group, positions, 0).cummax(dim=1).values
    last = torch.where(ends_group, positions, count - 1).flip(1).cummin(dim=1).values.flip(1)
    mean_ranks = (first + last).to(values.dtype) / 2 + 1
    return torch.empty_like(mean_ranks).scatter_(1, order, mean_ranks)


def _own_parameters(module: nn.Module) -> List[nn.Parameter]:
    return list(module.parameters(recurse=False))


def _randomise(module: nn.Module) -> None:
    """Re-initialise ``module``'s own parameters in place (from torch's global generator)."""
    with torch.no_grad():
        if callable(getattr(module, "reset_parameters", None)):
            module.reset_parameters()
            return
        for parameter in _own_parameters(module):
            if parameter.numel() > 1:
                mean, std = parameter.mean().item(), parameter.std().item()
            else:
                mean, std = 0.0, 1.0
            if not math.isfinite(std) or std == 0:
                std = 1.0
            parameter.normal_(mean, std)


def _maps_of(
    cam_factory: Callable[[nn.Module], Callable[..., np.ndarray]],
    model: nn.Module,
    input_tensor: torch.Tensor,
    targets: Optional[Sequence[Target]],
) -> torch.Tensor:
    cam = cam_factory(model)
    built_on = getattr(cam, "model", model)
    if built_on is not model:
        raise ValueError(
            "cam_factory built its CAM on another model than the one it was given; write it "
            "as a function of that model, e.g. lambda m: GradCAM(m, [m.layer4[-1]])"
        )
    try:
        maps = cam(input_tensor, targets=targets)
    finally:
        release = getattr(cam, "release", None)
        if callable(release):
            release()
    maps = torch.as_tensor(np.asarray(maps, dtype=np.float32)) if not torch.is_tensor(maps) else maps.float()
    return maps.to(input_tensor.device)
