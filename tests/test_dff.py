"""Deep Feature Factorization: the torch NMF against scikit-learn's ``NMF``
(docs/decisions.md, D10: a test-only oracle), ``dff``'s contract, ``DeepFeatureFactorization``
on ResNet-18, ``run_dff_on_image`` and the two drawing helpers, by hand."""

from __future__ import annotations

import copy
import warnings

import cv2
import numpy as np
import pytest
import torch
from cam_reference import single_thread_module  # noqa: F401 - autouse fixture
from sklearn.decomposition import NMF

from pytorch_grad_cam import DeepFeatureFactorization, run_dff_on_image
from pytorch_grad_cam.feature_factorization import deep_feature_factorization as dff_module
from pytorch_grad_cam.feature_factorization.deep_feature_factorization import dff
from pytorch_grad_cam.utils.image import (
    concept_colors,
    create_labels_legend,
    scale_cam_image,
    show_factorization_on_image,
)

SIZE = 224


@pytest.fixture(scope="module")
def cat_224():
    """The cat photo at 224×224: (uint8 RGB, (3, 224, 224) ImageNet-normalised tensor)."""
    from skimage import data

    rgb = cv2.resize(data.chelsea(), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    tensor = torch.from_numpy(((rgb / 255 - mean) / std).astype(np.float32)).permute(2, 0, 1)
    return rgb, tensor


@pytest.fixture(scope="module")
def images(cat_224):
    """(2, 3, 224, 224): the cat and its mirror image."""
    tensor = cat_224[1]
    return torch.stack([tensor, tensor.flip(-1)])


@pytest.fixture(scope="module")
def layer4_activations(resnet18, images):
    """ResNet-18 (seeded random weights) layer4 on the two images: (2, 512, 7, 7) float32."""
    recorded = []
    handle = resnet18.layer4.register_forward_hook(lambda m, i, o: recorded.append(o))
    try:
        with torch.no_grad():
            resnet18(images)
    finally:
        handle.remove()
    return recorded[0].numpy()


def shifted_matrix(activations: np.ndarray):
    """V (C, B·h·w) in float64 and the per-row offset, as dff builds them."""
    matrix = activations.transpose(1, 0, 2, 3).reshape(activations.shape[1], -1).astype(np.float64)
    offset = matrix.min(axis=1, keepdims=True)
    return matrix - offset, offset


# ---------------------------------------------------------------- dff / NMF
@pytest.mark.parametrize("n_components", [2, 5, 10])
def test_nmf_error_within_5_percent_of_sklearn(layer4_activations, n_components):
    """‖V − WH‖_F of ours against sklearn NMF(init='random', random_state=0) at the same rank.
    Measured ratios on these activations: 1.0016 (n=2), 1.0000 (n=5), 0.9994 (n=10)."""
    matrix, offset = shifted_matrix(layer4_activations)
    concepts, explanations = dff(layer4_activations, n_components)
    weights = concepts.astype(np.float64) - offset  # concepts = W + offset
    factors = explanations.transpose(1, 0, 2, 3).reshape(n_components, -1).astype(np.float64)
    ours = np.linalg.norm(matrix - weights @ factors)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's ConvergenceWarning at max_iter
        nmf = NMF(n_components, init="random", random_state=0)
        sklearn_weights = nmf.fit_transform(matrix)
    reference = np.linalg.norm(matrix - sklearn_weights @ nmf.components_)
    assert reference > 0.1 * np.linalg.norm(matrix)  # a real approximation, not exact
    assert ours <= 1.05 * reference, (n_components, ours / reference)
    # A fit at all: far better than the best constant.
    assert ours < 0.9 * np.linalg.norm(matrix - matrix.mean())


def test_dff_shapes_offset_and_nonnegativity(layer4_activations):
    n_components = 4
    before = layer4_activations.copy()
    concepts, explanations = dff(layer4_activations, n_components)
    np.testing.assert_array_equal(layer4_activations, before)  # the caller's array is not written
    batch, channels, height, width = layer4_activations.shape
    assert concepts.shape == (channels, n_components) and concepts.dtype == np.float32
    assert explanations.shape == (batch, n_components, height, width) and explanations.dtype == np.float32
    assert explanations.min() >= 0 and explanations.max() > 0
    matrix, offset = shifted_matrix(layer4_activations)
    weights = concepts - offset
    assert weights.min() >= -1e-5 * np.abs(concepts).max()  # W = concepts - offset >= 0
    # Every concept column is shifted by the same per-channel offset (the rows' minima).
    raw = layer4_activations.transpose(1, 0, 2, 3).reshape(channels, -1)
    np.testing.assert_allclose(offset[:, 0], raw.min(axis=1), rtol=0, atol=0)


def test_dff_keeps_the_input_kind_and_is_seeded_locally(layer4_activations):
    tensor = torch.from_numpy(layer4_activations.copy())
    state = torch.get_rng_state()
    concepts, explanations = dff(tensor, 3)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is never drawn from
    assert torch.is_tensor(concepts) and torch.is_tensor(explanations)
    assert concepts.dtype == explanations.dtype == torch.float32
    assert concepts.device == explanations.device == tensor.device
    numpy_concepts, numpy_explanations = dff(layer4_activations, 3)
    np.testing.assert_array_equal(concepts.numpy(), numpy_concepts)  # the same seed, the same result
    np.testing.assert_array_equal(explanations.numpy(), numpy_explanations)


def test_dff_nan_is_zero_and_a_constant_layer_factors_to_zero():
    activations = np.ones((1, 3, 2, 2), dtype=np.float32)
    concepts, explanations = dff(activations, 2)
    np.testing.assert_array_equal(concepts, np.ones((3, 2)))  # W = 0, offset = 1
    np.testing.assert_array_equal(explanations, 0)
    with_nan = np.array(activations)
    with_nan[0, 0, 0, 0] = np.nan
    zeroed = np.array(activations)
    zeroed[0, 0, 0, 0] = 0
    for got, expected in zip(dff(with_nan, 2), dff(zeroed, 2)):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_dff_rejects_a_bad_rank(layer4_activations, bad):
    with pytest.raises(ValueError, match="n_components"):
        dff(layer4_activations, bad)


def test_dff_needs_4d_activations():
    with pytest.raises(ValueError, match=r"\(B, C, h, w\)"):
        dff(np.ones((2, 5, 3), dtype=np.float32))


# ---------------------------------------------------------------- DeepFeatureFactorization
def test_deep_feature_factorization_on_resnet18(resnet18, images, layer4_activations):
    n_components = 5
    factorization = DeepFeatureFactorization(
        resnet18, target_layer=resnet18.layer4, computation_on_concepts=resnet18.fc
    )
    concepts, explanations, concept_outputs = factorization(images, n_components=n_components)
    expected_concepts, expected_maps = dff(layer4_activations, n_components)
    np.testing.assert_allclose(concepts, expected_concepts, rtol=0, atol=1e-5 * np.abs(concepts).max())
    # Explanations: a list of B (n, H, W) maps, each min-max scaled and resized bilinearly.
    assert isinstance(explanations, list) and len(explanations) == 2
    for image_maps, small in zip(explanations, expected_maps):
        assert image_maps.shape == (n_components, SIZE, SIZE) and image_maps.dtype == np.float32
        for got, map_ in zip(image_maps, small):
            shifted = map_ - map_.min()
            by_hand = cv2.resize(shifted / (shifted.max() + 1e-7), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
            np.testing.assert_allclose(got, by_hand, atol=1e-4)
            # In [0, 1]; the 7x7 peak of 1 falls between the 224x224 half-pixel centres.
            assert got.min() >= 0 and 0.95 < got.max() <= 1
    # Concept outputs: the classifier head on each concept, (n, classes).
    assert concept_outputs.shape == (n_components, 1000) and concept_outputs.dtype == np.float32
    with torch.no_grad():
        by_head = resnet18.fc(torch.from_numpy(concepts.T.copy())).numpy()
    np.testing.assert_allclose(concept_outputs, by_head, rtol=0, atol=1e-5)
    # Without a head: two results; the same call again gives the same numbers.
    plain = DeepFeatureFactorization(resnet18, resnet18.layer4)(images, n_components=n_components)
    assert len(plain) == 2
    np.testing.assert_array_equal(plain[0], concepts)
    for first, second in zip(plain[1], explanations):
        np.testing.assert_array_equal(first, second)


def test_a_batch_is_one_joint_factorization(resnet18, images, layer4_activations):
    """A batch shares one set of concepts (the point of DFF: the same parts across images),
    so two images are not two separate factorizations: one image alone is the
    factorization of its own activations, the pair that of both images' together."""
    factorization = DeepFeatureFactorization(resnet18, resnet18.layer4)
    single_concepts, single = factorization(images[:1], n_components=3)
    expected_concepts, expected_maps = dff(layer4_activations[:1], 3)
    np.testing.assert_allclose(single_concepts, expected_concepts, rtol=0, atol=1e-5 * np.abs(expected_concepts).max())
    assert len(single) == 1
    np.testing.assert_allclose(single[0], scale_cam_image(expected_maps[0], (SIZE, SIZE)), atol=1e-5)
    pair_concepts, pair = factorization(images, n_components=3)
    assert len(pair) == 2 and not np.allclose(pair_concepts, single_concepts)


def test_model_state_is_left_as_found(resnet18, images):
    model = copy.deepcopy(resnet18)
    model.train()
    model.layer2.eval()
    model.layer1[0].conv1.weight.requires_grad_(False)
    modes = {name: module.training for name, module in model.named_modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    state = {name: value.clone() for name, value in model.state_dict().items()}
    factorization = DeepFeatureFactorization(model, "layer4", computation_on_concepts=model.fc)
    train_result = factorization(images, n_components=3)
    assert {name: module.training for name, module in model.named_modules()} == modes
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    # Eval mode during the call: BatchNorm's running statistics are not updated.
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert not module._backward_hooks
    # The same numbers as on the model in eval mode.
    model.eval()
    eval_result = factorization(images, n_components=3)
    np.testing.assert_array_equal(train_result[0], eval_result[0])
    np.testing.assert_array_equal(train_result[2], eval_result[2])


def test_hooks_are_removed_when_the_model_raises(resnet18):
    model = copy.deepcopy(resnet18)
    factorization = DeepFeatureFactorization(model, model.layer4)
    with pytest.raises(RuntimeError):
        factorization(torch.zeros(1, 5, 64, 64), n_components=2)  # 5 channels: conv1 fails
    for module in model.modules():
        assert not module._forward_hooks


def test_deep_feature_factorization_errors(resnet18, images, small_cnn):
    with pytest.raises(ValueError, match="not inside the model"):
        DeepFeatureFactorization(resnet18, small_cnn.features[0])
    with pytest.raises(ValueError, match="one layer"):
        DeepFeatureFactorization(resnet18, [resnet18.layer3, resnet18.layer4])
    factorization = DeepFeatureFactorization(resnet18, resnet18.layer4)
    with pytest.raises(ValueError, match=r"input_tensor\[None\]"):
        factorization(images[0])
    with pytest.raises(TypeError, match="torch.Tensor"):
        factorization(images.numpy())
    flat = DeepFeatureFactorization(resnet18, resnet18.fc)
    with pytest.raises(ValueError, match="reshape_transform"):
        flat(images[:1], n_components=2)


def test_reshape_transform_is_applied(resnet18, images):
    """Transformer-style tokens (B, h·w, C) turned back into (B, C, h, w) factor the same."""
    to_tokens = DeepFeatureFactorization(resnet18, resnet18.layer4)
    expected = to_tokens(images[:1], n_components=2)

    class Tokens(torch.nn.Module):
        def forward(self, x):
            return x.flatten(2).transpose(1, 2)

    class Back(torch.nn.Module):
        def forward(self, x):
            side = int(round(x.shape[1] ** 0.5))
            return x.transpose(1, 2).reshape(x.shape[0], -1, side, side)

    model = torch.nn.Sequential(
        torch.nn.Sequential(*list(resnet18.children())[:-2]), Tokens(), Back(), torch.nn.AdaptiveAvgPool2d(1)
    ).eval()

    def reshape(tokens):
        side = int(round(tokens.shape[1] ** 0.5))
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)

    got = DeepFeatureFactorization(model, model[1], reshape_transform=reshape)(images[:1], n_components=2)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1][0], expected[1][0])


