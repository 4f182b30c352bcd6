"""Targets: callables that map ONE image's model output to the scalar whose
explanation is wanted. A list of them, one per image, is the ``targets`` argument."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from pytorch_grad_cam.utils.clip_models import Text, text_embeddings


def _check_class(category: int, model_output: torch.Tensor) -> None:
    classes = model_output.shape[-1]
    if not -classes <= category < classes:
        raise IndexError(
            f"class index {category} is outside the model output of {classes} classes; "
            f"pass a category in [0, {classes - 1}]"
        )


class ClassifierOutputTarget:
    """The raw score (logit) of class ``category``."""

    def __init__(self, category: int) -> None:
        self.category = int(category)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        _check_class(self.category, model_output)
        return model_output[..., self.category]

    def __repr__(self) -> str:
        return f"ClassifierOutputTarget({self.category})"


class ClassifierOutputSoftmaxTarget:
    """The softmax probability of class ``category``."""

    def __init__(self, category: int) -> None:
        self.category = int(category)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        _check_class(self.category, model_output)
        return torch.softmax(model_output, dim=-1)[..., self.category]

    def __repr__(self) -> str:
        return f"ClassifierOutputSoftmaxTarget({self.category})"


class BinaryClassifierOutputTarget:
    """For a model with one output logit: the logit for ``category`` 1, minus it for 0."""

    def __init__(self, category: int) -> None:
        if category not in (0, 1):
            raise ValueError(f"a binary classifier's category is 0 or 1, not {category}")
        self.category = int(category)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        sign = 1.0 if self.category == 1 else -1.0
        return model_output.reshape(-1)[0] * sign

    def __repr__(self) -> str:
        return f"BinaryClassifierOutputTarget({self.category})"


class ClassifierOutputReST:
    """The ReST score of class ``category``: z_c minus the cross-entropy of z for c,
    that is 2·z_c − logsumexp(z) for one image's logits z.

    For a 2-D output (N, classes) every row is scored on its own: (N,) scores
    2·z[n, c] − logsumexp(z[n]). (The reference subtracts the cross-entropy averaged
    over the N rows, which couples the rows; we keep them independent.)
    """

    def __init__(self, category: int) -> None:
        self.category = int(category)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        _check_class(self.category, model_output)
        return 2 * model_output[..., self.category] - torch.logsumexp(model_output, dim=-1)

    def __repr__(self) -> str:
        return f"ClassifierOutputReST({self.category})"


class SoftmaxOutputTarget:
    """The softmax over the last axis, as a vector (for the metrics, whose scores are
    then (B, classes); a gradient method needs a scalar target instead)."""

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model_output, dim=-1)

    def __repr__(self) -> str:
        return "SoftmaxOutputTarget()"


class RawScoresOutputTarget:
    """The output unchanged: a model with one score, or the raw score vector for the
    metrics (a gradient method needs a scalar, so one score per image)."""

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return model_output

    def __repr__(self) -> str:
        return "RawScoresOutputTarget()"


class SemanticSegmentationTarget:
    """Segmentation: the sum of class ``category``'s scores (C, H, W) inside ``mask`` (H, W)."""

    def __init__(self, category: int, mask: Union[np.ndarray, torch.Tensor]) -> None:
        self.category = int(category)
        self.mask = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        if model_output.ndim != 3:
            raise ValueError(
                "SemanticSegmentationTarget expects one image's (classes, H, W) output, "
                f"got shape {tuple(model_output.shape)}"
            )
        _check_class(self.category, model_output.movedim(0, -1))
        mask = self.mask.to(device=model_output.device, dtype=model_output.dtype)
        if mask.shape != model_output.shape[1:]:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not match the output's "
                f"{tuple(model_output.shape[1:])}; pass an (H, W) mask of the output size"
            )
        return (model_output[self.category] * mask).sum()


class SimilarityToConceptTarget:
    """Embedding models: the cosine similarity between the output and a concept vector."""

    def __init__(self, concept_features: Union[torch.Tensor, Sequence[float]]) -> None:
        self.concept_features = torch.as_tensor(concept_features)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        concept = self.concept_features.to(device=model_output.device, dtype=model_output.dtype)
        return torch.nn.functional.cosine_similarity(model_output.reshape(-1), concept.reshape(-1), dim=0)


