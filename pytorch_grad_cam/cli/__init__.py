"""The command-line application of the library: ``python cam.py ...``, the
``pytorch-grad-cam`` console script (this package's :func:`main`), the usage
examples' entry point, and the photo-level steps ``docs/make_grid.py`` shares with it.

    app.py        the arguments, the run from a photo to the pictures, one-line errors
    jobs.py       the steps app and folder share: reading an image (the one reader), the
                  model's input, probabilities and class labels, checking --model,
                  --method and --category, the model, its layer and a CAM object
    model_zoo.py  the models known by name (``--model``): weights, default layer, input
    metrics.py    ``--metrics``: names for pytorch_grad_cam.metrics, run on the explained map
    detector_zoo.py  the detectors known by name (``--detector``): how each is built, its classes
    detect.py     ``--detector``: a map per detected box of a photo, drawn, saved and printed
    contact_sheet.py  ``index.html`` of a folder run: the results.csv rows as a paged page
    folder/       ``--image-dir``: a whole folder in batches, resumable, sharded under torchrun

No two modules of this package import each other, directly or through others
(``tests/test_cli_layout.py`` checks it): app imports folder and detect, all of them import
jobs, and jobs imports only model_zoo and the library's public names.

The library never imports this package (``tests/test_cli.py`` checks it): it is an
application built on the library, not part of its API.
"""

from pytorch_grad_cam.cli.app import main

__all__ = ["main"]
