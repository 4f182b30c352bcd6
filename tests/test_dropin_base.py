"""The grad-cam 1.5.x drop-in parts of BaseCAM (COMPAT.md decisions 1, 4, 5, 6) and the
methods FullGrad, ShapleyCAM, FinerCAM, RefineCAM, each against an independent
float64 computation."""
from __future__ import annotations

import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from cam_reference import capture, gradcam_weights, min_max, resize_half_pixel, single_thread_module  # noqa: F401
from pytorch_grad_cam import BaseCAM, EigenCAM, GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.reshape_transforms import fasterrcnn_reshape_transform, vit_reshape_transform


def reference_gradcam(model, layer, images, classes, transform=lambda t: t):
    A, G, _ = capture(model, layer, images, classes, transform)
    maps = []
    for a, g in zip(A, G):
        raw = np.maximum((gradcam_weights(a, g)[:, None, None] * a).sum(0), 0)
        maps.append(min_max(resize_half_pixel(min_max(raw), images.shape[2:])))
    return np.stack(maps)


# ------------------------------------------------------------ Decision 1
class YoloLike(nn.Module):
    """Returns a list like YOLO's: [(B, N, 85) predictions, a feature map]."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.head = nn.Conv2d(8, 85, 1)

    def forward(self, x):
        features = self.backbone(x)
        return [self.head(features).flatten(2).transpose(1, 2), features]


def test_decision1_gradient_free_method_never_builds_targets():
    torch.manual_seed(0)
    model = YoloLike().eval()
    x = torch.rand(2, 3, 16, 16)
    cam = EigenCAM(model, [model.backbone[-1]])
    result = cam(x)  # no targets argument at all
    assert result.shape == (2, 16, 16) and np.isfinite(result).all()
    assert np.allclose(cam(x, targets=None), result)
    assert EigenCAM.needs_targets is False and GradCAM.needs_targets is True


# ------------------------------------------------------------ Decision 4
def test_decision4_forward_keeps_the_reference_positional_order(small_cnn):
    x = torch.rand(2, 3, 32, 32)
    targets = [ClassifierOutputTarget(1)] * 2
    cam = GradCAM(small_cnn, [small_cnn.features[3]])
    eigen = cam(x, targets, False, True)
    assert np.allclose(cam.forward(x, targets, True), eigen)  # third positional: eigen_smooth
    assert not np.allclose(eigen, cam(x, targets))


def test_decision4_custom_subclass_gets_tensors_and_may_return_numpy(small_cnn):
    seen = []

    class NumpyGradCAM(BaseCAM):
        def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
            seen.append((type(activations), type(grads)))
            return grads.flatten(2).mean(2).numpy()

    x = torch.rand(2, 3, 32, 32)
    layer = small_cnn.features[-1]
    result = NumpyGradCAM(small_cnn, [layer])(x, [ClassifierOutputTarget(c) for c in (1, 3)])
    assert seen == [(torch.Tensor, torch.Tensor)]
    assert np.abs(result - reference_gradcam(small_cnn, layer, x, [1, 3])).max() < 1e-5


# ------------------------------------------------------------ Decision 5
class DictBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.down = nn.Conv2d(4, 4, 3, stride=2, padding=1)

    def forward(self, x):
        high = torch.relu(self.stem(x))
        return OrderedDict([("0", high), ("pool", torch.relu(self.down(high)))])


class DictNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = DictBackbone()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        features = self.backbone(x)
        pooled = [torch.tanh(v).mean((2, 3)) for v in features.values()]
        return self.fc(torch.cat(pooled, 1))


def test_decision5_dict_layer_outputs_get_gradients():
    torch.manual_seed(0)
    model = DictNet().eval()
    x = torch.rand(2, 3, 16, 16)
    classes = [0, 2]
    result = GradCAM(model, [model.backbone], fasterrcnn_reshape_transform)(
        x, [ClassifierOutputTarget(c) for c in classes]
    )
    # Independent: leaves substituted for both dict entries, autograd.grad, then the transform.
    leaves = {}

    def hook(module, inputs, output):
        for key, value in output.items():
            leaves[key] = value.detach().clone().requires_grad_(True)
        return OrderedDict((k, v.clone()) for k, v in leaves.items())

    handle = model.backbone.register_forward_hook(hook)
    logits = model(x)
    handle.remove()
    grads = torch.autograd.grad(logits[[0, 1], classes].sum(), list(leaves.values()))
    A = fasterrcnn_reshape_transform({k: v.detach() for k, v in leaves.items()}).double().numpy()
    G = fasterrcnn_reshape_transform(dict(zip(leaves, grads))).double().numpy()
    expected = []
    for a, g in zip(A, G):
        raw = np.maximum((gradcam_weights(a, g)[:, None, None] * a).sum(0), 0)
        expected.append(min_max(resize_half_pixel(min_max(raw), (16, 16))))
    assert np.abs(result - np.stack(expected)).max() < 1e-5
    assert np.stack(expected).std() > 0.05


def test_decision5_dict_output_without_transform_names_the_fasterrcnn_transform():
    model = DictNet().eval()
    with pytest.raises(ValueError, match="fasterrcnn_reshape_transform"):
        GradCAM(model, [model.backbone])(torch.rand(1, 3, 16, 16), [ClassifierOutputTarget(0)])


class BoxScoreSum:
    """A minimal stand-in for FasterRCNNBoxScoreTarget (added on another branch), so this
    branch is self-contained: the sum of the detections' scores."""

    def __call__(self, output):
        return output["scores"].sum()


