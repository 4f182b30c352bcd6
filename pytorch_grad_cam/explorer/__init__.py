"""The explorer: ``pytorch-grad-cam explore`` starts a local web page (Gradio, offline,
on 127.0.0.1) to choose a photo, a model, a layer, methods and a class (a box for a detector, text
prompts for CLIP) and see the maps.

    models.py   the models offered (the zoo and :func:`register_model`'s), built once,
                with their layer tree and preselected layer
    session.py  what a view computes, without gradio: checked uploads, top classes,
                maps, metrics, the Python snippet and cam.py command, the downloads
    detections.py  the detector mode: cam.py --detector's zoo, the boxes, one box's maps
    prompts.py  the image-text mode: an open_clip model, one map per text prompt
    app.py      the page (gradio Blocks) on top of session
    command.py  ``pytorch-grad-cam explore``'s arguments and start

An application on the library like :mod:`pytorch_grad_cam.cli`: the library never imports
it, and gradio is imported only when the page is built.
"""

from pytorch_grad_cam.explorer.models import register_model

__all__ = ["register_model"]
