"""The explorer's logic without a browser (pytorch_grad_cam.explorer.models and .session):
the maps it shows are the library's own call, its Python snippet runs and gives the same
maps, its cam.py command parses and names the same choices, the layer tree and the
preselected layer, the top-5 classes and the class search, the downloads, the refused
uploads, the user's registered models, Cancel, ``explore --help``, and that neither the
library nor this gradio-free logic imports gradio. The page itself: test_explorer_browser.py.
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
import pytest
import torch

from pytorch_grad_cam import EigenCAM, GradCAM
from pytorch_grad_cam.cli import app as cli
from pytorch_grad_cam.cli.arguments import build_parser, parse_arguments
from pytorch_grad_cam.cli.jobs import model_input, read_photo
from pytorch_grad_cam.cli.model_zoo import MODELS, ModelEntry, WeightsUnavailable, imagenet_classes
from pytorch_grad_cam.explorer import command, models, session
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

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
        "import pytorch_grad_cam.explorer.session\n"
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
