"""The explorer's page: gradio Blocks over :mod:`pytorch_grad_cam.explorer.session`.

Only the layout and the wiring live here; every number comes from the session module,
which the tests check without a browser. Offline by construction: no analytics, a theme
of the system's fonts (the default theme fetches web fonts), no share link. Every
component has an ``elem_id`` (the browser test and the docs find them by it).
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Tuple

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402 - after the environment switch above
import numpy as np  # noqa: E402

from pytorch_grad_cam import METHODS  # noqa: E402
from pytorch_grad_cam.cli.jobs import CLIError, model_input, read_photo  # noqa: E402
from pytorch_grad_cam.cli.metrics import METRICS  # noqa: E402
from pytorch_grad_cam.explorer.models import LoadedModel, loaded_model, model_names  # noqa: E402
from pytorch_grad_cam.explorer.session import (  # noqa: E402
    SMOOTHING,
    Cancelled,
    UploadRejected,
    bundled_photos,
    cam_command,
    check_upload,
    compute_view,
    python_snippet,
    search_labels,
    top_classes,
    write_downloads,
)

__all__ = ["build_app", "THEME"]

#: System fonts only: nothing is fetched from outside the machine.
THEME = gr.themes.Base(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
DEFAULT_PHOTO = "cat.jpg"
RANDOM_WEIGHTS = (
    "**{name} has random weights** (no trained weights offline): its classes and maps mean nothing; "
    "they show how the methods behave, not what the model sees."
)

#: Per browser session: a Cancel sets its event, the running view stops at its next forward pass.
_CANCELLED: Dict[str, threading.Event] = {}


def _cancel_event(request: Optional[gr.Request]) -> threading.Event:
    key = getattr(request, "session_hash", None) or "-"
    return _CANCELLED.setdefault(key, threading.Event())


# ----------------------------------------------------------------- what the handlers return
def _photo(path: str) -> np.ndarray:
    """The photo at ``path`` (already checked when it was chosen)."""
    return read_photo(Path(path))


def class_choices(loaded: LoadedModel, path: str) -> Tuple[List[Tuple[str, int]], int]:
    """The top-5 classes of the photo as dropdown choices ('tabby (281): 6.9 %', 281), and the first."""
    input_tensor = model_input(_photo(path), loaded.spec.entry())
    top = top_classes(loaded, input_tensor.to(next(loaded.model.parameters()).device))
    return [(f"{name} ({index}): {100 * score:.1f} %", index) for index, name, score in top], top[0][0]


#: What building a model or reading its classes can raise: shown on the page as a message.
MODEL_ERRORS = (ValueError, TypeError, RuntimeError, ModuleNotFoundError, CLIError)


def on_model(name: str, path: str) -> Tuple[Any, Any, str, str]:
    """The layer tree (automatic layer preselected), the classes, the weights banner of
    model ``name`` and a message (why the model cannot be used, or nothing)."""
    try:
        loaded = loaded_model(name)
        choices, first = class_choices(loaded, path)
    except MODEL_ERRORS as error:
        empty = gr.update(choices=[], value=None)
        return empty, empty, "", f"**{name} cannot be used:** {' '.join(str(error).split())}"
    layers = [(node.label(), node.name) for node in loaded.layers]
    banner = RANDOM_WEIGHTS.format(name=name) if loaded.random_weights else ""
    return (
        gr.update(choices=layers, value=loaded.default_layer),
        gr.update(choices=choices, value=first),
        banner,
        "",
    )


def on_bundled(choice: str, model: str) -> Tuple[str, str, np.ndarray, str, Any]:
    """Choosing a bundled photo: its path, its name, the preview, no message, its classes."""
    path = str(bundled_photos()[choice])
    try:
        choices, first = class_choices(loaded_model(model), path)
    except MODEL_ERRORS as error:
        return path, f"examples/{choice}", _photo(path), f"**{model}:** {' '.join(str(error).split())}", gr.update()
    return path, f"examples/{choice}", _photo(path), "", gr.update(choices=choices, value=first)


def on_upload(file: Optional[str], path: str, name: str, model: str) -> Tuple[Any, ...]:
    """An upload: the photo it holds, or the reason it is refused (the photo chosen before
    stays); the upload box is emptied for the next one."""
    if file is None:
        return path, name, gr.update(), "", gr.update(), None
    try:
        photo = check_upload(Path(file))
        choices, first = class_choices(loaded_model(model), file)
    except UploadRejected as error:
        return path, name, gr.update(), f"**Upload refused.** {error}", gr.update(), None
    except MODEL_ERRORS as error:
        return path, name, gr.update(), f"**{model}:** {' '.join(str(error).split())}", gr.update(), None
    return file, Path(file).name, photo, "", gr.update(choices=choices, value=first), None


def on_search(query: str, model: str, path: str) -> Any:
    """The class dropdown: the classes whose name holds ``query``, or the top-5 when it is empty."""
    loaded = loaded_model(model)
    if not query.strip():
        choices, first = class_choices(loaded, path)
        return gr.update(choices=choices, value=first)
    found = search_labels(loaded.labels(), query)
    return gr.update(
        choices=[(f"{name} ({index})", index) for index, name in found], value=found[0][0] if found else None
    )


def _metrics_table(view: Any) -> str:
    if not view.metrics:
        return ""
    names = list(next(iter(view.metrics.values())))
    rows = ["| method | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    rows += [
        f"| {method} | " + " | ".join(f"{value:.4f}" for value in values.values()) + " |"
        for method, values in view.metrics.items()
    ]
    better = ", ".join(f"{name}: {'higher' if METRICS[name].higher_is_better else 'lower'} is better" for name in names)
    return "\n".join(rows) + f"\n\n{better}"


def on_run(
    model: str, path: str, name: str, layer: str, methods: List[str], category: Optional[int],
    smoothing: List[str], metrics: List[str], request: gr.Request, progress: gr.Progress = gr.Progress(track_tqdm=True),
) -> Tuple[Any, ...]:  # fmt: skip
    """Run the view: the overlays, the raw maps, the metrics, the snippet, the commands,
    the files to download and a message (empty when all went well)."""
    cancelled = _cancel_event(request)
    cancelled.clear()
    nothing = (gr.update(),) * 6
    if not methods:
        return (*nothing, "Choose at least one method.")
    if category is None:
        return (*nothing, "Choose a class (the top-5, or search one by name).")
    loaded = loaded_model(model)
    try:
        view = compute_view(
            loaded, Path(path), _photo(path), layer, methods, int(category), smoothing, metrics, cancelled.is_set
        )
    except Cancelled:
        return (*nothing, "Cancelled.")
    except (ValueError, TypeError, IndexError, CLIError, RuntimeError) as error:
        return (*nothing, f"**{', '.join(methods)} at {layer}:** {' '.join(str(error).split())}")
    overlays = [(view.overlays[method], method) for method in methods]
    maps = [(np.uint8(np.clip(view.maps[method], 0, 1) * 255), method) for method in methods]
    files = write_downloads(view, Path(tempfile.mkdtemp(prefix="grad-cam-explorer-")))
    return (
        overlays, maps, _metrics_table(view), python_snippet(view, loaded, name if name else None),
        cam_command(view, loaded, name), [str(file) for file in files], "",
    )  # fmt: skip


def on_cancel(request: gr.Request) -> str:
    """Cancel: the running view stops at its next forward pass."""
    _cancel_event(request).set()
    return "Cancelled."


# ----------------------------------------------------------------- the page
def _controls(default_model: str) -> SimpleNamespace:
    photos = list(bundled_photos())
    c = SimpleNamespace()
    c.photo = gr.Radio(
        photos, value=DEFAULT_PHOTO if DEFAULT_PHOTO in photos else photos[0], label="Photo", elem_id="photo"
    )
    c.upload = gr.File(label="…or upload an image", file_count="single", type="filepath", height=120, elem_id="upload")
    c.preview = gr.Image(label="The photo", interactive=False, height=200, elem_id="photo-preview")
    c.model = gr.Dropdown(model_names(), value=default_model, label="Model", elem_id="model")
    c.layer = gr.Dropdown([], label="Layer ([spatial]: a grid a map can be made on)", filterable=True, elem_id="layer")
    c.methods = gr.CheckboxGroup(list(METHODS), value=["gradcam"], label="Methods (side by side)", elem_id="methods")
    c.category = gr.Dropdown([], label="Class (top-5 with scores)", elem_id="class")
    c.search = gr.Textbox(label="Search a class by name", placeholder="tabby", elem_id="class-search")
    c.smoothing = gr.CheckboxGroup(list(SMOOTHING), value=[], label="Smoothing", elem_id="smoothing")
    c.metrics = gr.CheckboxGroup(list(METRICS), value=[], label="Metrics of each map", elem_id="metrics")
    with gr.Row():
        c.run = gr.Button("Run", variant="primary", elem_id="run")
        c.cancel = gr.Button("Cancel", elem_id="cancel")
    return c


def _results() -> SimpleNamespace:
    r = SimpleNamespace()
    r.overlays = gr.Gallery(
        label="Overlays", format="png", columns=3, height=300, object_fit="contain", elem_id="overlays"
    )
    r.maps = gr.Gallery(
        label="Raw maps (the model's input size)",
        format="png",
        columns=3,
        height=220,
        object_fit="contain",
        elem_id="maps",
    )
    r.metric_values = gr.Markdown(elem_id="metric-values")
    r.snippet = gr.Code(label="Python", language="python", elem_id="snippet")
    r.command = gr.Code(label="cam.py", language="shell", elem_id="command")
    r.downloads = gr.File(
        label="Downloads: maps.npz and the overlays", file_count="multiple", interactive=False, elem_id="downloads"
    )
    return r


def build_app(default_model: str = "efficientnet_lite0") -> gr.Blocks:
    """The explorer's page, with ``default_model`` chosen when it opens.

    Raises:
        ValueError: if ``default_model`` is not offered.
    """
    if default_model not in model_names():
        raise ValueError(f"model {default_model!r} is not offered; choose one of {', '.join(model_names())}")
    with gr.Blocks(title="pytorch-grad-cam explorer", analytics_enabled=False) as demo:
        gr.Markdown("## pytorch-grad-cam explorer")
        banner = gr.Markdown(elem_id="weights-banner")
        message = gr.Markdown(elem_id="message")
        path = gr.State(str(bundled_photos()[DEFAULT_PHOTO]))
        name = gr.State(f"examples/{DEFAULT_PHOTO}")  # as the snippet and command name it
        with gr.Row():
            with gr.Column(scale=1):
                c = _controls(default_model)
            with gr.Column(scale=2):
                r = _results()
        model_outputs = [c.layer, c.category, banner, message]
        demo.load(on_bundled, [c.photo, c.model], [path, name, c.preview, message, c.category]).then(
            on_model, [c.model, path], model_outputs
        )
        c.model.change(on_model, [c.model, path], model_outputs)
        c.photo.input(on_bundled, [c.photo, c.model], [path, name, c.preview, message, c.category])
        c.upload.upload(
            on_upload, [c.upload, path, name, c.model], [path, name, c.preview, message, c.category, c.upload]
        )
        c.search.submit(on_search, [c.search, c.model, path], c.category)
        inputs = [c.model, path, name, c.layer, c.methods, c.category, c.smoothing, c.metrics]
        outputs = [r.overlays, r.maps, r.metric_values, r.snippet, r.command, r.downloads, message]
        running = c.run.click(on_run, inputs, outputs, concurrency_limit=1)
        c.cancel.click(on_cancel, None, message, cancels=[running])
    return demo
