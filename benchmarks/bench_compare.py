"""The side-by-side tables: the same cases in this library and in another one, installed
in its own interpreter (a throwaway virtual environment outside the repository, never a
dependency of this project): grad-cam 1.5.7 (``--compare-with PYTHON``) and torchcam
0.5.0 (``--torchcam-with PYTHON``). Each case runs in a fresh process per library and
round through compare_runner.py; the models, weights and inputs are saved once here so
that both libraries compute on the same numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from bench_cases import DFF_COMPONENTS, Bench
from bench_compare_cases import (  # noqa: F401 - importable from here as before
    CompareCase,
    OtherLibrary,
    comparison_cases,
    gradcam_library,
    torchcam_cases,
    torchcam_library,
)
from bench_harness import MMAP_THRESHOLD, cpu_memory_supported

ModelEntry = Tuple[torch.nn.Module, Callable[[int], torch.Tensor], Callable[[int], List[int]]]
RUNNER = Path(__file__).resolve().parent / "compare_runner.py"


def _comparison_models(bench: Bench, wanted: set) -> Dict[str, ModelEntry]:
    """(model, images(batch), categories(batch)) for each architecture in ``wanted``:
    the bench's ResNet-50, a ResNet-18 (random weights, seed 0), EfficientNet-Lite0
    (pretrained) on ``examples/cat.jpg`` with its top class."""
    import torchvision

    models: Dict[str, ModelEntry] = {}
    if "resnet50" in wanted:
        models["resnet50"] = (bench.model.cpu(), lambda n: bench.images(n).cpu(), Bench.categories)
    if "resnet18" in wanted:
        torch.manual_seed(0)
        resnet18 = torchvision.models.resnet18(weights=None).eval()
        models["resnet18"] = (resnet18, lambda n: bench.images(n).cpu(), Bench.categories)
    if "efficientnet" in wanted:
        from pytorch_grad_cam.cli.app import model_input, read_photo
        from pytorch_grad_cam.cli.model_zoo import MODELS as ZOO
        from pytorch_grad_cam.cli.model_zoo import load_model

        entry = ZOO["efficientnet_lite0"]
        model = load_model(entry, "efficientnet_lite0", progress=False).eval()
        cat = model_input(read_photo(Path(__file__).resolve().parents[1] / "examples" / "cat.jpg"), entry)
        with torch.no_grad():
            top = int(model(cat).argmax())
        models["efficientnet"] = (model, lambda n: cat.repeat(n, 1, 1, 1), lambda n: [top] * n)
    return models


def save_comparison_inputs(bench: Bench, cases: Sequence[CompareCase], folder: Path) -> Dict[str, Path]:
    """Save each case's model weights (a state dict; the runner rebuilds the architecture
    by name) and its input in ``folder``; returns the runner's JSON file per case key."""
    models = _comparison_models(bench, {case.model for case in cases})
    for name, (model, _, _) in models.items():
        torch.save(model.state_dict(), folder / f"{name}.pt")
    specs = {}
    for case in cases:
        _, make_images, categories = models[case.model]
        input_path = folder / f"{case.model}-{case.batch}.input.pt"
        if not input_path.exists():
            torch.save(make_images(case.batch), input_path)
        spec = {
            "architecture": case.model,
            "model": str(folder / f"{case.model}.pt"),
            "input": str(input_path),
            "categories": categories(case.batch),
            "method": case.method,
            "layers": list(case.layers),
            "theirs_layers": list(case.theirs_layers) if case.theirs_layers else None,
            "batch_size": case.batch_size,
            "options": case.options,
            "init": case.init,
            "noise_seed": case.noise_seed,
            "no_targets": case.no_targets,
            "head": case.head,
            "n_components": DFF_COMPONENTS,
        }
        path = folder / f"{case.key.replace(':', '-')}.json"
        path.write_text(json.dumps(spec))
        specs[case.key] = path
    return specs


