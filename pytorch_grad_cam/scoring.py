"""Targets: which number of the model's output each image's map explains.

A target is a callable from one image's output to a scalar tensor
(``ClassifierOutputTarget(281)``). This module checks the user's targets, builds the
default ones (each image's top class), hands each target its image's part of the
output (tensors, lists and dicts alike), and scores a batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, ContextManager, List, Optional, Sequence, Union

import numpy as np
import torch

from pytorch_grad_cam.utils.model_targets import (
    BinaryClassifierOutputTarget,
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
    ImageTextSimilarityTarget,
    RawScoresOutputTarget,
    SemanticSegmentationTarget,
    SimilarityToConceptTarget,
)
from pytorch_grad_cam.utils.thread_flag import ThreadFlag

__all__ = [
    "Target",
    "ROW_WISE_TARGETS",
    "SELECT_HINT",
    "check_targets",
    "top_class_targets",
    "describe_output",
    "per_image_outputs",
    "score",
    "perturbed",
    "scoring_perturbed",
]

Target = Callable[[torch.Tensor], torch.Tensor]

#: Targets (exact types) whose call on (N, classes) outputs gives the N row scores.
ROW_WISE_TARGETS = (ClassifierOutputTarget, ClassifierOutputSoftmaxTarget, ImageTextSimilarityTarget)

#: The library's targets that index a tensor of scores (a dict output breaks them).
_TENSOR_TARGETS = (
    ClassifierOutputTarget,
    ClassifierOutputSoftmaxTarget,
    BinaryClassifierOutputTarget,
    RawScoresOutputTarget,
    SemanticSegmentationTarget,
    SimilarityToConceptTarget,
    ImageTextSimilarityTarget,
)

SELECT_HINT = (
    "wrap the model so that it returns the tensor of scores: "
    "pytorch_grad_cam.utils.model_wrappers.OutputSelector(model, 'logits') "
    "(or another key, an index, or a function of the output)"
)


def check_targets(
    targets: Optional[Sequence[Target]],
    target_category: Union[int, Sequence[int], None],
    batch: int,
) -> Optional[List[Target]]:
    """The targets of a call: ``targets`` as a list, or the ones ``target_category`` (the
    older spelling: one int for every image, or one per image) stands for.

    Returns:
        One target per image, or None (each image's top class, decided after the forward pass).

    Raises:
        ValueError: if both are given, or their number is not ``batch``.
        TypeError: if ``targets`` is one callable instead of a list, or holds a non-callable.
    """
    if targets is not None and target_category is not None:
        raise ValueError("pass targets=[...] or target_category=..., not both")
    if target_category is not None:
        targets = _category_targets(target_category, batch)
    if targets is None:
        return None
    if callable(targets) and not isinstance(targets, (list, tuple)):
        raise TypeError(
            f"targets must be a list with one target per image, e.g. [ClassifierOutputTarget(281)] * {batch}"
        )
    targets = list(targets)
    if len(targets) != batch:
        raise ValueError(
            f"targets has {len(targets)} entries but the batch has {batch} images; pass one target per image"
        )
    for target in targets:
        if not callable(target):
            raise TypeError(f"target {target!r} is not callable; pass e.g. ClassifierOutputTarget(k)")
    return targets


def _category_targets(target_category: Union[int, Sequence[int]], batch: int) -> List[Target]:
    if isinstance(target_category, (int, np.integer)):
        return [ClassifierOutputTarget(int(target_category))] * batch
    categories = list(target_category)
    if len(categories) != batch:
        raise ValueError(
            f"target_category has {len(categories)} entries but the batch has {batch} images; "
            "pass one category per image (or a single int for all)"
        )
    return [ClassifierOutputTarget(int(category)) for category in categories]


def top_class_targets(outputs: object, copies: int = 1) -> List[Target]:
    """Each image's top class, from a (copies x B, classes) output whose ``copies``
    augmented copies of B images are averaged first; one target per row.

    Raises:
        ValueError: if ``outputs`` is not a 2-D tensor (say how to select one, or pass targets).
    """
    if not torch.is_tensor(outputs):
        raise ValueError(
            f"targets=None explains the top class of a (B, classes) tensor output, but the model "
            f"returns {describe_output(outputs)}; {SELECT_HINT}, or pass targets=[...] of your own "
            "that read this output"
        )
    if outputs.ndim != 2:
        raise ValueError(
            f"targets=None explains the top class of a (B, classes) output; this model returns "
            f"shape {tuple(outputs.shape)}, so pass targets=[...] explicitly"
        )
    mean_scores = outputs.detach().reshape(copies, -1, outputs.shape[-1]).mean(dim=0)
    categories = mean_scores.argmax(dim=-1).tolist()
    return [ClassifierOutputTarget(category) for category in categories] * copies


def describe_output(outputs: object) -> str:
    """``FakeModelOutput with keys ['logits', 'hidden']``, ``tuple of 2``, ``int``..."""
    kind = type(outputs).__name__
    if isinstance(outputs, Mapping):
        return f"{kind} with keys {list(outputs.keys())}"
    if isinstance(outputs, (list, tuple)):
        return f"{kind} of {len(outputs)}"
    return kind


def per_image_outputs(outputs: object, count: int, targets: Sequence[Target]) -> Sequence[object]:
    """The ``count`` per-image outputs handed to the targets.

    A tensor, list or tuple is indexed along its first dimension (a list of per-image
    detections stays one entry per image). A dict (or a dict-like ``ModelOutput``) gives
    image i the plain dict of its values' i-th rows (values that are not batched
    tensors are passed whole), so targets of one's own can read dict outputs.

    Raises:
        TypeError: if a target of this library, which needs a tensor of scores, is given
            a dict or another output that is not a tensor, list or tuple, or the output
            is none of tensor, list, tuple or dict.
        ValueError: if a list/tuple output does not hold one entry per image.
    """
    if torch.is_tensor(outputs):
        return outputs
    if isinstance(outputs, (list, tuple)):
        if len(outputs) != count:
            raise ValueError(
                f"the model returns {describe_output(outputs)}, but the batch has {count} images; "
                f"a list/tuple output must hold one entry per image, else {SELECT_HINT}"
            )
        return outputs
    needs_tensor = next((target for target in targets if isinstance(target, _TENSOR_TARGETS)), None)
    if needs_tensor is not None:
        raise TypeError(
            f"{needs_tensor!r} needs the model output to be a tensor of scores, but the model "
            f"returns {describe_output(outputs)}; {SELECT_HINT}"
        )
    if isinstance(outputs, Mapping):
        return [
            {
                key: value[index] if torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == count else value
                for key, value in outputs.items()
            }
            for index in range(count)
        ]
    raise TypeError(
        f"the model returns {describe_output(outputs)}, which a target cannot take per image; {SELECT_HINT}"
    )


def score(targets: Sequence[Target], outputs: object) -> torch.Tensor:
    """The (N,) scores target_i(outputs[i]), kept on the device, in float32 (float64
    for a float64 output).

    One class-score target shared by every row of (N, classes) outputs scores them in
    one indexing operation (it indexes the last dimension, so that is exactly N calls on
    single rows).

    Raises:
        ValueError: if a target does not return one number.
    """
    shared = targets[0] if targets else None
    if (
        type(shared) in ROW_WISE_TARGETS
        and all(target is shared for target in targets)
        and torch.is_tensor(outputs)
        and outputs.ndim == 2
        and outputs.shape[0] == len(targets)
    ):
        return _promoted(shared(outputs))
    scores = []
    for target, output in zip(targets, per_image_outputs(outputs, len(targets), targets)):
        value = target(output)
        if not torch.is_tensor(value) or value.numel() != 1:
            shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise ValueError(
                f"target {target!r} returned {shape}; a target must map one image's output to a scalar tensor"
            )
        scores.append(value.reshape(()))
    return _promoted(torch.stack(scores))


def _promoted(scores: torch.Tensor) -> torch.Tensor:
    return scores if scores.dtype == torch.float64 else scores.float()


_PERTURBED = ThreadFlag()


def perturbed() -> ContextManager[None]:
    """Targets called inside score perturbed copies of the input (ScoreCAM's masked
    images, AblationCAM's ablated activations) on this thread; see :func:`scoring_perturbed`."""
    return _PERTURBED.on()


def scoring_perturbed() -> bool:
    """Whether the target being called scores a perturbed copy of the input. A target
    whose object may vanish from such a copy (a detected box) then scores it 0, where on
    the real input it would raise an error."""
    return _PERTURBED.is_on()