# ---------------------------------------------------------------- labels and drawing
def test_create_labels_legend_by_hand():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]])
    names = {0: "tabby, tabby cat, cat, kitty", 1: "tiger cat", 2: "lynx, catamount"}
    expected = ["tiger cat:0.70\nlynx, catamount:0.20", "tabby, tabby cat, cat:0.50\ntiger cat:0.30"]
    assert create_labels_legend(scores, names, top_k=2) == expected
    assert create_labels_legend(torch.tensor(scores), [names[i] for i in range(3)]) == expected
    assert create_labels_legend(scores, names, top_k=1) == ["tiger cat:0.70", "tabby, tabby cat, cat:0.50"]


def test_show_factorization_on_image_assigns_each_pixel_its_strongest_concept():
    """Two concepts coloured pure red and pure blue: a pixel takes the colour of its argmax
    (the first concept on a tie) at value uint8(255·strength); with S = 255 and hue 0 or 120
    (OpenCV's degrees/2) the RGB back from HSV is exactly (V, 0, 0) or (0, 0, V)."""
    explanations = np.array([[[0.8, 0.2, 0.5], [0.0, 1.0, 0.3]], [[0.1, 0.6, 0.5], [0.4, 0.0, 0.9]]], dtype=np.float32)
    img = np.linspace(0, 1, 18, dtype=np.float32).reshape(2, 3, 3)
    before_maps, before_img = explanations.copy(), img.copy()
    weight = 0.25
    result = show_factorization_on_image(img, explanations, colors=[(1, 0, 0), (0, 0, 1, 1)], image_weight=weight)
    np.testing.assert_array_equal(explanations, before_maps)  # never written (the reference zeroes losers)
    np.testing.assert_array_equal(img, before_img)
    assert result.shape == (2, 3, 3) and result.dtype == np.uint8
    overlay = np.zeros((2, 3, 3), dtype=np.float32)
    winners = {
        (0, 0): (0, 0.8),
        (0, 1): (2, 0.6),
        (0, 2): (0, 0.5),
        (1, 0): (2, 0.4),
        (1, 1): (0, 1.0),
        (1, 2): (2, 0.9),
    }
    for (row, column), (channel, strength) in winners.items():
        overlay[row, column, channel] = np.uint8(255 * np.float32(strength)) / 255
    expected = np.uint8((img * weight + overlay * (1 - weight)) * 255)
    np.testing.assert_allclose(result.astype(int), expected.astype(int), atol=1)


