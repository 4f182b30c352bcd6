"""Token grids read from the model: with ``target_layers`` (and ``reshape_transform``)
omitted, a vision transformer of any origin (timm, HuggingFace, open_clip, torchvision)
gets its last block's first normalization and a transform read from the model, and the
map equals the one of that layer named explicitly with a hand-written transform.

Every model is a random-weight small config (2 blocks, width 32 where the origin lets
us choose it), built once per module from seed 0; its input is drawn from seed 1. The
target class of each variant is one whose GradCAM map is not blank at these weights
(with random weights Σ_k w_k·A_k may be negative everywhere; measured per variant).
torchvision's ViT initialises its head to zeros (every gradient would be zero): the
test re-draws it.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import pytest
import torch
from cam_reference import single_thread_module  # noqa: F401 - autouse: one thread
from torch import nn

from pytorch_grad_cam import EigenCAM, GradCAM
from pytorch_grad_cam.layer_search import choose_target_layer, token_transform
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.model_wrappers import OutputSelector
from pytorch_grad_cam.utils.reshape_transforms import (
    TokenGridTransform,
    swin_reshape_transform,
    vit_reshape_transform,
    vit_reshape_transform_for,
)

#: The class explained (module docstring).
TARGET = 4
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def _timm(name: str, **kwargs) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        timm = pytest.importorskip("timm", reason="the timm variants need timm (test extra)")
        return timm.create_model(name, pretrained=False, num_classes=5, **kwargs)

    return build


def _hf(model: str, config: str, select: str = "logits", **kwargs) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        transformers = pytest.importorskip(
            "transformers", reason="the HuggingFace variants need transformers (test extra)"
        )
        configuration = getattr(transformers, config)(**SMALL, **kwargs)
        return OutputSelector(getattr(transformers, model)(configuration), select)

    return build


def _open_clip() -> nn.Module:
    pytest.importorskip("open_clip", reason="the open_clip variant needs open_clip_torch (test extra)")
    from open_clip.transformer import VisionTransformer

    return VisionTransformer(
        image_size=(32, 24), patch_size=8, width=32, layers=2, heads=2, mlp_ratio=2.0, output_dim=16
    )


def _tv_vit() -> nn.Module:
    from torchvision.models import VisionTransformer

    model = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=5
    )
    nn.init.normal_(model.heads.head.weight, std=0.02)  # zero-initialised (module docstring)
    return model


def _tv_swin() -> nn.Module:
    from torchvision.models import SwinTransformer

    return SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 1], window_size=[4, 4], num_classes=5
    )


def _tv_maxvit() -> nn.Module:
    from torchvision.models import MaxVit

    return MaxVit(
        input_size=(64, 64),
        stem_channels=8,
        partition_size=2,
        block_channels=[16, 32],
        block_layers=[1, 1],
        head_dim=8,
        stochastic_depth_prob=0.0,
        num_classes=5,
    )


@dataclass(frozen=True)
class Variant:
    build: Callable[[], nn.Module]
    size: Tuple[int, int]  # the input's (H, W)
    layer: str  # the automatic layer
    prefix: Optional[int]  # leading non-patch tokens; None: channels-last (B, h, w, C)
    grid: Optional[Tuple[int, int]]  # None: the layer is already (B, C, h, w)


VARIANTS: Dict[str, Variant] = {
    "timm_vit": Variant(_timm("vit_tiny_patch16_224", img_size=64, depth=2), (64, 64), "blocks.1.norm1", 1, (4, 4)),
    "timm_deit_distilled": Variant(
        _timm("deit_tiny_distilled_patch16_224", img_size=64, depth=2),
        (64, 64),
        "blocks.1.norm1",
        2,
        (4, 4),
    ),
    "timm_dinov2_registers": Variant(
        _timm("vit_small_patch14_reg4_dinov2", img_size=(42, 56), depth=2),
        (42, 56),
        "blocks.1.norm1",
        5,
        (3, 4),
    ),
    "timm_vit_dynamic_size": Variant(
        _timm("vit_tiny_patch16_224", img_size=64, depth=2, dynamic_img_size=True),
        (48, 64),
        "blocks.1.norm1",
        1,
        (3, 4),
    ),
    "timm_swin": Variant(
        _timm(
            "swin_tiny_patch4_window7_224", img_size=64, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 1)
        ),
        (64, 64),
        "layers.1.blocks.0.norm1",
        None,
        (8, 8),
    ),
    "hf_vit": Variant(
        _hf("ViTForImageClassification", "ViTConfig", image_size=(32, 24), patch_size=8, num_labels=5),
        (32, 24),
        "model.vit.layers.1.layernorm_before",
        1,
        (4, 3),
    ),
    "hf_deit_distilled": Variant(
        _hf("DeiTForImageClassificationWithTeacher", "DeiTConfig", image_size=32, patch_size=8, num_labels=5),
        (32, 32),
        "model.deit.layers.1.layernorm_before",
        2,
        (4, 4),
    ),
    "hf_dinov2_registers": Variant(
        _hf(
            "Dinov2WithRegistersForImageClassification",
            "Dinov2WithRegistersConfig",
            image_size=28,
            patch_size=7,
            num_labels=5,
            num_register_tokens=4,
        ),
        (28, 21),
        "model.dinov2_with_registers.encoder.layer.1.norm1",
        5,
        (4, 3),
    ),
    "hf_beit": Variant(
        _hf("BeitForImageClassification", "BeitConfig", image_size=32, patch_size=8, num_labels=5),
        (32, 32),
        "model.beit.layers.1.layernorm_before",
        1,
        (4, 4),
    ),
    "hf_siglip_vision": Variant(
        _hf("SiglipVisionModel", "SiglipVisionConfig", "pooler_output", image_size=32, patch_size=8),
        (32, 32),
        "model.encoder.layers.1.layer_norm1",
        0,
        (4, 4),
    ),
    "hf_clip_vision": Variant(
        _hf("CLIPVisionModel", "CLIPVisionConfig", "pooler_output", image_size=32, patch_size=8),
        (32, 32),
        "model.encoder.layers.1.layer_norm1",
        1,
        (4, 4),
    ),
    "open_clip_visual": Variant(_open_clip, (32, 24), "transformer.resblocks.1.ln_1", 1, (4, 3)),
    "torchvision_vit": Variant(_tv_vit, (32, 32), "encoder.layers.encoder_layer_1.ln_1", 1, (4, 4)),
    "torchvision_swin": Variant(_tv_swin, (64, 48), "features.3.0.norm1", None, (8, 6)),
    "torchvision_maxvit": Variant(_tv_maxvit, (64, 64), "blocks.1", None, None),
}


@pytest.fixture(scope="module")
def built():
    """variant name -> (model in eval mode, input); each built once for the module."""
    cache: Dict[str, tuple] = {}

    def get(name: str) -> tuple:
        if name not in cache:
            variant = VARIANTS[name]
            torch.manual_seed(0)
            model = variant.build().eval()
            x = torch.rand(1, 3, *variant.size, generator=torch.Generator().manual_seed(1))
            cache[name] = (model, x)
        return cache[name]

    yield get
    cache.clear()


def automatic(cls, model, x):
    """``cls(model)(x)`` without target_layers: (map, the choice's warning)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = cls(model)(x)
    messages = [str(w.message) for w in caught if "target_layers not given" in str(w.message)]
    assert len(messages) == 1, messages
    return result, messages[0]


def hand_written(variant: Variant) -> Optional[Callable]:
    if variant.grid is None:
        return None
    if variant.prefix is None:
        return swin_reshape_transform
    height, width = variant.grid
    return functools.partial(vit_reshape_transform, num_prefix_tokens=variant.prefix, height=height, width=width)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_automatic_layer_and_transform_equal_the_explicit_ones(built, name):
    variant = VARIANTS[name]
    model, x = built(name)
    targets = [ClassifierOutputTarget(TARGET)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cam = GradCAM(model)
        result = cam(x, targets)
    message = next(str(w.message) for w in caught if "target_layers not given" in str(w.message))
    assert f"using '{variant.layer}'" in message
    assert cam.target_layers[0] is dict(model.named_modules())[variant.layer]
    if variant.grid is None:
        assert "reshape_transform" not in message.split("; pass")[0]
    elif variant.prefix is None:
        assert f"channels-last (B, {variant.grid[0]}x{variant.grid[1]}, C)" in message
    else:
        assert f"{variant.prefix} prefix token(s) dropped" in message
        assert f"folded into {variant.grid[0]}x{variant.grid[1]}" in message
    assert result.shape == (1, *variant.size)
    # Not blank: min-max scaled over the picture, so it spans [0, 1].
    assert result.max() - result.min() > 0.5, (result.min(), result.max())
    explicit = GradCAM(model, [variant.layer], reshape_transform=hand_written(variant))(x, targets)
    np.testing.assert_allclose(result, explicit, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["timm_vit", "hf_dinov2_registers", "open_clip_visual", "torchvision_swin"])
def test_gradient_free_methods_get_the_same_layer(built, name):
    variant = VARIANTS[name]
    model, x = built(name)
    result, message = automatic(EigenCAM, model, x)
    assert f"using '{variant.layer}'" in message
    explicit = EigenCAM(model, [variant.layer], reshape_transform=hand_written(variant))(x)
    np.testing.assert_allclose(result, explicit, atol=1e-6, rtol=0)


def test_a_given_transform_is_kept_with_the_automatic_layer(built):
    model, x = built("timm_deit_distilled")
    given = vit_reshape_transform_for(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cam = GradCAM(model, reshape_transform=given)
        cam(x, [ClassifierOutputTarget(TARGET)])
    message = next(str(w.message) for w in caught if "target_layers not given" in str(w.message))
    assert "using 'blocks.1.norm1'" in message and "reshape_transform: the one given" in message
    assert cam.reshape_transform is given


def test_another_input_size_on_a_dynamic_model_folds_into_its_grid(built):
    model, x = built("timm_vit_dynamic_size")  # the transform is read at 48x64: a 3x4 grid
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cam = GradCAM(model)
        cam(x, [ClassifierOutputTarget(TARGET)])
    larger = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(2))  # 6x8
    result = cam(larger, [ClassifierOutputTarget(TARGET)])
    hand = functools.partial(vit_reshape_transform, height=6, width=8)
    explicit = GradCAM(model, ["blocks.1.norm1"], reshape_transform=hand)(larger, [ClassifierOutputTarget(TARGET)])
    assert result.shape == (1, 96, 128)
    np.testing.assert_allclose(result, explicit, atol=1e-6, rtol=0)


class InterpolatedPositions(nn.Module):
    """A HuggingFace vision model called with ``interpolate_pos_encoding=True`` (any
    input size), returning one field of its output."""

    def __init__(self, model: nn.Module, field: str) -> None:
        super().__init__()
        self.model, self.field = model, field

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.model(pixel_values=x, interpolate_pos_encoding=True), self.field)


@pytest.mark.parametrize(
    ("name", "field", "prefix"), [("hf_clip_vision", "pooler_output", 1), ("hf_siglip_vision", "pooler_output", 0)]
)
def test_interpolated_position_embeddings_at_another_size(built, name, field, prefix):
    model = InterpolatedPositions(built(name)[0].model, field).eval()
    x = torch.rand(1, 3, 48, 32, generator=torch.Generator().manual_seed(1))  # 6x4 patches
    result, message = automatic(GradCAM, model, x)
    layer = VARIANTS[name].layer
    assert f"using '{layer}'" in message and "folded into 6x4" in message
    hand = functools.partial(vit_reshape_transform, num_prefix_tokens=prefix, height=6, width=4)
    np.testing.assert_allclose(result, GradCAM(model, [layer], reshape_transform=hand)(x), atol=1e-6)
    assert result.shape == (1, 48, 32) and result.max() - result.min() > 0.5


def test_aug_smooth_on_a_dynamic_model_refolds_each_rescaled_copy(built):
    model, x = built("timm_vit_dynamic_size")  # 48x64; the copies at 0.9x and 1.1x hold 2x3 and 3x4 patches
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = GradCAM(model)(x, [ClassifierOutputTarget(TARGET)], aug_smooth=True)
    assert result.shape == (1, 48, 64) and np.isfinite(result).all()
    assert result.max() - result.min() > 0.5


def test_token_grid_transform_matches_the_hand_written_ones():
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 5 + 12, 7, generator=generator)
    expected = vit_reshape_transform(tokens, height=3, width=4, num_prefix_tokens=5)
    assert torch.equal(TokenGridTransform("tokens", 5, 3, 4)(tokens), expected)
    assert torch.equal(TokenGridTransform("seq_first", 5, 3, 4)(tokens.transpose(0, 1).contiguous()), expected)
    assert torch.equal(TokenGridTransform("tokens", 5, 3, 4)((tokens, None)), expected)
    grid = torch.randn(2, 3, 4, 7, generator=generator)
    assert torch.equal(TokenGridTransform("channels_last", 0, 3, 4)(grid), grid.permute(0, 3, 1, 2))
    # Another token count: the factorisation nearest the observed 3x4 aspect (6x8, not 4x12).
    other = torch.randn(1, 5 + 48, 7, generator=generator)
    assert TokenGridTransform("tokens", 5, 3, 4)(other).shape == (1, 7, 6, 8)


