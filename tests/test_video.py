"""Video inputs (B, C, T, H, W): maps (B, T, H, W) against the float64 reference, every
method on a small 3D CNN, localisation in time on a trained one, windowed explanation
of long clips (equal to per-window calls, memory bounded by one window), the overlay
and file helpers, and docs/inputs.md's Video block."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from cam_reference import reference_cam, single_thread_module  # noqa: F401 - one thread for the module
from method_sets import CNN_METHODS
from torch import nn

from pytorch_grad_cam import METHODS, GradCAM, HiResCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.video import (
    moving_object_clip,
    read_video,
    show_cam_on_video,
    video_strip,
    write_animation,
)
from pytorch_grad_cam.video import explain_video, window_starts

PRESENT = (3, 6)  # the frames (of 8) that hold the object in the localisation task
SIZE = 16


def tiny_video_net(time_stride: int = 1) -> nn.Sequential:
    """Two Conv3d layers and a linear head; ``time_stride`` 2 halves time at the second."""
    return nn.Sequential(
        nn.Conv3d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv3d(4, 8, 3, padding=1, stride=(time_stride, 1, 1)),
        nn.ReLU(),
        nn.AdaptiveMaxPool3d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )


def object_clips(count: int, generator: torch.Generator) -> tuple:
    """Noise clips (count, 3, 8, 16, 16); the odd ones (class 1) hold a red 4x4 square at a
    random place in frames 3 to 5 only."""
    clips = torch.rand(count, 3, 8, SIZE, SIZE, generator=generator) * 0.5
    labels = torch.arange(count) % 2
    for index in range(1, count, 2):
        row, column = torch.randint(0, SIZE - 4, (2,), generator=generator).tolist()
        clips[index, 0, PRESENT[0] : PRESENT[1], row : row + 4, column : column + 4] = 1.0
        clips[index, 1:, PRESENT[0] : PRESENT[1], row : row + 4, column : column + 4] = 0.0
    return clips, labels


@pytest.fixture(scope="module")
def trained() -> tuple:
    """The tiny 3D CNN trained (seed 0, 40 Adam steps on 32 clips; about 2 s on one
    thread) to tell clips with the object from clips without; and 8 held-out clips with it."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = tiny_video_net()
    optimizer = torch.optim.Adam(model.parameters(), 2e-2)
    clips, labels = object_clips(32, generator)
    for _ in range(40):
        loss = nn.functional.cross_entropy(model(clips), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    held_out, held_labels = object_clips(32, generator)
    with torch.no_grad():
        accuracy = (model(held_out).argmax(1) == held_labels).float().mean().item()
    assert accuracy == 1.0
    return model, held_out[held_labels == 1][:8]


def present_share(maps: np.ndarray) -> np.ndarray:
    """Each clip's share of its map's mass in the object's frames (chance: 3/8)."""
    mass = maps.sum(axis=(2, 3))
    return mass[:, PRESENT[0] : PRESENT[1]].sum(axis=1) / mass.sum(axis=1)


@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
def test_maps_match_the_float64_reference_resized_in_time(method: str) -> None:
    """A model that halves time: the (4, 8, 8) grid is resized to (8, 8, 8) trilinearly."""
    torch.manual_seed(3)
    model = tiny_video_net(time_stride=2).eval()
    clips = torch.randn(2, 3, 8, 8, 8, generator=torch.Generator().manual_seed(4))
    result = METHODS[method](model, [model[2]])(clips, [ClassifierOutputTarget(c) for c in (0, 1)])
    reference = reference_cam(method, model, [model[2]], clips, [0, 1])
    assert result.shape == (2, 8, 8, 8)
    assert np.ptp(reference, axis=1).max() > 0.1  # the maps do change over time
    np.testing.assert_allclose(result, reference, atol=1e-5, rtol=0)


def test_every_method_runs_on_a_3d_cnn_with_the_layer_chosen(trained: tuple) -> None:
    """Each registered method, target_layers=None: (1, 8, 16, 16) maps in [0, 1]; the
    automatic choice is the second Conv3d's ReLU."""
    model, clips = trained
    clip = clips[:1, :, :, :8, :8]
    for name, method in CNN_METHODS.items():
        options = {"progress": False} if name in ("scorecam", "ablationcam", "sscam", "iscam") else {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cam = method(model, **options) if name != "fullgrad" else method(model)
            maps = cam(clip, [ClassifierOutputTarget(1)])
        assert maps.shape == (1, 8, 8, 8), name
        assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1, name
        if name != "fullgrad":
            assert cam.target_layers == [model[3]], name
            assert any("target_layers not given" in str(w.message) for w in caught), name


def test_the_map_is_high_only_in_the_frames_with_the_object(trained: tuple) -> None:
    """On 8 held-out clips, GradCAM's and HiResCAM's mass in frames 3-5 (3 of 8 frames,
    chance 0.375): measured at least 0.86 (GradCAM, mean 0.89) and 1.00 (HiResCAM)."""
    model, clips = trained
    targets = [ClassifierOutputTarget(1)] * len(clips)
    gradcam = present_share(GradCAM(model, [model[2]])(clips, targets))
    hirescam = present_share(HiResCAM(model, [model[2]])(clips, targets))
    assert gradcam.min() > 0.75, gradcam
    assert hirescam.min() > 0.95, hirescam


def test_window_starts() -> None:
    assert window_starts(16, 8) == [0, 8]
    assert window_starts(20, 8) == [0, 8, 12]
    assert window_starts(5, 8) == [0]
    with pytest.raises(ValueError, match="at least 1"):
        window_starts(5, 0)


def test_windowed_maps_equal_per_window_calls(trained: tuple) -> None:
    """20 frames in windows of 8 (starts 0, 8, 12): frames 12-15 are the mean of two windows."""
    model, clips = trained
    video = torch.cat([clips[:2], clips[2:4], clips[4:6, :, :4]], dim=2)  # (2, 3, 20, 16, 16)
    cam = GradCAM(model, [model[2]])
    targets = [ClassifierOutputTarget(1)] * 2
    maps = explain_video(cam, video, targets, clip_length=8)
    parts = [cam(video[:, :, start : start + 8], targets) for start in (0, 8, 12)]
    assert maps.shape == (2, 20, 16, 16)
    np.testing.assert_array_equal(maps[:, :8], parts[0][:, :8])
    np.testing.assert_allclose(maps[:, 8:12], parts[1][:, :4], atol=0)
    np.testing.assert_allclose(maps[:, 12:16], (parts[1][:, 4:] + parts[2][:, :4]) / 2, atol=1e-7)
    np.testing.assert_array_equal(maps[:, 16:], parts[2][:, 4:])
    np.testing.assert_array_equal(explain_video(cam, video[:, :, :8], targets), parts[0])


def test_windowed_memory_does_not_grow_with_length(trained: tuple) -> None:
    """The largest clip the model sees is one window's, for 16 or 64 frames."""
    model, clips = trained
    seen = []
    handle = model.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    try:
        for frames in (16, 64):
            seen.clear()
            video = clips[:1].repeat(1, 1, frames // 8, 1, 1)
            maps = explain_video(GradCAM(model, [model[2]]), video, [ClassifierOutputTarget(1)], clip_length=8)
            assert maps.shape == (1, frames, SIZE, SIZE)
            assert set(seen) == {(1, 3, 8, SIZE, SIZE)} and len(seen) == frames // 8
    finally:
        handle.remove()
    assert not model._forward_pre_hooks  # noqa: SLF001 - the model is left as found


def test_a_layer_that_keeps_one_frame_warns(trained: tuple) -> None:
    model, clips = trained
    pooled = nn.Sequential(*model[:4], nn.AdaptiveMaxPool3d((1, 4, 4)), *model[4:]).eval()
    with pytest.warns(UserWarning, match="same in every frame"):
        explain_video(GradCAM(pooled, [pooled[4]]), clips[:1], [ClassifierOutputTarget(1)], clip_length=4)


def test_explain_video_errors(trained: tuple) -> None:
    model, clips = trained
    cam = GradCAM(model, [model[2]])
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        explain_video(cam, clips[0])
    with pytest.raises(TypeError, match="tensor"):
        explain_video(cam, clips.numpy())
    with pytest.raises(ValueError, match="clip_length must be at least 1"):
        explain_video(cam, clips[:1], clip_length=0)
    with pytest.raises(TypeError, match="CAM object"):
        explain_video(model, clips[:1])


def test_overlays_and_strip() -> None:
    frames = moving_object_clip(frames=6, size=24, present=(2, 4))
    assert frames.shape == (6, 24, 24, 3) and frames.dtype == np.float32
    red = (frames[..., 0] > 0.8) & (frames[..., 1] < 0.2)
    assert [bool(red[t].any()) for t in range(6)] == [False, False, True, True, False, False]
    maps = np.zeros((6, 24, 24), np.float32)
    maps[2:4] = 1
    overlays = show_cam_on_video(frames, maps)
    assert overlays.shape == (6, 24, 24, 3) and overlays.dtype == np.uint8
    # JET: 0 is blue, 1 is red, half over the frame.
    assert overlays[0, ..., 2].mean() > overlays[0, ..., 0].mean() and overlays[2, 0, 0, 0] > 127
    strip = video_strip(frames, maps, every=2, gap=3)
    assert strip.shape == (2 * 24 + 3, 3 * 24 + 2 * 3, 3)
    np.testing.assert_array_equal(strip[27:, 27:51], overlays[2])
    with pytest.raises(ValueError, match=r"maps must be \(T, H, W\)"):
        show_cam_on_video(frames, maps[:5])
    with pytest.raises(ValueError, match=r"frames must be RGB \(T, H, W, 3\)"):
        show_cam_on_video(frames[0], maps[0])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        show_cam_on_video(frames * 2, maps)
    with pytest.raises(ValueError, match="every must be"):
        video_strip(frames, maps, every=0)


#: Mean absolute error of a round trip of the clip below, in [0, 1] units, with margin;
#: measured: GIF 0.065 (OpenCV's palette), WebP 0.014, MP4 0.016, AVI 0.013, APNG 0.001.
ROUND_TRIP_ERROR = {".gif": 0.09, ".webp": 0.025, ".mp4": 0.025, ".avi": 0.025, ".png": 0.002}


@pytest.mark.parametrize("suffix", list(ROUND_TRIP_ERROR))
def test_animations_round_trip(tmp_path: Path, suffix: str) -> None:
    """Frame count, shape and fps survive; the pixels within the codec's loss."""
    frames = moving_object_clip(frames=6, size=32, present=(1, 5))
    path = write_animation(tmp_path / f"clip{suffix}", frames, fps=5)
    read, fps = read_video(path)
    assert read.shape == (6, 32, 32, 3) and read.dtype == np.float32 and fps == pytest.approx(5, abs=0.01)
    assert np.abs(read - frames).mean() < ROUND_TRIP_ERROR[suffix]
    assert read_video(path, max_frames=2, size=(16, 24))[0].shape == (2, 16, 24, 3)


def test_file_errors(tmp_path: Path) -> None:
    frames = moving_object_clip(frames=2, size=8, present=(0, 1))
    with pytest.raises(ValueError, match="unknown suffix '.mkv'"):
        write_animation(tmp_path / "a.mkv", frames)
    with pytest.raises(OSError, match="could not write"):
        write_animation(tmp_path / "missing" / "a.gif", frames)
    with pytest.raises(ValueError, match="fps must be positive"):
        write_animation(tmp_path / "a.gif", frames, fps=0)
    with pytest.raises(FileNotFoundError, match="no such video"):
        read_video(tmp_path / "none.mp4")
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="read no frame"):
        read_video(tmp_path / "bad.mp4")
    with pytest.raises(ValueError, match="present"):
        moving_object_clip(frames=4, present=(3, 6))


def test_the_inputs_page_video_block(tmp_path: Path) -> None:
    """docs/inputs.md's Video block runs as pasted; its maps are the float64 reference's, and
    the 64-frame clip's four windows (four copies of the clip) each give the clip's maps."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "inputs.md").read_text(encoding="utf-8")
    block = re.search(r"## Video\n.*?```python\n(.*?)```", text, flags=re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "docs/inputs.md (Video)", "exec"), namespace)  # noqa: S102 - our own page's code
    model, clip, maps = namespace["video_model"], namespace["clip"], namespace["video_maps"]
    assert maps.shape == (1, 16, 32, 32) and namespace["strip"].shape == (68, 140, 3)
    np.testing.assert_allclose(maps, reference_cam("gradcam", model, [model[3]], clip, [1]), atol=1e-5, rtol=0)
    np.testing.assert_allclose(namespace["long_maps"], np.tile(maps, (1, 4, 1, 1)), atol=1e-6, rtol=0)
    assert namespace["frames_read"].shape == (16, 32, 32, 3) and namespace["fps"] == pytest.approx(1000 / 120)


def test_animated_images_need_opencv_4_11(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Older OpenCV (setup.py allows 4.5) lacks imwriteanimation: a clear error, MP4 still works."""
    frames = moving_object_clip(frames=2, size=8, present=(0, 1))
    monkeypatch.delattr("cv2.imwriteanimation")
    with pytest.raises(ValueError, match=r"OpenCV >= 4.11 .* use .mp4"):
        write_animation(tmp_path / "a.gif", frames)
    assert read_video(write_animation(tmp_path / "a.mp4", frames))[0].shape == (2, 8, 8, 3)


class FoldedHeads(nn.Module):
    """A Conv3d, then a 'pooling' Conv3d run on two heads folded into the batch (as
    MViT's attention pooling is), then a 4D view (B, C, T, H·W) of the result."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 4, 3, padding=1)
        self.pool = nn.Conv3d(2, 2, 3, padding=1)
        self.flat = nn.Flatten(3)  # (B, 4, T, H, W) -> (B, 4, T, H*W): a 4D output
        self.head = nn.Linear(4, 2)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.conv(clip))
        batch = features.shape[0]
        pooled = self.pool(features.reshape(batch * 2, 2, *features.shape[2:])).reshape(features.shape)
        return self.head(self.flat(pooled + features).mean(dim=(2, 3)))


def test_the_layer_search_takes_a_grid_of_the_clip_only() -> None:
    """Not the (B * heads, ...) pooling nor the 4D view, but the Conv3d before them;
    a 4D layer given for a clip is an error that names the fix."""
    torch.manual_seed(0)
    model = FoldedHeads().eval()
    clips = torch.rand(2, 3, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    with pytest.warns(UserWarning, match="using 'conv'"):
        cam = GradCAM(model)
        maps = cam(clips, [ClassifierOutputTarget(0)] * 2)
    assert cam.target_layers == [model.conv] and maps.shape == (2, 4, 6, 6)
    with pytest.raises(ValueError, match=r"shape \(2, 4, 4, 36\) for a \(B, C, T, H, W\) clip; choose a layer"):
        GradCAM(model, [model.flat])(clips, [ClassifierOutputTarget(0)] * 2)