def test_show_factorization_legend_panel():
    rng = np.random.default_rng(0)
    img = rng.random((96, 80, 3)).astype(np.float32)
    explanations = rng.random((3, 96, 80)).astype(np.float32)
    plain = show_factorization_on_image(img, explanations)
    labelled = show_factorization_on_image(img, explanations, concept_labels=["a:0.50\nb:0.20", "c:0.90", "d:0.10"])
    assert labelled.shape == (96, 160, 3) and labelled.dtype == np.uint8
    np.testing.assert_array_equal(labelled[:, :80], plain)
    legend = labelled[:, 80:]
    # A swatch of every concept's default colour, and dark text, on white.
    for color in np.uint8(concept_colors(3) * 255):
        assert np.all(legend == color, axis=-1).sum() >= 4, color
    assert (legend.max(axis=-1) < 100).sum() > 20
    with pytest.raises(ValueError, match="labels"):
        show_factorization_on_image(img, explanations, concept_labels=["one"])
    with pytest.raises(ValueError, match="colours"):
        show_factorization_on_image(img, explanations, colors=[(1, 0, 0)])
    with pytest.raises(ValueError, match="image's size"):
        show_factorization_on_image(img, explanations[:, :10])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        show_factorization_on_image(np.uint8(img * 255), explanations)


