"""cam.py and the usage examples, end to end.

The scripts run as subprocesses (as a user runs them): the pictures they write, what
they print, and that every user error is one line on stderr with a non-zero exit code,
never a traceback. The per-method matrix and a few more error paths call the same
``main()`` in-process, which saves starting Python and importing torch each time.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

import cv2
import numpy as np
import pytest
import torch
from method_sets import CNN_METHODS

from pytorch_grad_cam import METHODS
from pytorch_grad_cam.cli import app as cli
from pytorch_grad_cam.cli import jobs
from pytorch_grad_cam.cli.metrics import METRICS, compute_metrics, parse_metric_names
from pytorch_grad_cam.metrics import DeletionMetric, ROADCombined
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

ROOT = Path(__file__).resolve().parents[1]
CAT = ROOT / "examples" / "cat.jpg"
CAT_CLASSES = ("tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat")
OUTPUTS = ("cam", "gb", "cam_gb")


def run_script(script: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``script`` (relative to the repository) with the test interpreter, offline, on
    one CPU thread (the runs are small; more threads mostly spin on a busy machine)."""
    environment = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    environment.setdefault("OMP_NUM_THREADS", "1")
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )


def assert_outputs(directory: Path, method: str, photo: Path) -> List[np.ndarray]:
    """The three pictures exist and have the photo's size; returns them (BGR)."""
    height, width = cv2.imread(str(photo)).shape[:2]
    pictures = []
    for kind in OUTPUTS:
        picture = cv2.imread(str(directory / f"{method}_{kind}.jpg"))
        assert picture is not None, f"{method}_{kind}.jpg was not written"
        assert picture.shape == (height, width, 3)
        pictures.append(picture)
    return pictures


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# ----------------------------------------------------------------- subprocess runs
def test_cat_with_pretrained_efficientnet(tmp_path: Path) -> None:
    """The Quick start's demo: a cat class, the three pictures at the photo's size, and
    the CAM hottest on the cat's face rather than the background."""
    out = tmp_path / "out"
    result = run_script(
        "cam.py",
        "--image-path",
        str(CAT),
        "--method",
        "gradcam",
        "--model",
        "efficientnet_lite0",
        "--output-dir",
        str(out),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    explained = next(line for line in result.stdout.splitlines() if line.startswith("gradcam at layer _swish"))
    assert any(name in explained for name in CAT_CLASSES), result.stdout
    cam, gb, cam_gb = assert_outputs(out, "gradcam", CAT)
    photo = cv2.imread(str(CAT)).astype(np.float32)
    assert np.abs(cam.astype(np.float32) - photo).mean() > 20  # a heatmap was blended in
    # JET's red (BGR: low blue, high red) where the map is high: the face, not the corners.
    redness = cam[..., 2].astype(np.float32) - cam[..., 0]
    assert redness[90:210, 100:300].mean() > redness[:40, :80].mean() + 40
    assert gb.std() > 5 and cam_gb.std() > 5


def test_use_cuda_and_readme_flag_spellings(tmp_path: Path) -> None:
    result = run_script(
        "cam.py",
        "--image-path",
        str(CAT),
        "--method",
        "eigencam",
        "--model",
        "efficientnet_lite0",
        "--use-cuda",
        "--aug_smooth",
        "--eigen_smooth",
        "--no-progress",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    if not torch.cuda.is_available():
        assert "CUDA is not available" in result.stderr and "CPU" in result.stderr
    assert "with aug smooth + eigen smooth" in result.stdout
    assert_outputs(tmp_path, "eigencam", CAT)  # --output-dir defaults to the current directory


def test_default_model_without_downloadable_weights(tmp_path: Path) -> None:
    """resnet50 with an empty torch hub cache and no network: one line that says why
    and names the offline ways forward."""
    blocked = "http://127.0.0.1:9"  # nothing listens on the discard port: the download fails at once
    env = {
        "TORCH_HOME": str(tmp_path / "torch"),
        "https_proxy": blocked,
        "HTTPS_PROXY": blocked,
        "http_proxy": blocked,
        "HTTP_PROXY": blocked,
        "no_proxy": "",
        "NO_PROXY": "",
    }
    result = run_script("cam.py", "--image-path", str(CAT), cwd=tmp_path, env=env)
    assert_one_line_error(result, "resnet50", "--model efficientnet_lite0", "--weights")
    assert not list(tmp_path.glob("*.jpg"))


def test_weights_from_a_state_dict(tmp_path: Path) -> None:
    """What the offline message suggests (ResNet-18 rather than 50: the same code path, faster)."""
    import torchvision

    torch.manual_seed(0)
    weights = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    result = run_script(
        "cam.py",
        "--image-path",
        str(CAT),
        "--model",
        "resnet18",
        "--weights",
        str(weights),
        "--category",
        "tabby",
        "--output-dir",
        str(tmp_path),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "gradcam at layer layer4.1 for tabby (281)" in result.stdout
    assert_outputs(tmp_path, "gradcam", CAT)


@pytest.mark.parametrize(
    "arguments, needles",
    [
        (["--image-path", "missing.jpg"], ["missing.jpg", "no such file"]),
        (["--image-path", "notes.txt"], ["notes.txt", "not an image"]),
        (["--image-path", str(CAT), "--method", "gradcam+++"], ["gradcam+++", "gradcam++", "layercam"]),
        (["--image-path", str(CAT), "--category", "tabby cat"], ["'tabby cat'", "did you mean"]),
        (["--image-path", str(CAT), "--model", "efficientnet_lite0", "--target-layer", "_bn9"], ["'_bn9'", "_bn1"]),
    ],
    ids=["missing-file", "not-an-image", "unknown-method", "unknown-class", "unknown-layer"],
)
def test_bad_input_is_one_line(tmp_path: Path, arguments: List[str], needles: Sequence[str]) -> None:
    (tmp_path / "notes.txt").write_text("not a photo\n")
    result = run_script("cam.py", *arguments, cwd=tmp_path)
    assert_one_line_error(result, *needles)
    assert result.stderr.startswith("cam.py: error: ")


@pytest.mark.parametrize(
    "script, method, layer",
    [
        ("usage_examples/vit_example.py", "gradcam", "blocks.11.norm1"),
        ("usage_examples/swinT_example.py", "gradcam++", "layers.3.blocks.1.norm1"),
    ],
    ids=["vit", "swin"],
)
def test_transformer_examples(tmp_path: Path, script: str, method: str, layer: str) -> None:
    result = run_script(script, "--image-path", str(CAT), "--method", method, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "random weights" in result.stderr and "--weights" in result.stderr
    assert f"{method} at layer {layer}" in result.stdout
    cam, _, _ = assert_outputs(tmp_path, method, CAT)
    assert np.abs(cam.astype(np.float32) - cv2.imread(str(CAT))).mean() > 20


# ----------------------------------------------------------------- in-process runs
@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One CPU thread for the in-process runs, as for the subprocesses: these models are
    small, and with another process on the second core two threads run ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cat at 150x100: the outputs must come back at this size."""
    path = tmp_path_factory.mktemp("photo") / "small cat.png"
    cv2.imwrite(str(path), cv2.resize(cv2.imread(str(CAT)), (150, 100), interpolation=cv2.INTER_AREA))
    return path


#: KPCA-CAM eigendecomposes a (positions x positions) kernel per image: at _blocks.0's
#: 112 x 112 grid that is 12544^2 (1.2 GB, minutes), so it runs at the 7 x 7 head. CAM
#: is defined only at the layer the classifier pools (the head, 1280 channels).
CHEAP_LAYER = {"kpcacam": "_swish", "cam": "_swish"}


#: The methods that score every channel's masked image several times (noisy masks,
#: path steps): the tests here make them take 2 per channel (conftest's few_mask_repeats).
REPEATED_MASKS = ("sscam", "iscam")


@pytest.mark.parametrize("method", list(CNN_METHODS))
def test_every_method(
    method: str, small_photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture, few_mask_repeats: None
) -> None:
    """Every registered method through the command line, cheaply: an early, narrow layer
    (16 channels), so ScoreCAM and AblationCAM need 16 extra passes, not 1280."""
    layer = CHEAP_LAYER.get(method, "_blocks.0")
    code = cli.main(
        [
            "--image-path",
            str(small_photo),
            "--method",
            method,
            "--model",
            "efficientnet_lite0",
            "--target-layer",
            layer,
            "--output-dir",
            str(tmp_path),
            "--no-progress",
            "--batch-size",
            "8",
        ],
        prog="cam.py",
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"{method} at layer {layer} for " in captured.out
    cam, _, _ = assert_outputs(tmp_path, method, small_photo)
    assert np.abs(cam.astype(np.float32) - cv2.imread(str(small_photo))).mean() > 10


@pytest.mark.parametrize(
    "arguments, needles",
    [
        (["--category", "1000"], ["--category 1000", "0-999"]),
        (["--category", "CARDIGAN"], ["several", "264", "474"]),
        (["--batch-size", "0"], ["--batch-size", "at least 1"]),
        (["--device", "nonsense"], ["--device nonsense", "--device cpu"]),
        (["--weights", "missing.pt"], ["--weights missing.pt", "no such file"]),
        (["--weights", "WRONG"], ["does not fit efficientnet_lite0", "missing keys"]),
        (["--weights", "NOTES"], ["not a state dict"]),
    ],
    ids=[
        "category-index",
        "ambiguous-class",
        "batch-size",
        "device",
        "missing-weights",
        "wrong-weights",
        "not-weights",
    ],
)
def test_more_bad_input_is_one_line(
    arguments: List[str], needles: Sequence[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    replacements = {"WRONG": tmp_path / "wrong.pt", "NOTES": tmp_path / "notes.txt"}
    torch.save({"fc.weight": torch.zeros(2, 2)}, replacements["WRONG"])
    replacements["NOTES"].write_text("not a state dict\n")
    arguments = [str(replacements.get(argument, argument)) for argument in arguments]
    code = cli.main(
        ["--image-path", str(CAT), "--model", "efficientnet_lite0", "--output-dir", str(tmp_path), *arguments],
        prog="cam.py",
    )
    captured = capsys.readouterr()
    assert code != 0
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cam.py: error: "), captured.err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("cut", ["inside-the-scan", "end-marker-only"])
def test_truncated_jpeg_is_one_line_naming_the_file(cut: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A truncated JPEG is an error that names the file, before any model is built, and
    no picture is written (OpenCV alone may decode it into a partly grey photo)."""
    whole = CAT.read_bytes()
    truncated = tmp_path / "cut cat.jpg"
    truncated.write_bytes(whole[: len(whole) * 2 // 3] if cut == "inside-the-scan" else whole[:-2])
    code = cli.main(
        [
            "--image-path",
            str(truncated),
            "--model",
            "efficientnet_lite0",
            "--output-dir",
            str(tmp_path),
            "--no-progress",
        ],
        prog="cam.py",
    )
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert captured.err.splitlines() == [f"cam.py: error: {truncated}: truncated JPEG (no end-of-image marker)"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cut cat.jpg"]
    with pytest.raises(jobs.UnreadableImage) as raised:
        cli.read_photo(truncated)
    assert (raised.value.path, raised.value.reason) == (truncated, "truncated JPEG (no end-of-image marker)")
    assert cli.read_photo(CAT).shape == (300, 451, 3)  # the whole file reads


def test_parser_takes_both_spellings() -> None:
    parser = cli.build_parser(cli.MODELS, "resnet50")
    for flags in (["--aug-smooth", "--eigen-smooth"], ["--aug_smooth", "--eigen_smooth"]):
        args = parser.parse_args(["--image-path", "x.jpg", *flags])
        assert args.aug_smooth and args.eigen_smooth
    defaults = parser.parse_args(["--image-path", "x.jpg"])
    assert (defaults.model, defaults.method, defaults.output_dir) == ("resnet50", "gradcam", Path("."))


def test_class_names_and_indices() -> None:
    assert cli.resolve_category("tabby") == 281
    assert cli.resolve_category("Tiger Cat") == 282
    assert cli.resolve_category("Cardigan") == 264  # exact case wins over the sweater (474)
    assert cli.resolve_category("7") == 7
    assert cli.resolve_category(None) is None


# ----------------------------------------------------------------- unexpected errors
def _broken_model_entry() -> "cli.ModelEntry":
    """A classifier whose head does not fit the photo's size: its forward raises torch's
    RuntimeError (mat1 and mat2 shapes cannot be multiplied), with nothing else wrong."""
    from torch import nn

    return cli.ModelEntry(
        architecture=lambda: nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(10, 5)),
        target_layer=lambda model: model[0],
        input_size=(32, 32),
    )


def test_model_error_is_one_line(
    small_photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTORCH_GRAD_CAM_DEBUG", raising=False)
    code = cli.main(
        ["--image-path", str(small_photo), "--output-dir", str(tmp_path)],
        models={"broken": _broken_model_entry()},
        default_model="broken",
        prog="cam.py",
    )
    captured = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert [line for line in lines if not line.startswith("note: ")] == lines[-1:], captured.err
    assert lines[-1].startswith("cam.py: error: RuntimeError: mat1 and mat2 shapes cannot be multiplied")
    assert lines[-1].endswith("(--debug shows the traceback)")
    assert not list(tmp_path.glob("*.jpg"))


def test_library_error_is_one_line_and_debug_shows_it(
    small_photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure deep in the library (here: a multi-line RuntimeError from the CAM)."""
    monkeypatch.delenv("PYTORCH_GRAD_CAM_DEBUG", raising=False)

    def failing_cam(*args, **kwargs):
        raise RuntimeError("something broke\n  deep inside")

    monkeypatch.setattr(cli, "compute_cam", failing_cam)
    arguments = ["--image-path", str(small_photo), "--model", "efficientnet_lite0", "--output-dir", str(tmp_path)]
    assert cli.main(arguments, prog="cam.py") == 1
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines()[-1] == (
        "cam.py: error: RuntimeError: something broke deep inside (--debug shows the traceback)"
    )
    assert "Traceback" not in captured.err
    with pytest.raises(RuntimeError, match="something broke"):
        cli.main([*arguments, "--debug"], prog="cam.py")
    monkeypatch.setenv("PYTORCH_GRAD_CAM_DEBUG", "1")
    with pytest.raises(RuntimeError, match="something broke"):
        cli.main(arguments, prog="cam.py")


# ----------------------------------------------------------------- every model's default layer
# Boxes (top, bottom, left, right) in the 224x224 model input (the whole photo resized),
# measured once on the photos: the cat's face from the eyes down to the nose, the cup
# with the coffee, the motorcycle between its wheels. At the default layer `_swish` every
# method peaks inside them; at the old default `_bn1` ScoreCAM is empty and XGradCAM and
# EigenCAM peak on the background (the top of the cat's head, the garage's shelves).
PHOTO_BOXES = {
    "cat": (48, 200, 40, 190),
    "coffee": (0, 130, 60, 170),
    "motorcycle": (64, 200, 30, 205),
}


def peak(grayscale: np.ndarray) -> tuple:
    return tuple(int(i) for i in np.unravel_index(grayscale.argmax(), grayscale.shape))


def in_box(position: tuple, box: tuple) -> bool:
    top, bottom, left, right = box
    return top <= position[0] <= bottom and left <= position[1] <= right


@pytest.fixture(scope="module")
def efficientnet_lite0():
    entry = cli.MODELS["efficientnet_lite0"]
    return entry, cli.load_model(entry, "efficientnet_lite0")


def default_layer_map(method: str, model, entry, input_tensor, reshape_transform=None) -> np.ndarray:
    """cam.py's map at the entry's default layer for the top class (in-process)."""
    category = int(model(input_tensor).argmax())
    layer = entry.target_layer(model)
    return cli.compute_cam(
        method, model, layer, input_tensor, category, reshape_transform=reshape_transform, batch_size=64, progress=False
    )


@pytest.mark.parametrize("photo", list(PHOTO_BOXES))
def test_efficientnet_default_layer_finds_the_object_with_every_method(photo: str, efficientnet_lite0) -> None:
    """Real weights: the default layer's map is finite, non-empty and peaks on the object
    for every registered method but ScoreCAM (1280 forwards at 224x224; see the next test)."""
    entry, model = efficientnet_lite0
    assert cli.layer_name(model, entry.target_layer(model)) == "_swish"
    input_tensor = cli.model_input(cli.read_photo(ROOT / "examples" / f"{photo}.jpg"), entry)
    peaks = {}
    for method in CNN_METHODS:
        if method in ("scorecam",) + REPEATED_MASKS or method in NOT_LOCALISING:
            continue
        grayscale = default_layer_map(method, model, entry, input_tensor)
        assert grayscale.shape == (224, 224) and np.isfinite(grayscale).all()
        assert grayscale.max() > 0.99, method
        peaks[method] = peak(grayscale)
    outside = {method: position for method, position in peaks.items() if not in_box(position, PHOTO_BOXES[photo])}
    assert not outside, f"peaks outside the {photo}'s box {PHOTO_BOXES[photo]}: {outside}"


def test_efficientnet_default_layer_scorecam_is_not_empty(efficientnet_lite0) -> None:
    """ScoreCAM at the default layer on the cat, with every 40th of its 1280 channels (32
    forwards instead of 1280; a subset of a layer's channels keeps its signs, and at
    `_bn1` this very subset gives an all-zero map)."""
    entry, model = efficientnet_lite0
    input_tensor = cli.model_input(cli.read_photo(CAT), entry)
    grayscale = default_layer_map("scorecam", model, entry, input_tensor, reshape_transform=lambda t: t[:, ::40])
    assert np.isfinite(grayscale).all() and grayscale.max() > 0.99
    assert in_box(peak(grayscale), PHOTO_BOXES["cat"]), peak(grayscale)


#: Methods whose map is a statistic over the layer's grid positions (FEM: positions
#: above mean + 2 std, which a 2x2 grid can never have, as sqrt(3) < 2; KPCA-CAM: a
#: kernel PCA of 4 points): they run at cam.py's 224x224 (a 7x7 grid), one forward each.
GRID_STATISTICS = {"fem", "kpcacam"}
#: Maps that may rightly be empty on random weights: RandomCAM's channel weights are
#: random signs; KPCA-CAM zeroes a map whose activations do not vary over positions
#: (random-weight MobileNet-v3's features.16 varies by 1e-8 over its 7x7 grid, so its
#: kernel matrix is constant, with eigenvalues of 1e-30), where EigenCAM stretches that
#: rounding noise to [0, 1].
RANDOM_WEIGHTS = {"randomcam", "kpcacam"}
#: Methods that are not expected to put their peak on the object: RandomCAM (the
#: baseline) and KPCA-CAM, whose sign rule (the largest-magnitude entry positive, as in
#: grad-cam) ignores where activation is strong.
NOT_LOCALISING = {"randomcam", "kpcacam"}
#: Of the 16 methods not in RANDOM_WEIGHTS, how many must give a non-empty map on a
#: random-weight torchvision model (see the test below).
MIN_NON_EMPTY = 11


#: Their classifiers are MLPs on flattened (VGG) or pooled (MobileNet-v3) features, not
#: one Linear on pooled channels: CAM is not defined there, and says so.
NO_CAM_HEAD = ("vgg16", "mobilenet_v3_large")


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg16", "densenet161", "mobilenet_v3_large"])
def test_torchvision_default_layer_works_with_every_method(name: str, few_mask_repeats: None) -> None:
    """Random weights (nothing can be downloaded), the cat at 64x64 (2x2 maps at the
    default layers), the top class: every method gives a finite map, and most a non-empty one.
    ScoreCAM and AblationCAM score 32 evenly spaced channels of the layer (a subset keeps
    the layer's signs) instead of up to 2208 (DenseNet-161).

    With random weights a map can rightly be empty: channel weights that all come out
    negative (XGradCAM, ScoreCAM, AblationCAM) or a threshold no position passes (FEM).
    Measured over seeds 0-7 (40 model draws): at most 3 of the 16 methods were empty for
    one model (MobileNet-v3, seed 1), and only those four methods ever were. A default
    layer that is not spatial would empty them all. So at least MIN_NON_EMPTY of the 16
    must be non-empty (two methods of margin over the worst draw), for any seed, not only
    the one used here. What this guards is that each default layer is a spatial layer
    every method runs on and gets a finite map from."""
    entry = cli.MODELS[name]
    torch.manual_seed(2)
    model = entry.architecture().eval()
    empty: List[str] = []
    undefined: List[str] = []
    for method in CNN_METHODS:
        size = 224 if method in GRID_STATISTICS else 64
        photo = cv2.resize(cli.read_photo(CAT), (size, size), interpolation=cv2.INTER_AREA)
        input_tensor = cli.preprocess_image(photo, mean=entry.mean, std=entry.std)
        subset = (lambda t: t[:, :: t.shape[1] // 32]) if method in ("scorecam", "ablationcam") else None
        subset = (lambda t: t[:, :: t.shape[1] // 8]) if method in REPEATED_MASKS else subset
        if method == "cam" and name in NO_CAM_HEAD:
            with pytest.raises(ValueError, match="CAM needs global average pooling and one nn.Linear classifier"):
                default_layer_map(method, model, entry, input_tensor)
            undefined.append(method)
            continue
        grayscale = default_layer_map(method, model, entry, input_tensor, reshape_transform=subset)
        assert grayscale.shape == (size, size) and np.isfinite(grayscale).all(), method
        if method not in RANDOM_WEIGHTS and grayscale.max() < 0.9:
            empty.append(method)
    assert len(CNN_METHODS) - len(RANDOM_WEIGHTS) - len(undefined) - len(empty) >= MIN_NON_EMPTY, (
        f"{name}: empty {empty}"
    )


# ----------------------------------------------------------------- layout and --help
def test_help_lists_every_registered_method(capsys: pytest.CaptureFixture) -> None:
    """--help reads METHODS, so a newly registered method is listed without touching the app."""
    assert cli.main(["--help"], prog="cam.py") == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the list at the terminal width
    listed = text.split("--method NAME the CAM method: ", 1)[1].split(" (default: gradcam)", 1)[0]
    assert listed.split(", ") == list(METHODS)


#: Run in a fresh interpreter: imports the package and every module under it but the app,
#: then prints what of the app got imported along the way.
_IMPORT_EVERYTHING_BUT_THE_APP = r"""
import importlib, pkgutil, sys
import pytorch_grad_cam

def walk(package):
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        if info.name in ("pytorch_grad_cam.cli", "pytorch_grad_cam.explorer"):  # the two applications
            continue
        module = importlib.import_module(info.name)
        yield info.name
        if info.ispkg:
            yield from walk(module)

imported = list(walk(pytorch_grad_cam))
app = sorted(name for name in sys.modules if name.startswith(("pytorch_grad_cam.cli", "pytorch_grad_cam.explorer", "gradio")))
leftovers = [name for name in ("cli", "model_zoo") if hasattr(pytorch_grad_cam.utils, name)]
print(len(imported), "modules;", "app:", app, "utils:", leftovers)
"""


def test_the_library_never_imports_the_app() -> None:
    """The command-line app lives in pytorch_grad_cam.cli (the browser explorer in
    pytorch_grad_cam.explorer) and nothing else imports them: importing every other
    module of the package leaves them, and gradio, unimported, and utils keeps
    only what library users import."""
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_EVERYTHING_BUT_THE_APP],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    count = int(result.stdout.split()[0])
    assert count > 30, result.stdout  # it did walk the package (methods, utils, metrics)
    assert result.stdout.strip().endswith("app: [] utils: []"), result.stdout


def test_console_script_is_the_command_line() -> None:
    """setup.py's `pytorch-grad-cam` runs the same main() as cam.py."""
    import importlib

    declared = re.search(r'"pytorch-grad-cam = ([\w.]+):(\w+)"', (ROOT / "setup.py").read_text())
    assert declared, "setup.py declares no pytorch-grad-cam console script"
    assert getattr(importlib.import_module(declared[1]), declared[2]) is cli.main


# ----------------------------------------------------------------- --metrics
METRIC_LINE = re.compile(r"  ([a-z-]+): (-?\d+\.\d+) \((higher|lower) is better; .+\)")


def test_metrics_print_what_the_metrics_compute(
    tmp_path: Path, capsys: pytest.CaptureFixture, efficientnet_lite0
) -> None:
    """--metrics deletion,road prints one finite number per metric after the pictures,
    equal to the metric called directly on the same input and map (ROAD after
    torch.manual_seed(0), as the command line seeds it, in a forked random state)."""
    code = cli.main(
        [
            "--image-path",
            str(CAT),
            "--model",
            "efficientnet_lite0",
            "--output-dir",
            str(tmp_path),
            "--metrics",
            "deletion,road",
        ],
        prog="cam.py",
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.splitlines()
    heading = next(i for i, line in enumerate(lines) if line.startswith("metrics of the map"))
    assert lines[heading - 1].startswith("wrote ") and "softmax probability of" in lines[heading]
    printed = {}
    for line in lines[heading + 1 :]:
        match = METRIC_LINE.fullmatch(line)
        assert match, line
        printed[match[1]] = (float(match[2]), match[3])
    assert list(printed) == ["deletion", "road"]
    assert all(math.isfinite(value) for value, _ in printed.values())
    assert (printed["deletion"][1], printed["road"][1]) == ("lower", "higher")

    entry, model = efficientnet_lite0
    input_tensor = cli.model_input(cli.read_photo(CAT), entry)
    grayscale = default_layer_map("gradcam", model, entry, input_tensor)
    targets = [ClassifierOutputSoftmaxTarget(int(model(input_tensor).argmax()))]
    deletion = DeletionMetric(batch_size=32)(input_tensor, grayscale[None], targets, model)[0]
    torch.manual_seed(0)
    road = ROADCombined()(input_tensor, grayscale[None], targets, model, batch_size=32)[0]
    random_state = torch.get_rng_state()  # seeding happens in a forked state: nothing leaks out
    assert compute_metrics(["deletion"], model, input_tensor, grayscale, targets[0].category) == {"deletion": deletion}
    assert torch.equal(torch.get_rng_state(), random_state)
    # Printed with 6 decimals: half a unit of the last place, plus float32 rounding.
    assert printed["deletion"][0] == pytest.approx(float(deletion), abs=1e-6)
    assert printed["road"][0] == pytest.approx(float(road), abs=1e-6)


def test_unknown_metric_is_one_line_listing_the_metrics(capsys: pytest.CaptureFixture) -> None:
    code = cli.main(["--image-path", str(CAT), "--metrics", "road,faithfulness"], prog="cam.py")
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cam.py: error: argument --metrics: 'faithfulness'"), captured.err
    assert all(name in lines[0] for name in METRICS) and "or all" in lines[0]


def test_metric_names() -> None:
    assert parse_metric_names("all") == list(METRICS)
    assert parse_metric_names(" Deletion, road,deletion ,") == ["deletion", "road"]
    assert parse_metric_names("drop_in_confidence,all")[0] == "drop-in-confidence"
    assert len(parse_metric_names("drop_in_confidence,all")) == len(METRICS)
