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
from pytorch_grad_cam.explorer import detections, prompts  # noqa: E402
from pytorch_grad_cam.explorer.models import LoadedModel, loaded_model  # noqa: E402
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
RANDOM_DETECTOR = (
    "**{name} has random weights** (cam.py's detectors are built offline from their configuration): "
    "its boxes, scores and maps mean nothing, and it may find few boxes or none; lower the confidence to see some."
)
RANDOM_CLIP = (
    "**{name} has random weights** (built offline from open_clip's configuration): its cosines and maps "
    "mean nothing; they show how the methods behave, not what the model sees."
)
DEFAULT_PROMPTS = "a photo of a cat, a photo of a dog"

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


def mode_of(model: str) -> str:
    """What the model list's entry ``model`` is: "detector", "clip" or "classifier"."""
    if detections.detector_name(model) is not None:
        return "detector"
    return "clip" if prompts.clip_name(model) is not None else "classifier"


def box_choices(model: str, path: str, confidence: float) -> Tuple[Any, str]:
    """The box dropdown of detector ``model`` on the photo ('0: cat 0.873', then 'all boxes'),
    the first box chosen, and a message (no box above the confidence, or nothing)."""
    detector = detections.loaded_detector(detections.detector_name(model))
    found = detections.find_boxes(detector, _photo(path), float(confidence or 0))
    if not found:
        return gr.update(choices=[], value=None), f"**No box:** {detections.no_boxes(float(confidence or 0))}"
    choices = [(f"{number}: {name} {score:.3f}", number) for number, name, score in found]
    return gr.update(choices=[*choices, ("all boxes", detections.ALL_BOXES)], value=0), ""


def photo_choices(model: str, path: str, confidence: float) -> Tuple[Any, Any, str]:
    """What a new photo changes: the class dropdown (classifiers), the box dropdown
    (detectors), and a message (why there is no box, or nothing)."""
    mode = mode_of(model)
    if mode == "detector":
        boxes, message = box_choices(model, path, confidence)
        return gr.update(), boxes, message
    if mode == "clip":
        return gr.update(), gr.update(), ""
    choices, first = class_choices(loaded_model(model), path)
    return gr.update(choices=choices, value=first), gr.update(), ""


def _visible(mode: str) -> List[Any]:
    """The controls each mode shows: layer, class, search, smoothing, metrics (classifiers),
    box and confidence (detectors), prompts (image-text models)."""
    shown = {"classifier": (1, 1, 1, 1, 1, 0, 0, 0), "detector": (0, 0, 0, 0, 0, 1, 1, 0), "clip": (0,) * 7 + (1,)}
    return [gr.update(visible=bool(flag)) for flag in shown[mode]]


def on_model(name: str, path: str, confidence: float = 0.0) -> Tuple[Any, ...]:
    """The layer tree (automatic layer preselected), the classes, the weights banner of
    model ``name``, a message (why the model cannot be used, or nothing), the boxes, and
    which controls show (:func:`_visible`)."""
    mode = mode_of(name)
    layer, category, search, smoothing, metrics, box, confidence_box, prompt_box = _visible(mode)
    controls = (search, smoothing, metrics, confidence_box, prompt_box)
    try:
        if mode == "detector":
            boxes, message = box_choices(name, path, confidence)
            return layer, category, RANDOM_DETECTOR.format(name=name), message, {**box, **boxes}, *controls
        if mode == "clip":
            prompts.loaded_clip(prompts.clip_name(name))
            return layer, category, RANDOM_CLIP.format(name=name), "", box, *controls
        loaded = loaded_model(name)
        choices, first = class_choices(loaded, path)
    except MODEL_ERRORS as error:
        empty = gr.update(choices=[], value=None)
        return empty, empty, "", f"**{name} cannot be used:** {' '.join(str(error).split())}", box, *controls
    layers = [(node.label(), node.name) for node in loaded.layers]
    banner = RANDOM_WEIGHTS.format(name=name) if loaded.random_weights else ""
    return (
        {**layer, **gr.update(choices=layers, value=loaded.default_layer)},
        {**category, **gr.update(choices=choices, value=first)},
        banner, "", box, *controls,
    )  # fmt: skip


