"""One case of a side-by-side table, run in whichever interpreter starts this file.

``bench.py --compare-with PYTHON`` starts it twice per round: once in this project's
interpreter with ``--library ours`` (the repository put first on ``sys.path``), and
once in the other interpreter with ``--library theirs``, where ``pytorch_grad_cam`` is
that interpreter's installed package (grad-cam 1.5.7 in a throwaway virtual
environment outside the repository). ``bench.py --torchcam-with PYTHON`` does the same
with ``--library torchcam`` in an interpreter that has torchcam 0.5.0 installed (its
documented API only: ``torchcam.methods``, ``extractor(class_idx, scores)``). All build
the same architecture and load the same weights and input tensor that bench.py saved (as
tensors, ``weights_only=True``), so the cases are the same numbers; only the library
differs. grad-cam shares the public API used here (class names, constructor, call).

It prints one JSON line: ``{"times": [...]}`` (seconds per timed call) or, with
``--memory``, ``{"peak_mb": ...}`` (the peak resident memory one call added, measured as
bench.py does on the CPU). With ``--maps PATH`` it also saves the maps of the last timed
call there (a tensor; torchcam's at its layer's resolution, as it returns them).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import time
import warnings
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def _resident_kib(field_name: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def cpu_peak_mb(call) -> float:
    """MB of resident memory that ``call()`` added at its peak (Linux): free memory handed
    back to the system first, VmHWM reset to the current size, then VmHWM - VmRSS before.
    Used by bench.py too (this file imports nothing but the standard library at the top).

    Raises:
        OSError: where /proc/self/clear_refs cannot be written (not Linux, no permission)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset VmHWM to the current resident size
    before = _resident_kib("VmRSS")
    call()
    return (_resident_kib("VmHWM") - before) / 1024


def _architecture(name: str):
    """The case's model, built by name with random weights (bench.py saved its state dict):
    torchvision's resnet18/resnet50, or EfficientNet-Lite0 from ``efficientnet-lite-pytorch``
    (installed in both interpreters)."""
    if name in ("resnet18", "resnet50"):
        import torchvision

        return getattr(torchvision.models, name)(weights=None)
    if name == "efficientnet":
        from efficientnet_lite_pytorch import EfficientNet

        return EfficientNet.from_name("efficientnet-lite0")
    raise SystemExit(f"compare_runner: unknown architecture {name!r} (resnet18, resnet50 or efficientnet)")


#: torchcam's class for each of this library's class names (the cases torchcam can run).
TORCHCAM_CLASSES = {
    "GradCAM": "GradCAM",
    "GradCAMPlusPlus": "GradCAMpp",
    "XGradCAM": "XGradCAM",
    "LayerCAM": "LayerCAM",
    "ScoreCAM": "ScoreCAM",
    "CAM": "CAM",
    "SmoothGradCAMPlusPlus": "SmoothGradCAMpp",
    "SSCAM": "SSCAM",
    "ISCAM": "ISCAM",
}
#: torchcam's methods that take the class after a forward pass under inference_mode.
TORCHCAM_AFTER_INFERENCE = {"ScoreCAM", "SSCAM", "ISCAM"}


def seeded(call, seed):
    """``call`` after ``torch.manual_seed(seed)`` (None: ``call`` itself): the noisy
    methods of both libraries then draw from the same global generator state."""
    if seed is None:
        return call
    import torch

    def run():
        torch.manual_seed(seed)
        return call()

    return run


def _model_and_input(case: dict):
    """The case's model (saved weights, eval) and input tensor."""
    import torch

    model = _architecture(case["architecture"])
    model.load_state_dict(torch.load(case["model"], map_location="cpu", weights_only=True))
    model.eval()
    return model, torch.load(case["input"], map_location="cpu", weights_only=True)


