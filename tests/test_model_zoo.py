"""The model zoo: every gradient method of the registry, with the target layer left to
the automatic choice (``pytorch_grad_cam.layer_search``), on one model of each of
torchvision's classification families and timm's DeiT and Swin, with random weights.

Each map must be finite and not constant, and the automatic layer must be the one
recorded in ``FAMILIES`` (the README's "Choosing the target layer" table is this
column). ScoreCAM and AblationCAM, which score one perturbed copy per channel, run on
four families through a reshape_transform that keeps 8 channels.

Inputs are the smallest each architecture takes (64x64 for the CNNs, whose last grid
is then 2x2; 224x224 for MaxViT and the Swins, 256x256 for Swin v2). Every model is
built once per module from seed 0, and its input is drawn from seed 0.

Named exclusions and adjustments, each for a sound reason rather than chance:
- torchvision's ViT initialises its classification head to zeros, so with random
  weights every logit is 0 and every gradient exactly zero: every gradient map would
  be blank and the layer search, finding no layer that a gradient reaches, falls back
  to the last grid ('encoder'). The test re-draws the head (trained weights have a
  non-zero one). ViT is the small torchvision ``VisionTransformer`` (64x64, 8x8
  patches, 4 blocks) rather than vit_b_16, for speed (vit_b_16 costs ~2 s a call).
- EfficientNet-B0 and GoogLeNet (``init_weights=False``): with freshly initialised
  batch norms (running mean 0, variance 1) eval mode does not renormalise, and the
  signal fades through the blocks: EfficientNet-B0's last activations are ~1e-14 and
  its raw map ~1e-15, far below the min-max's 1e-7 epsilon, so its maps peak at 0.1
  to 0.3 instead of 1; GoogLeNet's logits hardly depend on the input and GradCAM's
  map is blank (Σ_k w_k·A_k < 0 everywhere). Their batch-norm statistics are set
  from one batch of 8 random images first (``calibrate_batch_norm``), as training
  would; then every method's map spans [0, 1].
- torchvision's Swin-T (seed 0): the top class's map at the automatic layer (the last
  block's norm1) is blank for the plain gradient methods (Σ_k w_k·A_k < 0 everywhere;
  5 of 21 classes measured are, as any class's may be with random weights); class 0,
  whose maps are not blank for any method, is explained instead.
- RandomCAM weights the channels by U(-1, 1) draws: on a layer of non-negative
  activations whose few positions are alike, Σ_k w_k·A_k is negative everywhere,
  and the map blank, for about half of all draws. Its map must be finite, in [0, 1],
  and either blank or spanning [0, 1].
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np
import pytest
import torch
from cam_reference import single_thread_module  # noqa: F401 - autouse: one thread
from method_sets import CNN_METHODS
from torch import nn

from pytorch_grad_cam import METHODS, AblationCAM, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.reshape_transforms import swin_reshape_transform, vit_reshape_transform

GRADIENT_METHODS = [name for name, cls in CNN_METHODS.items() if cls.uses_gradients]
#: Methods that take no target layer (FullGrad: the input gradient and every bias
#: layer's): they run on each family as they are, with no layer to check.
IGNORES_TARGET_LAYERS = {"fullgrad"}


def _tv(name: str, **kwargs) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None, **kwargs)

    return build


def _small_vit() -> nn.Module:
    from torchvision.models import VisionTransformer

    model = VisionTransformer(
        image_size=64, patch_size=8, num_layers=4, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=10
    )
    # torchvision zero-initialises the head (see the module docstring): re-draw it.
    nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


@dataclass(frozen=True)
class Family:
    build: Callable[[], nn.Module]  # a fixture name (str) for the session's timm models
    size: int  # input height = width
    layer: str  # the layer the automatic choice picks for gradient methods (measured)
    reshape_transform: Optional[Callable] = None
    calibrate: bool = False  # set the batch-norm statistics first (module docstring)
    target: Optional[int] = None  # the class explained (None: the top class; module docstring)


FAMILIES: Dict[str, Family] = {
    "resnet18": Family(_tv("resnet18"), 64, "layer4.1"),
    "resnext50_32x4d": Family(_tv("resnext50_32x4d"), 64, "layer4.2"),
    "wide_resnet50_2": Family(_tv("wide_resnet50_2"), 64, "layer4.2"),
    # 64x64 leaves features a 2x2 grid; avgpool (AdaptiveAvgPool2d((7, 7))) spreads it
    # over 7x7 and finishes last, so it is chosen (at 224x224 it passes 7x7 through).
    "vgg11": Family(_tv("vgg11"), 64, "avgpool"),
    # The final ReLU is F.relu in forward: norm5 is the last hookable grid.
    "densenet121": Family(_tv("densenet121"), 64, "features.norm5"),
    "mobilenet_v2": Family(_tv("mobilenet_v2"), 64, "features.18.2"),
    "mobilenet_v3_small": Family(_tv("mobilenet_v3_small"), 64, "features.12.2"),
    "efficientnet_b0": Family(_tv("efficientnet_b0"), 64, "features.8.2", calibrate=True),
    "efficientnet_v2_s": Family(_tv("efficientnet_v2_s"), 64, "features.7.2"),
    "convnext_tiny": Family(_tv("convnext_tiny"), 64, "features.7.2"),
    "regnet_y_400mf": Family(_tv("regnet_y_400mf"), 64, "trunk_output.block4.block4-5"),
    "mnasnet0_5": Family(_tv("mnasnet0_5"), 64, "layers.16"),
    "shufflenet_v2_x0_5": Family(_tv("shufflenet_v2_x0_5"), 64, "conv5.2"),
    # The class map: classifier = Dropout, Conv2d(512, classes, 1), ReLU, AdaptiveAvgPool2d.
    "squeezenet1_0": Family(_tv("squeezenet1_0"), 64, "classifier.2"),
    "googlenet": Family(_tv("googlenet", aux_logits=False, init_weights=False), 64, "inception5b", calibrate=True),
    "maxvit_t": Family(_tv("maxvit_t"), 224, "blocks.3"),
    "vit": Family(_small_vit, 64, "encoder.layers.encoder_layer_3.ln_1", vit_reshape_transform),
    # Transformers (a patch grid and blocks, pytorch_grad_cam.token_grid): the last
    # block's first normalization, with the transform given here (it fits that layer).
    # Swin v2's blocks normalise after the attention: its norm1 is the first one still.
    "swin_t": Family(_tv("swin_t"), 224, "features.7.1.norm1", swin_reshape_transform, target=0),
    "swin_v2_t": Family(_tv("swin_v2_t"), 256, "features.7.1.norm1", swin_reshape_transform),
    "timm_deit_tiny": Family("deit_tiny", 224, "blocks.11.norm1", vit_reshape_transform),
    "timm_swin_tiny": Family("swin_tiny", 224, "layers.3.blocks.1.norm1", swin_reshape_transform),
}

#: Families on which ScoreCAM and AblationCAM also run (8 channels of the layer).
PERTURBATION_FAMILIES = ["resnet18", "mobilenet_v3_small", "regnet_y_400mf", "shufflenet_v2_x0_5"]

#: What the tests measured, printed at the end of the module (pytest -s shows it).
CHOSEN: Dict[str, Dict[str, str]] = {}
SECONDS: Dict[str, float] = {}
BLANK_RANDOMCAM: List[str] = []


def calibrate_batch_norm(model: nn.Module, images: torch.Tensor) -> None:
    """Set every batch norm's running statistics to those of ``images`` (one forward
    in training mode, cumulative average), then put the model back in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    with torch.no_grad():
        model(images)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.eval()


