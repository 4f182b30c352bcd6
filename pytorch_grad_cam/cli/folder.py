"""``cam.py --image-dir DIR``: explain every image under a folder, in batches, resumably,
in one process or in many (``torchrun``), and list the results in ``results.csv``.

For each image ``sub/a.jpg`` under ``--image-dir`` and each ``--method`` (say gradcam),
``--output-dir`` receives, mirroring the input tree:

    sub/a.thumb.jpg      the photo, at most 160 px on its long side (one per image)
    sub/a.gradcam.jpg    the CAM as a heatmap over the photo, at the photo's size
    sub/a.gradcam.npz    the raw map: key ``cam``, float32 (h, w) in [0, 1], the model input's size
    .records/sub/a.jpg.gradcam.json   the image's row of results.csv: written last, it marks
                         the image done for that method

and ``results.csv`` (one row per image and method, sorted) is rebuilt from the records at
the end of every run. Two images with the same stem in one folder (``a.jpg``, ``a.png``)
keep their whole names instead: ``a.jpg.gradcam.jpg``.

How a run goes:

* A ``torch.utils.data.DataLoader`` reads, decodes and resizes the images in
  ``--num-workers`` worker processes while the model runs; a file that cannot be decoded
  (corrupt, truncated, not an image) comes back as a failure, never as an exception.
* Each method computes a whole batch's maps in one call. The model's class scores come
  from that call's forward pass (``cam.outputs``), so predicting costs no extra pass. On
  the CPU the batch goes to the model in ``channels_last`` memory format (the same maps;
  EfficientNet-Lite0's GradCAM on the 2-core development machine: 16-18 ms an image in a
  channels_last batch of 4 against 31-41 ms for one contiguous image at 2 threads, 24-27
  against 30-31 ms at 1 thread); a model that cannot take it gets contiguous batches.
* Two threads encode and write the pictures while the model works on the next batch.
* Every file is written to a hidden temporary name in its folder and renamed into place
  (``os.replace``), and the record comes last. A run killed at any point leaves only whole
  files and temporary ones, which the next run removes; restarted with the same
  arguments it skips every (image, method) whose record and outputs exist and match.
* Under ``torchrun`` (``WORLD_SIZE`` > 1) each rank explains a disjoint shard of the
  sorted file list (``files[rank::world_size]``), with gloo on the CPU or nccl on one GPU
  per rank (``LOCAL_RANK``); rank 0 gathers every rank's rows, writes ``results.csv`` and
  the contact sheet (``index.html``), when that module is installed.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Deque, Dict, List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pytorch_grad_cam.perturbation_cam import PerturbationCAM
from pytorch_grad_cam.cli.app import (
    CLIError,
    build_model,
    cam_overlay,
    choose_device,
    note,
    resolve_category,
    select_layer,
)
from pytorch_grad_cam.cli.contact_sheet import write_contact_sheet
from pytorch_grad_cam.cli.metrics import compute_metrics
from pytorch_grad_cam.cli.model_zoo import MODELS, ModelEntry, imagenet_classes
from pytorch_grad_cam.registry import get_method
from pytorch_grad_cam.utils.image import ChannelsLastCalls, preprocess_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

#: File name suffixes taken as images (compared case-insensitively).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
RESULTS_NAME = "results.csv"
RECORDS_DIR = ".records"
THUMBNAIL_SIDE = 160
#: Threads that encode and write the pictures while the model runs.
WRITER_THREADS = 2
#: The columns of results.csv, before one column per ``--metrics`` name.
COLUMNS = (
    "path", "method", "status", "predicted_class", "predicted_label", "predicted_score",
    "explained_class", "explained_label", "thumbnail", "overlay", "map",
)
RECORD_VERSION = 1
#: A temporary file: ``.<final name>.partial-<pid>``, in the final file's folder.
_PARTIAL = re.compile(r"^\..+\.partial-\d+(-\d+)?$")  # pid, then thread id
#: How long a rank waits for the others at the end (a resumed shard may be far behind).
_COLLECTIVE_TIMEOUT = timedelta(days=7)


# ----------------------------------------------------------------- the files
@dataclass(frozen=True)
class ImageItem:
    """One input image.

    Attributes:
        relative: its path under ``--image-dir``, with ``/`` separators (``sub/a.jpg``).
        path: where it is.
        output_stem: its outputs' common prefix under ``--output-dir`` (``sub/a``).
    """

    relative: str
    path: Path
    output_stem: str

    def output(self, kind: str, suffix: str) -> str:
        """The relative output path ``<stem>.<kind><suffix>`` (``sub/a.gradcam.jpg``)."""
        return f"{self.output_stem}.{kind}{suffix}"

    def record(self, method: str) -> str:
        """The relative path of the record of ``method`` for this image."""
        return f"{RECORDS_DIR}/{self.relative}.{method}.json"


def find_images(image_dir: Path, exclude: Optional[Path] = None) -> List[ImageItem]:
    """Every image file under ``image_dir`` (recursive; hidden files and folders and the
    folder ``exclude`` skipped), sorted by relative path.

    Raises:
        CLIError: if ``image_dir`` is not a folder, or holds no image.
    """
    if not image_dir.exists():
        raise CLIError(f"--image-dir {image_dir}: no such folder")
    if not image_dir.is_dir():
        raise CLIError(f"--image-dir {image_dir} is a file; pass it with --image-path, or pass its folder")
    excluded = exclude.resolve() if exclude is not None else None
    relatives: List[str] = []
    for folder, subfolders, files in os.walk(image_dir):
        subfolders[:] = sorted(
            name for name in subfolders
            if not name.startswith(".") and (excluded is None or (Path(folder) / name).resolve() != excluded)
        )
        for name in files:
            if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES):
                relatives.append((Path(folder) / name).relative_to(image_dir).as_posix())
    if not relatives:
        raise CLIError(
            f"--image-dir {image_dir} holds no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}, any case)"
        )
    relatives.sort()
    # Two files with one stem in a folder (a.jpg, a.png) would share outputs: they keep their whole names.
    stems: Dict[Tuple[str, str], int] = {}
    for relative in relatives:
        key = (relative.rpartition("/")[0], relative.rsplit("/", 1)[-1].rsplit(".", 1)[0].casefold())
        stems[key] = stems.get(key, 0) + 1
    items = []
    for relative in relatives:
        folder, _, name = relative.rpartition("/")
        stem = name.rsplit(".", 1)[0]
        unique = stems[(folder, stem.casefold())] == 1
        output_stem = (f"{folder}/" if folder else "") + (stem if unique else name)
        items.append(ImageItem(relative, image_dir / relative, output_stem))
    return items


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and
    ``os.replace``: a reader (or a later run) sees the old file or the whole new one.

    Raises:
        OSError: if the folder cannot be created or the file written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per process and thread: two writer threads may write one file (an image's
    # thumbnail, once per method) at the same time, each through its own temporary file.
    temporary = path.with_name(f".{path.name}.partial-{os.getpid()}-{threading.get_ident()}")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def remove_partial_files(output_dir: Path) -> int:
    """Delete the temporary files that a killed run left under ``output_dir``; how many."""
    removed = 0
    for folder, _, files in os.walk(output_dir):
        for name in files:
            if _PARTIAL.match(name):
                (Path(folder) / name).unlink(missing_ok=True)
                removed += 1
    return removed


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """An RGB uint8 image as JPEG bytes.

    Raises:
        CLIError: if OpenCV cannot encode it.
    """
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise CLIError(f"cannot encode a JPEG of shape {rgb.shape}")
    return encoded.tobytes()


def encode_map(grayscale: np.ndarray) -> bytes:
    """The map as a compressed ``.npz`` (key ``cam``, float32)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, cam=np.asarray(grayscale, dtype=np.float32))
    return buffer.getvalue()


