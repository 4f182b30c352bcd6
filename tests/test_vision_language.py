"""Vision-language models: ImageTextSimilarityTarget, ImageEncoder and explain_prompts
on open_clip (ViT and ModifiedResNet towers) and HuggingFace CLIP and SigLIP models,
built with random weights from tiny configs once per module (nothing is downloaded).

The similarity is checked against the models' own logits (CLIP: logits / scale;
SigLIP: (logits - bias) / scale) and a cosine computed by hand; the maps against
GradCAM computed by hand (hook, autograd, the formula in float64, cam_reference);
the winners against the argmax of the raw maps at every pixel.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cam_reference import (  # noqa: F401 - single_thread_module: autouse fixture
    capture_score,
    finish_layer,
    gradcam_weights,
    min_max,
    resize_half_pixel,
    single_thread_module,
)

from pytorch_grad_cam import GradCAM, HiResCAM
from pytorch_grad_cam.utils.model_targets import ImageTextSimilarityTarget
from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform_for
from pytorch_grad_cam.vision_language import (
    ImageEncoder,
    draw_prompt_maps,
    explain_prompts,
    prompt_winners,
)

open_clip = pytest.importorskip("open_clip", reason="the open_clip tests need open_clip_torch (test extra)")
transformers = pytest.importorskip("transformers", reason="the HuggingFace tests need transformers (test extra)")

PROMPTS = ["a photo of a cat", "a photo of a dog", "a car"]
CONTEXT = 16  # open_clip's tokenizer pads to this many tokens (77 for real models)
# Cosines are in [-1, 1], computed in float32: measured differences to the float64
# hand computation and to the models' logits <= 3e-8.
COSINE_ATOL = 1e-6
# Maps in [0, 1], computed from float64 copies of the models and returned in float32:
# measured differences to the float64 hand computation <= 3e-8.
MAP_ATOL = 1e-5


def tiny_open_clip(vision_cfg: dict, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    text_cfg = dict(context_length=CONTEXT, vocab_size=49408, width=32, heads=2, layers=1)
    return open_clip.CLIP(embed_dim=24, vision_cfg=vision_cfg, text_cfg=text_cfg).eval()


@pytest.fixture(scope="module")
def clip_vit():
    """open_clip ViT: 32x32 images, 8x8 patches (a 4x4 grid after the class token)."""
    return tiny_open_clip(dict(image_size=32, layers=2, width=32, head_width=16, patch_size=8), seed=0)


@pytest.fixture(scope="module")
def clip_rn():
    """open_clip ModifiedResNet ('RN50' layout, one block per stage): 64x64 images, a 2x2 layer4."""
    return tiny_open_clip(dict(image_size=64, layers=[1, 1, 1, 1], width=8, head_width=8, patch_size=None), seed=1)


@pytest.fixture(scope="module")
def tokenizer():
    return open_clip.get_tokenizer("ViT-B-32", context_length=CONTEXT)


WORDS = ["<pad>", "<unk>", "<eos>", "a", "photo", "of", "cat", "dog", "car"]


@pytest.fixture(scope="module")
def hf_tokenizer():
    """A HuggingFace fast tokenizer of WORDS (real ones need vocabulary files): whitespace
    words, then <eos>, as CLIP's tokenizer ends a text."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", 2)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>", model_max_length=8
    )


