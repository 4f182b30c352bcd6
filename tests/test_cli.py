"""cam.py and the usage examples, end to end.

The scripts run as subprocesses (as a user runs them): the pictures they write, what
they print, and that every user error is one line on stderr with a non-zero exit code,
never a traceback. The per-method matrix and a few more error paths call the same
``main()`` in-process, which saves starting Python and importing torch each time.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

import cv2
import numpy as np
import pytest
import torch

from pytorch_grad_cam import METHODS
from pytorch_grad_cam.utils import cli

ROOT = Path(__file__).resolve().parents[1]
CAT = ROOT / "examples" / "cat.jpg"
CAT_CLASSES = ("tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat")
OUTPUTS = ("cam", "gb", "cam_gb")


def run_script(script: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``script`` (relative to the repository) with the test interpreter, offline, on
    one CPU thread (the runs are small; more threads mostly spin on a busy machine)."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    environment.setdefault("OMP_NUM_THREADS", "1")
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd, env=environment, capture_output=True, text=True, timeout=600,
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
    result = run_script("cam.py", "--image-path", str(CAT), "--method", "gradcam",
                        "--model", "efficientnet_lite0", "--output-dir", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    explained = next(line for line in result.stdout.splitlines() if line.startswith("gradcam at layer _bn1"))
    assert any(name in explained for name in CAT_CLASSES), result.stdout
    cam, gb, cam_gb = assert_outputs(out, "gradcam", CAT)
    photo = cv2.imread(str(CAT)).astype(np.float32)
    assert np.abs(cam.astype(np.float32) - photo).mean() > 20  # a heatmap was blended in
    # JET's red (BGR: low blue, high red) where the map is high: the face, not the corners.
    redness = cam[..., 2].astype(np.float32) - cam[..., 0]
    assert redness[90:210, 100:300].mean() > redness[:40, :80].mean() + 40
    assert gb.std() > 5 and cam_gb.std() > 5


def test_use_cuda_and_readme_flag_spellings(tmp_path: Path) -> None:
    result = run_script("cam.py", "--image-path", str(CAT), "--method", "eigencam",
                        "--model", "efficientnet_lite0", "--use-cuda", "--aug_smooth",
                        "--eigen_smooth", "--no-progress", cwd=tmp_path)
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
    env = {"TORCH_HOME": str(tmp_path / "torch"), "https_proxy": blocked, "HTTPS_PROXY": blocked,
           "http_proxy": blocked, "HTTP_PROXY": blocked, "no_proxy": "", "NO_PROXY": ""}
    result = run_script("cam.py", "--image-path", str(CAT), cwd=tmp_path, env=env)
    assert_one_line_error(result, "resnet50", "--model efficientnet_lite0", "--weights")
    assert not list(tmp_path.glob("*.jpg"))


def test_weights_from_a_state_dict(tmp_path: Path) -> None:
    """What the offline message suggests (ResNet-18 rather than 50: the same code path, faster)."""
    import torchvision

    torch.manual_seed(0)
    weights = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    result = run_script("cam.py", "--image-path", str(CAT), "--model", "resnet18", "--weights", str(weights),
                        "--category", "tabby", "--output-dir", str(tmp_path), cwd=tmp_path)
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
        (["--image-path", str(CAT), "--model", "efficientnet_lite0", "--target-layer", "_bn9"],
         ["'_bn9'", "_bn1"]),
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
    [("usage_examples/vit_example.py", "gradcam", "blocks.11.norm1"),
     ("usage_examples/swinT_example.py", "gradcam++", "layers.3.blocks.1.norm1")],
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
#: 112 x 112 grid that is 12544^2 (1.2 GB, minutes), so it runs at the 7 x 7 head.
CHEAP_LAYER = {"kpcacam": "_swish"}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method(method: str, small_photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Every registered method through the command line, cheaply: an early, narrow layer
    (16 channels), so ScoreCAM and AblationCAM need 16 extra passes, not 1280."""
    layer = CHEAP_LAYER.get(method, "_blocks.0")
    code = cli.main(["--image-path", str(small_photo), "--method", method, "--model", "efficientnet_lite0",
                     "--target-layer", layer, "--output-dir", str(tmp_path), "--no-progress",
                     "--batch-size", "8"], prog="cam.py")
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
    ids=["category-index", "ambiguous-class", "batch-size", "device", "missing-weights", "wrong-weights",
         "not-weights"],
)
def test_more_bad_input_is_one_line(arguments: List[str], needles: Sequence[str], tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    replacements = {"WRONG": tmp_path / "wrong.pt", "NOTES": tmp_path / "notes.txt"}
    torch.save({"fc.weight": torch.zeros(2, 2)}, replacements["WRONG"])
    replacements["NOTES"].write_text("not a state dict\n")
    arguments = [str(replacements.get(argument, argument)) for argument in arguments]
    code = cli.main(["--image-path", str(CAT), "--model", "efficientnet_lite0", "--output-dir", str(tmp_path),
                     *arguments], prog="cam.py")
    captured = capsys.readouterr()
    assert code != 0
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cam.py: error: "), captured.err
    for needle in needles:
        assert needle in lines[0], lines[0]


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