def on_confidence(model: str, path: str, confidence: float) -> Tuple[Any, str]:
    """A new confidence: the boxes above it, and a message."""
    if mode_of(model) != "detector":
        return gr.update(), ""
    return box_choices(model, path, confidence)


def on_bundled(choice: str, model: str, confidence: float = 0.0) -> Tuple[Any, ...]:
    """Choosing a bundled photo: its path, its name, the preview, a message, its classes, its boxes."""
    path = str(bundled_photos()[choice])
    try:
        category, boxes, message = photo_choices(model, path, confidence)
    except MODEL_ERRORS as error:
        message = f"**{model}:** {' '.join(str(error).split())}"
        return path, f"examples/{choice}", _photo(path), message, gr.update(), gr.update()
    return path, f"examples/{choice}", _photo(path), message, category, boxes


def on_upload(file: Optional[str], path: str, name: str, model: str, confidence: float = 0.0) -> Tuple[Any, ...]:
    """An upload: the photo it holds, or the reason it is refused (the photo chosen before
    stays); the upload box is emptied for the next one."""
    unchanged = (gr.update(), gr.update())
    if file is None:
        return path, name, gr.update(), "", *unchanged, None
    try:
        photo = check_upload(Path(file))
        category, boxes, message = photo_choices(model, file, confidence)
    except UploadRejected as error:
        return path, name, gr.update(), f"**Upload refused.** {error}", *unchanged, None
    except MODEL_ERRORS as error:
        return path, name, gr.update(), f"**{model}:** {' '.join(str(error).split())}", *unchanged, None
    return file, Path(file).name, photo, message, category, boxes, None


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
    smoothing: List[str], metrics: List[str], box: Optional[int], confidence: float, prompt_text: str,
    request: gr.Request, progress: gr.Progress = gr.Progress(track_tqdm=True),
) -> Tuple[Any, ...]:  # fmt: skip
    """Run the view: the overlays, the raw maps, the metrics, the snippet, the commands,
    the files to download and a message (empty when all went well)."""
    cancelled = _cancel_event(request)
    cancelled.clear()
    nothing = (gr.update(),) * 6
    if not methods:
        return (*nothing, "Choose at least one method.")
    mode = mode_of(model)
    try:
        if mode == "detector":
            if box is None:
                return (*nothing, "Choose a box (lower the confidence if the list is empty).")
            return _run_detector(model, path, name, methods, int(box), float(confidence or 0), cancelled.is_set)
        if mode == "clip":
            return _run_clip(model, path, name, methods, prompts.read_prompts(prompt_text), cancelled.is_set)
        if category is None:
            return (*nothing, "Choose a class (the top-5, or search one by name).")
        return _run_classifier(model, path, name, layer, methods, int(category), smoothing, metrics, cancelled.is_set)
    except Cancelled:
        return (*nothing, "Cancelled.")
    except (ValueError, TypeError, IndexError, CLIError, RuntimeError) as error:
        where = f" at {layer}" if mode == "classifier" else f" on {model}"
        return (*nothing, f"**{', '.join(methods)}{where}:** {' '.join(str(error).split())}")


def _gray(heat: np.ndarray) -> np.ndarray:
    return np.uint8(np.clip(heat, 0, 1) * 255)


def _downloads_folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="grad-cam-explorer-"))


def _run_classifier(
    model: str, path: str, name: str, layer: str, methods: List[str], category: int,
    smoothing: List[str], metrics: List[str], cancelled: Any,
) -> Tuple[Any, ...]:  # fmt: skip
    """A classifier's view, as the page shows it (see :func:`on_run`)."""
    loaded = loaded_model(model)
    view = compute_view(loaded, Path(path), _photo(path), layer, methods, category, smoothing, metrics, cancelled)
    overlays = [(view.overlays[method], method) for method in methods]
    maps = [(_gray(view.maps[method]), method) for method in methods]
    files = write_downloads(view, _downloads_folder())
    return (
        overlays, maps, _metrics_table(view), python_snippet(view, loaded, name if name else None),
        cam_command(view, loaded, name), [str(file) for file in files], "",
    )  # fmt: skip


