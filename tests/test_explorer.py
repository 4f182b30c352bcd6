"""The explorer's logic without a browser (pytorch_grad_cam.explorer.models and .session):
the maps it shows are the library's own call, its Python snippet runs and gives the same
maps, its cam.py command parses and names the same choices, the layer tree and the
preselected layer, the top-5 classes and the class search, the downloads, the refused
uploads, the user's registered models, Cancel, ``explore --help``, and that neither the
library nor this gradio-free logic imports gradio. The detector mode (SSDlite: its boxes,
one box's map against explain_detections, a photo without a box) and the CLIP mode (the
prompts' maps against explain_prompts), each with its snippet and cam.py command. The page itself: test_explorer_browser.py.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import cv2
import numpy as np
import open_clip
import pytest
import torch

from pytorch_grad_cam import EigenCAM, GradCAM
from pytorch_grad_cam.cli import app as cli
from pytorch_grad_cam.cli.arguments import build_parser, parse_arguments
from pytorch_grad_cam.cli.detect import detector_input
from pytorch_grad_cam.cli.detector_zoo import DETECTORS
from pytorch_grad_cam.cli.jobs import model_input, read_photo
from pytorch_grad_cam.cli.model_zoo import MODELS, ModelEntry, WeightsUnavailable, imagenet_classes
from pytorch_grad_cam.cli.prompts import square
from pytorch_grad_cam.detection import explain_detections
from pytorch_grad_cam.explorer import command, detections, models, prompts, session
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.vision_language import explain_prompts

ROOT = Path(__file__).resolve().parents[1]
CAT = ROOT / "examples" / "cat.jpg"
LAYER = "_blocks.15"  # not efficientnet_lite0's default layer (_swish): the choice is followed


@pytest.fixture(scope="module")
def lite0() -> models.LoadedModel:
    return models.loaded_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def cat_view(lite0: models.LoadedModel) -> session.View:
    return session.compute_view(
        lite0, CAT, read_photo(CAT), LAYER, ["gradcam", "eigencam"], 281, metrics=["drop-in-confidence"]
    )


@pytest.fixture
def user_models(tmp_path: Path):
    """A models file as a user writes it: a small CNN registered under two names (one with
    its own layer and labels, one with the automatic layer and random weights)."""
    path = tmp_path / "my_explorer_models.py"
    path.write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn
            from pytorch_grad_cam.explorer import register_model

            def tiny():
                torch.manual_seed(0)
                return nn.Sequential(
                    nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
                    nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3),
                )

            register_model("tiny", tiny, target_layers=lambda m: m[3], labels=["cat", "dog", "tabby-ish"],
                           input_size=(32, 32))
            register_model("tiny-auto", tiny, input_size=(32, 32), random_weights=True)
            """
        )
    )
    names = command.load_models_file(path)
    yield names
    for name in names:
        models.REGISTERED.pop(name, None)
    sys.modules.pop("my_explorer_models", None)
    sys.path.remove(str(tmp_path))


def test_the_maps_are_the_librarys_own_call(lite0: models.LoadedModel, cat_view: session.View) -> None:
    """Each method's map at the chosen layer and class equals GradCAM/EigenCAM called directly."""
    input_tensor = model_input(read_photo(CAT), MODELS["efficientnet_lite0"])
    layer = dict(lite0.model.named_modules())[LAYER]
    for method, cls in (("gradcam", GradCAM), ("eigencam", EigenCAM)):
        with cls(model=lite0.model, target_layers=[layer]) as cam:
            expected = cam(input_tensor, targets=[ClassifierOutputTarget(281)])[0]
        assert expected.shape == (224, 224) and expected.max() == pytest.approx(1, abs=1e-6)
        np.testing.assert_allclose(cat_view.maps[method], expected, atol=1e-6)
    assert not np.allclose(cat_view.maps["gradcam"], cat_view.maps["eigencam"], atol=0.05)
    assert cat_view.overlays["gradcam"].shape == (300, 451, 3) and cat_view.overlays["gradcam"].dtype == np.uint8
    assert set(cat_view.metrics["gradcam"]) == {"drop-in-confidence"}
    assert np.isfinite(cat_view.metrics["gradcam"]["drop-in-confidence"])


