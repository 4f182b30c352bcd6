"""The ablation layers and AblationCAM's ``ablation_layer=`` / ``ratio_channels_to_ablate=``
(issue 12; docs/decisions.md, D7 and D12): the channel choice against a numpy
computation of the rule, the replay protocol against hand-built ablated tensors,
AblationCAM with a given layer against the default path, and Faster R-CNN's FPN
backbone against the detector run with one FPN slice set to -1000 by a forward hook.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
from cam_reference import single_thread_module  # noqa: F401 - autouse fixture

from pytorch_grad_cam import AblationCAM, AblationLayer, AblationLayerFasterRCNN, AblationLayerVit
from pytorch_grad_cam import ablation_layer as ablation_layer_module
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, FasterRCNNBoxScoreTarget
from pytorch_grad_cam.utils.reshape_transforms import fasterrcnn_reshape_transform, vit_reshape_transform


class RecordingAblationCAM(AblationCAM):
    """AblationCAM that keeps the channel weights of its last call."""

    def ablation_weights(self, *args, **kwargs):
        self.weights = super().ablation_weights(*args, **kwargs)
        return self.weights


# ---------------------------------------------------------------- which channels (§7's rule in numpy)
def numpy_channels_to_ablate(activations: np.ndarray, ratio: float) -> list:
    """§7: mask = min-max(|first-PC projection|) > 0.01; score_c = Σ(mask·n_c)/Σ n_c with
    n_c = min-max(|A_c|); ascending sort; top ⌊K·ratio⌋ then bottom ⌊K·ratio⌋, each once."""
    channels = activations.shape[0]
    matrix = activations.reshape(channels, -1).T.astype(np.float64)
    matrix = matrix - matrix.mean(axis=0)
    projection = np.abs(matrix @ np.linalg.svd(matrix, full_matrices=False)[2][0])
    projection = projection - projection.min()
    mask = projection / projection.max() > 0.01
    magnitudes = np.abs(activations.reshape(channels, -1).astype(np.float64))
    magnitudes = magnitudes - magnitudes.min(axis=1, keepdims=True)
    magnitudes = magnitudes / magnitudes.max(axis=1, keepdims=True)
    scores = (magnitudes * mask).sum(axis=1) / magnitudes.sum(axis=1)
    order = np.argsort(scores, kind="stable")
    count = int(channels * ratio)
    picked = []
    for channel in list(order[channels - count :]) + list(order[:count]):
        if channel not in picked:
            picked.append(int(channel))
    return picked


@pytest.mark.parametrize("ratio, expected_count", [(0.1, 4), (0.5, 20), (0.9, 20), (0.04, 0), (1.0, 20)])
def test_activations_to_be_ablated_follows_the_rule_with_unique_channels(ratio, expected_count):
    generator = torch.Generator().manual_seed(7)
    activations = torch.randn(20, 6, 6, generator=generator, dtype=torch.float64)
    activations[:, :3, :3] += torch.rand(20, 1, 1, generator=generator, dtype=torch.float64) * 4  # an object
    layer = AblationLayer()
    chosen = layer.activations_to_be_ablated(activations.numpy(), ratio)
    assert chosen.dtype == np.int32 and layer.indices is chosen
    expected = list(range(20)) if ratio == 1.0 else numpy_channels_to_ablate(activations.numpy(), ratio)
    assert chosen.tolist() == expected
    assert len(chosen) == expected_count == len(set(chosen.tolist()))  # ratio 0.9: 2·18 picks, 20 unique
    as_tensor = layer.activations_to_be_ablated(activations.float(), ratio)
    assert torch.is_tensor(as_tensor) and as_tensor.tolist() == expected


def test_a_constant_channel_scores_zero_instead_of_nan():
    activations = torch.rand(6, 4, 4, generator=torch.Generator().manual_seed(1))
    activations[2] = 0.5  # |A_c| min-max scaled is 0/0 in grad-cam
    chosen = AblationLayer().activations_to_be_ablated(activations, 0.2)  # one top, then one bottom
    # Channel 2 is the bottom pick (the lowest score, 0); a NaN score would sort last and
    # make it the top pick instead.
    assert len(chosen) == 2 and chosen.tolist()[1] == 2 and chosen.tolist()[0] != 2


# ---------------------------------------------------------------- the replay protocol
def test_ablation_layer_replays_copies_with_one_channel_per_row_ablated():
    activations = torch.randn(2, 5, 3, 3, generator=torch.Generator().manual_seed(2))
    layer = AblationLayer()
    layer.indices = np.array([3, 0, 4], dtype=np.int32)
    layer.set_next_batch(input_batch_index=1, activations=activations, num_channels_to_ablate=3)
    value = float(activations[1].min()) - 1e7  # computed once from image 1: no drift row by row
    expected = activations[1:2].repeat(3, 1, 1, 1)
    for row, channel in enumerate([3, 0, 4]):
        expected[row, channel] = value
    assert torch.equal(layer(torch.zeros(1)), expected)
    assert torch.equal(layer(None), expected)  # calling again gives the same copies
    relu = torch.relu(activations)
    layer.set_next_batch(0, relu, 2)  # non-negative activations are ablated to 0
    expected = relu[0:1].repeat(2, 1, 1, 1)
    expected[0, 3] = 0
    expected[1, 0] = 0
    assert torch.equal(layer(None), expected)


def test_ablation_layer_vit_ablates_a_feature_of_every_token():
    tokens = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(3))  # 1 + 2x2 tokens of 6
    layer = AblationLayerVit()
    layer.indices = torch.tensor([5, 1])
    layer.set_next_batch(0, tokens, 2)
    expected = tokens[0:1].repeat(2, 1, 1)
    value = float(tokens[0].min()) - 1e7
    expected[0, :, 5] = value
    expected[1, :, 1] = value
    assert torch.equal(layer(None), expected)


def fpn_output(batch: int = 2) -> OrderedDict:
    generator = torch.Generator().manual_seed(4)
    return OrderedDict(
        (key, torch.randn(batch, 256, size, size, generator=generator))
        for key, size in (("0", 4), ("1", 4), ("2", 2), ("3", 2), ("pool", 1))
    )


def test_ablation_layer_fasterrcnn_sets_the_fpn_slice_to_minus_1000():
    features = fpn_output()
    layer = AblationLayerFasterRCNN()
    layer.indices = np.array([5, 300, 1279, 512], dtype=np.int32)
    layer.set_next_batch(1, features, 4)
    out = layer(None)
    assert list(out) == ["0", "1", "2", "3", "pool"] and isinstance(out, OrderedDict)
    for row, (key, channel) in enumerate([("0", 5), ("1", 44), ("pool", 255), ("2", 0)]):
        expected = {k: v[1:2].clone() for k, v in features.items()}
        expected[key][0, channel] = -1000.0
        for name in features:
            assert torch.equal(out[name][row : row + 1], expected[name]), (row, name)
    # The numbering is fasterrcnn_reshape_transform's: channel k of the concatenation.
    ablated = {k: v[:1] for k, v in out.items()}
    reshaped = fasterrcnn_reshape_transform(ablated)
    untouched = fasterrcnn_reshape_transform({k: v[1:2] for k, v in features.items()})
    changed = (reshaped != untouched).flatten(2).any(dim=2)[0]
    assert changed.nonzero().flatten().tolist() == [5]


# ---------------------------------------------------------------- AblationCAM's signature
def test_signature_and_a_fresh_default_ablation_layer_per_object(small_cnn):
    parameters = list(inspect.signature(AblationCAM).parameters)
    assert parameters[:6] == [
        "model",
        "target_layers",
        "reshape_transform",
        "ablation_layer",
        "batch_size",
        "ratio_channels_to_ablate",
    ]
    assert inspect.signature(AblationCAM).parameters["ablation_layer"].default is None
    first = AblationCAM(small_cnn, [small_cnn.features[-1]])
    second = AblationCAM(small_cnn, [small_cnn.features[-1]])
    assert type(first.ablation_layer) is AblationLayer and first.ablation_layer is not second.ablation_layer
    given = AblationLayerVit()
    assert AblationCAM(small_cnn, [small_cnn.features[-1]], None, given).ablation_layer is given
    with pytest.raises(ValueError, match="ratio_channels_to_ablate"):
        AblationCAM(small_cnn, [small_cnn.features[-1]], ratio_channels_to_ablate=0)
    with pytest.raises(TypeError, match="ablation_layer"):
        AblationCAM(small_cnn, [small_cnn.features[-1]], ablation_layer=torch.nn.ReLU())


def test_ablation_cam_multilayer_is_not_provided():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("pytorch_grad_cam.ablation_cam_multilayer")


def test_the_ablation_layers_are_exported_from_the_package():
    import pytorch_grad_cam

    for name in ("AblationLayer", "AblationLayerVit", "AblationLayerFasterRCNN"):
        assert name in pytorch_grad_cam.__all__
        assert getattr(pytorch_grad_cam, name) is getattr(ablation_layer_module, name)


# ---------------------------------------------------------------- AblationCAM with a given layer
@pytest.mark.parametrize("layer_index", [-1, -2])  # after the last ReLU (0); its conv (min - 1e7)
def test_a_given_ablation_layer_gives_the_default_weights(small_cnn, layer_index):
    layer = small_cnn.features[layer_index]
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(3)]
    default = RecordingAblationCAM(small_cnn, [layer], progress=False, batch_size=7)
    given = RecordingAblationCAM(small_cnn, [layer], ablation_layer=AblationLayer(), progress=False, batch_size=7)
    maps = default(images, targets)
    np.testing.assert_array_equal(given(images, targets), maps)
    assert torch.equal(given.weights, default.weights) and default.weights.abs().max() > 1e-3


def count_rows(module: torch.nn.Module) -> tuple:
    rows = [0]
    handle = module.register_forward_hook(lambda m, i, out: rows.__setitem__(0, rows[0] + out.shape[0]))
    return rows, handle


def test_a_ratio_ablates_only_the_chosen_channels(small_cnn):
    layer = small_cnn.features[-1]  # 32 channels
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    targets = [ClassifierOutputTarget(2)]
    runs = {}
    for ratio in (1.0, 0.25, 0.9):
        cam = RecordingAblationCAM(small_cnn, [layer], ratio_channels_to_ablate=ratio, progress=False)
        rows, handle = count_rows(small_cnn.fc)
        try:
            cam(image, targets)
        finally:
            handle.remove()
        runs[ratio] = (cam.weights[0], rows[0], cam.ablation_layer.indices)
    full_weights, full_rows, _ = runs[1.0]
    weights, rows, chosen = runs[0.25]
    assert len(chosen) == 16 == len(set(chosen.tolist()))  # top 8 and bottom 8
    assert full_rows - rows == 32 - 16  # fewer forwards: only the chosen channels
    others = torch.ones(32, dtype=torch.bool)
    others[chosen] = False
    assert torch.equal(weights[chosen], full_weights[chosen]) and (weights[others] == 0).all()
    # ratio 0.9: 2·28 picks in grad-cam (channels twice); here every channel once.
    weights, rows, chosen = runs[0.9]
    assert sorted(chosen.tolist()) == list(range(32)) and rows == full_rows
    assert torch.equal(weights, full_weights)


class ZeroedTarget:
    """Class ``category``'s logit where it fell by more than ``margin`` below ``original``,
    else exactly 0: the original image scores 0."""

    def __init__(self, category: int, original: float, margin: float = 1e-3) -> None:
        self.category, self.original, self.margin = category, original, margin

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        logit = output[self.category]
        return torch.where(logit < self.original - self.margin, logit, torch.zeros_like(logit))


def test_a_zero_original_score_gives_finite_weights(small_cnn):
    layer = small_cnn.features[-1]
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    category = 0
    with torch.no_grad():
        original = float(small_cnn(image)[0, category])
    plain = RecordingAblationCAM(small_cnn, [layer], progress=False)
    plain(image, [ClassifierOutputTarget(category)])
    ablated_logits = original * (1 - plain.weights[0])  # s_k from w_k = (s - s_k) / s
    zeroed = RecordingAblationCAM(small_cnn, [layer], progress=False)
    maps = zeroed(image, [ZeroedTarget(category, original)])
    assert np.isfinite(maps).all() and torch.isfinite(zeroed.weights).all()
    expected = -torch.where(ablated_logits < original - 1e-3, ablated_logits, torch.zeros_like(ablated_logits))
    assert (expected != 0).sum() >= 3  # some channels do lower the score
    torch.testing.assert_close(zeroed.weights[0], expected, atol=1e-4, rtol=0)  # w_k = (0 - s_k) / 1


# ---------------------------------------------------------------- ViT
def test_ablation_layer_vit_on_deit_gives_the_default_weights(deit_tiny):
    layer = deit_tiny.blocks[-1].norm1
    image = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(9)) * 2 - 1
    targets = [ClassifierOutputTarget(281)]
    results = {}
    for name, given in (("default", None), ("vit", AblationLayerVit())):
        cam = RecordingAblationCAM(
            deit_tiny, [layer], vit_reshape_transform, ablation_layer=given, batch_size=64, progress=False
        )
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # the tail serves, no fallback
            results[name] = (cam(image, targets), cam.weights[0])
    np.testing.assert_array_equal(results["vit"][0], results["default"][0])
    weights = results["vit"][1]
    assert torch.equal(weights, results["default"][1]) and weights.abs().max() > 0
    # Independently: feature k of the patch tokens (what vit_reshape_transform gathers into
    # channel k) set to 0 before norm1's Linear consumers; the class token keeps its value.
    with torch.no_grad():
        score = deit_tiny(image)[0, 281]
        for channel in (0, 77, 191):

            def ablate(module, inputs, output, channel=channel):
                output = output.clone()
                output[:, 1:, channel] = 0
                return output

            handle = layer.register_forward_hook(ablate)
            try:
                ablated = deit_tiny(image)[0, 281]
            finally:
                handle.remove()
            # Measured within 1.2e-6 of weights up to 0.03 (float32 passes of the whole model).
            assert float(weights[channel]) == pytest.approx(float((score - ablated) / score), abs=1e-5)


# ---------------------------------------------------------------- Faster R-CNN
def test_faster_rcnn_ablation_at_the_fpn_backbone(fasterrcnn):
    model = fasterrcnn
    image = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        detections = model(image)[0]
    target = FasterRCNNBoxScoreTarget(detections["labels"][:3], detections["boxes"][:3])
    cam = RecordingAblationCAM(
        model,
        [model.backbone],
        reshape_transform=fasterrcnn_reshape_transform,
        ablation_layer=AblationLayerFasterRCNN(),
        ratio_channels_to_ablate=0.01,
        batch_size=16,
        progress=False,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        maps = cam(image, targets=[target])
    assert any("re-runs the whole model" in str(w.message) for w in caught)  # detectors do not trace
    assert maps.shape == (1, 96, 96) and np.isfinite(maps).all()
    chosen = cam.ablation_layer.indices.tolist()
    assert len(chosen) == 2 * int(768 * 0.01) == len(set(chosen))  # levels '0', '1', 'pool' of 256
    weights = cam.weights[0]
    others = torch.ones(768, dtype=torch.bool)
    others[chosen] = False
    assert (weights[others] == 0).all()
    assert len(set(weights[chosen].round(decimals=3).tolist())) >= 3  # 0, 1 (detections lost) and between
    # Independently: the detector with FPN level k // 256, channel k % 256 set to -1000.
    keys = ["0", "1", "pool"]
    with torch.no_grad():
        score = float(target(model(image)[0]))
        for channel in chosen:

            def ablate(module, inputs, output, channel=channel):
                output = OrderedDict((key, value.clone()) for key, value in output.items())
                output[keys[channel // 256]][:, channel % 256] = -1000.0
                return output

            handle = model.backbone.register_forward_hook(ablate)
            try:
                ablated = float(target(model(image)[0]))
            finally:
                handle.remove()
            # Measured within 5e-9 (the same detector runs, batched or not).
            assert float(weights[channel]) == pytest.approx((score - ablated) / score, abs=1e-5), channel


def test_faster_rcnn_backbone_needs_an_ablation_layer_for_dicts(fasterrcnn):
    image = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    cam = AblationCAM(fasterrcnn, [fasterrcnn.backbone], fasterrcnn_reshape_transform, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(TypeError, match="AblationLayerFasterRCNN"):
            cam(image, targets=[FasterRCNNBoxScoreTarget([1], [[0, 0, 10, 10]])])
