"""``cam.py --detector NAME --image-dir DIR``: every detected object of every image under
a folder, with the files, records, resuming and torchrun sharding of folder mode.

For each image ``sub/a.jpg`` and each ``--method`` (say gradcam), ``--output-dir`` receives

    sub/a.thumb.jpg      the photo, at most 160 px on its long side
    sub/a.gradcam.jpg    the photo at its size, each box with its class, score and map
    sub/a.gradcam.npz    the detections: boxes, input_boxes, labels, names, scores, maps,
                         input_size (as ``cam.py --detector --image-path`` writes them)
    .records/sub/a.jpg.gradcam.json   the row of results.csv, written last

and ``results.csv`` has one row per image and method: the classifier columns (the
``predicted_*`` ones hold the best box's class, name and score; ``explained_*`` are
empty, since every box is explained), then ``detections`` (how many boxes) and
``objects`` (``name score`` of each box, best first, ``; `` between them).

The images go through the detector one at a time (their sizes differ; each image's
boxes are one batched CAM call). Under ``torchrun`` each rank explains
``files[rank::world_size]`` and rank 0 writes results.csv, as in folder mode.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from pytorch_grad_cam.cli.detect import (
    check_detection_arguments,
    check_input_fits,
    class_names,
    detector_entry,
    detector_input,
    encode_detections,
    explain_photo,
    label_name,
    load_detector,
    on_photo,
    prepare_defaults,
    target_layers,
)
from pytorch_grad_cam.cli.detector_zoo import DetectorEntry
from pytorch_grad_cam.cli.folder.distributed import Ranks, gather_on_rank_0, set_threads, start_process_group
from pytorch_grad_cam.cli.folder.files import ImageItem, atomic_write, encode_jpeg, find_images, thumbnail
from pytorch_grad_cam.cli.folder.records import RESULTS_NAME, Records, csv_text, empty_row, write_sheet
from pytorch_grad_cam.cli.folder.run import parse_methods, prepare_output_dir
from pytorch_grad_cam.cli.jobs import CLIError, UnreadableImage, choose_device, one_line, read_image, to_float
from pytorch_grad_cam.detection import draw_detections

__all__ = ["DETECTION_COLUMNS", "run_detection_folder"]

#: results.csv's columns after the classifier ones.
DETECTION_COLUMNS = ("detections", "objects")


class DetectionShard:
    """One rank's images through the detector: outputs and a record per (image, method)."""

    def __init__(
        self, args: argparse.Namespace, entry: DetectorEntry, model: nn.Module, methods: List[str], rank: int
    ) -> None:
        self.args, self.entry, self.model, self.methods, self.rank = args, entry, model, methods, rank
        self.layers, self.layer_names = target_layers(model, args.target_layer)
        self.names = class_names(model, entry)
        self.device = next(model.parameters()).device
        self.records = Records(Path(args.output_dir), self.settings())
        self.succeeded = False  # until something succeeds, an error is the run's error

    def settings(self) -> Dict[str, object]:
        """What a row depends on besides the image and the method (a record made with
        other settings is made again)."""
        args = self.args
        weights = None
        if args.weights is not None:
            stat = Path(args.weights).stat()
            weights = [str(Path(args.weights).resolve()), stat.st_size, stat.st_mtime_ns]
        return {
            "detector": args.detector,
            "weights": weights,
            "target_layer": self.layer_names,
            "image_size": args.image_size,
            "confidence": args.confidence,
            "max_detections": args.max_detections,
        }

    def explain(self, item: ImageItem, methods: Sequence[str]) -> None:
        """The image's outputs and records for ``methods`` (an unreadable file and a
        failing method get their status recorded; before anything has succeeded, a
        method's error ends the run)."""
        try:
            rgb = read_image(item.path)
        except UnreadableImage as error:
            for method in methods:
                self.write_row(empty_row(item, method, f"unreadable: {error.reason}", DETECTION_COLUMNS), item)
            return
        photo = to_float(rgb)
        images = detector_input(photo, self.entry, self.args.image_size).to(self.device)
        atomic_write(Path(self.args.output_dir) / item.output("thumb", ".jpg"), encode_jpeg(thumbnail(rgb)))
        for method in methods:
            try:
                self.explain_method(item, photo, images, method)
            except (KeyboardInterrupt, CLIError):
                raise
            except Exception as error:  # noqa: BLE001 - one image's failure must not end the run
                if not self.succeeded:
                    raise
                self.write_row(empty_row(item, method, f"error: {one_line(error)}", DETECTION_COLUMNS), item)

    def explain_method(self, item: ImageItem, photo, images: torch.Tensor, method: str) -> None:
        """One method on one image: its drawing, its npz, then its record."""
        check_input_fits(self.args.detector, self.model, images)
        detections = explain_photo(self.model, images, self.args, method, self.layers)
        input_hw: Tuple[int, int] = tuple(images.shape[-2:])
        mapped = on_photo(detections, input_hw, photo.shape[:2])
        row = empty_row(item, method, "ok", DETECTION_COLUMNS)
        row.update(
            thumbnail=item.output("thumb", ".jpg"),
            overlay=item.output(method, ".jpg"),
            map=item.output(method, ".npz"),
            detections=str(len(detections)),
            objects="; ".join(f"{label_name(d.label, self.names)} {d.score:.3f}" for d in detections),
        )
        if detections:
            best = detections[0]
            row.update(
                predicted_class=str(best.label),
                predicted_label=label_name(best.label, self.names),
                predicted_score=f"{best.score:.4f}",
            )
        output_dir = Path(self.args.output_dir)
        picture = draw_detections(photo, mapped, class_names=self.names)
        atomic_write(output_dir / row["overlay"], encode_jpeg(picture))
        atomic_write(output_dir / row["map"], encode_detections(detections, mapped, self.names, input_hw))
        self.write_row(row, item)
        self.succeeded = True

    def write_row(self, row: Dict[str, str], item: ImageItem) -> None:
        """The record of ``row`` (written last, it marks the pair done)."""
        self.records.write(item, row["method"], row, self.rank)

    def run(self, items: Sequence[ImageItem], progress: bool) -> Tuple[int, List[Dict[str, str]]]:
        """Explain what is not done of ``items``; how many images were explained, and their rows."""
        from tqdm.auto import tqdm

        todo = [[m for m in self.methods if self.records.read(item, m) is None] for item in items]
        pending = [(item, methods) for item, methods in zip(items, todo) if methods]
        for item, methods in tqdm(pending, unit="img", desc="detections", disable=not progress, dynamic_ncols=True):
            self.explain(item, methods)
        rows = [self.records.row(item, m, DETECTION_COLUMNS) for item in items for m in self.methods]
        return len(pending), rows