def test_default_colours_sweep_the_rainbow_from_red():
    colors = concept_colors(6)
    np.testing.assert_allclose(colors[0], [1, 0, 0], atol=1e-6)
    hues = cv2.cvtColor(colors[None].astype(np.float32), cv2.COLOR_RGB2HSV)[0, :, 0]
    np.testing.assert_allclose(hues, 300 * np.arange(6) / 6, atol=1e-3)  # red ... towards magenta
    assert np.all(colors.max(axis=1) == 1)


# ---------------------------------------------------------------- run_dff_on_image
def test_run_dff_on_image_on_resnet18(resnet18, cat_224, monkeypatch):
    rgb, tensor = cat_224
    seen = {}
    real_legend = dff_module.create_labels_legend

    def spy(scores, labels, top_k=2):
        seen.update(scores=scores, labels=labels, top_k=top_k)
        return real_legend(scores, labels, top_k)

    monkeypatch.setattr(dff_module, "create_labels_legend", spy)
    result = run_dff_on_image(resnet18, resnet18.layer4, resnet18.fc, rgb, tensor, None, n_components=3, top_k=2)
    assert result.shape == (SIZE, 3 * SIZE, 3) and result.dtype == np.uint8
    np.testing.assert_array_equal(result[:, :SIZE], rgb)
    # The middle is the factorization drawn over the image at image_weight 0.3.
    concepts, explanations, outputs = DeepFeatureFactorization(
        resnet18, resnet18.layer4, computation_on_concepts=resnet18.fc
    )(tensor[None], n_components=3)
    np.testing.assert_array_equal(
        result[:, SIZE : 2 * SIZE],
        show_factorization_on_image(np.float32(rgb) / 255, explanations[0], image_weight=0.3),
    )
    # Concept scores are the softmax of the head's outputs; labels are class indices here.
    np.testing.assert_allclose(seen["scores"], torch.softmax(torch.from_numpy(outputs), -1).numpy(), atol=1e-6)
    assert seen["labels"][:3] == ["0", "1", "2"] and len(seen["labels"]) == 1000 and seen["top_k"] == 2