# ----------------------------------------------------------------- decoding (in the workers)
def jpeg_is_complete(data: bytes) -> bool:
    """Whether JPEG ``data`` has its end-of-image marker after the first scan. OpenCV
    decodes a truncated JPEG into a partly grey picture without an error; this finds it.
    Data that is not a JPEG counts as complete (its decoder judges it)."""
    if data[:2] != b"\xff\xd8":
        return True
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return False
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xD9:
            return True
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            position += 2
            continue
        length = int.from_bytes(data[position + 2:position + 4], "big")
        if marker == 0xDA:  # start of scan: the entropy-coded data runs to the end marker
            return data.find(b"\xff\xd9", position + 2 + length) != -1
        position += 2 + length
    return False


def load_photo(path: Path) -> Tuple[Optional[np.ndarray], str]:
    """The image at ``path`` as RGB uint8 (H, W, 3) and "", or None and why it cannot be read
    (``cam.py --image-path`` decodes the same way: OpenCV, IMREAD_COLOR)."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as error:
        return None, f"cannot read it ({error.strerror or error})"
    if data.size == 0:
        return None, "empty file"
    if not jpeg_is_complete(data.tobytes()):
        return None, "truncated JPEG (no end-of-image marker)"
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        return None, "not an image that OpenCV can decode"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), ""


def thumbnail(rgb: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """``rgb`` shrunk to at most ``side`` pixels on its long side (never enlarged)."""
    height, width = rgb.shape[:2]
    scale = min(1.0, side / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return rgb if scale == 1.0 else cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def model_input_of(rgb: np.ndarray, entry: ModelEntry) -> torch.Tensor:
    """The model's input (3, h, w) for an RGB uint8 photo: as ``app.model_input`` makes it
    (the whole photo resized with INTER_AREA, normalised), without the batch dimension."""
    photo = np.float32(rgb) / 255
    height, width = entry.input_size
    resized = cv2.resize(photo, (width, height), interpolation=cv2.INTER_AREA)
    return preprocess_image(resized, mean=entry.mean, std=entry.std)[0]


class ImageFolderDataset(Dataset):
    """The images to explain, decoded and resized (run in the DataLoader's workers).

    An item is a dict: ``index``, and either ``photo`` (uint8 tensor (H, W, 3)),
    ``input`` (float tensor (3, h, w)) and ``thumbnail`` (JPEG bytes as a uint8 tensor),
    or ``failure`` (why the file cannot be read). Nothing raises for a bad file.
    """

    def __init__(self, items: Sequence[ImageItem], entry: ModelEntry) -> None:
        self.items = list(items)
        self.entry = entry

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        try:
            rgb, failure = load_photo(self.items[index].path)
            if rgb is None:
                return {"index": index, "failure": failure}
            return {
                "index": index,
                "photo": torch.from_numpy(np.ascontiguousarray(rgb)),
                "input": model_input_of(rgb, self.entry),
                "thumbnail": torch.frombuffer(bytearray(encode_jpeg(thumbnail(rgb))), dtype=torch.uint8),
            }
        except Exception as error:  # noqa: BLE001 - any decoder's failure makes the file unreadable
            return {"index": index, "failure": f"{type(error).__name__}: {' '.join(str(error).split())}"}


@dataclass
class Batch:
    """A collated batch: the readable images stacked, the unreadable ones listed."""

    indices: List[int] = field(default_factory=list)
    inputs: Optional[torch.Tensor] = None
    photos: List[torch.Tensor] = field(default_factory=list)
    thumbnails: List[torch.Tensor] = field(default_factory=list)
    failures: List[Tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.indices) + len(self.failures)


def collate_images(samples: Sequence[dict]) -> Batch:
    """The DataLoader's ``collate_fn``: unreadable files become ``failures``, never an error."""
    batch = Batch()
    inputs = []
    for sample in samples:
        if "failure" in sample:
            batch.failures.append((sample["index"], sample["failure"]))
            continue
        batch.indices.append(sample["index"])
        inputs.append(sample["input"])
        batch.photos.append(sample["photo"])
        batch.thumbnails.append(sample["thumbnail"])
    if inputs:
        batch.inputs = torch.stack(inputs)
    return batch


# ----------------------------------------------------------------- torchrun
@dataclass(frozen=True)
class Ranks:
    """This process's place among torchrun's processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_environment(cls) -> "Ranks":
        """From torchrun's RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE.

        Raises:
            CLIError: if they are not whole numbers.
        """
        try:
            world_size = int(os.environ.get("WORLD_SIZE", "1"))
            return cls(
                rank=int(os.environ.get("RANK", "0")) if world_size > 1 else 0,
                world_size=world_size,
                local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
            )
        except ValueError as error:
            raise CLIError(f"torchrun's environment is not understood ({error}); run under torchrun or without it")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def start_process_group(ranks: Ranks, device: torch.device) -> torch.device:
    """Join torchrun's process group (nccl for a GPU, one per local rank; gloo on the CPU);
    the device this rank computes on."""
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=_COLLECTIVE_TIMEOUT, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=_COLLECTIVE_TIMEOUT)
    return device


def set_threads(ranks: Ranks) -> None:
    """Several ranks on one machine share its cores: without OMP_NUM_THREADS (torchrun sets
    it to 1 unless given), each rank takes its share."""
    if ranks.local_world_size > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks.local_world_size))


# ----------------------------------------------------------------- records and the CSV
def label_of(index: int, classes: int) -> str:
    """The ImageNet name of class ``index`` for 1000-class outputs, else 'class <index>'."""
    return imagenet_classes()[index] if classes == 1000 else f"class {index}"


def empty_row(item: ImageItem, method: str, status: str, metric_names: Sequence[str]) -> Dict[str, str]:
    """A row of results.csv with only the path, the method and the status filled in."""
    row = {column: "" for column in (*COLUMNS, *metric_names)}
    row.update(path=item.relative, method=method, status=status)
    return row


class Records:
    """The per-(image, method) records under ``output_dir/.records``: a record whose
    settings and source file match, whose status is not an error, and whose outputs
    exist, means "done"."""

    def __init__(self, output_dir: Path, settings: Dict[str, object]) -> None:
        self.output_dir = output_dir
        self.settings = settings

    def settings_of(self, method: str) -> Dict[str, object]:
        return {**self.settings, "method": method}

    @staticmethod
    def source_of(item: ImageItem) -> List[int]:
        """The input file's size and modification time: a changed file is explained again
        ([-1, -1] for a file that has gone)."""
        try:
            stat = item.path.stat()
        except OSError:
            return [-1, -1]
        return [stat.st_size, stat.st_mtime_ns]

    def _load(self, item: ImageItem, method: str) -> Optional[Dict[str, str]]:
        """The row of a current record (these settings, this source file), else None."""
        try:
            record = json.loads((self.output_dir / item.record(method)).read_text(encoding="utf-8"))
            current = (
                record.get("version") == RECORD_VERSION and record.get("settings") == self.settings_of(method)
                and record.get("source") == self.source_of(item)
            )
            row = record.get("row")
        except (OSError, ValueError, AttributeError):
            return None
        return row if current and isinstance(row, dict) else None

    def read(self, item: ImageItem, method: str) -> Optional[Dict[str, str]]:
        """The record's row if the (image, method) is done, else None (errors are tried again)."""
        row = self._load(item, method)
        if row is None or str(row.get("status", "")).startswith("error"):
            return None
        outputs = [row.get(column, "") for column in ("thumbnail", "overlay", "map")]
        if not all((self.output_dir / output).is_file() for output in outputs if output):
            return None
        return row

    def row(self, item: ImageItem, method: str, metric_names: Sequence[str]) -> Dict[str, str]:
        """The (image, method)'s row of results.csv: its record's, errors included, or
        an error row where there is no current record."""
        row = self.read(item, method)
        if row is None:
            row = self._load(item, method)
            if row is None or not str(row.get("status", "")).startswith("error"):
                row = empty_row(item, method, "error: not explained (no complete record)", metric_names)
        return {column: str(row.get(column, "")) for column in (*COLUMNS, *metric_names)}

    def write(self, item: ImageItem, method: str, row: Dict[str, str], rank: int) -> None:
        """Write the record of ``row``, atomically (after its outputs)."""
        record = {"version": RECORD_VERSION, "settings": self.settings_of(method), "source": self.source_of(item),
                  "rank": rank, "row": row}
        atomic_write(self.output_dir / item.record(method), json.dumps(record, indent=1).encode("utf-8"))


def csv_text(rows: Sequence[Mapping[str, str]], metric_names: Sequence[str]) -> str:
    """results.csv's text: the columns, then the rows sorted by (path, method)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*COLUMNS, *metric_names], lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda row: (row["path"], row["method"])):
        writer.writerow(row)
    return buffer.getvalue()


def write_sheet(output_dir: Path, rows: Sequence[Mapping[str, str]], title: str) -> Optional[Path]:
    """Write ``index.html`` of the results; its path, or None (with a note) if it could not be written.

    The CSV is already written when this runs, so a failure here is a note, never an error.
    """
    try:
        return write_contact_sheet(output_dir, rows, title=title)
    except Exception as error:  # noqa: BLE001 - the CSV is written; a page is not worth failing the run
        note(f"the contact sheet (index.html) was not written: {one_line(error)}")
        return None


# ----------------------------------------------------------------- the run
def one_line(error: BaseException) -> str:
    """``Type: message`` on one line."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def logits_to_probabilities(logits: object, batch: int) -> Optional[torch.Tensor]:
    """Softmax probabilities (B, C) on the CPU of (B, C) logits, or None for any other output."""
    if torch.is_tensor(logits) and logits.ndim == 2 and logits.shape[0] == batch:
        return logits.detach().float().softmax(dim=1).cpu()
    return None


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
        """Explain every pending item, batch by batch, with a progress bar of images/s."""
        from tqdm.auto import tqdm

        if not self.items:
            return
        loader = DataLoader(
            ImageFolderDataset(self.items, self.entry), batch_size=self.args.batch_size, shuffle=False,
            num_workers=self.args.num_workers, collate_fn=collate_images, pin_memory=self.device.type == "cuda",
        )
        # The pictures are encoded and written in threads (OpenCV and zlib release the GIL)
        # while the model works on the next batch: on a GPU they would be the bottleneck.
        with ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="cam-writer") as writer, \
                tqdm(total=len(self.items), unit="img", desc=description, disable=not progress,
                     dynamic_ncols=True) as bar:
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

    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        """Class probabilities (B, C) on the CPU, from one forward pass under no_grad.

        Raises:
            CLIError: if the model does not return (B, C) class scores.
        """
        with torch.no_grad():
            probabilities = logits_to_probabilities(self.model(inputs), inputs.shape[0])
        if probabilities is None:
            raise CLIError("the model does not return (batch, classes) scores; cam.py explains classifiers")
        return probabilities

    def categories_of(self, probabilities: torch.Tensor) -> List[int]:
        """The class explained in each image: --category, or the image's top class.

        Raises:
            CLIError: for a --category outside the model's classes.
        """
        classes = probabilities.shape[1]
        if self.category is None:
            return [int(k) for k in probabilities.argmax(dim=1)]
        if not 0 <= self.category < classes:
            raise CLIError(f"--category {self.category} is outside the model's {classes} classes (0-{classes - 1})")
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
            probabilities = self.predict(inputs)
            self.categories_of(probabilities)
            self.category_checked = True
        for method in self.methods:
            positions = [p for p, index in enumerate(batch.indices) if method in self.todo[index]]
            if positions:
                probabilities = self.explain_positions(batch, inputs, method, positions, probabilities)

    def explain_positions(
        self, batch: Batch, inputs: torch.Tensor, method: str, positions: List[int],
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
            self.write_outputs(batch, position, method, maps[map_index], probabilities[position],
                               categories[position], inputs[position:position + 1])
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
            probabilities = self.predict(inputs)
        targets = None  # each image's top class, chosen by the CAM call itself
        if probabilities is not None:
            categories = self.categories_of(probabilities)
            targets = [ClassifierOutputTarget(categories[p]) for p in positions]
        elif self.category is not None:
            targets = [ClassifierOutputTarget(self.category) for _ in positions]
        maps = self.call(method, inputs if whole else inputs[positions], targets)
        cam = self.cams[method]
        if probabilities is None:
            probabilities = logits_to_probabilities(getattr(cam, "outputs", None), inputs.shape[0])
            if probabilities is None:
                probabilities = self.predict(inputs)
        return maps, probabilities

    def call(self, method: str, inputs: torch.Tensor, targets: Optional[List[ClassifierOutputTarget]]) -> np.ndarray:
        """The maps (n, h, w) of one call of ``method`` on ``inputs``, in ``channels_last``
        on the CPU while the model takes it (see :attr:`channels_last`)."""
        cam = self.cams[method]
        return self.channels_last(
            lambda batch: cam(batch, targets=targets, aug_smooth=self.args.aug_smooth,
                              eigen_smooth=self.args.eigen_smooth),
            inputs,
        )

    def write_outputs(
        self, batch: Batch, position: int, method: str, grayscale: np.ndarray, probabilities: torch.Tensor,
        category: int, single_input: torch.Tensor,
    ) -> None:
        """The row (with the metrics, computed here), then the files and the record, written
        by a writer thread (see :meth:`write_files`)."""
        item = self.items[batch.indices[position]]
        classes = probabilities.numel()
        predicted = int(probabilities.argmax())
        row = empty_row(item, method, "ok", self.metric_names)
        row.update(
            predicted_class=str(predicted), predicted_label=label_of(predicted, classes),
            predicted_score=f"{float(probabilities[predicted]):.4f}",
            explained_class=str(category), explained_label=label_of(category, classes),
            thumbnail=item.output("thumb", ".jpg"), overlay=item.output(method, ".jpg"),
            map=item.output(method, ".npz"),
        )
        if self.metric_names:
            values = compute_metrics(self.metric_names, self.model, single_input, grayscale, category,
                                     self.args.batch_size)
            row.update({name: f"{value:.6f}" for name, value in values.items()})
        job = partial(self.write_files, item, method, row, batch.photos[position], batch.thumbnails[position],
                      grayscale)
        if self.writer is None:
            job()
        else:
            self.writes.append(self.writer.submit(job))

    def write_files(
        self, item: ImageItem, method: str, row: Dict[str, str], photo: torch.Tensor, thumbnail_jpeg: torch.Tensor,
        grayscale: np.ndarray,
    ) -> None:
        """The thumbnail, the overlay and the map, then the record, each atomically (in a writer thread)."""
        output_dir = self.args.output_dir
        atomic_write(output_dir / row["thumbnail"], thumbnail_jpeg.numpy().tobytes())
        overlay = cam_overlay(np.float32(photo.numpy()) / 255, grayscale)
        atomic_write(output_dir / row["overlay"], encode_jpeg(overlay))
        atomic_write(output_dir / row["map"], encode_map(grayscale))
        self.records.write(item, method, row, self.rank)

    def write_failure(self, index: int, method: str, status: str) -> None:
        """The record of an image that has no outputs (unreadable, or an error)."""
        item = self.items[index]
        self.records.write(item, method, empty_row(item, method, status, self.metric_names), self.rank)


def parse_methods(text: str) -> List[str]:
    """``--method a,b,c``: registered names (lower case), in order, each once.

    Raises:
        CLIError: for an unknown name or none (exit code 2).
    """
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    if not names:
        raise CLIError(f"--method {text!r} names no method", code=2)
    for name in names:
        try:
            get_method(name)
        except ValueError as error:
            raise CLIError(f"--method: {error}", code=2) from None
    return list(dict.fromkeys(names))


def record_settings(args: argparse.Namespace, layer_path: str, category: Optional[int]) -> Dict[str, object]:
    """What a row depends on besides the image and the method: a record made with other
    settings is made again."""
    weights = None
    if args.weights is not None:
        stat = Path(args.weights).stat()
        weights = [str(Path(args.weights).resolve()), stat.st_size, stat.st_mtime_ns]
    return {
        "model": args.model, "weights": weights, "target_layer": layer_path, "category": category,
        "aug_smooth": bool(args.aug_smooth), "eigen_smooth": bool(args.eigen_smooth),
        "metrics": list(args.metrics or []),
    }


def run_folder(args: argparse.Namespace, models: Dict[str, ModelEntry]) -> None:
    """``cam.py --image-dir``: explain this rank's shard of the images; then rank 0 writes
    results.csv from every rank's rows (and the contact sheet), and prints a summary.

    Raises:
        CLIError: on any user error (checked before the model is built where possible).
    """
    methods = parse_methods(args.method)
    if args.model not in models:
        raise CLIError(f"--model {args.model!r} is not one of {', '.join(models)}", code=2)
    entry = models[args.model]
    image_dir, output_dir = Path(args.image_dir), Path(args.output_dir)
    if output_dir.resolve() == image_dir.resolve():
        raise CLIError(f"--output-dir {output_dir} is --image-dir itself; the outputs need a folder of their own",
                       code=2)
    items = find_images(image_dir, exclude=output_dir)
    category = resolve_category(args.category)
    ranks = Ranks.from_environment()
    set_threads(ranks)
    device = choose_device(args.device, args.use_cuda)
    progress = not args.no_progress
    metric_names = list(args.metrics or [])
    with ExitStack() as stack:
        if ranks.distributed:
            import torch.distributed as dist

            device = start_process_group(ranks, device)
            stack.callback(dist.destroy_process_group)  # also when this rank fails
        model = build_model(args.model, entry, args.weights, progress and ranks.rank == 0).to(device)
        layer, layer_path = select_layer(model, entry, args.target_layer)
        if any(entry is known for known in MODELS.values()):
            imagenet_classes()  # the zoo's models are ImageNet classifiers: their class names, before the clock starts
        if ranks.local_rank == 0:  # each machine cleans its disk before any rank writes
            try:
                output_dir.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise CLIError(f"--output-dir {output_dir}: cannot create it ({error.strerror or error})") from None
            remove_partial_files(output_dir)
        if ranks.distributed:
            dist.barrier()
        started = time.perf_counter()
        shard = items[ranks.rank::ranks.world_size]
        records = Records(output_dir, record_settings(args, layer_path, category))
        todo = [[method for method in methods if records.read(item, method) is None] for item in shard]
        pending = [position for position, left in enumerate(todo) if left]
        if ranks.rank == 0:
            where = f"{ranks.world_size} processes" if ranks.distributed else "one process"
            print(f"{len(items)} images under {image_dir}; {', '.join(methods)} on {args.model} at {layer_path}; "
                  f"{where}")
        run = ShardRun(args, entry, model, methods, category, records, ranks.rank, device, metric_names,
                       items=[shard[p] for p in pending], todo=[todo[p] for p in pending])
        for method in methods:
            method_class = get_method(method)
            options = {"batch_size": args.batch_size, "progress": False} \
                if issubclass(method_class, PerturbationCAM) else {}
            run.cams[method] = stack.enter_context(method_class(model, [layer], entry.reshape_transform, **options))
        description = f"rank 0 of {ranks.world_size}" if ranks.distributed else "explaining"
        run.run(progress and ranks.rank == 0, description)
        rows = [records.row(item, method, metric_names) for item in shard for method in methods]
        summary = (ranks.rank, len(pending), len(shard) - len(pending), rows)
        if ranks.distributed:
            gathered: Optional[List[object]] = [None] * ranks.world_size if ranks.rank == 0 else None
            dist.gather_object(summary, gathered, dst=0)
        else:
            gathered = [summary]
        seconds = time.perf_counter() - started
        if ranks.distributed:
            # One write of the whole line: the ranks share torchrun's stderr pipe.
            sys.stderr.write(f"rank {ranks.rank} of {ranks.world_size}: explained {len(pending)} images, "
                             f"skipped {len(shard) - len(pending)} done before\n")
            sys.stderr.flush()
        if ranks.rank != 0:
            return
        merged = sorted((row for *_, part in gathered for row in part), key=lambda row: (row["path"], row["method"]))
        explained = sum(count for _, count, _, _ in gathered)
        skipped = sum(count for _, _, count, _ in gathered)
        atomic_write(output_dir / RESULTS_NAME, csv_text(merged, metric_names).encode("utf-8"))
        sheet = write_sheet(output_dir, merged,
                                                 title=f"{', '.join(methods)} on {image_dir} ({args.model})")
        unreadable = len({row["path"] for row in merged if row["status"].startswith("unreadable")})
        errors = len({row["path"] for row in merged if row["status"].startswith("error")})
        rate = explained / seconds if seconds > 0 else 0.0
        print(f"explained {explained} images in {seconds:.2f} s: {rate:.2f} images/s ({len(methods)} method(s) "
              f"each, {ranks.world_size} process(es)); skipped {skipped} done before; {unreadable} unreadable, "
              f"{errors} with errors")
        print(f"wrote {output_dir / RESULTS_NAME}" + (f" and {sheet}" if sheet is not None else ""))
