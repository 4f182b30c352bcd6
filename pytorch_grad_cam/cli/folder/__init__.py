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
  the CPU the batch goes to the model in ``channels_last`` memory format (the same maps,
  faster; benchmarks/bench.py measures it); a model that cannot take it gets contiguous
  batches.
* Two threads encode and write the pictures while the model works on the next batch.
* Every file is written to a hidden temporary name in its folder and renamed into place
  (``os.replace``), and the record comes last. A run killed at any point leaves only whole
  files and temporary ones, which the next run removes; restarted with the same
  arguments it skips every (image, method) whose record and outputs exist and match.
* Under ``torchrun`` (``WORLD_SIZE`` > 1) each rank explains a disjoint shard of the
  sorted file list (``files[rank::world_size]``), with gloo on the CPU or nccl on one GPU
  per rank (``LOCAL_RANK``); rank 0 gathers every rank's rows, writes ``results.csv`` and
  the contact sheet (``index.html``).

The modules, by concern (each imports only those above it in this list, and
:mod:`pytorch_grad_cam.cli.jobs` for the steps shared with the one-photo command):

    files.py        the image list, output paths, atomic writes, encoded pictures and maps
    dataset.py      the Dataset and collate function the DataLoader runs
    distributed.py  torchrun: ranks, the process group, threads, gathering on rank 0
    records.py      the per-(image, method) records, results.csv, the contact sheet
    shard.py        one rank's batches through the CAM objects, and the writer threads
    run.py          run_folder: the arguments checked, the model built, the shard, the report
    detections.py   run_detection_folder: the same for ``--detector`` (one image at a time,
                    its boxes' maps, one row per image and method with the boxes found)

This package re-exports the names that the tests, benchmarks/bench.py and users import
from ``pytorch_grad_cam.cli.folder``.
"""

from pytorch_grad_cam.cli.folder.dataset import Batch, ImageFolderDataset, collate_images
from pytorch_grad_cam.cli.folder.detections import DETECTION_COLUMNS, run_detection_folder
from pytorch_grad_cam.cli.folder.distributed import Ranks, set_threads, start_process_group
from pytorch_grad_cam.cli.folder.files import (
    IMAGE_SUFFIXES,
    RECORDS_DIR,
    THUMBNAIL_SIDE,
    ImageItem,
    atomic_write,
    encode_jpeg,
    encode_map,
    find_images,
    remove_partial_files,
    thumbnail,
)
from pytorch_grad_cam.cli.folder.records import (
    COLUMNS,
    RECORD_VERSION,
    RESULTS_NAME,
    Records,
    csv_text,
    empty_row,
    record_settings,
    write_sheet,
)
from pytorch_grad_cam.cli.folder.run import parse_methods, run_folder
from pytorch_grad_cam.cli.folder.shard import WRITER_THREADS, ShardRun
from pytorch_grad_cam.cli.jobs import jpeg_is_complete

__all__ = [
    "COLUMNS",
    "DETECTION_COLUMNS",
    "IMAGE_SUFFIXES",
    "RECORDS_DIR",
    "RECORD_VERSION",
    "RESULTS_NAME",
    "THUMBNAIL_SIDE",
    "WRITER_THREADS",
    "Batch",
    "ImageFolderDataset",
    "ImageItem",
    "Ranks",
    "Records",
    "ShardRun",
    "atomic_write",
    "collate_images",
    "csv_text",
    "empty_row",
    "encode_jpeg",
    "encode_map",
    "find_images",
    "jpeg_is_complete",
    "parse_methods",
    "record_settings",
    "remove_partial_files",
    "run_detection_folder",
    "run_folder",
    "set_threads",
    "start_process_group",
    "thumbnail",
    "write_sheet",
]