def run_case(
    python: str,
    library: str,
    spec: Path,
    case: CompareCase,
    args: argparse.Namespace,
    memory: bool = False,
    maps: Optional[Path] = None,
) -> Optional[dict]:
    """compare_runner.py's JSON for one case in ``python`` with ``--library library``
    (its times, or with ``memory`` its peak MB; with ``maps`` it saves the maps there);
    None, with a note on stderr, when the process fails."""
    command = [
        python,
        str(RUNNER),
        "--library",
        library,
        "--case",
        str(spec),
        "--calls",
        str(case.calls),
        "--warmup",
        str(case.warmup),
    ]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.clock == "cpu":
        command += ["--clock", "cpu"]
    if memory:
        command.append("--memory")
    if maps is not None:
        command += ["--maps", str(maps)]
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environment["TQDM_DISABLE"] = "1"
    if memory:
        environment["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    done = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=spec.parent)
    if done.returncode != 0:
        print(f"  ({library} {case.key} failed: {done.stderr.strip().splitlines()[-1:]})", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def installed_version(python: str, distribution: str) -> Optional[str]:
    """The version of ``distribution`` installed for the interpreter ``python``; None where
    that interpreter cannot be started or does not have it."""
    probe = f"import importlib.metadata as m; print(m.version({distribution!r}))"
    try:
        done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def map_correlation(ours: Path, theirs: Path) -> List[Optional[float]]:
    """Per image, the Pearson correlation of the two libraries' maps after resizing both to
    this library's map size (the input's) with bilinear interpolation (half-pixel centres,
    as OpenCV's). Pearson's r ignores any scaling and offset, so each library's min-max
    normalisation (or none) does not change it. None where both maps are constant (r is
    undefined, and the libraries agree: for example both all zero after the ReLU), NaN
    where only one is."""
    import torch.nn.functional as F

    maps = []
    for path in (ours, theirs):
        tensor = torch.load(path, map_location="cpu", weights_only=True).double()
        maps.append(tensor.reshape(-1, *tensor.shape[-2:]))
    size = tuple(maps[0].shape[-2:])
    maps = [
        m
        if tuple(m.shape[-2:]) == size
        else F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        for m in maps
    ]
    result: List[Optional[float]] = []
    for a, b in zip(*maps):
        a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
        norms = float(a.norm()), float(b.norm())
        if norms[0] == 0 and norms[1] == 0:
            result.append(None)
        else:
            result.append(float(a @ b) / (norms[0] * norms[1]) if min(norms) > 0 else float("nan"))
    return result


def _other_python(library: str, other: OtherLibrary) -> str:
    return sys.executable if library == "ours" else str(other.python)


def measure_case(
    args: argparse.Namespace, other: OtherLibrary, spec: Path, case: CompareCase, measure_memory: bool
) -> dict:
    """One row: ``args.compare_rounds`` rounds of one process per library, alternating
    which goes first; the time ratio is the median over rounds of (ours / theirs) of the
    same round. Peak memory: one call each, in a fresh process. With ``other.correlate``,
    the maps of the first round's last calls are correlated (:func:`map_correlation`)."""
    libraries = {"ours": "ours", "theirs": other.runner_library}
    times: Dict[str, List[float]] = {"ours": [], "theirs": []}
    ratios: List[float] = []
    maps = {side: spec.with_suffix(f".{side}.maps.pt") for side in libraries}
    for round_index in range(args.compare_rounds):
        order = ["ours", "theirs"] if round_index % 2 == 0 else ["theirs", "ours"]
        got = {}
        for side in order:
            keep = maps[side] if other.correlate and round_index == 0 else None
            result = run_case(_other_python(side, other), libraries[side], spec, case, args, maps=keep)
            got[side] = statistics.median(result["times"]) if result else None
        if got["ours"] is None or got["theirs"] is None:
            break
        for side in libraries:
            times[side].append(got[side])
        ratios.append(got["ours"] / got["theirs"])
    peaks: Dict[str, Optional[float]] = {}
    if measure_memory:
        for side in libraries:
            result = run_case(_other_python(side, other), libraries[side], spec, case, args, memory=True)
            peaks[side] = result["peak_mb"] if result else None
    row = {
        "key": case.key,
        "label": case.label,
        "library": other.name,
        "ours_s": statistics.median(times["ours"]) if times["ours"] else None,
        "theirs_s": statistics.median(times["theirs"]) if times["theirs"] else None,
        "time_ratio": statistics.median(ratios) if ratios else None,
        "ours_mb": peaks.get("ours"),
        "theirs_mb": peaks.get("theirs"),
        "time_target": case.time_target,
        "memory_target": case.memory_target,
        "correlations": None,
    }
    row["memory_ratio"] = row["ours_mb"] / row["theirs_mb"] if row["ours_mb"] is not None and row["theirs_mb"] else None
    if other.correlate and all(path.exists() for path in maps.values()):
        row["correlations"] = map_correlation(maps["ours"], maps["theirs"])
    return row


def _text(value: Optional[float], form: str) -> str:
    return "-" if value is None else format(value, form)


def _correlation_text(values: Optional[List[Optional[float]]]) -> str:
    """The mean r over the images, the lowest where there are several, and how many
    images had constant maps in both libraries (None) or in one (NaN)."""
    if not values:
        return "-"
    finite = [value for value in values if value is not None and value == value]
    text = "-" if not finite else f"{statistics.fmean(finite):.4f}"
    if len(finite) > 1:
        text += f" (min {min(finite):.4f})"
    both, one = values.count(None), sum(1 for value in values if value is not None and value != value)
    if both:
        text += f"; {both}/{len(values)} constant in both"
    if one:
        text += f"; {one}/{len(values)} constant in one only"
    return text


def print_side_by_side_header(args: argparse.Namespace, other: OtherLibrary, version: str) -> None:
    """The table's title, what it measures, and its Markdown header."""
    threads = args.threads or torch.get_num_threads()
    print(f"\n### Side by side with {other.name}")
    print(
        f"{other.distribution} {version} in {other.python}; the same models (architecture + saved weights) and "
        f"inputs in both libraries, {threads} torch threads, "
        f"{'process CPU' if args.clock == 'cpu' else 'wall-clock'} time; a fresh process per library, case and "
        f"round, alternating, {args.compare_rounds} rounds; time ratio: median over rounds of (ours / "
        f"{other.short}'s); peak MB as in the tables above (one call, fresh process)"
        + (
            "; map r: Pearson correlation of the two maps per image, both resized to the input size "
            "(mean and min over the batch; images whose maps are constant are counted apart)"
            if other.correlate
            else ""
        )
        + "\n"
    )
    extra = (" map r |", "------:|") if other.correlate else ("", "")
    print(f"| case | ours s | {other.short} s | time ratio | ours MB | {other.short} MB | memory ratio |{extra[0]}")
    print(
        f"|------|-------:|{'-' * (len(other.short) + 3)}:|-----------:|--------:|"
        f"{'-' * (len(other.short) + 4)}:|-------------:|{extra[1]}"
    )


def print_side_by_side_row(row: dict, other: OtherLibrary) -> None:
    """One Markdown row of the side-by-side table."""
    correlation = f" {_correlation_text(row['correlations'])} |" if other.correlate else ""
    print(
        f"| {row['label']} | {_text(row['ours_s'], '.2f')} | {_text(row['theirs_s'], '.2f')} | "
        f"{_text(row['time_ratio'], '.2f')}x | {_text(row['ours_mb'], '.0f')} | "
        f"{_text(row['theirs_mb'], '.0f')} | {_text(row['memory_ratio'], '.2f')}x |{correlation}"
    )
    sys.stdout.flush()


def side_by_side(
    args: argparse.Namespace, bench: Bench, other: OtherLibrary, cases: Sequence[CompareCase]
) -> List[dict]:
    """Run and print the side-by-side table with ``other`` (the cases in
    ``args.compare_rows`` only, where given); returns its rows. Without an interpreter, or
    one without the library, the table is skipped with a note saying why."""
    import tempfile

    cases = [case for case in cases if not args.compare_rows or case.key in args.compare_rows]
    version = installed_version(other.python, other.distribution) if other.python else None
    if version is None:
        why = (
            f"{other.python} does not have {other.distribution} installed (or cannot be started)"
            if other.python
            else f"pass {other.option} PYTHON"
        )
        print(
            f"\n### Side by side with {other.name}\nskipped: {why}; {other.option} names an interpreter "
            f"with {other.name} installed (a throwaway virtual environment outside the repository)"
        )
        return []
    if not cases:
        print(f"\n### Side by side with {other.name}\nno case of --compare-rows in this table (see --list)")
        return []
    measure_memory = not args.no_memory and cpu_memory_supported()
    print_side_by_side_header(args, other, version)
    results = []
    with tempfile.TemporaryDirectory(prefix="cam-compare-") as folder:
        specs = save_comparison_inputs(bench, cases, Path(folder))
        for case in cases:
            results.append(measure_case(args, other, specs[case.key], case, measure_memory))
            print_side_by_side_row(results[-1], other)
    return results


def comparison_targets(results: Sequence[dict]) -> List[str]:
    """One line per target that a side-by-side row has and measured: the ratio, met/MISSED."""
    lines = []
    for row in results:
        short = row["library"].split()[0]
        if row["time_target"] is not None and row["time_ratio"] is not None:
            verdict = "met" if row["time_ratio"] <= row["time_target"] else "MISSED"
            lines.append(
                f"{row['label']}: <= {row['time_target']}x {short}'s time: {row['time_ratio']:.2f}x  {verdict}"
            )
        if row["memory_target"] is not None and row["memory_ratio"] is not None:
            verdict = "met" if row["memory_ratio"] <= row["memory_target"] else "MISSED"
            lines.append(
                f"{row['label']}: <= {row['memory_target']}x {short}'s peak memory: {row['memory_ratio']:.2f}x  {verdict}"
            )
    return lines