def test_the_snippet_runs_and_gives_the_same_maps(lite0: models.LoadedModel, cat_view: session.View) -> None:
    snippet = session.python_snippet(cat_view, lite0)
    assert f"dict(model.named_modules())[{LAYER!r}]" in snippet and "ClassifierOutputTarget(281)" in snippet
    namespace: dict = {}
    exec(compile(snippet, "<explorer snippet>", "exec"), namespace)
    assert list(namespace["maps"]) == ["gradcam", "eigencam"]
    for method, grayscale in namespace["maps"].items():
        np.testing.assert_allclose(grayscale, cat_view.maps[method], atol=1e-6)


def test_the_command_parses_and_names_the_same_choices(lite0: models.LoadedModel, cat_view: session.View) -> None:
    lines = session.cam_command(cat_view, lite0, "examples/cat.jpg").splitlines()
    assert len(lines) == 2
    parser = build_parser(MODELS, "resnet50")
    for line, method in zip(lines, ("gradcam", "eigencam")):
        words = shlex.split(line)
        assert words[:2] == ["python", "cam.py"]
        args = parse_arguments(parser, words[2:])
        assert (args.method, args.target_layer, args.category, args.model) == (
            method,
            LAYER,
            "281",
            "efficientnet_lite0",
        )
        assert args.image_path == Path("examples/cat.jpg") and args.metrics == ["drop-in-confidence"]
        assert not args.aug_smooth and not args.eigen_smooth


def test_the_layer_tree_marks_spatial_outputs_and_preselects_the_automatic_layer(user_models) -> None:
    assert user_models == ["tiny", "tiny-auto"]
    auto = models.loaded_model("tiny-auto")
    tree = {node.name: (node.shape, node.spatial) for node in auto.layers}
    assert tree == {
        "0": ((8, 32, 32), True),
        "1": ((8, 32, 32), True),
        "2": ((8, 8, 8), True),
        "3": ((16, 8, 8), True),
        "4": ((16, 8, 8), True),
        "5": ((16, 1, 1), False),  # a 1x1 grid: no map to make
        "6": ((16,), False),
        "7": ((3,), False),
    }
    assert auto.default_layer == "4"  # the last module with a spatial output, as the library chooses
    assert auto.random_weights and auto.labels() == ["class 0", "class 1", "class 2"]
    assert models.loaded_model("tiny").default_layer == "3"  # the registered layer wins
    assert [node.label() for node in auto.layers][2] == "2 (MaxPool2d, 8x8x8)  [spatial]"
    lite0 = {node.name: node.label() for node in models.loaded_model("efficientnet_lite0").layers}
    assert lite0["_blocks.15._bn2"] == "    _blocks.15._bn2 (BatchNorm2d, 320x7x7)  [spatial]"
    assert lite0["_fc"] == "_fc (Linear, 1000)"


def test_top5_are_sorted_and_equal_the_softmax(lite0: models.LoadedModel) -> None:
    input_tensor = model_input(read_photo(CAT), MODELS["efficientnet_lite0"])
    top = session.top_classes(lite0, input_tensor)
    with torch.no_grad():
        probabilities = lite0.model(input_tensor).softmax(dim=1)[0]
    values, indices = probabilities.topk(5)
    assert [index for index, _, _ in top] == indices.tolist()
    np.testing.assert_allclose([score for _, _, score in top], values.numpy(), atol=1e-6)
    assert [score for _, _, score in top] == sorted((score for _, _, score in top), reverse=True)
    assert top[0][:2] == (285, "Egyptian cat") and {281, 282} <= {index for index, _, _ in top}


def test_the_class_search_finds_tabby() -> None:
    labels = imagenet_classes()
    assert session.search_labels(labels, "Tabby") == [(281, "tabby")]
    assert (282, "tiger cat") in session.search_labels(labels, "cat")
    assert session.search_labels(labels, "281") == [(281, "tabby")]
    assert session.search_labels(labels, "  ") == [] and session.search_labels(labels, "5000") == []