def test_token_grid_transform_refuses_what_it_cannot_fold():
    square = TokenGridTransform("tokens", 1, 4, 4)
    with pytest.raises(ValueError, match="fold into no single grid near the 4x4"):
        square(torch.zeros(1, 1 + 12, 3))  # 3x4 and 4x3 are equally near a square
    with pytest.raises(ValueError, match="fold into no single grid"):
        square(torch.zeros(1, 1 + 13, 3))  # 13 tokens: only 1x13
    with pytest.raises(ValueError, match="expects a 3D tensor"):
        square(torch.zeros(1, 4, 4, 3))
    with pytest.raises(ValueError, match="kind must be one of"):
        TokenGridTransform("columns", 0, 2, 2)


def test_token_transform_for_explicit_layers(built):
    model, x = built("hf_dinov2_registers")
    layer = dict(model.named_modules())["model.dinov2_with_registers.encoder.layer.0"]
    transform = token_transform(model, x, [layer])
    assert repr(transform) == "TokenGridTransform(kind='tokens', num_prefix_tokens=5, height=4, width=3)"
    swin, swin_x = built("torchvision_swin")
    transform = token_transform(swin, swin_x, [swin.features[3][0].norm1])
    assert (transform.kind, transform.height, transform.width) == ("channels_last", 8, 6)
    # A layer that is already (B, C, h, w), and a CNN (no patch grid): no transform.
    maxvit, maxvit_x = built("torchvision_maxvit")
    assert token_transform(maxvit, maxvit_x, [maxvit.blocks[-1]]) is None
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    runs = []
    handle = cnn.register_forward_pre_hook(lambda module, inputs: runs.append(1))
    assert token_transform(cnn, torch.rand(1, 3, 8, 8), [cnn[2]]) is None
    handle.remove()
    assert runs == []  # no patchify convolution: not even a dry forward


class HandBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, 2, batch_first=True)
        self.mlp = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class HandViT(nn.Module):
    """A hand-written ViT whose blocks are attributes, not elements of a container."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, width, 8, stride=8)
        self.cls = nn.Parameter(torch.randn(1, 1, width))
        self.first, self.second = HandBlock(width), HandBlock(width)
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1)
        return self.head(self.norm(self.second(self.first(tokens)))[:, 0])


def test_blocks_outside_a_container_get_the_last_norm_a_gradient_reaches():
    torch.manual_seed(0)
    model = HandViT().eval()
    x = torch.rand(1, 3, 32, 24, generator=torch.Generator().manual_seed(1))
    # The final norm's and second.norm2's patch tokens reach the head through no attention.
    result, message = automatic(GradCAM, model, x)
    assert "using 'second.norm1'" in message and "the last normalization of the token sequence" in message
    hand = functools.partial(vit_reshape_transform, height=4, width=3)
    np.testing.assert_allclose(result, GradCAM(model, [model.second.norm1], reshape_transform=hand)(x), atol=1e-6)
    # Without gradients nothing tells the final norm's patch tokens from the others.
    _, message = automatic(EigenCAM, model, x)
    assert "using 'norm'" in message


def test_a_cnn_keeps_the_last_grid_rule():
    torch.manual_seed(0)
    # A patchify stem (a ConvNeXt-like model) but no transformer block: the CNN rule.
    cnn = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
    model = nn.Sequential(cnn, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    choice = choose_target_layer(model, torch.rand(1, 3, 16, 16))
    assert (choice.name, choice.reshape_transform) == ("0.3", None)
    assert choice.reason == "the last module whose output is a spatial grid"


def test_a_huggingface_output_without_a_selector_is_a_clear_error(built):
    model, x = built("hf_vit")
    with pytest.raises(ValueError, match=r"ImageClassifierOutput.*OutputSelector\(model, 'logits'\)"):
        GradCAM(model.model)(x)


def test_an_explicit_token_layer_without_a_transform_gets_the_models_and_says_so():
    """A layer given by the user that outputs patch tokens, with no reshape_transform: the
    transform is read from the model once (a warning says which); the map equals the
    hand-written transform's. A CNN's layer runs no extra forward pass."""
    import timm

    from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform

    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=64, depth=2).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    layer = model.blocks[-1].norm1
    with pytest.warns(UserWarning, match="output tokens of the model's patch grid"):
        automatic = GradCAM(model, [layer])(x, [ClassifierOutputTarget(3)])
    by_hand = GradCAM(
        model, [layer], reshape_transform=lambda t: vit_reshape_transform(t, height=4, width=4, num_prefix_tokens=2)
    )(x, [ClassifierOutputTarget(3)])
    np.testing.assert_allclose(automatic, by_hand, atol=1e-6, rtol=0)

    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    cnn(torch.zeros(1, 3, 8, 8))
    calls = []
    cnn.register_forward_pre_hook(lambda module, inputs: calls.append(1))
    GradCAM(cnn, [cnn[0]])(torch.randn(1, 3, 8, 8), [ClassifierOutputTarget(1)])
    assert len(calls) == 1  # no dry forward for a model without a patchify convolution
