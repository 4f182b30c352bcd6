"""The transformer-native methods' table: LeGrad, attention rollout and gradient-weighted
rollout on timm's ViT-B/16 (random weights, seed 0, 224 x 224, fused attention on as
timm builds it) against one bare forward + backward of the same model: model(x), the
chosen logit of each image summed, .backward() through the whole network (parameter
gradients included), as the gradient tables' reference.

LeGrad takes per block the gradient of that block's score with respect to its attention
(explicit attention for the call, every block's gradient running back from the block's
output only); the issue's target is LeGrad <= 1.3x the bare forward + backward.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import torch
from bench_harness import Row, Table

from pytorch_grad_cam.registry import METHODS
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

ATTENTION_BATCH = 8
ATTENTION_TITLE = f"Transformer-native methods on ViT-B/16 (timm, random weights), batch {ATTENTION_BATCH}"

_MODELS: Dict[torch.device, torch.nn.Module] = {}


def vit_case(device: torch.device, batch: int) -> Tuple[torch.nn.Module, torch.Tensor, List[int]]:
    """ViT-B/16 (built once per device), ``batch`` standard-normal images (seed ``batch``)
    and one class per image."""
    if device not in _MODELS:
        import timm

        torch.manual_seed(0)
        _MODELS[device] = timm.create_model("vit_base_patch16_224", pretrained=False).eval().to(device)
    images = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch)).to(device)
    return _MODELS[device], images, [(137 * i) % 1000 for i in range(batch)]


def vit_bare(device: torch.device, batch: int) -> Callable[[], None]:
    """model(x); the chosen logits summed; .backward() through the whole network."""
    model, images, classes = vit_case(device, batch)
    rows = torch.arange(batch, device=device)
    columns = torch.tensor(classes, device=device)

    def run() -> None:
        model.zero_grad(set_to_none=True)
        model(images)[rows, columns].sum().backward()

    return run


def attention_call(device: torch.device, method: str, batch: int, last: int = 0) -> Callable[[], None]:
    """One call of ``method`` over every block (``last``: the last ``last`` blocks)."""
    model, images, classes = vit_case(device, batch)
    blocks = list(model.blocks)[-last:] if last else None
    cam = METHODS[method](model, blocks)
    targets = [ClassifierOutputTarget(c) for c in classes]
    return lambda: cam(images, targets)


def attention_tables() -> List[Table]:
    """The table (its rows build the model on the bench's device when first run)."""
    n = ATTENTION_BATCH
    return [
        Table(
            ATTENTION_TITLE,
            f"vit-bare:{n}",
            "bare forward+backward of the ViT (fused attention), parameter gradients included",
            [
                Row(f"vit-bare:{n}", "bare forward+backward (reference)", lambda b: vit_bare(b.device, n)),
                Row(f"legrad:{n}", "LeGrad, every block (12)", lambda b: attention_call(b.device, "legrad", n)),
                Row(f"legrad-last4:{n}", "LeGrad, last 4 blocks", lambda b: attention_call(b.device, "legrad", n, 4)),
                Row(f"rollout:{n}", "AttentionRollout, every block", lambda b: attention_call(b.device, "rollout", n)),
                Row(
                    f"gradrollout:{n}", "GradRollout, every block", lambda b: attention_call(b.device, "gradrollout", n)
                ),
            ],
        )
    ]
