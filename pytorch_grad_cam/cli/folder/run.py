"""``cam.py --image-dir``, from the arguments to the summary: check them, build the model
and one CAM object per method, explain this rank's shard (:class:`ShardRun`), then on
rank 0 gather every rank's rows into ``results.csv`` and the contact sheet.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from pytorch_grad_cam.cli.folder.distributed import (
    Ranks,
    barrier,
    gather_on_rank_0,
    set_threads,
    start_process_group,
)
from pytorch_grad_cam.cli.folder.files import ImageItem, atomic_write, find_images, remove_partial_files
from pytorch_grad_cam.cli.folder.records import RESULTS_NAME, Records, csv_text, record_settings, write_sheet
from pytorch_grad_cam.cli.folder.shard import ShardRun
from pytorch_grad_cam.cli.jobs import (
    CLIError,
    build_model,
    check_method,
    choose_device,
    make_cam,
    model_entry,
    resolve_category,
    select_layer,
)
from pytorch_grad_cam.cli.model_zoo import MODELS, ModelEntry, imagenet_classes


def parse_methods(text: str) -> List[str]:
    """``--method a,b,c``: registered names (lower case), in order, each once.

    Raises:
        CLIError: for an unknown name or none (exit code 2).
    """
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    if not names:
        raise CLIError(f"--method {text!r} names no method", code=2)
    return list(dict.fromkeys(check_method(name) for name in names))


@dataclass(frozen=True)
class FolderJob:
    """A checked ``--image-dir`` command: what every step of the run reads.

    Attributes:
        args: the parsed arguments.
        methods: the registered method names, in order.
        entry: the model's entry.
        items: every image under ``--image-dir`` (all ranks' shards).
        category: ``--category`` as an index, or None (each image's top class).
        ranks: this process's place among torchrun's.
        device: where this rank computes.
    """

    args: argparse.Namespace
    methods: List[str]
    entry: ModelEntry
    items: List[ImageItem]
    category: Optional[int]
    ranks: Ranks
    device: torch.device

    @property
    def output_dir(self) -> Path:
        """``--output-dir``."""
        return Path(self.args.output_dir)

    @property
    def metric_names(self) -> List[str]:
        """``--metrics``: the names, or none."""
        return list(self.args.metrics or [])

    @property
    def progress(self) -> bool:
        """Whether this rank shows progress bars (rank 0 only, unless --no-progress)."""
        return not self.args.no_progress and self.ranks.rank == 0


@dataclass(frozen=True)
class ShardSummary:
    """What one rank sends rank 0 at the end: its rows of results.csv and its counts."""

    rank: int
    explained: int
    skipped: int
    rows: List[Dict[str, str]]


def prepare_output_dir(output_dir: Path, ranks: Ranks) -> None:
    """Create ``output_dir`` and remove a killed run's temporary files, once per machine
    (local rank 0), before any rank writes; then wait for every rank.

    Raises:
        CLIError: if the folder cannot be created.
    """
    if ranks.local_rank == 0:
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CLIError(f"--output-dir {output_dir}: cannot create it ({error.strerror or error})") from None
        remove_partial_files(output_dir)
    barrier(ranks)


def model_and_layer(job: FolderJob) -> Tuple[nn.Module, nn.Module, str]:
    """The model on this rank's device, the layer to explain, and its dotted name.

    Raises:
        CLIError: for weights that cannot be had or a layer that is not the model's.
    """
    args = job.args
    model = build_model(args.model, job.entry, args.weights, job.progress).to(job.device)
    layer, layer_path = select_layer(model, job.entry, args.target_layer)
    if any(job.entry is known for known in MODELS.values()):
        imagenet_classes()  # the zoo's models are ImageNet classifiers: their class names, before the clock starts
    return model, layer, layer_path


def explain_shard(
    job: FolderJob, stack: ExitStack, model: nn.Module, layer: nn.Module, layer_path: str
) -> ShardSummary:
    """Explain this rank's shard of the images (skipping what is done); the shard's rows.
    The CAM objects' hooks are removed when ``stack`` closes.

    Raises:
        CLIError: on a user error; and the first error of a run where nothing succeeded.
    """
    args, ranks, methods = job.args, job.ranks, job.methods
    shard = job.items[ranks.rank :: ranks.world_size]
    records = Records(job.output_dir, record_settings(args, layer_path, job.category))
    todo = [[method for method in methods if records.read(item, method) is None] for item in shard]
    pending = [position for position, left in enumerate(todo) if left]
    if ranks.rank == 0:
        where = f"{ranks.world_size} processes" if ranks.distributed else "one process"
        print(
            f"{len(job.items)} images under {Path(args.image_dir)}; {', '.join(methods)} on {args.model} "
            f"at {layer_path}; {where}"
        )
    run = ShardRun(
        args,
        job.entry,
        model,
        methods,
        job.category,
        records,
        ranks.rank,
        job.device,
        job.metric_names,
        items=[shard[p] for p in pending],
        todo=[todo[p] for p in pending],
    )
    for method in methods:
        cam = make_cam(method, model, layer, job.entry.reshape_transform, batch_size=args.batch_size, progress=False)
        run.cams[method] = stack.enter_context(cam)
    run.run(job.progress, f"rank 0 of {ranks.world_size}" if ranks.distributed else "explaining")
    rows = [records.row(item, method, job.metric_names) for item in shard for method in methods]
    return ShardSummary(ranks.rank, len(pending), len(shard) - len(pending), rows)


def report(job: FolderJob, summaries: Sequence[ShardSummary], seconds: float) -> None:
    """Rank 0's end of the run: results.csv and the contact sheet from every rank's rows,
    and the summary on stdout.

    Raises:
        OSError: if results.csv cannot be written.
    """
    output_dir, methods = job.output_dir, job.methods
    merged: List[Mapping[str, str]] = sorted(
        (row for summary in summaries for row in summary.rows), key=lambda row: (row["path"], row["method"])
    )
    explained = sum(summary.explained for summary in summaries)
    skipped = sum(summary.skipped for summary in summaries)
    atomic_write(output_dir / RESULTS_NAME, csv_text(merged, job.metric_names).encode("utf-8"))
    title = f"{', '.join(methods)} on {Path(job.args.image_dir)} ({job.args.model})"
    sheet = write_sheet(output_dir, merged, title=title)
    unreadable = len({row["path"] for row in merged if row["status"].startswith("unreadable")})
    errors = len({row["path"] for row in merged if row["status"].startswith("error")})
    rate = explained / seconds if seconds > 0 else 0.0
    print(
        f"explained {explained} images in {seconds:.2f} s: {rate:.2f} images/s ({len(methods)} method(s) "
        f"each, {job.ranks.world_size} process(es)); skipped {skipped} done before; {unreadable} unreadable, "
        f"{errors} with errors"
    )
    print(f"wrote {output_dir / RESULTS_NAME}" + (f" and {sheet}" if sheet is not None else ""))


def check_arguments(args: argparse.Namespace, models: Dict[str, ModelEntry]) -> FolderJob:
    """Everything about ``--image-dir`` that can be checked before the model is built.

    Raises:
        CLIError: for an unknown method or model, an output folder that is the input
            folder, a folder without images, an unknown category or device.
    """
    methods = parse_methods(args.method)
    entry = model_entry(models, args.model)
    image_dir, output_dir = Path(args.image_dir), Path(args.output_dir)
    if output_dir.resolve() == image_dir.resolve():
        raise CLIError(
            f"--output-dir {output_dir} is --image-dir itself; the outputs need a folder of their own", code=2
        )
    items = find_images(image_dir, exclude=output_dir)
    category = resolve_category(args.category)
    ranks = Ranks.from_environment()
    set_threads(ranks)
    device = choose_device(args.device, args.use_cuda)
    return FolderJob(args, methods, entry, items, category, ranks, device)


def run_folder(args: argparse.Namespace, models: Dict[str, ModelEntry]) -> None:
    """``cam.py --image-dir``: explain this rank's shard of the images; then rank 0 writes
    results.csv from every rank's rows (and the contact sheet), and prints a summary.

    Raises:
        CLIError: on any user error (checked before the model is built where possible).
    """
    job = check_arguments(args, models)
    ranks = job.ranks
    with ExitStack() as stack:
        if ranks.distributed:
            import torch.distributed as dist

            job = replace(job, device=start_process_group(ranks, job.device))
            stack.callback(dist.destroy_process_group)  # also when this rank fails
        model, layer, layer_path = model_and_layer(job)
        prepare_output_dir(job.output_dir, ranks)
        started = time.perf_counter()
        summary = explain_shard(job, stack, model, layer, layer_path)
        summaries = gather_on_rank_0(ranks, summary)
        seconds = time.perf_counter() - started
        if ranks.distributed:
            # One write of the whole line: the ranks share torchrun's stderr pipe.
            sys.stderr.write(
                f"rank {ranks.rank} of {ranks.world_size}: explained {summary.explained} images, "
                f"skipped {summary.skipped} done before\n"
            )
            sys.stderr.flush()
        if summaries is not None:
            report(job, summaries, seconds)
