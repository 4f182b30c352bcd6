"""The CLIP usage example (usage_examples/clip_prompts_example.py), end to end: run as a
user runs it (a subprocess, offline, random weights, a small input), it must print one
line per prompt, the random-weights warning, and write its picture (photo, one overlay
per prompt, the winners, the legend), and nothing else anywhere."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_detection_examples import ROOT, git_status, run_example

SIZE = 96  # ViT-B-32's 32-pixel patches: a 3x3 grid, so the run takes a few seconds
PROMPT_LINE = re.compile(r"^'(.+)': cosine (\S+), wins (\S+)% of the pixels$")
WROTE = re.compile(r"^wrote (.+) \((\d+)x(\d+)\)$")


def test_example_prints_each_prompt_and_writes_its_picture(tmp_path: Path) -> None:
    pytest.importorskip("open_clip", reason="the CLIP example needs open_clip_torch (test extra)")
    before = git_status()
    output = tmp_path / "out"
    prompts = ["a cat", "a dog", "a car"]
    result = run_example(
        "clip_prompts_example.py",
        tmp_path,
        "--size",
        str(SIZE),
        "--prompts",
        ",".join(prompts),
        "--output-dir",
        str(output),
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "random weights explain nothing" in result.stderr and "--weights" in result.stderr

    lines = [match for match in map(PROMPT_LINE.match, result.stdout.splitlines()) if match]
    assert [line.group(1) for line in lines] == prompts
    cosines = [float(line.group(2)) for line in lines]
    shares = [float(line.group(3)) for line in lines]
    assert all(-1 <= cosine <= 1 for cosine in cosines) and len(set(cosines)) == 3, cosines
    assert all(0 <= share <= 100 for share in shares) and sum(shares) <= 100.2, shares  # 0.1 rounding each

    picture = cv2.imread(str(output / "clip_prompts.jpg"))
    assert picture is not None, result.stdout
    wrote = [match for match in map(WROTE.match, result.stdout.splitlines()) if match]
    assert [(int(match.group(2)), int(match.group(3))) for match in wrote] == [picture.shape[1::-1]]
    # A 20-pixel caption strip above SIZE-pixel panels: photo, 3 overlays, winners; then the legend.
    assert picture.shape[0] == SIZE + 20 and picture.shape[1] > 5 * SIZE + 120
    photo = cv2.imread(str(ROOT / "examples" / "cat.jpg"))
    side = min(photo.shape[:2])
    top, left = (photo.shape[0] - side) // 2, (photo.shape[1] - side) // 2
    square = cv2.resize(photo[top : top + side, left : left + side], (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    # The first panel is the centre-cropped photo (JPEG: measured mean difference ~2 levels);
    # an overlay is not (measured 55-59; the winners panel 39).
    first, overlay = (picture[20:, k * SIZE : (k + 1) * SIZE].astype(np.float32) for k in (0, 1))
    assert np.abs(first - square).mean() < 6 and np.abs(overlay - square).mean() > 15

    assert sorted(path.name for path in output.iterdir()) == ["clip_prompts.jpg"]
    assert list((tmp_path / "cwd").iterdir()) == []  # nothing written into the working directory
    assert git_status() == before  # nothing written into the repository
