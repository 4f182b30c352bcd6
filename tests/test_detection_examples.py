"""The detector usage examples (usage_examples/detection_*_example.py), end to end: each
runs as a user runs it (a subprocess, offline, random weights) on a small input, and
must write its picture at the input's size, print one line per detection and the
random-weights warning, and leave the repository as it was (no stray files)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SIZE = 160  # the longer side of the model's input: small, so each run takes a few seconds
DETECTION = re.compile(r"^\S.* \((\d+)\) score (\S+) box \[(\S+), (\S+), (\S+), (\S+)\]$")
WROTE = re.compile(r"^wrote (.+) \((\d+)x(\d+)\)$")


def git_status() -> str:
    result = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=all"],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def run_example(script: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``script`` with the test interpreter, offline, on one CPU thread, from ``tmp_path``."""
    environment = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "YOLO_OFFLINE": "1",
        "YOLO_CONFIG_DIR": str(tmp_path / "yolo-config"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "OMP_NUM_THREADS": "1",
    }
    work = tmp_path / "cwd"
    work.mkdir()
    return subprocess.run(
        [sys.executable, str(ROOT / "usage_examples" / script), *args],
        cwd=work,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def detection_lines(stdout: str) -> List[re.Match]:
    return [match for match in map(DETECTION.match, stdout.splitlines()) if match]


@pytest.mark.parametrize(
    "family, package, photo, multiple",
    [
        ("yolo", "ultralytics", "cat.jpg", 32),  # YOLO's input sides are multiples of its stride 32
        ("torchvision", None, "coffee.jpg", 1),
        ("detr", "transformers", "cat.jpg", 1),
    ],
)
def test_example_writes_its_picture_and_prints_its_detections(
    family: str, package: str, photo: str, multiple: int, tmp_path: Path
) -> None:
    if package is not None:
        pytest.importorskip(package, reason=f"the {family} example needs {package} (test extra)")
    before = git_status()
    output = tmp_path / "out"
    result = run_example(f"detection_{family}_example.py", tmp_path, "--size", str(SIZE), "--output-dir", str(output))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "random weights explain nothing" in result.stderr and "--weights" in result.stderr

    lines = detection_lines(result.stdout)
    assert 1 <= len(lines) <= 3, result.stdout  # the seeded random model's default: 1-3 boxes
    for line in lines:
        score = float(line.group(2))
        x1, y1, x2, y2 = map(float, line.groups()[2:])
        assert 0 <= score <= 1 and x2 > x1 and y2 > y1, line.group(0)

    # The picture: the photo resized to a longer side of SIZE, with boxes and maps drawn on it.
    picture = cv2.imread(str(output / f"{family}_detections.jpg"))
    assert picture is not None, f"{family}_detections.jpg was not written: {result.stdout}"
    height, width = cv2.imread(str(ROOT / "examples" / photo)).shape[:2]
    expected_width = round(width * SIZE / max(height, width) / multiple) * multiple
    expected_height = round(height * SIZE / max(height, width) / multiple) * multiple
    assert picture.shape == (expected_height, expected_width, 3)
    wrote = [match for match in map(WROTE.match, result.stdout.splitlines()) if match]
    assert [(int(match.group(2)), int(match.group(3))) for match in wrote] == [(expected_width, expected_height)]
    resized = cv2.resize(cv2.imread(str(ROOT / "examples" / photo)), (expected_width, expected_height))
    # Measured 25-70 with the boxes and maps drawn; the JPEG and resizing alone differ by a few levels.
    assert np.abs(picture.astype(np.float32) - resized).mean() > 10

    assert sorted(path.name for path in output.iterdir()) == [f"{family}_detections.jpg"]
    assert list((tmp_path / "cwd").iterdir()) == []  # nothing written into the working directory
    assert git_status() == before  # nothing written into the repository
