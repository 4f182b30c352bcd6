"""``--metrics``: how faithful the explained map is, by the metrics of
:mod:`pytorch_grad_cam.metrics`, for the one photo and class that the command line explains.

Every metric scores the softmax probability of the explained class
(``ClassifierOutputSoftmaxTarget(category)``) on the model's input and the map at the
input's size, exactly as a direct call would. ROAD adds Gaussian noise to the pixels it
imputes: each metric runs right after ``torch.manual_seed(SEED)`` (inside
``torch.random.fork_rng``, so the caller's random state is left as it was), which makes
the same command print the same numbers.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, List, Sequence

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.metrics import (
    CamMultImageConfidenceChange,
    DeletionMetric,
    DropInConfidence,
    IncreaseInConfidence,
    InsertionMetric,
    ROADCombined,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

#: The seed of torch's generator before each metric (ROAD's imputation noise).
SEED = 0
#: ``--metrics all``.
ALL = "all"

#: A metric as the command line runs it: ``(input_tensor, cams, targets, model) -> (B,)``.
MetricCall = Callable[[torch.Tensor, np.ndarray, list, nn.Module], np.ndarray]


@dataclass(frozen=True)
class Metric:
    """One ``--metrics`` name.

    Attributes:
        build: ``batch_size -> metric call`` (images per forward pass).
        higher_is_better: which way a more faithful map moves the number.
        meaning: what the number is, in a few words (printed after it).
    """

    build: Callable[[int], MetricCall]
    higher_is_better: bool
    meaning: str


def _per_call_batch(metric_class: type) -> Callable[[int], MetricCall]:
    """For the metrics that take ``batch_size`` when called (ROAD and the cam-multiplied image ones)."""
    return lambda batch_size: partial(metric_class(), batch_size=batch_size)


#: The names ``--metrics`` takes, in the order they are printed.
METRICS: Dict[str, Metric] = {
    "road": Metric(
        _per_call_batch(ROADCombined),
        True,
        "ROADCombined: (score with the least relevant pixels imputed - with the most relevant "
        "imputed) / 2, averaged over 10-90 % of the pixels",
    ),
    "deletion": Metric(
        lambda batch_size: DeletionMetric(batch_size=batch_size),
        False,
        "DeletionMetric: area under the score as the most relevant pixels are removed first",
    ),
    "insertion": Metric(
        lambda batch_size: InsertionMetric(batch_size=batch_size),
        True,
        "InsertionMetric: area under the score as the most relevant pixels are put back into a blurred copy first",
    ),
    "drop-in-confidence": Metric(
        _per_call_batch(DropInConfidence),
        False,
        "DropInConfidence: how much the score falls when the photo is multiplied by the map",
    ),
    "increase-in-confidence": Metric(
        _per_call_batch(IncreaseInConfidence),
        True,
        "IncreaseInConfidence: 1 if the score rises when the photo is multiplied by the map, else 0",
    ),
    "confidence-change": Metric(
        _per_call_batch(CamMultImageConfidenceChange),
        True,
        "CamMultImageConfidenceChange: score of the photo times the map minus score of the photo",
    ),
}


def parse_metric_names(text: str) -> List[str]:
    """``--metrics``: comma-separated names (``_`` for ``-`` is fine) or ``all``, in the
    order given, each once.

    Raises:
        argparse.ArgumentTypeError: for an unknown name (listing the known ones) or none.
    """
    names: List[str] = []
    for name in (part.strip().lower().replace("_", "-") for part in text.split(",")):
        if not name:
            continue
        if name == ALL:
            names.extend(METRICS)
        elif name in METRICS:
            names.append(name)
        else:
            raise argparse.ArgumentTypeError(
                f"{name!r} is not a metric; the metrics are {', '.join(METRICS)}, or {ALL}"
            )
    if not names:
        raise argparse.ArgumentTypeError(f"names no metric; the metrics are {', '.join(METRICS)}, or {ALL}")
    return list(dict.fromkeys(names))


def compute_metrics(
    names: Sequence[str],
    model: nn.Module,
    input_tensor: torch.Tensor,
    grayscale: np.ndarray,
    category: int,
    batch_size: int = 32,
) -> Dict[str, float]:
    """Each named metric of the map ``grayscale`` (h, w), at the size of the one-image
    ``input_tensor``, for the softmax probability of ``category``, each after ``torch.manual_seed(SEED)``.

    Raises:
        ValueError/TypeError: the metrics' own argument errors.
    """
    targets = [ClassifierOutputSoftmaxTarget(category)]
    cams = grayscale[None]
    device = input_tensor.device
    cuda_devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    values = {}
    for name in names:
        metric = METRICS[name].build(batch_size)
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(SEED)
            values[name] = float(np.asarray(metric(input_tensor, cams, targets, model)).reshape(-1)[0])
    return values


def metric_lines(values: Dict[str, float]) -> List[str]:
    """One line per metric: ``name: value (higher|lower is better; what it is)``."""
    return [
        f"  {name}: {value:.6f} ({'higher' if METRICS[name].higher_is_better else 'lower'} is better; "
        f"{METRICS[name].meaning})"
        for name, value in values.items()
    ]