@pytest.fixture(scope="module")
def fasterrcnn():
    import torchvision

    torch.manual_seed(0)
    # box_score_thresh=0: with random weights every score is ~1/91, below the default 0.05.
    return torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, box_score_thresh=0.0, min_size=160, max_size=160
    ).eval()


def test_decision5_faster_rcnn_gradcam_and_eigencam(fasterrcnn):
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    cam = GradCAM(fasterrcnn, [fasterrcnn.backbone], fasterrcnn_reshape_transform)
    result = cam(x, targets=[BoxScoreSum()])
    assert result.shape == (1, 96, 96) and np.isfinite(result).all() and result.std() > 0.01
    eigen = EigenCAM(fasterrcnn, [fasterrcnn.backbone], fasterrcnn_reshape_transform)(x)
    assert eigen.shape == (1, 96, 96) and np.isfinite(eigen).all() and eigen.std() > 0.01


# ------------------------------------------------------------ omitted target layers
def found_layer(cls, model, x, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cam = cls(model, **kwargs)
        result = cam(x)
    messages = [str(w.message) for w in caught if "target_layers not given" in str(w.message)]
    assert len(messages) == 1, messages
    return cam, result, messages[0]


def test_omitted_layers_resnet18_picks_the_last_block(resnet18):
    x = torch.rand(1, 3, 64, 64)
    cam, result, message = found_layer(GradCAM, resnet18, x)
    assert cam.target_layers == [resnet18.layer4[-1]] and "'layer4.1'" in message
    assert np.allclose(result, GradCAM(resnet18, [resnet18.layer4[-1]])(x))
    cam(x)  # found once: no second search


def test_omitted_layers_small_cnn(small_cnn):
    cam, _, message = found_layer(GradCAM, small_cnn, torch.rand(1, 3, 32, 32))
    assert cam.target_layers == [small_cnn.features[-1]] and "'features.6'" in message


def test_omitted_layers_deit_with_reshape_transform(deit_tiny):
    x = torch.rand(1, 3, 224, 224)
    cam, result, message = found_layer(GradCAM, deit_tiny, x, reshape_transform=vit_reshape_transform)
    # The final norm's patch tokens get no gradient (only the class token reaches the
    # head), so a gradient method's layer is inside the last block.
    assert "blocks.11." in message and result.std() > 0.01
    eigen, _, message = found_layer(EigenCAM, deit_tiny, x, reshape_transform=vit_reshape_transform)
    assert "'norm'" in message
