"""LeGrad, attention rollout and gradient-weighted rollout against independent float64
references (tests/attention_reference.py: the blocks written out by hand, attention
formed explicitly) at 1e-5, on tiny random-weight ViTs of the four origins (timm,
torchvision, open_clip, HuggingFace ViT and CLIP vision; the CLIP towers scored by the
cosine with a text embedding), each with its fused attention on; the model left
exactly as found (flags, configs, forwards, hooks, outputs), also when a call raises;
a CNN refused with an error that names the fix."""

from __future__ import annotations

import attention_reference as ref
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pytorch_grad_cam import METHODS, AttentionRollout, GradRollout, LeGrad
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.model_wrappers import OutputSelector

# Measured: the maps (float32 at the API) agree with the float64 references to 1.2e-7 to
# 1.4e-7 (float32 rounding), 2.8e-6 for HuggingFace's rollout (its eager softmax runs in
# float32); 1e-5 leaves a margin of 3.5x over the worst.
TOL = 1e-5
CLASSES = [3, 1]


def _randomise_norms(model: torch.nn.Module) -> None:
    """Layer norms as after training, not weight 1 / bias 0 (which would hide a missing norm)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.3)


def _timm(registers: bool = False):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    options = {"reg_tokens": 2, "dynamic_img_size": True} if registers else {}
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=24, depth=3, num_heads=2, num_classes=5, **options)
    _randomise_norms(model)
    return model.double().eval()


def _torchvision():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=24, mlp_dim=48, num_classes=5
    )
    torch.nn.init.normal_(model.heads.head.weight)  # torchvision zero-initialises the head
    _randomise_norms(model)
    return model.double().eval()


def _open_clip():
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, width=24, layers=3, heads=2, mlp_ratio=2.0, output_dim=8)
    _randomise_norms(model)
    return model.double().eval()


def _huggingface():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=24, num_hidden_layers=3, num_attention_heads=2, intermediate_size=48,
        image_size=32, patch_size=8, num_labels=5, attn_implementation="sdpa",
    )  # fmt: skip
    model = ViTForImageClassification(config)
    _randomise_norms(model)
    return model.double().eval()


def _huggingface_clip():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=24, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2,
        image_size=32, patch_size=8, projection_dim=8, hidden_act="gelu", attn_implementation="sdpa",
    )  # fmt: skip
    model = CLIPVisionModelWithProjection(config)
    _randomise_norms(model)
    return model.double().eval()


def _case(origin: str):
    """(model given to the CAM, its first block, reference spec, targets, score of a head output)."""
    if origin in ("open_clip", "huggingface_clip"):
        model = _open_clip() if origin == "open_clip" else _huggingface_clip()
        torch.manual_seed(1)
        texts = torch.randn(2, 8, dtype=torch.float64)
        targets = [lambda emb, t=t: F.cosine_similarity(emb, t, dim=-1) for t in texts]
        # Each image's (or token's) embedding against its image's text; (B, D) or (B, N, D).
        score = lambda out: sum(F.cosine_similarity(o, t.expand_as(o), dim=-1).sum() for o, t in zip(out, texts))  # noqa: E731
        if origin == "open_clip":
            return model, model.transformer.resblocks[0], ref.open_clip_spec(model, (4, 4)), targets, score
        spec = ref.huggingface_clip_spec(model, (4, 4))
        return OutputSelector(model, "image_embeds"), model.vision_model.encoder.layers[0], spec, targets, score
    targets = [ClassifierOutputTarget(c) for c in CLASSES]
    score = lambda out: sum(out[b, ..., c].sum() for b, c in enumerate(CLASSES))  # noqa: E731
    if origin == "timm":
        model = _timm()
        return model, model.blocks[0], ref.timm_spec(model, (4, 4)), targets, score
    if origin == "torchvision":
        model = _torchvision()
        return model, model.encoder.layers[0], ref.torchvision_spec(model, (4, 4)), targets, score
    hf = _huggingface()
    return OutputSelector(hf, "logits"), hf.vit.layers[0], ref.huggingface_spec(hf, (4, 4)), targets, score


ORIGINS = ["timm", "torchvision", "open_clip", "huggingface", "huggingface_clip"]


def _fused(model: torch.nn.Module) -> list:
    """Each attention module's fused switch: timm's flag, HuggingFace's implementation,
    or a MultiheadAttention (always called with need_weights=False by these models)."""
    states = []
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            states.append(module.fused_attn)
        elif isinstance(module, torch.nn.MultiheadAttention):
            states.append("forward" not in vars(module))
        elif hasattr(getattr(module, "config", None), "_attn_implementation") and module.__class__.__name__.endswith(
            "Attention"
        ):
            states.append(module.config._attn_implementation == "sdpa")
    return states


def _snapshot(model: torch.nn.Module) -> list:
    """Every module's attributes (values of plain ones, keys of hook dicts), buffers and
    parameters, and a HuggingFace config's full state."""
    state = []
    for name, module in model.named_modules():
        plain = {k: v for k, v in vars(module).items() if isinstance(v, (bool, int, float, str, type(None)))}
        hooks = {k: len(v) for k, v in vars(module).items() if "hooks" in k and hasattr(v, "__len__")}
        state.append((name, sorted(vars(module)), plain, hooks))
        config = getattr(module, "config", None)
        if hasattr(config, "to_dict"):
            state.append((name, "config", config.to_dict(), dict(vars(config))))
    state.append({k: v.clone() for k, v in model.state_dict().items()})
    return state


