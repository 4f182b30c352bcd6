"""CAMs of a Vision Transformer: timm's DeiT-Tiny (deit_tiny_patch16_224).

    python usage_examples/vit_example.py --image-path examples/cat.jpg --method gradcam

The same flags as cam.py. DeiT's weights are random unless you pass
--weights PATH (a state dict of timm's deit_tiny_patch16_224): nothing is downloaded.

A ViT block outputs tokens, (B, 1 + 14*14, 192) for a 224x224 input: the class token,
then one token per 16x16 patch. vit_reshape_transform drops the class token and folds
the 196 patch tokens back into a (B, 192, 14, 14) map, like a CNN layer's.

Which layer: the classifier reads only the class token after the last block, so the
patch tokens that the last block *outputs* never reach it and their gradient is zero.
Inside the last block, the attention still mixes every patch token into the class
token, so its input norm (blocks[-1].norm1) is the last place where patches matter.
"""

import sys

from pytorch_grad_cam.cli import main
from pytorch_grad_cam.cli.model_zoo import ModelEntry
from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform


def deit_tiny():
    import timm

    return timm.create_model("deit_tiny_patch16_224", pretrained=False)


DEIT_TINY = ModelEntry(
    architecture=deit_tiny,
    target_layer=lambda model: model.blocks[-1].norm1,
    reshape_transform=vit_reshape_transform,  # (B, 1 + 196, C) -> (B, C, 14, 14)
)

if __name__ == "__main__":
    sys.exit(
        main(models={"deit_tiny_patch16_224": DEIT_TINY}, default_model="deit_tiny_patch16_224", description=__doc__)
    )