def hf_configs() -> tuple:
    text = dict(
        vocab_size=len(WORDS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=8,
        pad_token_id=0,
        bos_token_id=3,
        eos_token_id=2,
    )
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    return text, dict(vision, num_attention_heads=2)


def shaken_layer_norms(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with random LayerNorm scales and shifts. HuggingFace initialises them
    to 1 and 0, and then the tiny models' GradCAM maps at a layer norm are mostly
    negative everywhere (0 after the ReLU, for most seeds): nothing to compare."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1, 0.5)
                module.bias.normal_(0, 0.5)
    return model


@pytest.fixture(scope="module")
def hf_clip():
    torch.manual_seed(2)
    text, vision = hf_configs()
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)
    return shaken_layer_norms(transformers.CLIPModel(config)).eval()


@pytest.fixture(scope="module")
def hf_siglip():
    torch.manual_seed(4)
    text, vision = hf_configs()
    config = transformers.SiglipConfig(text_config=text, vision_config=vision)
    return shaken_layer_norms(transformers.SiglipModel(config)).eval()


def images(count: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def hand_cosine(image_features: torch.Tensor, text_features: torch.Tensor) -> np.ndarray:
    """cos(a, b) = a·b / (|a| |b|), in float64, for rows of a against one b."""
    a, b = image_features.detach().double(), text_features.detach().double().reshape(-1)
    return ((a @ b) / (a.norm(dim=-1) * b.norm())).numpy()


# ------------------------------------------------------------------ the similarity target
def test_open_clip_target_is_the_cosine(clip_vit, clip_rn, tokenizer):
    for model, size in ((clip_vit, 32), (clip_rn, 64)):
        x = images(2, size)
        encoder = ImageEncoder(model, tokenizer)
        target = ImageTextSimilarityTarget("a photo of a cat", model=encoder)
        with torch.no_grad():
            scores = torch.stack([target(embedding) for embedding in encoder(x)]).numpy()
            expected = hand_cosine(model.encode_image(x), model.encode_text(tokenizer(["a photo of a cat"])))
            # open_clip's own logits: logit_scale.exp() * cos.
            _, _, logit_scale = model(x, tokenizer(["a photo of a cat"]))
            logits = (
                model.logit_scale.exp()
                * F.normalize(model.encode_image(x), dim=-1)
                @ model.encode_text(tokenizer(["a photo of a cat"]), normalize=True).T
            )
        np.testing.assert_allclose(scores, expected, atol=COSINE_ATOL, rtol=0)
        np.testing.assert_allclose(scores, (logits[:, 0] / logit_scale).numpy(), atol=COSINE_ATOL, rtol=0)
        assert np.ptp(scores) > 1e-6  # the two images score differently (measured 1.4e-5 RN, 0.011 ViT)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_huggingface_target_is_the_cosine_of_the_models_logits(family, hf_clip, hf_siglip, hf_tokenizer):
    model = hf_clip if family == "clip" else hf_siglip
    x = images(2, 32, seed=1)
    padding = "max_length" if family == "siglip" else True  # as each model is trained
    tokens = hf_tokenizer(text=["a photo of a dog"], padding=padding, return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=x)
        logits = logits.logits_per_image[:, 0].double()
        bias = model.logit_bias.double() if family == "siglip" else 0.0
        from_logits = ((logits - bias) / model.logit_scale.exp().double()).numpy()
    encoder = ImageEncoder(model, hf_tokenizer)
    for text in ("a photo of a dog", tokens, tokens["input_ids"][0]):  # a string, a tokenizer's output, ids
        if family == "siglip" and torch.is_tensor(text):
            continue  # ids alone carry no attention mask; the padded ids would be read as text
        target = ImageTextSimilarityTarget(text, model=encoder)
        with torch.no_grad():
            scores = torch.stack([target(embedding) for embedding in encoder(x)]).numpy()
        np.testing.assert_allclose(scores, from_logits, atol=COSINE_ATOL, rtol=0)


def test_an_embedding_is_used_as_given_and_templates_are_averaged(clip_vit, tokenizer):
    encoder = ImageEncoder(clip_vit, tokenizer)
    x = images(1, 32)
    with torch.no_grad():
        embedding = encoder(x)[0]
        texts = clip_vit.encode_text(tokenizer(["a photo of a cat", "a drawing of a cat"]))
    by_hand = hand_cosine(embedding[None], texts[0])[0]
    assert ImageTextSimilarityTarget(texts[0])(embedding).item() == pytest.approx(by_hand, abs=COSINE_ATOL)
    assert ImageTextSimilarityTarget(texts[0].numpy())(embedding).item() == pytest.approx(by_hand, abs=COSINE_ATOL)
    mean = F.normalize(texts, dim=-1).mean(dim=0)  # CLIP's prompt ensemble: the mean of unit embeddings
    ensemble = ImageTextSimilarityTarget(["a photo of a cat", "a drawing of a cat"], model=encoder)
    assert ensemble(embedding).item() == pytest.approx(hand_cosine(embedding[None], mean)[0], abs=COSINE_ATOL)
    rows = ImageTextSimilarityTarget(texts[0])(torch.stack([embedding, -embedding]))  # (N, D) rows: N cosines
    np.testing.assert_allclose(rows.numpy(), [by_hand, -by_hand], atol=COSINE_ATOL, rtol=0)


# ------------------------------------------------------------------ maps
def open_clip_tokens_to_grid(tokens: torch.Tensor) -> torch.Tensor:
    """(B, 1 + 16, C) -> (B, C, 4, 4): drop the class token, fold the 4x4 patches row by row."""
    return tokens[:, 1:].reshape(tokens.shape[0], 4, 4, tokens.shape[2]).permute(0, 3, 1, 2)


def hand_gradcam(model, layer, x, text, transform=lambda t: t):
    """GradCAM of cos(image, text) at ``layer``, by hand: (maps, raw maps). A map is
    ReLU, min-max, resize, then min-max again (the resize does not keep the grid's
    extremes), as cam_reference.reference_cam; a raw map is ReLU and resize."""
    text = F.normalize(text.detach().reshape(-1), dim=0)

    def embed(batch):
        return F.normalize(model.encode_image(batch), dim=-1)

    activations, grads, _ = capture_score(embed, layer, x, lambda emb: emb @ text, transform)
    raw = [np.maximum(np.tensordot(gradcam_weights(A, G), A, axes=1), 0) for A, G in zip(activations, grads)]
    size = x.shape[2:]
    return np.stack([min_max(finish_layer(r, size)) for r in raw]), np.stack([resize_half_pixel(r, size) for r in raw])


@pytest.mark.parametrize("tower", ["vit", "rn"])
def test_prompt_maps_are_gradcam_by_hand(tower, clip_vit, clip_rn, tokenizer):
    # In float64 (the library keeps a float64 model's dtype), so that float32 rounding,
    # amplified where the weighted channel sum cancels, does not blur the comparison.
    model, size = (clip_vit, 32) if tower == "vit" else (clip_rn, 64)
    model = copy.deepcopy(model).double()
    layer = model.visual.transformer.resblocks[-1].ln_1 if tower == "vit" else model.visual.layer4[-1]
    transform = open_clip_tokens_to_grid if tower == "vit" else (lambda t: t)
    x = images(1, size, seed=3).double()
    result = explain_prompts(model, x, PROMPTS, tokenizer=tokenizer)
    assert result.maps.shape == (1, 3, size, size) and result.prompts == PROMPTS
    with torch.no_grad():
        texts = model.encode_text(tokenizer(PROMPTS))
    for index, text in enumerate(texts):
        expected, raw = hand_gradcam(model, layer, x, text, transform)
        assert raw.max() > 1e-5  # a map, not zeros (measured 5e-5 to 5e-3)
        np.testing.assert_allclose(result.maps[0, index], expected[0], atol=MAP_ATOL, rtol=0)
        np.testing.assert_allclose(result.raw_maps[0, index], raw[0], atol=MAP_ATOL * raw.max(), rtol=0)
        np.testing.assert_allclose(
            result.scores[0, index], hand_cosine(model.encode_image(x), text)[0], atol=1e-6, rtol=0
        )


def test_gradcam_by_hand_through_the_encoder_equals_explain_prompts(clip_vit, tokenizer):
    """The documented hand-made use (ImageEncoder + its layer + the target) gives the same maps."""
    x = images(2, 32, seed=4)
    encoder = ImageEncoder(clip_vit, tokenizer)
    cam = GradCAM(encoder, encoder.target_layers(), reshape_transform=encoder.reshape_transform)
    maps = cam(x, [ImageTextSimilarityTarget("a photo of a dog", model=encoder)] * 2)
    result = explain_prompts(encoder, x, PROMPTS)
    np.testing.assert_allclose(maps, result.maps[:, 1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_huggingface_prompt_maps(family, hf_clip, hf_siglip, hf_tokenizer):
    model = copy.deepcopy(hf_clip if family == "clip" else hf_siglip).double()  # float64: see above
    x = images(1, 32, seed=5).double()
    result = explain_prompts(model, x, ["a photo of a cat", "a photo of a dog"], tokenizer=hf_tokenizer)
    layer = model.vision_model.encoder.layers[-1].layer_norm1
    prefix = 1 if family == "clip" else 0  # SigLIP has no class token

    def grid(tokens):
        return tokens[:, prefix:].reshape(tokens.shape[0], 4, 4, -1).permute(0, 3, 1, 2)

    padding = "max_length" if family == "siglip" else True
    tokens = hf_tokenizer(text=["a photo of a cat", "a photo of a dog"], padding=padding, return_tensors="pt")
    with torch.no_grad():
        texts = model.get_text_features(**tokens).pooler_output
    for index, text in enumerate(texts):
        text = F.normalize(text, dim=0)

        def embed(batch):
            return F.normalize(model.get_image_features(pixel_values=batch).pooler_output, dim=-1)

        A, G, _ = capture_score(embed, layer, x, lambda emb: emb @ text, grid)
        raw = np.maximum(np.tensordot(gradcam_weights(A[0], G[0]), A[0], axes=1), 0)
        assert raw.max() > 1e-4  # a map, not zeros (measured 6e-4 to 6e-3)
        np.testing.assert_allclose(result.maps[0, index], min_max(finish_layer(raw, (32, 32))), atol=MAP_ATOL, rtol=0)


def test_two_prompts_give_different_maps_and_the_winners_are_the_argmax(clip_vit, tokenizer):
    x = images(2, 32, seed=6)
    result = explain_prompts(clip_vit, x, PROMPTS, tokenizer=tokenizer)
    # Different prompts, different maps: measured mean |difference| 0.17 and 0.22 between
    # the normalised maps of the two images (identical maps would give 0); cosines 0.09, 0.11 apart.
    for image in range(2):
        assert np.abs(result.maps[image, 0] - result.maps[image, 1]).mean() > 0.02
        assert abs(result.scores[image, 0] - result.scores[image, 1]) > 1e-3
    raw, winners = result.raw_maps, result.winners
    assert winners.shape == (2, 32, 32) and winners.dtype == np.int64
    some = raw.max(axis=1) > 0
    # At every pixel the winner's raw map is the largest there; -1 exactly where all are 0.
    picked = np.take_along_axis(raw, np.maximum(winners, 0)[:, None], axis=1)[:, 0]
    np.testing.assert_array_equal(picked[some], raw.max(axis=1)[some])
    np.testing.assert_array_equal(winners[~some], -1)
    assert (winners[some] >= 0).all() and (winners < len(PROMPTS)).all()
    assert len(np.unique(winners[winners >= 0])) >= 2  # more than one prompt wins somewhere (measured 3 and 2)


def test_prompt_winners_by_hand():
    maps = np.zeros((2, 1, 3))
    maps[0, 0] = [0.5, 0.1, 0.0]
    maps[1, 0] = [0.2, 0.3, 0.0]
    np.testing.assert_array_equal(prompt_winners(maps), [[0, 1, -1]])
    np.testing.assert_array_equal(prompt_winners(torch.as_tensor(maps)[None]), [[[0, 1, -1]]])
    with pytest.raises(ValueError, match=r"\(\.\.\., P, H, W\)"):
        prompt_winners(np.zeros((2, 3)))


def test_a_batch_of_images_equals_each_image_alone(clip_rn, tokenizer):
    x = images(2, 64, seed=7)
    together = explain_prompts(clip_rn, x, PROMPTS[:2], tokenizer=tokenizer, method=HiResCAM)
    for index in range(2):
        alone = explain_prompts(clip_rn, x[index : index + 1], PROMPTS[:2], tokenizer=tokenizer, method="hirescam")
        np.testing.assert_allclose(together.maps[index], alone.maps[0], atol=1e-6, rtol=0)
        np.testing.assert_allclose(together.raw_maps[index], alone.raw_maps[0], atol=1e-7, rtol=0)
        np.testing.assert_allclose(together.scores[index], alone.scores[0], atol=1e-7, rtol=0)
        np.testing.assert_array_equal(together.winners[index], alone.winners[0])


def state_of(model: torch.nn.Module) -> tuple:
    return (
        [module.training for module in model.modules()],
        [parameter.requires_grad for parameter in model.parameters()],
        [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
        {name: value.clone() for name, value in model.state_dict().items()},
        [parameter.grad is None for parameter in model.parameters()],
    )


def test_the_model_is_left_as_found(clip_vit, hf_siglip, tokenizer, hf_tokenizer):
    for model, tok in ((clip_vit, tokenizer), (hf_siglip, hf_tokenizer)):
        # A mix of modes: train mode with one submodule in eval mode.
        model.train()
        model.visual.transformer.resblocks[0].eval() if model is clip_vit else model.vision_model.head.eval()
        try:
            before = state_of(model)
            ImageTextSimilarityTarget("a cat", model=model, tokenizer=tok)
            explain_prompts(model, images(1, 32), ["a cat", "a dog"], tokenizer=tok)
            after = state_of(model)
        finally:
            model.eval()  # the module's fixture, as the other tests expect it
        assert after[:3] == before[:3] and after[4] == before[4]
        assert all(torch.equal(before[3][name], value) for name, value in after[3].items())


def test_the_picture(clip_vit, tokenizer):
    x = images(1, 32, seed=8)
    result = explain_prompts(clip_vit, x, PROMPTS, tokenizer=tokenizer)
    photo = x[0].permute(1, 2, 0).numpy()
    picture = draw_prompt_maps(photo, result)
    # A 20-pixel caption above each panel; the legend (3 lines of 18 pixels below a
    # 24-pixel margin, 6 below) is taller than these 32-pixel panels, which are padded.
    assert picture.dtype == np.uint8 and picture.shape[0] == 30 + 18 * len(PROMPTS)
    assert picture.shape[1] >= (len(PROMPTS) + 2) * 32 + 120  # photo, 3 overlays, winners, legend
    np.testing.assert_array_equal(picture[20:52, :32], np.uint8(np.round(photo * 255)))
    assert (picture[52:, : 5 * 32] == 0).all()
    overlay = picture[20:52, 32:64].astype(np.float32)
    assert np.abs(overlay - np.round(photo * 255)).mean() > 20  # a map over the photo (measured 55)
    with pytest.raises(ValueError, match=r"\(32, 32\)"):
        draw_prompt_maps(photo[:16], result)


# ------------------------------------------------------------------ errors
def test_clear_errors(clip_vit, hf_siglip, tokenizer):
    encoder = ImageEncoder(clip_vit)  # no tokenizer
    with pytest.raises(ValueError, match=r"'a cat' is a string, but no tokenizer.*get_tokenizer"):
        ImageTextSimilarityTarget("a cat", model=encoder)
    with pytest.raises(ValueError, match="no tokenizer"):
        explain_prompts(clip_vit, images(1, 32), ["a cat", "a dog"])
    with pytest.raises(ValueError, match="pass model="):
        ImageTextSimilarityTarget("a cat", tokenizer=tokenizer)
    target = ImageTextSimilarityTarget(torch.ones(16))
    with pytest.raises(ValueError, match=r"image embedding has 24 numbers.*text embedding has 16"):
        target(encoder(images(1, 32))[0])
    with pytest.raises(ValueError, match=r"has 24 numbers.*has 16"):
        explain_prompts(clip_vit, images(1, 32), torch.ones(2, 16))
    with pytest.raises(ValueError, match=r"\(D,\) or \(P, D\)"):
        ImageTextSimilarityTarget(torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match="does not depend on the target"):
        explain_prompts(clip_vit, images(1, 32), torch.ones(2, 24), method="eigencam")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*image\[None\]"):
        explain_prompts(clip_vit, images(1, 32)[0], torch.ones(2, 24))
    with pytest.raises(TypeError, match="Linear is not an image-text model"):
        ImageEncoder(torch.nn.Linear(2, 2))
    vision_tower = transformers.SiglipVisionModel(hf_siglip.config.vision_config)
    with pytest.raises(TypeError, match="vision tower without a text tower"):
        ImageTextSimilarityTarget(torch.tensor([3, 6, 2]), model=vision_tower)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_a_vision_tower_alone_is_explained_with_text_embeddings(family, hf_clip, hf_siglip, hf_tokenizer):
    """CLIPVisionModelWithProjection and SiglipVisionModel (the towers without the text
    side) sharing the full model's weights give its image embeddings and maps."""
    full_model = hf_clip if family == "clip" else hf_siglip
    if family == "clip":
        config = dict(full_model.config.vision_config.to_dict(), projection_dim=24)
        tower = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**config))
        weights = {k: v for k, v in full_model.state_dict().items() if k.startswith(("vision_model.", "visual_"))}
    else:
        tower = transformers.SiglipVisionModel(full_model.config.vision_config)
        weights = full_model.vision_model.state_dict()
    tower.load_state_dict(weights)
    tower.eval()
    x = images(1, 32, seed=9)
    texts = ImageEncoder(full_model, hf_tokenizer).encode_text(["a photo of a cat", "a car"])
    with torch.no_grad():
        np.testing.assert_allclose(ImageEncoder(tower)(x), ImageEncoder(full_model)(x), atol=1e-6, rtol=0)
    alone, full = explain_prompts(tower, x, texts), explain_prompts(full_model, x, texts)
    np.testing.assert_allclose(alone.maps, full.maps, atol=1e-6, rtol=0)
    assert alone.prompts == ["prompt 0", "prompt 1"] and full.maps.max() > 0.99


@pytest.mark.parametrize("trunk", ["test_vit", "test_convnext"])
def test_open_clip_timm_towers_get_their_layer(trunk, tokenizer):
    """open_clip towers built on timm (SigLIP's ViT with attention pooling, ConvNeXt):
    the default layer is the trunk's last block's norm1 (with the trunk's token grid)
    or its last stage, and explain_prompts' maps are GradCAM's there."""
    pytest.importorskip("timm", reason="open_clip's timm towers need timm (test extra)")
    torch.manual_seed(10)
    pool, projection, embed_dim = ("map", "none", 64) if trunk == "test_vit" else ("", "linear", 24)
    vision_cfg = dict(
        image_size=64, timm_model_name=trunk, timm_model_pretrained=False, timm_pool=pool, timm_proj=projection
    )
    text_cfg = dict(context_length=CONTEXT, vocab_size=49408, width=32, heads=2, layers=1)
    model = open_clip.CLIP(embed_dim=embed_dim, vision_cfg=vision_cfg, text_cfg=text_cfg).eval()
    encoder = ImageEncoder(model, tokenizer)
    tower = model.visual.trunk
    layer = tower.blocks[-1].norm1 if trunk == "test_vit" else tower.stages[-1]
    assert encoder.target_layers() == [layer]
    x = images(1, 64, seed=11)
    result = explain_prompts(encoder, x, PROMPTS[:2])
    transform = vit_reshape_transform_for(tower) if trunk == "test_vit" else None
    for index, prompt in enumerate(PROMPTS[:2]):
        by_hand = GradCAM(encoder, [layer], reshape_transform=transform)(
            x, [ImageTextSimilarityTarget(prompt, model=encoder)]
        )
        np.testing.assert_allclose(result.maps[:, index], by_hand, atol=1e-6, rtol=0)
    # Two prompts, two maps (measured mean |difference| 0.06 and 0.11; raw maxima 8e-5 and 0.05).
    assert result.raw_maps.max() > 1e-5 and np.abs(result.maps[0, 0] - result.maps[0, 1]).mean() > 0.02