def test_the_downloads_round_trip(cat_view: session.View, tmp_path: Path) -> None:
    paths = session.write_downloads(cat_view, tmp_path / "out")
    assert [path.name for path in paths] == ["maps.npz", "gradcam.png", "eigencam.png"]
    with np.load(paths[0]) as saved:
        assert sorted(saved.files) == ["category", "eigencam", "gradcam", "layer"]
        assert int(saved["category"]) == 281 and str(saved["layer"]) == LAYER
        for method in ("gradcam", "eigencam"):
            np.testing.assert_array_equal(saved[method], cat_view.maps[method])
    png = cv2.cvtColor(cv2.imread(str(paths[1])), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(png, cat_view.overlays["gradcam"])  # PNG: lossless


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header says ``width`` x ``height`` (and no pixels follow)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_bad_uploads_get_a_message(tmp_path: Path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("not an image at all\n")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(CAT.read_bytes()[:5000])
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_header(8000, 8000))
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(60000, 60000))
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    cases = {
        text: "notes.jpg: not an image that OpenCV can decode",
        truncated: "cut.jpg: truncated JPEG (no end-of-image marker)",
        huge: "huge.png: 8000x8000 pixels is too large; upload an image under 40 megapixels",
        bomb: "bomb.png: over 178.957 megapixels is too large; upload an image under 40 megapixels",
        empty: "empty.png: empty file",
    }
    for path, message in cases.items():
        with pytest.raises(session.UploadRejected) as refused:
            session.check_upload(path)
        assert str(refused.value).startswith(message), str(refused.value)
        assert "\n" not in str(refused.value)
    with pytest.raises(session.UploadRejected, match=r"cat.jpg: 0.0 MB is too large; upload an image under 0 MB"):
        session.check_upload(CAT, max_bytes=1000)
    np.testing.assert_array_equal(session.check_upload(CAT), read_photo(CAT))


def test_a_registered_model_is_listed_usable_and_reproducible(user_models, tmp_path: Path) -> None:
    assert models.model_names()[0] == "efficientnet_lite0" and models.model_names()[-2:] == ["tiny", "tiny-auto"]
    tiny = models.loaded_model("tiny")
    assert not tiny.random_weights
    view = session.compute_view(tiny, CAT, read_photo(CAT), "4", ["gradcam"], 2)
    assert view.maps["gradcam"].shape == (32, 32)
    namespace: dict = {}
    exec(compile(session.python_snippet(view, tiny), "<explorer snippet>", "exec"), namespace)
    np.testing.assert_allclose(namespace["maps"]["gradcam"], view.maps["gradcam"], atol=1e-6)
    assert session.cam_command(view, tiny).startswith("# cam.py knows the zoo's models only; tiny is yours")
    assert [label for _, label, _ in session.top_classes(tiny, view.input_tensor)] and tiny.labels()[2] == "tabby-ish"
    with pytest.raises(ValueError, match="'resnet50' is a model of the zoo already"):
        models.register_model("resnet50", lambda: None)
    with pytest.raises(ValueError, match="layer 'nope' is not a module of tiny"):
        session.compute_view(tiny, CAT, read_photo(CAT), "nope", ["gradcam"], 0)


def test_cancel_stops_the_view_and_leaves_the_model_as_found(user_models) -> None:
    tiny = models.loaded_model("tiny")
    calls = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) > 1  # the first forward pass runs, the second is refused

    with pytest.raises(session.Cancelled):
        session.compute_view(tiny, CAT, read_photo(CAT), "4", ["gradcam", "eigencam"], 0, cancelled=cancelled)
    assert len(calls) == 2
    assert all(not module._forward_hooks and not module._forward_pre_hooks for module in tiny.model.modules())


def test_a_zoo_model_without_weights_offline_is_built_with_random_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable(progress: bool):
        raise WeightsUnavailable("fake", Path("/nowhere"), "offline")

    entry = ModelEntry(architecture=lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()),
                       target_layer=lambda model: model[0], pretrained=unavailable)  # fmt: skip
    monkeypatch.setitem(MODELS, "fake-zoo", entry)
    loaded = models.loaded_model("fake-zoo")
    models.forget("fake-zoo")
    assert loaded.random_weights and loaded.default_layer == "0"


