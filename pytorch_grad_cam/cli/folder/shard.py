"""One rank's work in folder mode: its shard's images, batch by batch, through every
method's CAM object, with the class scores taken from the CAM call's own forward pass;
the pictures, maps and records written by writer threads while the model works on the
next batch. A failing batch is retried one image at a time, so one bad image gets an
error record instead of ending the run.
"""

from __future__ import annotations

import argparse
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Deque, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from pytorch_grad_cam.cli.folder.dataset import Batch, ImageFolderDataset, collate_images
from pytorch_grad_cam.cli.folder.files import ImageItem, atomic_write, encode_jpeg, encode_map
from pytorch_grad_cam.cli.folder.records import Records, empty_row
from pytorch_grad_cam.cli.jobs import (
    CLIError,
    cam_overlay,
    check_category,
    class_name,
    one_line,
    predict_batch,
    probabilities_of,
    to_float,
)
from pytorch_grad_cam.cli.metrics import compute_metrics
from pytorch_grad_cam.cli.model_zoo import ModelEntry
from pytorch_grad_cam.utils.image import ChannelsLastCalls
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

#: Threads that encode and write the pictures while the model runs.
WRITER_THREADS = 2


@dataclass
class ShardRun:
    """One rank's work: the model and its CAM objects, and what is left to do.

    Attributes:
        items: the images of this rank's shard that are not done.
        todo: for each of ``items``, the methods not done.
        cams: one CAM object per method, reused for every batch.
    """

    args: argparse.Namespace
    entry: ModelEntry
    model: nn.Module
    methods: List[str]
    category: Optional[int]
    records: Records
    rank: int
    device: torch.device
    metric_names: List[str]
    items: List[ImageItem]
    todo: List[List[str]]
    cams: Dict[str, object] = field(default_factory=dict)
    succeeded: bool = False  # until something succeeds, an error is the run's error
    writer: Optional[ThreadPoolExecutor] = None
    writes: Deque[Future] = field(default_factory=deque)
    category_checked: bool = False
    #: Batches go to the model in ``channels_last`` memory format on the CPU (the same
    #: numbers, faster); after a call that fails with them (a model that ``.view``s a
    #: feature map), as they come, for the rest of the run.
    channels_last: ChannelsLastCalls = field(default_factory=ChannelsLastCalls)

    def run(self, progress: bool, description: str) -> None:
        """Explain every pending item, batch by batch, with a progress bar of images/s.

        Raises:
            CLIError, KeyboardInterrupt, a write's OSError, and the first error of a run where nothing succeeded.
        """
        from tqdm.auto import tqdm

        if not self.items:
            return
        loader = DataLoader(
            ImageFolderDataset(self.items, self.entry),
            batch_size=self.args.batch_size,
            shuffle=False,
            num_workers=self.args.num_workers,
            collate_fn=collate_images,
            pin_memory=self.device.type == "cuda",
        )
        # The pictures are encoded and written in threads (OpenCV and zlib release the GIL)
        # while the model works on the next batch: on a GPU they would be the bottleneck.
        with (
            ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="cam-writer") as writer,
            tqdm(total=len(self.items), unit="img", desc=description, disable=not progress, dynamic_ncols=True) as bar,
        ):
            self.writer = writer
            try:
                for batch in loader:
                    self.explain(batch)
                    self.wait_for_writes(keep=2 * self.args.batch_size * len(self.methods))
                    bar.update(len(batch))
            finally:
                self.wait_for_writes(keep=0)
            self.writer = None

    def wait_for_writes(self, keep: int) -> None:
        """Wait until at most ``keep`` writes are pending (raising the first write's error)."""
        while len(self.writes) > keep:
            self.writes.popleft().result()

    def categories_of(self, probabilities: torch.Tensor) -> List[int]:
        """The class explained in each image: --category, or the image's top class.

        Raises:
            CLIError: for a --category outside the model's classes.
        """
        if self.category is None:
            return [int(k) for k in probabilities.argmax(dim=1)]
        check_category(self.category, probabilities.shape[1])
        return [self.category] * probabilities.shape[0]

    def explain(self, batch: Batch) -> None:
        """Every pending method on the batch: records for the unreadable files, outputs and
        records for the others (an error recorded for an image that fails alone)."""
        for index, failure in batch.failures:
            for method in self.todo[index]:
                self.write_failure(index, method, f"unreadable: {failure}")
        if batch.inputs is None:
            return
        inputs = batch.inputs.to(self.device, non_blocking=True)
        probabilities = None
        if self.args.aug_smooth or (self.category is not None and not self.category_checked):
            # aug_smooth's forward pass is on augmented copies; a --category is checked once.
            probabilities = predict_batch(self.model, inputs)
            self.categories_of(probabilities)
            self.category_checked = True
        for method in self.methods:
            positions = [p for p, index in enumerate(batch.indices) if method in self.todo[index]]
            if positions:
                probabilities = self.explain_positions(batch, inputs, method, positions, probabilities)

    def explain_positions(
        self,
        batch: Batch,
        inputs: torch.Tensor,
        method: str,
        positions: List[int],
        probabilities: Optional[torch.Tensor],
    ) -> Optional[torch.Tensor]:
        """``method`` on the images at ``positions`` of the batch; the batch's probabilities.
        A failing batch is retried one image at a time, and a failing image gets an error
        record; but before anything has succeeded, the error ends the run.

        Raises:
            CLIError, KeyboardInterrupt, and the first error of a run where nothing succeeded.
        """
        try:
            maps, probabilities = self.maps_of(method, inputs, positions, probabilities)
        except (KeyboardInterrupt, CLIError):
            raise
        except Exception as error:  # noqa: BLE001 - one image's failure must not end the run
            if len(positions) > 1:
                for position in positions:
                    probabilities = self.explain_positions(batch, inputs, method, [position], probabilities)
                return probabilities
            if not self.succeeded:
                raise
            self.write_failure(batch.indices[positions[0]], method, f"error: {one_line(error)}")
            return probabilities
        categories = self.categories_of(probabilities)
        for map_index, position in enumerate(positions):
            self.write_outputs(
                batch,
                position,
                method,
                maps[map_index],
                probabilities[position],
                categories[position],
                inputs[position : position + 1],
            )
        self.succeeded = True
        return probabilities

    def maps_of(
        self, method: str, inputs: torch.Tensor, positions: List[int], probabilities: Optional[torch.Tensor]
    ) -> Tuple[np.ndarray, torch.Tensor]:
        """One call of ``method`` on the images at ``positions``: their maps (n, h, w), and
        the whole batch's probabilities, taken from this call's forward pass when they are
        not known yet and the call covered the whole batch (no extra forward pass)."""
        whole = len(positions) == inputs.shape[0]
        if probabilities is None and not whole:
            probabilities = predict_batch(self.model, inputs)
        targets = None  # each image's top class, chosen by the CAM call itself
        if probabilities is not None:
            categories = self.categories_of(probabilities)
            targets = [ClassifierOutputTarget(categories[p]) for p in positions]
        elif self.category is not None:
            targets = [ClassifierOutputTarget(self.category) for _ in positions]
        maps = self.call(method, inputs if whole else inputs[positions], targets)
        cam = self.cams[method]
        if probabilities is None:
            probabilities = probabilities_of(getattr(cam, "outputs", None), inputs.shape[0])
            if probabilities is None:
                probabilities = predict_batch(self.model, inputs)
        return maps, probabilities

    def call(self, method: str, inputs: torch.Tensor, targets: Optional[List[ClassifierOutputTarget]]) -> np.ndarray:
        """The maps (n, h, w) of one call of ``method`` on ``inputs``, in ``channels_last``
        on the CPU while the model takes it (see :attr:`channels_last`)."""
        cam = self.cams[method]
        return self.channels_last(
            lambda batch: cam(
                batch, targets=targets, aug_smooth=self.args.aug_smooth, eigen_smooth=self.args.eigen_smooth
            ),
            inputs,
        )

    def write_outputs(
        self,
        batch: Batch,
        position: int,
        method: str,
        grayscale: np.ndarray,
        probabilities: torch.Tensor,
        category: int,
        single_input: torch.Tensor,
    ) -> None:
        """The row (with the metrics, computed here), then the files and the record, written
        by a writer thread (see :meth:`write_files`)."""
        item = self.items[batch.indices[position]]
        classes = probabilities.numel()
        predicted = int(probabilities.argmax())
        row = empty_row(item, method, "ok", self.metric_names)
        row.update(
            predicted_class=str(predicted),
            predicted_label=class_name(predicted, classes),
            predicted_score=f"{float(probabilities[predicted]):.4f}",
            explained_class=str(category),
            explained_label=class_name(category, classes),
            thumbnail=item.output("thumb", ".jpg"),
            overlay=item.output(method, ".jpg"),
            map=item.output(method, ".npz"),
        )
        if self.metric_names:
            values = compute_metrics(
                self.metric_names, self.model, single_input, grayscale, category, self.args.batch_size
            )
            row.update({name: f"{value:.6f}" for name, value in values.items()})
        job = partial(
            self.write_files, item, method, row, batch.photos[position], batch.thumbnails[position], grayscale
        )
        if self.writer is None:
            job()
        else:
            self.writes.append(self.writer.submit(job))

    def write_files(
        self,
        item: ImageItem,
        method: str,
        row: Dict[str, str],
        photo: torch.Tensor,
        thumbnail_jpeg: torch.Tensor,
        grayscale: np.ndarray,
    ) -> None:
        """The thumbnail, the overlay and the map, then the record, each atomically (in a writer thread).

        Raises:
            OSError: if a file cannot be written; CLIError: if a picture cannot be encoded.
        """
        output_dir = self.args.output_dir
        atomic_write(output_dir / row["thumbnail"], thumbnail_jpeg.numpy().tobytes())
        overlay = cam_overlay(to_float(photo.numpy()), grayscale)
        atomic_write(output_dir / row["overlay"], encode_jpeg(overlay))
        atomic_write(output_dir / row["map"], encode_map(grayscale))
        self.records.write(item, method, row, self.rank)

    def write_failure(self, index: int, method: str, status: str) -> None:
        """The record of an image that has no outputs (unreadable, or an error)."""
        item = self.items[index]
        self.records.write(item, method, empty_row(item, method, status, self.metric_names), self.rank)
