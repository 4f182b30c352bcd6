"""``cam.py --image-dir``: a whole folder, batched, resumable, and in several processes.

One folder of twelve small images (ten readable ones with mixed extensions and cases,
two in subfolders, two with the same stem; a truncated JPEG and random bytes named .png)
and one reference run in this process are shared by the module. The model is the tiny
classifier of ``tests/folder_mode_cli.py`` (48 x 48 inputs, fixed random weights), which
the subprocess runs use too: a run killed with SIGKILL and started again, torchrun with
two processes, and two torchrun "machines" meeting over loopback. Each must end with the
reference's results.csv (the same rows: text columns equal, numbers within one printed
digit) and its files, maps equal within 1e-6.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import cv2
import numpy as np
import pytest

from pytorch_grad_cam.cli import app as cli
from pytorch_grad_cam.cli.folder import COLUMNS, atomic_write, jpeg_is_complete, remove_partial_files

sys.path.insert(0, str(Path(__file__).resolve().parent))
from folder_mode_cli import MODELS, TINY  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve().parent / "folder_mode_cli.py"
METHODS = ("eigencam", "gradcam")
METRICS = ("drop-in-confidence", "confidence-change")
ARGUMENTS = ["--method", ",".join(METHODS), "--metrics", ",".join(METRICS), "--no-progress"]
#: relative path -> (photo, crop box (top, left, height, width), output size (height, width))
GOOD = {
    "a.jpg": ("cat", (40, 120, 200, 220), (60, 66)),
    "a.png": ("coffee", (0, 150, 260, 300), (64, 74)),
    "B.JPG": ("motorcycle", (100, 100, 300, 500), (48, 80)),  # written as a progressive JPEG
    "c.jpeg": ("cat", (0, 0, 300, 451), (120, 200)),  # large enough for a smaller thumbnail
    "d.bmp": ("coffee", (100, 100, 200, 200), (40, 40)),
    "e.webp": ("motorcycle", (0, 0, 500, 741), (54, 80)),
    "g.Jpeg": ("coffee", (0, 0, 400, 600), (50, 75)),
    "sub/f.PNG": ("cat", (100, 200, 150, 200), (64, 64)),
    "sub/deeper/h.jpg": ("motorcycle", (200, 300, 250, 300), (70, 84)),
    "sub/i.BMP": ("cat", (0, 250, 300, 200), (72, 48)),
}
CORRUPT = ("bad.jpg", "noise.png")
MAP_TOLERANCE = 1e-6  # float32 maps of the same images in other batches, other processes
#: results.csv's number columns -> tolerance: one step of the printed precision (a score
#: to 4 decimals, a metric to 6) plus half a step. Unrounded, the values differ by at
#: most 3e-8 between batch sizes 1, 2, 3, 4 and 12, one or two threads and three CPU
#: kernel sets (ATEN_CPU_CAPABILITY default, avx2, avx512), but a value can sit next to a
#: rounding boundary (one metric 7e-9 from it), so the printed text may differ by a step.
NUMBER_TOLERANCE = {"predicted_score": 1.5e-4, **{name: 1.5e-6 for name in METRICS}}


def make_folder(root: Path) -> Path:
    """The twelve images (and a text file, which is not an image)."""
    for relative, (photo, (top, left, height, width), (out_h, out_w)) in GOOD.items():
        picture = cv2.imread(str(ROOT / "examples" / f"{photo}.jpg"))[top : top + height, left : left + width]
        picture = cv2.resize(picture, (out_w, out_h), interpolation=cv2.INTER_AREA)
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        suffix = Path(relative).suffix.lower()
        options = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1] if relative == "B.JPG" else []
        ok, data = cv2.imencode(".jpg" if suffix in (".jpg", ".jpeg") else suffix, picture, options)
        assert ok
        path.write_bytes(data.tobytes())
    whole = (root / "a.jpg").read_bytes()
    (root / "bad.jpg").write_bytes(whole[: len(whole) * 2 // 3])  # cut inside the scan
    (root / "noise.png").write_bytes(np.random.default_rng(0).integers(0, 256, 700, dtype=np.uint8).tobytes())
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def reference(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One in-process run: batches of 4, two DataLoader workers."""
    out = tmp_path_factory.mktemp("reference")
    code = cli.main(
        ["--image-dir", str(folder), "--output-dir", str(out), "--batch-size", "4", "--num-workers", "2", *ARGUMENTS],
        models=MODELS,
        default_model="tiny",
        prog="cam.py",
    )
    assert code == 0
    return out