def _same(a: list, b: list) -> bool:
    tensors_a, tensors_b = a[-1], b[-1]
    return a[:-1] == b[:-1] and all(torch.equal(tensors_a[k], tensors_b[k]) for k in tensors_a)


@pytest.mark.parametrize("origin", ORIGINS)
@pytest.mark.parametrize("method", ["legrad", "rollout", "gradrollout"])
def test_float64_reference(origin: str, method: str) -> None:
    model, first, spec, targets, score = _case(origin)
    torch.manual_seed(2)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    assert all(_fused(model)) and _fused(model), "the fused path must be on for this test"
    before, outputs = _snapshot(model), model(x)
    maps = METHODS[method](model)(x, targets)
    tokens = ref.first_block_input(model, first, x)
    if method == "legrad":
        expected = ref.legrad(spec, tokens, score, (32, 32))
    elif method == "rollout":
        expected = ref.attention_rollout(spec, tokens, (32, 32))
    else:
        expected = ref.grad_rollout(spec, tokens, score, (32, 32))
    assert maps.shape == (2, 32, 32)
    assert abs(torch.from_numpy(maps).double() - expected).max() < TOL
    assert expected.std() > 0.05  # a map with structure, not a constant
    assert _same(before, _snapshot(model)) and all(_fused(model))
    assert torch.equal(model(x), outputs)


@pytest.mark.parametrize("fusion, ratio", [("max", 0.0), ("min", 0.5), ("mean", 0.9)])
def test_rollout_options(fusion: str, ratio: float) -> None:
    model, first, spec, _, _ = _case("timm")
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    maps = AttentionRollout(model, head_fusion=fusion, discard_ratio=ratio)(x)
    expected = ref.attention_rollout(spec, ref.first_block_input(model, first, x), (32, 32), fusion, ratio)
    assert abs(torch.from_numpy(maps).double() - expected).max() < TOL