class ImageTextSimilarityTarget:
    """Image–text models (CLIP, SigLIP): the cosine similarity between one image's
    embedding and a text's, for a model returning image embeddings, such as
    ``pytorch_grad_cam.vision_language.ImageEncoder(clip)``.

    The score is the plain cosine: CLIP's logit scale, and SigLIP's bias and sigmoid,
    are not applied. For one image the logit (scale·cos + bias) is an increasing affine
    function of the cosine, so a gradient map differs only by a positive factor, which
    the per-image normalisation removes; SigLIP's sigmoid would in addition flatten the
    gradient of every confident (or clearly mismatched) pair towards zero, and so the
    maps towards noise. The cosine is also comparable across prompts and models.

    Args:
        text: a text embedding (D,) from the same model; or a string, token ids
            ((L,) integer tensor) or a tokenizer's output, encoded once here by
            ``model``'s text tower. Several texts (a list of strings, (P, D) embeddings,
            (P, L) ids) are one concept's templates ("a photo of a cat", "a drawing of
            a cat"): their unit embeddings are averaged, as CLIP's prompt ensembles, and
            the mean is the text.
        model: for strings and ids: the open_clip / HuggingFace CLIP or SigLIP model, or
            its ``ImageEncoder`` (whose tokenizer is used when ``tokenizer`` is None).
        tokenizer: for strings: the model's own tokenizer.

    Called on one image's embedding (D,) it returns the scalar cosine; on (N, D) rows
    the N cosines.

    Raises:
        ValueError: at construction, for a string without a tokenizer, a string or ids
            without a model, or an embedding that is not (D,) or (P, D); when called, for
            an image embedding whose size is not the text's (both sizes named).
    """

    def __init__(self, text: Text, model: Optional[torch.nn.Module] = None, tokenizer: Any = None) -> None:
        self.text = text if isinstance(text, str) else None
        embeddings = text_embeddings(model, text, tokenizer)
        self.text_embedding = torch.nn.functional.normalize(embeddings.mean(dim=0), dim=0)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        size = self.text_embedding.shape[0]
        if model_output.shape[-1] != size:
            raise ValueError(
                f"the image embedding has {model_output.shape[-1]} numbers (shape {tuple(model_output.shape)}) "
                f"but the text embedding has {size}; encode the text with the same model as the images "
                "(ImageEncoder.encode_text), and explain a model that returns the image embedding "
                "(pytorch_grad_cam.vision_language.ImageEncoder)"
            )
        text = self.text_embedding.to(device=model_output.device, dtype=model_output.dtype)
        return torch.nn.functional.cosine_similarity(model_output, text.expand_as(model_output), dim=-1)

    def __repr__(self) -> str:
        described = repr(self.text) if self.text is not None else f"embedding of {self.text_embedding.shape[0]}"
        return f"ImageTextSimilarityTarget({described})"


class FasterRCNNBoxScoreTarget:
    """Detection: for each reference box, the best-overlapping prediction of the same
    label adds its IoU and its score.

    Args:
        labels: the reference boxes' class labels.
        bounding_boxes: (N, 4) reference boxes, (x1, y1, x2, y2).
        iou_threshold: a prediction matches when its IoU is strictly greater.

    Called on one image's detections (a dict with ``boxes`` (M, 4), ``labels`` (M,),
    ``scores`` (M,)), it returns a (1,) tensor of the predicted boxes' device and
    dtype: Σ over reference boxes whose best-IoU prediction j has IoU_j > threshold
    and ``labels[j] == label`` of IoU_j + scores[j]; 0 without predictions. The same
    prediction may match several reference boxes; gradients flow through both the
    box coordinates and the scores.
    """

    def __init__(
        self,
        labels: Sequence[int],
        bounding_boxes: Union[np.ndarray, torch.Tensor, Sequence[Sequence[float]]],
        iou_threshold: float = 0.5,
    ) -> None:
        self.labels = labels
        self.bounding_boxes = bounding_boxes
        self.iou_threshold = iou_threshold

    def __call__(self, model_outputs: dict) -> torch.Tensor:
        import torchvision

        boxes = model_outputs["boxes"]
        output = torch.zeros(1, device=boxes.device, dtype=boxes.dtype)
        if len(boxes) == 0:
            return output
        for box, label in zip(self.bounding_boxes, self.labels):
            box = torch.as_tensor(np.asarray(box) if not torch.is_tensor(box) else box)
            box = box.to(device=boxes.device, dtype=boxes.dtype).reshape(1, 4)
            ious = torchvision.ops.box_iou(box, boxes)[0]
            index = int(ious.argmax())
            if ious[index] > self.iou_threshold and int(model_outputs["labels"][index]) == int(label):
                output = output + ious[index] + model_outputs["scores"][index]
        return output


class FinerWeightedTarget:
    """FinerCAM's target: the main class's logit against similar classes,
    Σ_j p_j·(z_main − α·z_j) / (Σ_j p_j + 1e-9) over the comparison classes j, with
    p = softmax(z) (not detached: gradients flow through p too). α = 0 gives z_main.

    The output is indexed on its last axis, so an (N, classes) output gives N scores.
    """

    def __init__(self, main_category: int, comparison_categories: Sequence[int], alpha: float) -> None:
        self.main_category = int(main_category)
        self.comparison_categories = [int(c) for c in comparison_categories]
        self.alpha = alpha

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        for category in (self.main_category, *self.comparison_categories):
            _check_class(category, model_output)
        probabilities = torch.softmax(model_output, dim=-1)
        main = model_output[..., self.main_category]
        weighted = torch.zeros_like(main)
        total = torch.zeros_like(main)
        for category in self.comparison_categories:
            p = probabilities[..., category]
            weighted = weighted + p * (main - self.alpha * model_output[..., category])
            total = total + p
        return weighted / (total + 1e-9)

    def __repr__(self) -> str:
        return f"FinerWeightedTarget({self.main_category}, {self.comparison_categories}, alpha={self.alpha})"
