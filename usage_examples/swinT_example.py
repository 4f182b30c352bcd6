"""CAMs of a Swin Transformer: timm's Swin-Tiny (swin_tiny_patch4_window7_224).

    python usage_examples/swinT_example.py --image-path examples/cat.jpg --method gradcam

The same flags as cam.py. Swin's weights are random unless you pass
--weights PATH (a state dict of timm's swin_tiny_patch4_window7_224): nothing is downloaded.

Swin has no class token: the classifier averages every token of the last stage, so
all of them carry gradient. timm's Swin blocks work on (B, h, w, C) maps, 7x7x768 in
the last stage for a 224x224 input; swin_reshape_transform moves the channels first,
giving (B, 768, 7, 7). (It also takes flat (B, h*w, C) tokens and infers the grid.)

Which layer: the input norm of the last block, layers[-1].blocks[-1].norm1, as in the
original README; layers[-1].blocks[-1] (the block's output) works as well.
"""

import sys

from pytorch_grad_cam.cli import main
from pytorch_grad_cam.cli.model_zoo import ModelEntry
from pytorch_grad_cam.utils.reshape_transforms import swin_reshape_transform


def swin_tiny():
    import timm

    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)


SWIN_TINY = ModelEntry(
    architecture=swin_tiny,
    target_layer=lambda model: model.layers[-1].blocks[-1].norm1,
    reshape_transform=swin_reshape_transform,  # (B, 7, 7, C) -> (B, C, 7, 7)
)

if __name__ == "__main__":
    sys.exit(
        main(
            models={"swin_tiny_patch4_window7_224": SWIN_TINY},
            default_model="swin_tiny_patch4_window7_224",
            description=__doc__,
        )
    )