@pytest.fixture(scope="module")
def zoo(request):
    """family name -> (model, input); each model built once for the module."""
    cache: Dict[str, tuple] = {}

    def get(name: str) -> tuple:
        if name not in cache:
            family = FAMILIES[name]
            start = time.process_time()
            torch.manual_seed(0)
            if isinstance(family.build, str):
                model = request.getfixturevalue(family.build)
            else:
                model = family.build().eval()
            generator = torch.Generator().manual_seed(0)
            if family.calibrate:
                calibrate_batch_norm(model, torch.rand(8, 3, family.size, family.size, generator=generator))
            x = torch.rand(1, 3, family.size, family.size, generator=generator)
            SECONDS[name] = SECONDS.get(name, 0.0) + time.process_time() - start
            cache[name] = (model, x)
        return cache[name]

    yield get
    cache.clear()
    if CHOSEN:
        print("\nautomatic target layer per family (method: layer):")
        for name, chosen in CHOSEN.items():
            layers = sorted(set(chosen.values()))
            print(f"  {name:20s} {SECONDS.get(name, 0):5.1f}s CPU  {layers} ({len(chosen)} methods)")
        print(f"RandomCAM blank at seed 0: {BLANK_RANDOMCAM}")


def run_automatic(cls, model, x, target=None, **kwargs):
    """``cls(model, **kwargs)(x)`` without target_layers, explaining class ``target``
    (None: the top class): (map, chosen layer's name)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cam = cls(model, **kwargs)
        result = cam(x, None if target is None else [ClassifierOutputTarget(target)])
    messages = [str(w.message) for w in caught if "target_layers not given" in str(w.message)]
    assert len(messages) == 1, messages
    name = messages[0].split("using '", 1)[1].split("'", 1)[0]
    assert dict(model.named_modules())[name] is cam.target_layers[0]
    return result, name


def assert_informative(result: np.ndarray, size: int) -> None:
    assert result.shape == (1, size, size) and result.dtype == np.float32
    assert np.isfinite(result).all()
    assert result.min() >= 0 and result.max() <= 1 + 1e-6
    # A non-constant map is min-max scaled: it spans [0, 1].
    assert result.max() - result.min() > 0.5 and result.std() > 1e-3, (result.min(), result.max(), result.std())


@pytest.mark.parametrize("method", GRADIENT_METHODS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_gradient_method_on_the_automatic_layer(zoo, family, method):
    model, x = zoo(family)
    spec = FAMILIES[family]
    start = time.process_time()
    torch.manual_seed(0)  # RandomCAM draws its weights from torch's RNG
    if method in IGNORES_TARGET_LAYERS:
        # FullGrad reads every layer with a bias, not a target layer: nothing to choose.
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # and no layer-search message either
            result = METHODS[method](model)(x)
        SECONDS[family] = SECONDS.get(family, 0.0) + time.process_time() - start
        assert_informative(result, spec.size)
        return
    result, layer = run_automatic(METHODS[method], model, x, spec.target, reshape_transform=spec.reshape_transform)
    SECONDS[family] = SECONDS.get(family, 0.0) + time.process_time() - start
    CHOSEN.setdefault(family, {})[method] = layer
    assert layer == spec.layer
    if method == "randomcam" and not result.any():
        BLANK_RANDOMCAM.append(family)  # a legitimate draw (module docstring)
        assert result.shape == (1, spec.size, spec.size)
        return
    assert_informative(result, spec.size)


def first_channels(tensor: torch.Tensor, channels: int = 8) -> torch.Tensor:
    """A reshape_transform that keeps the first channels: K perturbed copies stay few."""
    return tensor[:, :channels]


@pytest.mark.parametrize("cls", [ScoreCAM, AblationCAM], ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("family", PERTURBATION_FAMILIES)
def test_perturbation_method_on_the_automatic_layer(zoo, family, cls):
    model, x = zoo(family)
    spec = FAMILIES[family]
    start = time.process_time()
    result, layer = run_automatic(cls, model, x, reshape_transform=first_channels, batch_size=64, progress=False)
    SECONDS[family] = SECONDS.get(family, 0.0) + time.process_time() - start
    CHOSEN.setdefault(family, {})[cls.__name__] = layer
    # Gradient-free: no gradient check, but the same last grid is chosen here.
    assert layer == spec.layer
    assert_informative(result, spec.size)