def _check(args: argparse.Namespace, detectors: Dict[str, DetectorEntry], explicit: Sequence[str]):
    """The checks that come before the model is built; (methods, entry, items)."""
    check_detection_arguments(args, explicit)
    methods = parse_methods(args.method)
    entry = detector_entry(detectors, args.detector)
    prepare_defaults(args, entry)
    image_dir, output_dir = Path(args.image_dir), Path(args.output_dir)
    if output_dir.resolve() == image_dir.resolve():
        raise CLIError(
            f"--output-dir {output_dir} is --image-dir itself; the outputs need a folder of their own", code=2
        )
    return methods, entry, find_images(image_dir, exclude=output_dir)


def run_detection_folder(
    args: argparse.Namespace, detectors: Dict[str, DetectorEntry], explicit: Sequence[str]
) -> None:
    """``cam.py --detector NAME --image-dir DIR``: this rank's shard of the images; then
    rank 0 writes results.csv (and the contact sheet) from every rank's rows.

    Raises:
        CLIError: on any user error (checked before the model is built where possible).
    """
    methods, entry, items = _check(args, detectors, explicit)
    ranks = Ranks.from_environment()
    set_threads(ranks)
    device = choose_device(args.device, args.use_cuda)
    with ExitStack() as stack:
        if ranks.distributed:
            import torch.distributed as dist

            device = start_process_group(ranks, device)
            stack.callback(dist.destroy_process_group)
        model = load_detector(args.detector, entry, args.weights, args.image_size, warn=ranks.rank == 0)
        model = model.to(device)
        prepare_output_dir(Path(args.output_dir), ranks)
        shard = DetectionShard(args, entry, model, methods, ranks.rank)
        if ranks.rank == 0:
            print(f"{len(items)} images under {Path(args.image_dir)}; {', '.join(methods)} on {args.detector} "
                  f"at {shard.layer_names}")  # fmt: skip
        started = time.perf_counter()
        explained, rows = shard.run(items[ranks.rank :: ranks.world_size], not args.no_progress and ranks.rank == 0)
        gathered = gather_on_rank_0(ranks, (explained, rows))
        if ranks.distributed:
            sys.stderr.write(f"rank {ranks.rank} of {ranks.world_size}: explained {explained} images\n")
        if gathered is not None:
            _report(args, methods, gathered, time.perf_counter() - started)


def _report(args: argparse.Namespace, methods: List[str], gathered: Sequence[object], seconds: float) -> None:
    """results.csv and the contact sheet from every rank's rows, and the summary line."""
    output_dir = Path(args.output_dir)
    rows: List[Dict[str, str]] = [row for _, shard_rows in gathered for row in shard_rows]
    explained = sum(count for count, _ in gathered)
    atomic_write(output_dir / RESULTS_NAME, csv_text(rows, DETECTION_COLUMNS).encode("utf-8"))
    sheet = write_sheet(
        output_dir,
        sorted(rows, key=lambda row: (row["path"], row["method"])),
        title=f"{', '.join(methods)} on {Path(args.image_dir)} ({args.detector})",
    )
    boxes = sum(int(row["detections"] or 0) for row in rows)
    failed = len({row["path"] for row in rows if row["status"] != "ok"})
    skipped = len({row["path"] for row in rows}) - explained
    print(
        f"explained {explained} images in {seconds:.2f} s ({boxes} boxes in all); skipped {skipped} done before; "
        f"{failed} unreadable or with errors"
    )
    print(f"wrote {output_dir / RESULTS_NAME}" + (f" and {sheet}" if sheet is not None else ""))