def _run_detector(
    model: str, path: str, name: str, methods: List[str], box: int, confidence: float, cancelled: Any
) -> Tuple[Any, ...]:
    """A detector's view of one box (or all), as the page shows it (see :func:`on_run`)."""
    detector = detections.loaded_detector(detections.detector_name(model))
    view = detections.compute_detection_view(
        detector, Path(path), _photo(path), methods, box, confidence, cancelled=cancelled
    )
    overlays = [(view.overlays[method], method) for method in methods]
    if box == detections.ALL_BOXES:
        maps = [(_gray(heat), f"{method}: box {k}") for method in methods for k, heat in enumerate(view.maps[method])]
    else:
        maps = [(_gray(view.maps[method]), f"{method}: box {box}") for method in methods]
    files = detections.write_detection_downloads(view, _downloads_folder())
    return (
        overlays, maps, "", detections.detection_snippet(view, detector, name or None),
        detections.detection_command(view, name or None), [str(file) for file in files], "",
    )  # fmt: skip


def _run_clip(
    model: str, path: str, name: str, methods: List[str], texts: List[str], cancelled: Any
) -> Tuple[Any, ...]:
    """An image-text model's view of the prompts, as the page shows it (see :func:`on_run`)."""
    clip = prompts.loaded_clip(prompts.clip_name(model))
    view = prompts.compute_prompt_view(clip, Path(path), _photo(path), methods, texts, cancelled=cancelled)
    overlays = [(picture, caption) for caption, picture in view.overlays.items()]
    maps = [
        (_gray(heat), f"{method}: {prompt}")
        for method in methods
        for prompt, heat in zip(view.prompts, view.maps[method])
    ]
    scores = "\n".join(
        f"- {method}, **{prompt}**: cosine {score:.4f}"
        for method, result in view.results.items()
        for prompt, score in zip(result.prompts, result.scores[0])
    )
    files = prompts.write_prompt_downloads(view, _downloads_folder())
    return (
        overlays, maps, scores, prompts.prompt_snippet(view, name or None),
        prompts.prompt_command(view, name or None), [str(file) for file in files], "",
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
    c.model = gr.Dropdown(detections.offered_models(), value=default_model, label="Model", elem_id="model")
    c.layer = gr.Dropdown([], label="Layer ([spatial]: a grid a map can be made on)", filterable=True, elem_id="layer")
    c.methods = gr.CheckboxGroup(list(METHODS), value=["gradcam"], label="Methods (side by side)", elem_id="methods")
    c.category = gr.Dropdown([], label="Class (top-5 with scores)", elem_id="class")
    c.search = gr.Textbox(label="Search a class by name", placeholder="tabby", elem_id="class-search")
    c.box = gr.Dropdown([], label="Box (the detections above the confidence)", visible=False, elem_id="box")
    c.confidence = gr.Slider(
        0, 1, value=0.0, step=0.001, label="Confidence (the least score of a box)", visible=False, elem_id="confidence"
    )
    c.prompts = gr.Textbox(
        value=DEFAULT_PROMPTS, label="Prompts (comma-separated; Run explains each)", visible=False, elem_id="prompts"
    )
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
    offered = detections.offered_models()
    if default_model not in offered:
        raise ValueError(f"model {default_model!r} is not offered; choose one of {', '.join(offered)}")
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
        model_outputs = [c.layer, c.category, banner, message, c.box, c.search, c.smoothing, c.metrics]
        model_outputs += [c.confidence, c.prompts]
        photo_outputs = [path, name, c.preview, message, c.category, c.box]
        demo.load(on_bundled, [c.photo, c.model, c.confidence], photo_outputs).then(
            on_model, [c.model, path, c.confidence], model_outputs
        )
        c.model.change(on_model, [c.model, path, c.confidence], model_outputs)
        c.photo.input(on_bundled, [c.photo, c.model, c.confidence], photo_outputs)
        c.upload.upload(on_upload, [c.upload, path, name, c.model, c.confidence], [*photo_outputs, c.upload])
        c.confidence.release(on_confidence, [c.model, path, c.confidence], [c.box, message])
        c.search.submit(on_search, [c.search, c.model, path], c.category)
        inputs = [c.model, path, name, c.layer, c.methods, c.category, c.smoothing, c.metrics]
        inputs += [c.box, c.confidence, c.prompts]
        outputs = [r.overlays, r.maps, r.metric_values, r.snippet, r.command, r.downloads, message]
        running = c.run.click(on_run, inputs, outputs, concurrency_limit=1)
        c.cancel.click(on_cancel, None, message, cancels=[running])
    return demo
