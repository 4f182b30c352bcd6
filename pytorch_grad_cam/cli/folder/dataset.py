"""Folder mode's data set: the images read, decoded and resized in the DataLoader's
worker processes while the model runs, and collated into batches in which a file that
cannot be read is a listed failure, never an exception.

Images are read by :func:`pytorch_grad_cam.cli.jobs.read_image`, the one reader of the
command line, and made into the model's input by :func:`~pytorch_grad_cam.cli.jobs.model_input`,
exactly as ``cam.py --image-path`` makes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from pytorch_grad_cam.cli.folder.files import ImageItem, encode_jpeg, thumbnail
from pytorch_grad_cam.cli.jobs import UnreadableImage, model_input, one_line, read_image, to_float
from pytorch_grad_cam.cli.model_zoo import ModelEntry


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
            rgb = read_image(self.items[index].path)
            return {
                "index": index,
                "photo": torch.from_numpy(np.ascontiguousarray(rgb)),
                "input": model_input(to_float(rgb), self.entry)[0],
                "thumbnail": torch.frombuffer(bytearray(encode_jpeg(thumbnail(rgb))), dtype=torch.uint8),
            }
        except UnreadableImage as error:
            return {"index": index, "failure": error.reason}
        except Exception as error:  # noqa: BLE001 - any decoder's failure makes the file unreadable
            return {"index": index, "failure": one_line(error)}


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
