"""Every code snippet of the user's original README, and of our README, runs.

The seed README's snippets are reproduced here as written (its text dump lost the
indentation of the two ``def`` blocks, restored here). Only what cannot run offline
or is left for the reader is substituted: ``pretrained=True`` becomes
``weights=None`` (nothing can be downloaded), and ``args``, ``input_tensor`` and
``rgb_img`` are given. The results are then checked against the library.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from cam_reference import reference_cam, single_thread_module  # noqa: F401 - autouse fixture

from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.reshape_transforms import swin_reshape_transform, vit_reshape_transform

README = Path(__file__).resolve().parents[1] / "README.md"

SEED_LIBRARY_SNIPPET = """\
from pytorch_grad_cam import GradCAM, ScoreCAM, GradCAMPlusPlus, AblationCAM, XGradCAM, EigenCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from torchvision.models import resnet50
model = resnet50(pretrained=True)
target_layer = model.layer4[-1]
input_tensor = # Create an input tensor image for your model..
# Note: input_tensor can be a batch tensor with several images!
# Construct the CAM object once, and then re-use it on many images:
cam = GradCAM(model=model, target_layer=target_layer, use_cuda=args.use_cuda)
# If target_category is None, the highest scoring category
# will be used for every image in the batch.
# target_category can also be an integer, or a list of different integers
# for every image in the batch.
target_category = 281
# You can also pass aug_smooth=True and eigen_smooth=True, to apply smoothing.
grayscale_cam = cam(input_tensor=input_tensor, target_category=target_category)
# In this example grayscale_cam has only one image in the batch:
grayscale_cam = grayscale_cam[0, :]
visualization = show_cam_on_image(rgb_img, grayscale_cam)
"""

SEED_VIT_SNIPPET = """\
def reshape_transform(tensor, height=14, width=14):
    result = tensor[:, 1 : , :].reshape(tensor.size(0),
        height, width, tensor.size(2))

    # Bring the channels to the first dimension,
    # like in CNNs.
    result = result.transpose(2, 3).transpose(1, 2)
    return result

target_layer = model.blocks[-1].norm1
cam = GradCAM(model=model, target_layer=target_layer, reshape_transform=reshape_transform)
"""

SEED_SWIN_SNIPPET = """\
def reshape_transform(tensor, height=7, width=7):
    result = tensor.reshape(tensor.size(0),
        height, width, tensor.size(2))

    # Bring the channels to the first dimension,
    # like in CNNs.
    result = result.transpose(2, 3).transpose(1, 2)
    return result

