"""The benchmark's layout: bench.py parses its options and lists its tables, every module
in benchmarks/ imports, no file or function outgrows the project's limits, and the
side-by-side helpers (the maps' correlation, the note of a skipped table) do what
bench.py's tables say. In-process (the benchmark is never run here): fast.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
MODULES = sorted(path.stem for path in BENCHMARKS.glob("*.py"))


@pytest.fixture()
def bench(monkeypatch: pytest.MonkeyPatch):
    """bench.py loaded as a module, with the sys.path entries it adds undone afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location("bench_script_under_test", BENCHMARKS / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_runs_and_names_every_option(bench, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        bench.main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage:")
    for option in (
        "--device",
        "--quick",
        "--repeats",
        "--warmup",
        "--threads",
        "--clock",
        "--batches",
        "--scorecam-channels",
        "--no-memory",
        "--detection-size",
        "--metrics",
        "--only",
        "--no-dataset",
        "--rows",
        "--list",
        "--compare-with",
        "--torchcam-with",
        "--compare-rows",
        "--compare-only",
        "--compare-rounds",
        "--json",
    ):
        assert option in text, option


def test_list_prints_every_table_and_both_side_by_side_tables(bench, capsys: pytest.CaptureFixture) -> None:
    assert bench.main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    titles = [line.split(":")[0] for line in lines]
    # The Detection table is listed where ultralytics (an optional test extra) is installed,
    # else its one-line note is, in its place.
    detection_titles = ["Detection"]
    assert titles == [
        "Gradient methods, batch 1",
        "Gradient methods, batch 8",
        "AblationCAM, one image, layer4[-1] (2048 channels, batch_size 32)",
        "ScoreCAM, one image, layer4[-1] limited to its first K = 64 channels, batch_size 32",
        "eigen_smooth on layer1[-1] (56 x 56 x 256), batch 1",
        "eigen_smooth on layer1[-1] (56 x 56 x 256), batch 8",
        "aug_smooth (6 augmented copies), one image",
        "Drop-in methods against their floors, batch 8",
        "Transformer-native methods on ViT-B/16 (timm, random weights), batch 8",
        *detection_titles,
        "side by side (--compare-rows)",
        "side by side with torchcam (--compare-rows)",
    ]
    assert lines[0].endswith(
        "bare:1, floor:1, forward:1, gradcam:1, gradcam++:1, xgradcam:1, layercam:1, eigengradcam:1, eigencam:1"
    )
    assert lines[-1].endswith(
        "gradcam:1, gradcam:8, gradcam++:1, gradcam++:8, xgradcam:1, xgradcam:8, layercam:1, layercam:8, scorecam-r18, "
        "cam:8, smoothgradcam++:1, sscam-r18, iscam-r18"
    )
    assert len(lines[-2].split(": ")[1].split(", ")) == 19  # the grad-cam table's cases
    detection = lines[-3]
    if importlib.util.find_spec("ultralytics") is not None:
        assert detection.endswith(
            "640 x 640, GradCAM on the neck outputs: det-floor:1, det-box:1, det-separate:8, det-batched:8, det-several:8"
        )
    else:
        assert detection.endswith("skipped, ultralytics is not installed (pip install ultralytics)")


def test_quick_halves_the_detection_size_and_the_table_goes_without_ultralytics(
    bench, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    assert bench.parse_args(["--quick"]).detection_size == 320
    assert bench.parse_args([]).detection_size == 640
    assert bench.parse_args(["--detection-size", "256"]).detection_size == 256
    import bench_detection

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        bench_detection.importlib.util,
        "find_spec",
        lambda name, *rest: None if name == "ultralytics" else real_find_spec(name, *rest),
    )
    assert bench_detection.detection_tables(320) == []
    assert bench.main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert (
        lines[-3]
        == "Detection: YOLOv8n (random weights): skipped, ultralytics is not installed (pip install ultralytics)"
    )
    assert not any(line.startswith("Detection: YOLOv8n (random weights), ") for line in lines)


@pytest.mark.parametrize("name", MODULES)
def test_every_benchmark_module_imports(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module(name)
    assert Path(module.__file__).resolve() == BENCHMARKS / f"{name}.py"
    assert module.__doc__ and module.__doc__.strip(), f"{name}.py says what it is for in its first lines"


@pytest.mark.parametrize("name", MODULES)
def test_files_and_functions_stay_small(name: str) -> None:
    source = (BENCHMARKS / f"{name}.py").read_text()
    assert len(source.splitlines()) <= 450
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert node.end_lineno - node.lineno + 1 <= 80, f"{name}.{node.name}"


def test_map_correlation_resizes_ignores_scale_and_counts_constant_maps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from bench_compare import _correlation_text, map_correlation

    grid = torch.rand(4, 7, 7, generator=torch.Generator().manual_seed(0))
    grid[2] = 0  # an all-zero map in both libraries
    ours = F.interpolate(grid[:, None], size=(56, 56), mode="bilinear", align_corners=False)[:, 0]
    theirs = 3 * grid + 1  # another scaling, at the layer's resolution
    theirs[3] = 1  # constant in one library only
    torch.save(ours, tmp_path / "ours.pt")
    torch.save(theirs, tmp_path / "theirs.pt")
    values = map_correlation(tmp_path / "ours.pt", tmp_path / "theirs.pt")
    assert values[0] == pytest.approx(1, abs=1e-9) and values[1] == pytest.approx(1, abs=1e-9)
    assert values[2] is None and values[3] != values[3]
    assert _correlation_text(values) == "1.0000 (min 1.0000); 1/4 constant in both; 1/4 constant in one only"
    # a different map correlates below 1: the measure can fail
    torch.save(torch.rand(4, 7, 7, generator=torch.Generator().manual_seed(1)), tmp_path / "other.pt")
    assert max(map_correlation(tmp_path / "ours.pt", tmp_path / "other.pt")[:2]) < 0.9


def test_side_by_side_without_the_library_is_skipped_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from bench_compare import side_by_side, torchcam_cases, torchcam_library

    args = argparse.Namespace(compare_rows=None, no_memory=True, threads=1, clock="cpu", compare_rounds=1)
    missing = str(tmp_path / "no-such-python")
    assert side_by_side(args, None, torchcam_library(missing), torchcam_cases()) == []
    assert side_by_side(args, None, torchcam_library(None), torchcam_cases()) == []
    out = capsys.readouterr().out
    assert f"skipped: {missing} does not have torchcam installed" in out
    assert "skipped: pass --torchcam-with PYTHON" in out