@pytest.mark.parametrize("method", ["legrad", "rollout", "gradrollout"])
def test_registers_and_non_square_input(method: str) -> None:
    """Two register tokens and the class token (3 prefix tokens), a 32x48 input: a 4x6 grid."""
    model = _timm(registers=True)
    x = torch.randn(2, 3, 32, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    spec = ref.timm_spec(model, (4, 6))
    assert spec.prefix == 3
    targets = [ClassifierOutputTarget(c) for c in CLASSES]
    score = lambda out: sum(out[b, ..., c].sum() for b, c in enumerate(CLASSES))  # noqa: E731
    tokens = ref.first_block_input(model, model.blocks[0], x)
    maps = METHODS[method](model)(x, targets)
    expected = {
        "legrad": lambda: ref.legrad(spec, tokens, score, (32, 48)),
        "rollout": lambda: ref.attention_rollout(spec, tokens, (32, 48)),
        "gradrollout": lambda: ref.grad_rollout(spec, tokens, score, (32, 48)),
    }[method]()
    assert abs(torch.from_numpy(maps).double() - expected).max() < TOL


def test_last_blocks_only() -> None:
    """LeGrad over the last two of three blocks averages those two layers' maps only."""
    model, first, spec, targets, score = _case("timm")
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    maps = LeGrad(model, list(model.blocks)[-2:])(x, targets)
    tokens = ref.first_block_input(model, model.blocks[1], x)
    last_two = ref.Spec(spec.blocks[1:], spec.head, spec.token_head, spec.prefix, spec.grid)
    expected = ref.legrad(last_two, tokens, score, (32, 32))
    assert abs(torch.from_numpy(maps).double() - expected).max() < TOL


@pytest.mark.parametrize("origin", ORIGINS)
def test_model_left_as_found_when_a_call_raises(origin: str) -> None:
    model, _, _, _, _ = _case(origin)
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    before, outputs = _snapshot(model), model(x)

    def failing(output: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("target failed")

    for cls in (LeGrad, GradRollout):
        with pytest.raises(RuntimeError, match="target failed"):
            cls(model)(x, [failing])
    assert _same(before, _snapshot(model)) and all(_fused(model))
    assert torch.equal(model(x), outputs)


@pytest.mark.parametrize("name", ["legrad", "rollout", "gradrollout"])
def test_cnn_is_refused_with_the_fix(name: str, small_cnn) -> None:
    assert METHODS[name].needs_attention
    for layers in (None, [small_cnn.features[-1]]):
        with pytest.raises(ValueError, match="no attention module.*'gradcam'"):
            METHODS[name](small_cnn, layers)


def test_a_layer_that_is_not_a_block_is_refused() -> None:
    model = _timm()
    with pytest.raises(ValueError, match="blocks.0.norm1.*holds no attention module.*model.blocks"):
        LeGrad(model, [model.blocks[0].norm1])


def test_unknown_head_asks_for_head() -> None:
    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = _timm()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    with pytest.raises(ValueError, match="head="):
        LeGrad(Wrapped())
    model = Wrapped()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    targets = [ClassifierOutputTarget(c) for c in CLASSES]
    inner = model.inner
    given = LeGrad(model, head=lambda z: inner.head(inner.norm(z)))(x, targets)
    assert abs(given - LeGrad(inner)(x, targets)).max() < TOL


@pytest.mark.parametrize("name", ["legrad", "rollout", "gradrollout"])
def test_generic_guarantees_on_a_transformer(name: str) -> None:
    """What the generic tests check of every layer method on a CNN, here on a ViT: a
    batch's maps equal each image's alone; the caller's no_grad/inference_mode changes
    nothing; targets=None explains the top class; aug_smooth gives maps in [0, 1]."""
    model = _timm().float()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    cam = METHODS[name](model)
    top = model(x).argmax(dim=1).tolist()
    targets = [ClassifierOutputTarget(c) for c in top]
    batch = cam(x, targets)
    alone = np.concatenate([cam(x[i : i + 1], targets[i : i + 1]) for i in range(2)])
    assert np.abs(batch - alone).max() < 1e-5
    with torch.no_grad():
        assert np.abs(cam(x, targets) - batch).max() < 1e-6
    with torch.inference_mode():
        assert np.abs(cam(x, targets) - batch).max() < 1e-6
    assert np.abs(cam(x) - batch).max() < 1e-6
    smoothed = cam(x, targets, aug_smooth=True)
    assert smoothed.shape == (2, 32, 32) and smoothed.min() >= 0 and smoothed.max() <= 1
    assert smoothed.max() > 0.5 and np.abs(smoothed - batch).max() > 1e-3  # a mean of maps in [0, 1]


def test_a_failed_call_keeps_no_attention_on_the_object() -> None:
    model = _timm()
    cam = LeGrad(model)

    def failing(output: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("target failed")

    with pytest.raises(RuntimeError, match="target failed"):
        cam(torch.randn(1, 3, 32, 32, dtype=torch.float64), [failing])
    with pytest.raises(RuntimeError, match="only during a call"):
        cam.attention_record()