def test_explore_help_and_a_missing_gradio(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli.main(["explore", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--host HOST" in out and "--models FILE.py" in out and "default: 127.0.0.1" in out
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, "pytorch_grad_cam.explorer.app", raising=False)
    assert cli.main(["explore", "--no-browser"]) == 1
    assert capsys.readouterr().err.strip() == (
        'pytorch-grad-cam explore: error: the explorer needs gradio: pip install "grad-cam[explore]"'
    )
    assert cli.main(["explore", "--models", "/no/such/file.py"]) == 1
    assert "--models /no/such/file.py: no such file" in capsys.readouterr().err


def test_neither_the_library_nor_the_explorer_logic_imports_gradio() -> None:
    script = (
        "import sys, pytorch_grad_cam, pytorch_grad_cam.cli\n"
        "print(sorted(m for m in sys.modules if m.startswith(('gradio', 'pytorch_grad_cam.explorer'))))\n"
        "import pytorch_grad_cam.explorer.session, pytorch_grad_cam.explorer.detections\n"
        "import pytorch_grad_cam.explorer.prompts\n"
        "print(sorted(m for m in sys.modules if m.startswith('gradio')))\n"
    )
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == ["[]", "[]"]


def test_a_non_image_never_reaches_pillow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ultralytics, once imported, replaces PIL's Image.open with one that tries to install
    a HEIF plugin for a file Pillow does not know: a non-image upload must be refused by
    the reader's message without Image.open being asked."""
    from PIL import Image

    def patched_open(*args: object, **kwargs: object) -> None:
        raise ModuleNotFoundError("No module named 'pi_heif'")

    monkeypatch.setattr(Image, "open", patched_open)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image at all\n")
    with pytest.raises(session.UploadRejected, match="notes.jpg: not an image that OpenCV can decode"):
        session.check_upload(text)


# ----------------------------------------------------------------- detectors and CLIP
#: SSDlite (the zoo's fastest detector, random weights: every box scores 1/91), at most
#: three boxes at confidence 0, so that boxes exist on any photo.
SSDLITE_BOXES = 3


def _same_map(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal within 1e-6, and also after scaling by the largest value: a random detector's
    maps are all below 1e-5 (the library does not stretch a flat map), so the absolute
    tolerance alone would pass any two of them."""
    np.testing.assert_allclose(actual, expected, atol=1e-6)
    np.testing.assert_allclose(actual / expected.max(), expected / expected.max(), atol=1e-6)


@pytest.fixture(scope="module")
def ssdlite() -> detections.LoadedDetector:
    return detections.loaded_detector("ssdlite")


@pytest.fixture(scope="module")
def detector_view(ssdlite: detections.LoadedDetector) -> detections.DetectionView:
    return detections.compute_detection_view(
        ssdlite, CAT, read_photo(CAT), ["gradcam"], detections.ALL_BOXES, 0.0, SSDLITE_BOXES
    )


def test_a_box_map_is_explain_detections_own(
    ssdlite: detections.LoadedDetector, detector_view: detections.DetectionView, tmp_path: Path
) -> None:
    """Every box's map (all boxes) equals explain_detections called directly; the box list
    is its boxes in its order; one box's view is that box's map; the downloads hold them."""
    images = detector_input(read_photo(CAT), DETECTORS["ssdlite"], 320)
    expected = explain_detections(ssdlite.model, images, method="gradcam", confidence=0.0, max_detections=3)[0]
    assert len(expected) == SSDLITE_BOXES and detector_view.maps["gradcam"].shape == (3, 213, 320)
    for k, detection in enumerate(expected):
        _same_map(detector_view.maps["gradcam"][k], detection.cam)
    first, second = (expected[k].cam / expected[k].cam.max() for k in (0, 1))
    assert np.abs(first - second).max() > 0.5  # each box its own map
    boxes = detections.find_boxes(ssdlite, read_photo(CAT), 0.0, SSDLITE_BOXES)
    assert [(name, round(score, 6)) for _, name, score in boxes] == [
        (ssdlite.names[d.label], round(d.score, 6)) for d in expected
    ]
    assert [number for number, _, _ in boxes] == [0, 1, 2] and boxes[0][2] == pytest.approx(1 / 91, abs=1e-6)
    assert detector_view.overlays["gradcam"].shape == (300, 451, 3)
    paths = detections.write_detection_downloads(detector_view, tmp_path)
    with np.load(paths[0]) as saved:
        np.testing.assert_array_equal(saved["gradcam"], detector_view.maps["gradcam"])
        np.testing.assert_allclose(saved["gradcam_boxes"], [d.box for d in expected], atol=1e-4)
        assert int(saved["box"]) == -1
    one = detector_view.chosen(detector_view.detections["gradcam"])
    assert len(one) == 3 and one[1].cam is detector_view.detections["gradcam"][1].cam


def test_the_detector_snippet_runs_and_the_command_parses(
    ssdlite: detections.LoadedDetector, detector_view: detections.DetectionView
) -> None:
    one_box = detections.DetectionView(**{**detector_view.__dict__, "box": 1})
    one_box.maps = {"gradcam": detector_view.maps["gradcam"][1]}
    snippet = detections.detection_snippet(one_box, ssdlite, str(CAT))
    assert "detections[1].cam" in snippet
    namespace: dict = {}
    exec(compile(snippet, "<explorer detector snippet>", "exec"), namespace)
    _same_map(namespace["maps"]["gradcam"], detector_view.maps["gradcam"][1])
    line = detections.detection_command(one_box, "examples/cat.jpg")
    assert line.endswith("# the page's box 1 is line 2 of the boxes it prints")
    words = shlex.split(line, comments=True)
    args = parse_arguments(build_parser(MODELS, "resnet50"), words[2:])
    assert (args.detector, args.method, args.confidence, args.max_detections, args.image_path) == (
        "ssdlite", "gradcam", 0.0, 3, Path("examples/cat.jpg"),
    )  # fmt: skip


def test_a_photo_without_a_box_gets_the_message(ssdlite: detections.LoadedDetector) -> None:
    """Random weights score every box 1/91: at confidence 0.5 nothing is kept."""
    assert detections.find_boxes(ssdlite, read_photo(CAT), 0.5) == []
    with pytest.raises(detections.NoBoxes, match=r"no box at confidence >= 0.5 on this photo; lower the confidence"):
        detections.compute_detection_view(ssdlite, CAT, read_photo(CAT), ["gradcam"], 0, 0.5)
    assert detections.detector_name("detector: ssdlite") == "ssdlite" and detections.detector_name("ssdlite") is None


def test_prompt_maps_are_explain_prompts_own_and_the_snippet_and_command_agree() -> None:
    clip = prompts.loaded_clip("ViT-B-32")
    texts = prompts.read_prompts(" a cat, a dog ,")
    view = prompts.compute_prompt_view(clip, CAT, read_photo(CAT), ["gradcam"], texts)
    torch.manual_seed(0)  # the command line's model: open_clip's config, seed 0
    model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    config = model.visual.preprocess_cfg
    rgb = square(read_photo(CAT), 224)
    image = torch.from_numpy((rgb - np.float32(config["mean"])) / np.float32(config["std"])).permute(2, 0, 1)[None]
    expected = explain_prompts(model, image, ["a cat", "a dog"], tokenizer=open_clip.get_tokenizer("ViT-B-32"))
    np.testing.assert_allclose(view.maps["gradcam"], expected.maps[0], atol=1e-6)
    np.testing.assert_allclose(view.results["gradcam"].scores, expected.scores, atol=1e-6)
    assert not np.allclose(expected.maps[0, 0], expected.maps[0, 1], atol=0.05)  # each prompt its own map
    assert list(view.overlays) == [
        f"gradcam: a cat (cosine {expected.scores[0, 0]:.3f})",
        f"gradcam: a dog (cosine {expected.scores[0, 1]:.3f})",
        "gradcam: which prompt wins where",
    ]
    namespace: dict = {}
    exec(compile(prompts.prompt_snippet(view, str(CAT)), "<explorer prompt snippet>", "exec"), namespace)
    np.testing.assert_allclose(namespace["maps"]["gradcam"], expected.maps[0], atol=1e-6)
    np.testing.assert_array_equal(namespace["results"]["gradcam"].winners, expected.winners)
    args = parse_arguments(build_parser(MODELS, "resnet50"), shlex.split(prompts.prompt_command(view))[2:])
    assert (args.clip, args.prompts, args.method, args.image_path) == ("ViT-B-32", ["a cat", "a dog"], "gradcam", CAT)
    with pytest.raises(ValueError, match="no prompt"):
        prompts.read_prompts(" , ")