def test_run_dff_on_image_uses_huggingface_labels(resnet18, cat_224, monkeypatch):
    """A model with ``config.id2label`` (HuggingFace) labels its concepts with those names."""
    from PIL import Image

    rgb, tensor = cat_224
    model = copy.deepcopy(resnet18)
    names = {index: f"class {index}, extra" for index in range(1000)}
    model.config = type("Config", (), {"id2label": names})()
    seen = {}

    def spy(scores, labels, top_k=2):
        seen["labels"] = labels
        return ["x"] * len(scores)

    monkeypatch.setattr(dff_module, "create_labels_legend", spy)
    result = run_dff_on_image(model, model.layer4, model.fc, Image.fromarray(rgb), tensor, n_components=2)
    assert seen["labels"] is names
    assert result.shape == (SIZE, 3 * SIZE, 3)


def test_segmentation_page_dff_block_gives_what_it_says(resnet18, images, cat_224):
    """docs/segmentation.md's DFF block (also run by test_docs_pages.py on the page's
    ResNet-50), here on ResNet-18: the shapes its comments state."""
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "segmentation.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", page, flags=re.S) if "DeepFeatureFactorization" in b]
    assert len(blocks) == 1
    namespace = {"model": resnet18, "input_tensor": images, "rgb_img": np.float32(cat_224[0]) / 255}
    exec(compile(blocks[0], "<docs/segmentation.md DFF block>", "exec"), namespace)
    assert namespace["concepts"].shape == (512, 4)
    assert len(namespace["explanations"]) == 2 and namespace["explanations"][0].shape == (4, SIZE, SIZE)
    assert namespace["concept_outputs"].shape == (4, 1000)
    np.testing.assert_allclose(namespace["scores"].sum(axis=1), 1, atol=1e-5)
    assert len(namespace["labels"]) == 4 and all(label.count("\n") == 1 for label in namespace["labels"])
    assert namespace["overlay"].shape == (SIZE, 2 * SIZE, 3) and namespace["overlay"].dtype == np.uint8


def test_reference_import_paths_and_signatures():
    """grad-cam's import paths, argument order and defaults."""
    import inspect

    import pytorch_grad_cam
    from pytorch_grad_cam.feature_factorization.deep_feature_factorization import (
        DeepFeatureFactorization as ByPath,
    )

    assert ByPath is DeepFeatureFactorization
    assert {"DeepFeatureFactorization", "run_dff_on_image"} <= set(pytorch_grad_cam.__all__)

    def parameters(function):
        return {name: p.default for name, p in inspect.signature(function).parameters.items()}

    empty = inspect.Parameter.empty
    assert parameters(dff) == {"activations": empty, "n_components": 5}
    assert parameters(DeepFeatureFactorization) == {
        "model": empty,
        "target_layer": empty,
        "reshape_transform": None,
        "computation_on_concepts": None,
    }
    assert parameters(DeepFeatureFactorization.__call__) == {"self": empty, "input_tensor": empty, "n_components": 16}
    assert parameters(run_dff_on_image) == {
        "model": empty,
        "target_layer": empty,
        "classifier": empty,
        "img_pil": empty,
        "img_tensor": empty,
        "reshape_transform": None,
        "n_components": 5,
        "top_k": 2,
    }
    assert parameters(create_labels_legend) == {"concept_scores": empty, "labels": empty, "top_k": 2}
    assert parameters(show_factorization_on_image) == {
        "img": empty,
        "explanations": empty,
        "colors": None,
        "image_weight": 0.5,
        "concept_labels": None,
    }