def build_torchcam_call(case: dict):
    """The case's call with torchcam's documented API: the extractor on the case's layer,
    then ``model(x)`` and ``extractor(class_idx, scores)``, as its docs show (ScoreCAM: the
    forward under ``inference_mode``, then ``extractor(class_idx)``); the call returns the
    first hooked layer's maps, (N, h, w) at the layer's resolution."""
    import torch
    from torchcam import methods

    if case["method"] not in TORCHCAM_CLASSES:
        raise SystemExit(f"compare_runner: torchcam has no counterpart of {case['method']!r} here")
    model, images = _model_and_input(case)
    layer = dict(model.named_modules())[case["layers"][0]]
    cls = getattr(methods, TORCHCAM_CLASSES[case["method"]])
    categories = case["categories"]
    init = dict(case.get("init") or {})
    if case["method"] in ("ScoreCAM", "SSCAM", "ISCAM"):
        init["batch_size"] = case.get("batch_size") or 32
    extractor = cls(model, target_layer=layer, **init)
    # torchcam scales its CAM by min-max without a ReLU (measured: its normalised map is
    # exactly that of the raw sum W[c]·A); this library's maps are ReLU'd like every
    # method's, so torchcam's raw map is ReLU'd here to compare the same quantity.
    if case["method"] == "CAM":

        def cam_call():
            with torch.inference_mode():
                model(images)
            return extractor(class_idx=categories, normalized=False)[0].clamp_min(0)

        return cam_call
    if case["method"] in TORCHCAM_AFTER_INFERENCE:

        def score_call():
            with torch.inference_mode():
                model(images)
            return extractor(class_idx=categories)[0]

        return seeded(score_call, case.get("noise_seed"))
    if case["method"] == "SmoothGradCAMPlusPlus":  # its documented call: the forward, then the class

        def smooth_call():
            model(images)
            return extractor(class_idx=categories)[0]

        return seeded(smooth_call, case.get("noise_seed"))
    return seeded(lambda: extractor(class_idx=categories, scores=model(images))[0], case.get("noise_seed"))


def build_call(case: dict, library: str):
    """The case's CAM call, built with ``library``'s classes (imported by name)."""
    if library == "torchcam":
        return build_torchcam_call(case)
    if library == "ours":
        sys.path.insert(0, str(REPOSITORY))
    else:  # never this repository's package
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPOSITORY]
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if library == "ours" and Path(pytorch_grad_cam.__file__).resolve().parents[1] != REPOSITORY:
        raise SystemExit(f"--library ours imported {pytorch_grad_cam.__file__}")
    model, images = _model_and_input(case)
    modules = dict(model.named_modules())
    names = case.get("theirs_layers") if library == "theirs" and case.get("theirs_layers") else case["layers"]
    layers = [modules[name] for name in names]
    cls = getattr(pytorch_grad_cam, case["method"])
    if case["method"] == "DeepFeatureFactorization":
        head = modules[case["head"]] if case.get("head") else None
        dff = cls(model, target_layer=layers[0], computation_on_concepts=head)
        return lambda: dff(images, n_components=case.get("n_components", 5))
    init = dict(case.get("init") or {})
    if case.get("noise_seed") is not None:
        init["seed"] = None  # torch's global generator, seeded before each call as torchcam's
    cam = cls(model, target_layers=layers, **init)
    if case.get("batch_size"):
        cam.batch_size = case["batch_size"]
    if hasattr(cam, "progress"):
        cam.progress = False
    targets = None if case.get("no_targets") else [ClassifierOutputTarget(c) for c in case["categories"]]
    options = case.get("options", {})
    return seeded(lambda: cam(input_tensor=images, targets=targets, **options), case.get("noise_seed"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--library", choices=["ours", "theirs", "torchcam"], required=True)
    parser.add_argument("--case", type=Path, required=True, help="the case, a JSON file bench.py wrote")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--calls", type=int, default=1, help="timed calls")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    parser.add_argument("--memory", action="store_true", help="the peak memory of one call instead")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="cpu: process CPU time")
    parser.add_argument("--maps", type=Path, help="save the maps of the last timed call here (a tensor)")
    args = parser.parse_args()
    os.environ["TQDM_DISABLE"] = "1"
    warnings.filterwarnings("ignore")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    case = json.loads(args.case.read_text())
    call = build_call(case, args.library)
    if args.memory:
        print(json.dumps({"peak_mb": cpu_peak_mb(call)}))
        return 0
    for _ in range(args.warmup):
        call()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    times = []
    for _ in range(args.calls):
        start = clock()
        maps = call()
        times.append(clock() - start)
    if args.maps:
        torch.save(torch.as_tensor(maps).detach().float().cpu(), args.maps)
    print(json.dumps({"times": times}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