target_layer = model.layers[-1].blocks[-1].norm1
cam = GradCAM(model=model, target_layer=target_layer, reshape_transform=reshape_transform)
"""


def substitute(text: str, old: str, new: str) -> str:
    """Replace ``old`` (which must be there: the test follows the README's text)."""
    assert old in text, f"the snippet no longer contains {old!r}"
    return text.replace(old, new)


def run(code: str, namespace: dict) -> dict:
    exec(compile(code, "<README snippet>", "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def cat_128():
    """The cat photo at 128x128 (ResNet-50 runs 3x faster than at 224): (input, rgb_img)."""
    from skimage import data

    rgb_img = np.float32(cv2.resize(data.chelsea(), (128, 128), interpolation=cv2.INTER_AREA)) / 255
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    input_tensor = torch.from_numpy(((rgb_img - mean) / std).astype(np.float32)).permute(2, 0, 1)[None]
    return input_tensor, rgb_img


class Args:
    use_cuda = False


def test_seed_library_snippet(cat_128):
    input_tensor, rgb_img = cat_128
    code = substitute(SEED_LIBRARY_SNIPPET, "resnet50(pretrained=True)", "resnet50(weights=None)")
    code = substitute(code, "input_tensor = # Create", "input_tensor = input_tensor  # Create")
    torch.manual_seed(0)
    # The snippet never calls model.eval(): every call computes in eval mode (as the
    # original's model.eval() did) and gives the model its train mode back.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        namespace = run(code, {"args": Args(), "input_tensor": input_tensor, "rgb_img": rgb_img})
    grayscale_cam, visualization = namespace["grayscale_cam"], namespace["visualization"]
    assert grayscale_cam.shape == (128, 128) and grayscale_cam.dtype == np.float32
    assert grayscale_cam.min() == 0 and grayscale_cam.max() == pytest.approx(1, abs=1e-5)
    assert visualization.shape == (128, 128, 3) and visualization.dtype == np.uint8
    model = namespace["model"]
    assert all(module.training for module in model.modules())  # left in train mode
    # The map is the eval-mode model's: the reference formula reproduces it.
    model.eval()
    try:
        expected = reference_cam("gradcam", model, [model.layer4[-1]], input_tensor, [281])[0]
    finally:
        model.train()
    np.testing.assert_allclose(grayscale_cam, expected, atol=1e-5)
    # The overlay blends this map's colours into this photo.
    heatmap = cv2.applyColorMap(np.uint8(255 * grayscale_cam), cv2.COLORMAP_JET)
    blend = 0.5 * np.float32(heatmap) / 255 + 0.5 * rgb_img
    np.testing.assert_allclose(visualization, np.uint8(255 * blend / blend.max()), atol=1)


def test_seed_batch_size_setting(resnet18):
    """'You can control the batch size with cam.batch_size ='"""
    namespace = run(
        "from pytorch_grad_cam import ScoreCAM, AblationCAM\n"
        "cam = ScoreCAM(model=model, target_layer=model.layer4[-1], use_cuda=False)\n"
        "cam.batch_size = 16\n",
        {"model": resnet18},
    )
    assert namespace["cam"].batch_size == 16


def test_seed_vit_snippet(deit_tiny):
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    namespace = run(SEED_VIT_SNIPPET, {"model": deit_tiny, "GradCAM": GradCAM})
    maps = namespace["cam"](input_tensor=images, target_category=[1, 2])
    assert maps.shape == (2, 224, 224) and np.isfinite(maps).all() and maps.max() > 0.99
    library = GradCAM(deit_tiny, [deit_tiny.blocks[-1].norm1], reshape_transform=vit_reshape_transform)
    np.testing.assert_allclose(maps, library(images, target_category=[1, 2]), atol=1e-6)


def test_seed_swin_snippet(swin_tiny):
    """The seed's Swin function expects tokens (B, 49, C), the layout of timm at the
    time. timm >= 0.9 keeps norm1's output as (B, 7, 7, C), on which that function
    fails (it reads tensor.size(2) as the channels); the block's norm2 still gives
    (B, 49, C) tokens, so the snippet runs as written on that layer."""
    image = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(6))
    code = substitute(SEED_SWIN_SNIPPET, "blocks[-1].norm1", "blocks[-1].norm2")
    namespace = run(code, {"model": swin_tiny, "GradCAM": GradCAM})
    maps = namespace["cam"](input_tensor=image, target_category=1)
    assert maps.shape == (1, 224, 224) and np.isfinite(maps).all() and maps.max() > 0.99
    library = GradCAM(swin_tiny, [swin_tiny.layers[-1].blocks[-1].norm2], reshape_transform=swin_reshape_transform)
    np.testing.assert_allclose(maps, library(image, target_category=1), atol=1e-6)


def readme_python_blocks() -> list:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_our_readme_blocks_run(monkeypatch):
    """Our README's Python blocks, in order, in one namespace, from the repository root
    (the first reads examples/cat.jpg). Offline, the pretrained weights become
    weights=None. The first block's map is the reference formula's for class 281."""
    blocks = readme_python_blocks()
    assert len(blocks) >= 1
    monkeypatch.chdir(README.parent)
    torch.manual_seed(0)
    namespace: dict = {}
    for index, block in enumerate(blocks):
        if index == 0:
            block = substitute(block, 'weights="IMAGENET1K_V1"', "weights=None")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the README's example warns about nothing
            run(block, namespace)
        if index == 0:
            grayscale_cam, rgb_img = namespace["grayscale_cam"], namespace["rgb_img"]
            assert grayscale_cam.shape == (1, 224, 224) and grayscale_cam.dtype == np.float32
            assert grayscale_cam.min() == 0 and grayscale_cam.max() == pytest.approx(1, abs=1e-5)
            assert rgb_img.shape == (224, 224, 3) and rgb_img.dtype == np.float32
            assert 0 <= rgb_img.min() and rgb_img.max() <= 1
            assert namespace["visualization"].shape == (224, 224, 3) and namespace["visualization"].dtype == np.uint8
            # The input is the RGB photo normalised with ImageNet's statistics.
            model, input_tensor = namespace["model"], namespace["input_tensor"]
            mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
            expected_input = ((rgb_img - mean) / std).transpose(2, 0, 1)[None]
            np.testing.assert_allclose(input_tensor.numpy(), expected_input, atol=1e-5)
            expected = reference_cam("gradcam", model, [model.layer4[-1]], input_tensor, [281])
            np.testing.assert_allclose(grayscale_cam, expected, atol=1e-5)
