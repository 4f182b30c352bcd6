"""``cam.py --detector``: every detector family of the command line, end to end on the
bundled photo, in this process (``main()``, as cam.py calls it), at a small input size.

Each family's run must print one line per box and the random-weights warning, and write
the drawing (at the photo's size) and the npz, whose maps, boxes, labels and scores are
exactly those of ``explain_detections`` on the same model (built again from seed 0) and
input. DETR and RT-DETR run with small configs (the zoo's are the full ResNet-50 ones,
tens of seconds per run on a CPU); ultralytics and transformers are test extras, and
their families skip, saying so, where the package is missing.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import shutil
from pathlib import Path
from typing import Dict, List, Tuple

import cv2
import numpy as np
import pytest
import torch

from pytorch_grad_cam.cli import app as cli
from pytorch_grad_cam.cli.detect import BUNDLED_PHOTO, detector_input, load_detector
from pytorch_grad_cam.cli.detector_zoo import COCO_80, COCO_91, DETECTORS, DetectorEntry, transformers_entry
from pytorch_grad_cam.cli.jobs import read_photo
from pytorch_grad_cam.detection import explain_detections

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64  # the longer side of the model's input: small, so that a run costs little
MAX = 2  # boxes per image
LINE = re.compile(r"^  (.+) \((\d+)\)  score (\S+)  box \[(\S+), (\S+), (\S+), (\S+)\]$")
FAMILIES = {
    "yolov8n": "ultralytics",
    "yolo11n": "ultralytics",
    "retinanet": "torchvision",
    "fcos": "torchvision",
    "fasterrcnn": "torchvision",
    "ssdlite": "torchvision",
    "detr": "transformers",
    "rtdetr": "transformers",
}


def _small_transformers(num_queries: int = 10) -> Dict[str, DetectorEntry]:
    """DETR and RT-DETR with a ResNet of 8-32 channels, one encoder and one decoder layer."""
    import transformers

    def resnet(config_class: type, out_features: List[str]) -> object:
        return config_class(
            embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], layer_type="basic",
            out_features=out_features,
        )  # fmt: skip

    small = dict(d_model=32, decoder_ffn_dim=32, decoder_attention_heads=2, num_queries=num_queries, decoder_layers=1)
    return {
        "detr": transformers_entry(
            "DetrForObjectDetection", "DetrConfig", COCO_91, 800,
            backbone_config=resnet(transformers.ResNetConfig, ["stage4"]), use_timm_backbone=False,
            encoder_layers=1, encoder_ffn_dim=32, encoder_attention_heads=2, init_std=0.2, **small,
        ),
        "rtdetr": transformers_entry(
            "RTDetrForObjectDetection", "RTDetrConfig", COCO_80, 640, multiple=32, normalise=False,
            backbone_config=resnet(transformers.RTDetrResNetConfig, ["stage2", "stage3", "stage4"]),
            encoder_hidden_dim=32, encoder_in_channels=[16, 24, 32], encoder_ffn_dim=32, encoder_attention_heads=2,
            decoder_in_channels=[32, 32, 32], decoder_n_points=2, **small,
        ),
    }  # fmt: skip


@pytest.fixture(scope="module")
def detectors() -> Dict[str, DetectorEntry]:
    """The zoo, with small DETR and RT-DETR where transformers is installed."""
    zoo = dict(DETECTORS)
    try:
        zoo.update(_small_transformers())
    except ImportError:
        pass
    return zoo


def cam(arguments: List[str], detectors: Dict[str, DetectorEntry]) -> Tuple[int, str, str]:
    """``cam.py arguments`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(arguments, prog="cam.py", detectors=detectors)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def runs(detectors: Dict[str, DetectorEntry], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """name -> (exit code, stdout, stderr, output folder): each family's run, made once."""
    made: dict = {}

    def run(name: str) -> tuple:
        if name not in made:
            output = tmp_path_factory.mktemp(name)
            arguments = ["--detector", name, "--image-size", str(SIZE), "--max-detections", str(MAX)]
            made[name] = (*cam([*arguments, "--no-progress", "--output-dir", str(output)], detectors), output)
        return made[name]

    return run


def skip_without(name: str) -> None:
    package = FAMILIES[name]
    pytest.importorskip(package, reason=f"--detector {name} needs {package} (test extra)")


def reference(name: str, detectors: Dict[str, DetectorEntry]) -> tuple:
    """explain_detections on the model the command builds (seed 0) and its input."""
    entry = detectors[name]
    with contextlib.redirect_stderr(io.StringIO()):
        model = load_detector(name, entry, None, SIZE)
    images = detector_input(read_photo(BUNDLED_PHOTO), entry, SIZE)
    return explain_detections(model, images, method="gradcam", confidence=0.0, max_detections=MAX)[0], images


def assert_npz_is(path: Path, detections: list, images: torch.Tensor) -> None:
    """The npz holds exactly ``detections`` (input pixels, maps at the input's size), and
    the photo's boxes are those boxes scaled by the photo's size over the input's."""
    saved = np.load(path)
    height, width = images.shape[-2:]
    assert saved["maps"].shape == (len(detections), height, width)
    np.testing.assert_allclose(saved["maps"], np.float32([d.cam for d in detections]), atol=1e-6)
    np.testing.assert_allclose(saved["input_boxes"], np.float32([d.box for d in detections]), atol=1e-4)
    np.testing.assert_allclose(saved["scores"], np.float32([d.score for d in detections]), rtol=1e-5)
    assert saved["labels"].tolist() == [d.label for d in detections]
    photo_height, photo_width = cv2.imread(str(BUNDLED_PHOTO)).shape[:2]
    scale = np.float32([photo_width / width, photo_height / height] * 2)
    np.testing.assert_allclose(saved["boxes"], saved["input_boxes"] * scale, rtol=1e-5)
    assert saved["input_size"].tolist() == [height, width]


# ----------------------------------------------------------------- every family
@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_writes_its_drawing_npz_and_lines(name: str, runs, detectors) -> None:
    skip_without(name)
    code, out, err, output = runs(name)
    assert code == 0, err
    assert "RANDOM weights" in err and "explain nothing" in err and "--weights" in err
    lines = [LINE.match(line) for line in out.splitlines() if line.startswith("  ")]
    assert lines and all(lines), out
    assert 1 <= len(lines) <= MAX
    names = [match.group(1) for match in lines]
    saved = np.load(output / "gradcam_detections.npz")
    assert names == saved["names"].tolist()
    assert [detectors[name].class_names[int(match.group(2))] for match in lines] == names
    for match, box in zip(lines, saved["boxes"]):
        assert [float(value) for value in match.groups()[3:]] == pytest.approx(box.tolist(), abs=0.051)
    drawing = cv2.imread(str(output / "gradcam_detections.jpg"))
    photo = cv2.imread(str(BUNDLED_PHOTO))
    assert drawing.shape == photo.shape  # drawn onto the photo at its own size
    assert np.abs(drawing.astype(np.float32) - photo).max() > 100  # the boxes' yellow at least
    assert sorted(path.name for path in output.iterdir()) == ["gradcam_detections.jpg", "gradcam_detections.npz"]


@pytest.mark.parametrize("name", ["yolov8n", "fcos", "detr"])  # one per adapter family
def test_npz_equals_explain_detections(name: str, runs, detectors) -> None:
    skip_without(name)
    code, _, err, output = runs(name)
    assert code == 0, err
    detections, images = reference(name, detectors)
    assert len(detections) >= 1
    assert_npz_is(output / "gradcam_detections.npz", detections, images)


def test_weights_load_a_state_dict(detectors, runs, tmp_path: Path) -> None:
    """A state dict saved from a model of another seed: the output is that model's, and no warning."""
    entry = detectors["retinanet"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = entry.architecture(SIZE).eval()
    torch.save(model.state_dict(), tmp_path / "retinanet.pt")
    output = tmp_path / "out"
    code, out, err = cam(
        ["--detector", "retinanet", "--weights", str(tmp_path / "retinanet.pt"), "--confidence", "0", "--image-size",
         str(SIZE), "--max-detections", str(MAX), "--output-dir", str(output)],
        detectors,
    )  # fmt: skip
    assert code == 0, err
    assert "RANDOM" not in err
    images = detector_input(read_photo(BUNDLED_PHOTO), entry, SIZE)
    detections = explain_detections(model, images, method="gradcam", confidence=0.0, max_detections=MAX)[0]
    seeded = np.load(runs("retinanet")[3] / "gradcam_detections.npz")["maps"]  # seed 0's
    assert not np.allclose(detections[0].cam, seeded[0])  # the weights did change the maps
    assert_npz_is(output / "gradcam_detections.npz", detections, images)

    code, _, err = cam(["--detector", "fcos", "--weights", str(tmp_path / "retinanet.pt")], detectors)
    assert code == 1 and err.startswith("cam.py: error: --weights: ") and "does not fit fcos" in err


def test_weights_folder_of_save_pretrained(detectors, tmp_path: Path) -> None:
    """For transformers, --weights FOLDER is a save_pretrained folder: its own config
    (here five classes with their own names) and weights."""
    skip_without("detr")
    import transformers

    with contextlib.redirect_stderr(io.StringIO()):
        small = load_detector("detr", detectors["detr"], None, SIZE)
    config = small.config.to_dict()
    config.update(id2label={str(k): f"thing {k}" for k in range(5)}, label2id=None, num_labels=5)
    config.pop("label2id", None)
    torch.manual_seed(3)
    model = transformers.DetrForObjectDetection(transformers.DetrConfig.from_dict(config)).eval()
    model.save_pretrained(tmp_path / "detr")
    output = tmp_path / "out"
    code, out, err = cam(
        ["--detector", "detr", "--weights", str(tmp_path / "detr"), "--confidence", "0", "--image-size",
         str(SIZE), "--max-detections", str(MAX), "--output-dir", str(output)],
        detectors,
    )  # fmt: skip
    assert code == 0, err
    assert "RANDOM" not in err
    images = detector_input(read_photo(BUNDLED_PHOTO), detectors["detr"], SIZE)
    detections = explain_detections(model, images, method="gradcam", confidence=0.0, max_detections=MAX)[0]
    assert_npz_is(output / "gradcam_detections.npz", detections, images)
    assert np.load(output / "gradcam_detections.npz")["names"].tolist() == [f"thing {d.label}" for d in detections]


def test_an_input_too_small_for_rtdetr_is_one_line(tmp_path: Path) -> None:
    """RT-DETR chooses its queries among its feature maps' cells: 32 x 32 has 16 + 4 + 1."""
    skip_without("rtdetr")
    detectors = _small_transformers(num_queries=22)
    code, out, err = cam(["--detector", "rtdetr", "--image-size", "16", "--output-dir", str(tmp_path)], detectors)
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        "cam.py: error: --image-size: the input 32x32 is too small for rtdetr: its 22 queries are chosen among "
        "the 21 cells of its feature maps; pass a larger --image-size"
    )
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------- folder mode
def test_folder_writes_each_image_and_results_csv(detectors, runs, tmp_path: Path) -> None:
    images = tmp_path / "photos"
    (images / "sub").mkdir(parents=True)
    shutil.copy(BUNDLED_PHOTO, images / "cat.jpg")
    coffee = cv2.imread(str(ROOT / "examples" / "coffee.jpg"))
    cv2.imwrite(str(images / "sub" / "coffee.png"), cv2.resize(coffee, (150, 100), interpolation=cv2.INTER_AREA))
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    output = tmp_path / "out"
    arguments = ["--detector", "retinanet", "--image-dir", str(images), "--output-dir", str(output),
                 "--image-size", str(SIZE), "--max-detections", str(MAX), "--no-progress", "--num-workers", "0"]  # fmt: skip
    code, out, err = cam(arguments, detectors)
    assert code == 0, err
    assert "explained 3 images" in out and "skipped 0 done before" in out
    with open(output / "results.csv", newline="") as handle:
        rows = {row["path"]: row for row in csv.DictReader(handle)}
    assert sorted(rows) == ["broken.jpg", "cat.jpg", "sub/coffee.png"]
    assert rows["broken.jpg"]["status"].startswith("unreadable")
    for path, stem in (("cat.jpg", "cat"), ("sub/coffee.png", "sub/coffee")):
        row = rows[path]
        assert (row["status"], row["method"], row["detections"]) == ("ok", "gradcam", str(MAX))
        assert (row["overlay"], row["map"], row["thumbnail"]) == (
            f"{stem}.gradcam.jpg",
            f"{stem}.gradcam.npz",
            f"{stem}.thumb.jpg",
        )
        saved = np.load(output / row["map"])
        objects = [f"{name} {score:.3f}" for name, score in zip(saved["names"], saved["scores"])]
        assert row["objects"] == "; ".join(objects)
        assert (row["predicted_label"], row["predicted_score"]) == (saved["names"][0], f"{saved['scores'][0]:.4f}")
        drawing = cv2.imread(str(output / row["overlay"]))
        assert drawing.shape[:2] == cv2.imread(str(images / path)).shape[:2]
    # The cat's npz is the one-photo command's, to the bit.
    _, _, _, single = runs("retinanet")
    one, folder = np.load(single / "gradcam_detections.npz"), np.load(output / "cat.gradcam.npz")
    for key in one:
        np.testing.assert_array_equal(one[key], folder[key])

    code, out, err = cam(arguments, detectors)  # started again: everything is done
    assert code == 0 and "explained 0 images" in out and "skipped 3 done before" in out, out + err


# ----------------------------------------------------------------- mistakes
@pytest.mark.parametrize(
    "arguments, needles",
    [
        (["--detector", "retinanet", "--category", "281"], ["--category does not apply to --detector"]),
        (["--detector", "retinanet", "--metrics", "road"], ["--metrics does not apply"]),
        (["--detector", "retinanet", "--aug-smooth"], ["--aug-smooth does not apply"]),
        (["--detector", "retinanet", "--eigen_smooth"], ["--eigen-smooth does not apply"]),
        (["--detector", "retinanet", "--model", "resnet50"], ["--model does not apply"]),
        (["--detector", "yolo"], ["--detector 'yolo' is not one of", "yolov8n", "retinanet"]),
        (["--detector", "retinanet", "--confidence", "1.5"], ["--confidence", "must be in [0, 1]"]),
        (["--detector", "retinanet", "--image-size", "0"], ["--image-size", "at least 1"]),
        (["--detector", "retinanet", "--method", "gradcam,eigencam"], ["one method per photo"]),
        (["--image-path", "x.jpg", "--confidence", "0.5"], ["--confidence applies only with --detector"]),
        (["--image-path", "x.jpg", "--max-detections", "3"], ["--max-detections applies only with --detector"]),
        ([], ["--image-path", "--image-dir", "required"]),
    ],
)
def test_mistakes_are_one_line(arguments: List[str], needles: List[str], detectors) -> None:
    code, out, err = cam(arguments, detectors)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cam.py: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_a_missing_package_is_named(detectors) -> None:
    absent = {
        "absent": DetectorEntry(package="no_such_detector_package", architecture=None, class_names=(), image_size=64)
    }
    code, out, err = cam(["--detector", "absent"], absent)
    assert code == 1 and out == ""
    assert err.strip() == (
        "cam.py: error: --detector absent needs the no_such_detector_package package, which is not installed: "
        "pip install no_such_detector_package"
    )


def test_help_lists_the_detectors(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["--help"], prog="cam.py") == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in DETECTORS:
        assert name in text
    assert "python cam.py --detector retinanet" in text and "--image-size N" in text and "--max-detections N" in text


def test_coco_names_are_torchvisions() -> None:
    """The 91-index list, built from the 80 names and the unused ids, is torchvision's own."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    assert list(COCO_91) == FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    assert [name for name in COCO_91 if name not in ("N/A", "__background__")] == list(COCO_80)


def test_detectors_page_commands_parse() -> None:
    """Every ``cam.py --detector`` command of docs/detectors.md names a detector and parses."""
    page = (ROOT / "docs" / "detectors.md").read_text(encoding="utf-8")
    shell = "".join(re.findall(r"^```bash\n(.*?)^```", page, flags=re.S | re.M))
    commands = re.findall(r"^python cam\.py (--detector .+?)(?:\s+#.*)?$", shell, flags=re.M)
    assert len(commands) >= 3, commands
    parser = cli.build_parser(cli.MODELS, "resnet50")
    for command in commands:
        args = parser.parse_args(command.split())
        assert args.detector in DETECTORS, command