def run_subprocess(command: List[str], env: Dict[str, str] | None = None, **options) -> subprocess.Popen:
    environment = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    environment.pop("FOLDER_TEST_DELAY", None)
    environment.update(env or {})
    return subprocess.Popen(
        command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **options
    )


def finish(process: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr[-3000:]
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def folder_arguments(folder: Path, out: Path, *extra: str) -> List[str]:
    return ["--image-dir", str(folder), "--output-dir", str(out), *ARGUMENTS, *extra]


def read_rows(out: Path) -> List[Dict[str, str]]:
    return list(csv.DictReader(io.StringIO((out / "results.csv").read_text(encoding="utf-8"))))


def files_under(out: Path) -> List[str]:
    """Every output file except the records, results.csv and the contact sheet."""
    return sorted(
        path.relative_to(out).as_posix()
        for path in out.rglob("*")
        if path.is_file() and ".records" not in path.parts and path.name not in ("results.csv", "index.html")
    )


def assert_same_rows(rows: List[Dict[str, str]], expected: List[Dict[str, str]]) -> None:
    """The same rows in the same order: text columns equal, numbers within NUMBER_TOLERANCE."""
    assert [list(row) for row in rows] == [list(row) for row in expected]
    for row, reference_row in zip(rows, expected):
        for column, value in row.items():
            if column in NUMBER_TOLERANCE and value and reference_row[column]:
                assert abs(float(value) - float(reference_row[column])) <= NUMBER_TOLERANCE[column], (column, row)
            else:
                assert value == reference_row[column], (column, row, reference_row)


def assert_same_result(out: Path, reference: Path) -> None:
    """The same results.csv rows, the same files, the same maps; no temporary file left."""
    assert_same_rows(read_rows(out), read_rows(reference))
    assert files_under(out) == files_under(reference)
    for relative in files_under(reference):
        if relative.endswith(".npz"):
            np.testing.assert_allclose(
                np.load(out / relative)["cam"], np.load(reference / relative)["cam"], atol=MAP_TOLERANCE, rtol=0
            )
    assert not [path for path in out.rglob("*") if ".partial-" in path.name]


def test_rows_compare_text_exactly_and_numbers_within_a_printed_step() -> None:
    row = {
        "path": "a.jpg",
        "method": "gradcam",
        "status": "ok",
        "predicted_score": "0.1870",
        "drop-in-confidence": "0.048863",
        "confidence-change": "",
    }
    assert_same_rows([dict(row, predicted_score="0.1871", **{"drop-in-confidence": "0.048864"})], [row])
    for changed in (
        {"status": "unreadable: x"},
        {"path": "b.jpg"},
        {"predicted_score": "0.1872"},
        {"drop-in-confidence": "0.048861"},
        {"confidence-change": "0.1"},
    ):
        with pytest.raises(AssertionError):
            assert_same_rows([dict(row, **changed)], [row])
    with pytest.raises(AssertionError):
        assert_same_rows([row, row], [row])


# ----------------------------------------------------------------- one process
def test_every_image_once_with_the_single_image_map(folder: Path, reference: Path) -> None:
    rows = read_rows(reference)
    assert list(rows[0]) == [*COLUMNS, *METRICS]
    expected_paths = sorted([*GOOD, *CORRUPT])
    assert [(row["path"], row["method"]) for row in rows] == [(p, m) for p in expected_paths for m in METHODS]
    for row in rows:
        if row["path"] in CORRUPT:
            assert row["status"].startswith("unreadable: "), row
            assert all(row[column] == "" for column in (*COLUMNS[3:], *METRICS)), row
    stems = {"a.jpg": "a.jpg", "a.png": "a.png"}  # one stem, two files: whole names
    expected_files = []
    for relative in GOOD:
        stem = relative.rsplit(".", 1)[0] if Path(relative).name not in stems else relative
        expected_files += [f"{stem}.thumb.jpg"] + [f"{stem}.{m}.{kind}" for m in METHODS for kind in ("jpg", "npz")]
    assert files_under(reference) == sorted(expected_files)

    import torch

    model = TINY.pretrained(False).eval()
    layer = TINY.target_layer(model)
    ok_rows = [row for row in rows if row["status"] == "ok"]
    assert len(ok_rows) == 2 * len(GOOD)
    for row in ok_rows:
        path = folder / row["path"]
        photo = cli.read_photo(path)  # the single-photo command's own steps
        input_tensor = cli.model_input(photo, TINY)
        with torch.no_grad():
            probabilities = model(input_tensor)[0].softmax(0)
        assert int(row["predicted_class"]) == int(probabilities.argmax())
        assert abs(float(row["predicted_score"]) - float(probabilities.max())) <= 5e-5
        assert (
            row["explained_class"] == row["predicted_class"]
            and row["explained_label"] == f"class {row['explained_class']}"
        )
        single = cli.compute_cam(row["method"], model, layer, input_tensor, int(row["explained_class"]), progress=False)
        saved = np.load(reference / row["map"])["cam"]
        assert saved.dtype == np.float32 and saved.shape == TINY.input_size
        np.testing.assert_allclose(saved, single, atol=1e-5, rtol=0)
        assert cv2.imread(str(reference / row["overlay"])).shape == photo.shape
        thumb = cv2.imread(str(reference / row["thumbnail"]))
        assert thumb.shape[:2] == (photo.shape[:2] if max(photo.shape) <= 160 else (96, 160))
        for name in METRICS:
            float(row[name])
    assert len({row["predicted_class"] for row in ok_rows}) > 1  # the classes do differ


def test_the_run_writes_the_contact_sheet_of_its_rows(folder: Path, reference: Path, tmp_path: Path) -> None:
    """index.html is the contact sheet of exactly the rows of results.csv: the same bytes as
    write_contact_sheet gives from them, every image's path in its records."""
    from pytorch_grad_cam.cli.contact_sheet import write_contact_sheet

    sheet = (reference / "index.html").read_text(encoding="utf-8")
    rebuilt = write_contact_sheet(tmp_path, read_rows(reference), title=f"{', '.join(METHODS)} on {folder} (tiny)")
    assert rebuilt.read_text(encoding="utf-8") == sheet
    for relative in sorted([*GOOD, *CORRUPT]):
        assert json.dumps(relative, ensure_ascii=True).replace("<", "\\u003c") in sheet


def test_two_threads_writing_one_file_each_use_their_own_temporary_file(tmp_path: Path) -> None:
    """The writer threads write an image's thumbnail once per method, at the same time:
    a temporary name per process only made one thread's rename fail (FileNotFoundError)."""
    import threading

    target = tmp_path / "a.thumb.jpg"
    failures: List[BaseException] = []
    start = threading.Barrier(4)

    def write(payload: bytes) -> None:
        start.wait()
        try:
            for _ in range(300):
                atomic_write(target, payload)
        except BaseException as error:  # noqa: BLE001 - collected and asserted below
            failures.append(error)

    threads = [threading.Thread(target=write, args=(bytes([65 + k]) * 4096,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert target.read_bytes() in {bytes([65 + k]) * 4096 for k in range(4)}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.thumb.jpg"]
    for name in (".a.thumb.jpg.partial-4242", ".a.thumb.jpg.partial-4242-139871"):
        (tmp_path / name).write_bytes(b"half")
    assert remove_partial_files(tmp_path) == 2
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.thumb.jpg"]


def test_truncated_jpeg_is_found_and_progressive_ones_pass(folder: Path) -> None:
    assert jpeg_is_complete((folder / "B.JPG").read_bytes())  # progressive: several scans
    assert jpeg_is_complete((folder / "a.jpg").read_bytes())
    assert not jpeg_is_complete((folder / "bad.jpg").read_bytes())
    whole = (folder / "a.jpg").read_bytes()
    assert jpeg_is_complete(whole + b"trailing data of a motion photo")


def test_a_truncated_jpeg_is_the_same_error_in_folder_mode_and_for_one_photo(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Folder mode records a truncated JPEG as unreadable, with the reason that the
    one-photo command prints after the file's name (the one reader of both), writes no
    output for it, and explains the folder's other image."""
    folder = tmp_path / "photos"
    folder.mkdir()
    picture = cv2.resize(cv2.imread(str(ROOT / "examples" / "cat.jpg")), (64, 48), interpolation=cv2.INTER_AREA)
    whole = cv2.imencode(".jpg", picture)[1].tobytes()
    (folder / "good.jpg").write_bytes(whole)
    (folder / "cut.jpg").write_bytes(whole[: len(whole) * 3 // 4])
    out = tmp_path / "out"
    code = cli.main(
        [
            "--image-dir",
            str(folder),
            "--output-dir",
            str(out),
            "--method",
            "gradcam",
            "--num-workers",
            "0",
            "--no-progress",
        ],
        models=MODELS,
        default_model="tiny",
        prog="cam.py",
    )
    assert code == 0
    assert "1 unreadable, 0 with errors" in capsys.readouterr().out
    rows = {row["path"]: row for row in read_rows(out)}
    assert rows["cut.jpg"]["status"] == "unreadable: truncated JPEG (no end-of-image marker)"
    assert all(rows["cut.jpg"][column] == "" for column in COLUMNS[3:])
    assert rows["good.jpg"]["status"] == "ok"
    assert files_under(out) == ["good.gradcam.jpg", "good.gradcam.npz", "good.thumb.jpg"]

    code = cli.main(
        ["--image-path", str(folder / "cut.jpg"), "--output-dir", str(tmp_path / "single"), "--no-progress"],
        models=MODELS,
        default_model="tiny",
        prog="cam.py",
    )
    assert code == 1
    reason = rows["cut.jpg"]["status"].removeprefix("unreadable: ")
    assert capsys.readouterr().err.splitlines() == [f"cam.py: error: {folder / 'cut.jpg'}: {reason}"]
    assert not (tmp_path / "single").exists()


def test_killed_run_resumes_to_the_same_result(folder: Path, reference: Path, tmp_path: Path) -> None:
    """SIGKILL after the first records (one image per batch, each forward slowed), then the
    same command again: the reference's CSV and files, the leftover temporary file gone."""
    out = tmp_path / "out"
    command = [sys.executable, str(SCRIPT), *folder_arguments(folder, out, "--batch-size", "1", "--num-workers", "0")]
    process = run_subprocess(command, env={"FOLDER_TEST_DELAY": "0.05"})
    deadline = time.monotonic() + 240
    while len(list((out / ".records").rglob("*.json"))) < 3 and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    done = len(list((out / ".records").rglob("*.json")))
    assert 3 <= done < 2 * (len(GOOD) + len(CORRUPT)), "the run was not killed halfway"
    assert not (out / "results.csv").exists()
    (out / "sub" / ".f.gradcam.jpg.partial-4242").parent.mkdir(parents=True, exist_ok=True)
    (out / "sub" / ".f.gradcam.jpg.partial-4242").write_bytes(b"half a JPEG")  # as a kill mid-write leaves
    again = finish(run_subprocess(command))
    skipped = int(again.stdout.split("skipped ")[1].split()[0])
    assert skipped >= 1, again.stdout
    assert_same_result(out, reference)


# ----------------------------------------------------------------- torchrun
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def explained_per_rank(stderr: str) -> Dict[int, int]:
    """{rank: images} from the "rank r of 2: explained n images" lines."""
    # Searched anywhere, not at line starts: both ranks write to the one stderr pipe that
    # torchrun gives them, so another process's output can precede a line (seen in CI).
    import re

    return {int(rank): int(count) for rank, count in re.findall(r"rank (\d+) of 2: explained (\d+) images", stderr)}


def assert_sharded(out: Path, counts: Dict[int, int]) -> None:
    """Each image explained once, by the rank of its place in the sorted list (rank::2)."""
    assert counts == {0: 6, 1: 6}
    for position, relative in enumerate(sorted([*GOOD, *CORRUPT])):
        for method in METHODS:
            record = json.loads((out / ".records" / f"{relative}.{method}.json").read_text())
            assert record["rank"] == position % 2


def test_torchrun_two_processes(folder: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(SCRIPT),
        *folder_arguments(folder, out, "--batch-size", "2", "--num-workers", "1"),
    ]
    result = finish(run_subprocess(command))
    assert "explained 12 images" in result.stdout
    assert_sharded(out, explained_per_rank(result.stderr))
    assert_same_result(out, reference)


def test_two_machines_over_loopback(folder: Path, reference: Path, tmp_path: Path) -> None:
    """Two torchrun launchers, as on two machines, meeting at a c10d rendezvous."""
    out = tmp_path / "out"
    port = free_port()
    launchers = [
        run_subprocess(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--node-rank",
                str(node),
                "--nproc-per-node",
                "1",
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"127.0.0.1:{port}",
                "--rdzv-id",
                "folder-test",
                str(SCRIPT),
                *folder_arguments(folder, out, "--batch-size", "3", "--num-workers", "0"),
            ]
        )
        for node in (0, 1)
    ]
    results = [finish(launcher) for launcher in launchers]
    assert sum("explained 12 images" in result.stdout for result in results) == 1  # rank 0's summary
    assert_sharded(out, explained_per_rank("".join(result.stderr for result in results)))
    assert_same_result(out, reference)


# ----------------------------------------------------------------- mistakes
@pytest.mark.parametrize(
    "arguments, code, needles",
    [
        (["--image-dir", "{tmp}/missing"], 1, ["missing", "no such folder"]),
        (["--image-dir", "{tmp}/empty"], 1, ["empty", "holds no images"]),
        (["--image-dir", "{tmp}/empty", "--image-path", "x.jpg"], 2, ["--image-path", "not allowed"]),
        ([], 2, ["--image-path", "--image-dir", "required"]),
        (["--image-dir", "{tmp}/empty", "--output-dir", "{tmp}/empty"], 2, ["folder of their own"]),
        (["--image-dir", "{tmp}/empty", "--method", "gradcam,gradcam+++"], 2, ["gradcam+++"]),
    ],
)
def test_mistakes_are_one_line(
    arguments: List[str], code: int, needles: List[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    arguments = [argument.format(tmp=tmp_path) for argument in arguments]
    assert cli.main(arguments, models=MODELS, default_model="tiny", prog="cam.py") == code
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cam.py: error: "), lines
    for needle in needles:
        assert needle in lines[0], lines[0]


# ----------------------------------------------------------------- channels_last
def _format_models(view: bool):
    """A model entry whose forward records the memory format of each batch it is given;
    with ``view`` it flattens its feature map with ``.view``, which a channels_last batch
    of a non-square map cannot take (the failure folder mode must recover from)."""
    import torch
    from torch import nn

    from pytorch_grad_cam.cli.model_zoo import ModelEntry

    seen: List[bool] = []

    class FormatNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            generator_state = torch.random.get_rng_state()
            torch.manual_seed(3)
            self.conv = nn.Conv2d(3, 6, 3, padding=1)
            self.fc = nn.Linear(6 * 4 * 2, 5)
            torch.random.set_rng_state(generator_state)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
            a = torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), (4, 2))
            return self.fc(a.view(a.shape[0], -1) if view else a.reshape(a.shape[0], -1))

    entry = ModelEntry(
        architecture=FormatNet,
        target_layer=lambda model: model.conv,
        pretrained=lambda progress: FormatNet(),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        input_size=(24, 24),
    )
    return {"fmt": entry}, seen


@pytest.mark.parametrize("view", [False, True], ids=["channels-last", "view-falls-back"])
def test_batches_go_channels_last_and_a_model_that_cannot_take_them_falls_back(
    folder: Path, tmp_path: Path, view: bool
) -> None:
    """On the CPU the batches reach the model in channels_last (same maps as the
    single-image call); a model whose ``.view`` fails on them gets contiguous batches
    from the first failure on, and the run still ends with every image explained."""
    import torch

    models, seen = _format_models(view)
    out = tmp_path / "out"
    code = cli.main(
        [
            "--image-dir",
            str(folder),
            "--output-dir",
            str(out),
            "--method",
            "gradcam",
            "--batch-size",
            "3",
            "--num-workers",
            "0",
            "--no-progress",
        ],
        models=models,
        default_model="fmt",
        prog="cam.py",
    )
    assert code == 0
    rows = read_rows(out)
    assert sorted(row["path"] for row in rows if row["status"] == "ok") == sorted(GOOD)
    if view:
        assert seen[0] is True and not any(seen[1:])  # one failed try, then contiguous only
        with pytest.raises(RuntimeError, match="view"):
            models["fmt"].pretrained(False)(torch.rand(2, 3, 24, 24).contiguous(memory_format=torch.channels_last))
    else:
        assert seen and all(seen)
    model = models["fmt"].pretrained(False).eval()
    for row in rows:
        if row["status"] != "ok":
            continue
        input_tensor = cli.model_input(cli.read_photo(folder / row["path"]), models["fmt"])
        single = cli.compute_cam(
            "gradcam", model, model.conv, input_tensor, int(row["explained_class"]), progress=False
        )
        np.testing.assert_allclose(np.load(out / row["map"])["cam"], single, atol=1e-5, rtol=0)
