"""cam.py --video-model: a clip explained window by window with a torchvision video model
(random weights, said), the animation and the maps written, the maps equal to
explain_video on the same model and clip, a video file read, and every misuse a
one-line error."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torchvision
from cam_reference import single_thread_module  # noqa: F401 - one thread for the module

from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.cli import main
from pytorch_grad_cam.cli.video import MEAN, STD
from pytorch_grad_cam.utils.video import moving_object_clip, read_video, write_animation
from pytorch_grad_cam.video import explain_video

SMALL = ["--frame-size", "32", "--window", "8", "--no-progress"]


def test_the_generated_clip_gives_the_maps_of_explain_video(tmp_path, capsys):
    code = main(["--video-model", "r3d_18", "--output-dir", str(tmp_path), *SMALL])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "random weights explain nothing" in err
    assert "frames 0-7:" in out and "frames 8-15:" in out and "gradcam at layer layer3" in out
    saved = np.load(tmp_path / "gradcam_video.npz")
    assert saved["maps"].shape == (16, 32, 32) and saved["window_starts"].tolist() == [0, 8]
    frames, fps = read_video(tmp_path / "gradcam_video.gif")
    # GIF keeps durations in hundredths of a second: 125 ms is stored as 120 ms.
    assert frames.shape == (16, 32, 32, 3) and fps == pytest.approx(1000 / 120)

    torch.manual_seed(0)  # the command line's model: torchvision's r3d_18, seed 0
    model = torchvision.models.video.r3d_18(weights=None).eval()
    clip = torch.from_numpy((moving_object_clip(16, 32) - MEAN) / STD).permute(3, 0, 1, 2)[None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a random model's map may be flat in a window
        expected = explain_video(GradCAM(model, [model.layer3]), clip.contiguous(), clip_length=8)[0]
    np.testing.assert_allclose(saved["maps"], expected, atol=1e-6, rtol=0)
    assert saved["classes"].tolist() == [int(model(clip[:, :, s : s + 8]).argmax()) for s in (0, 8)]


def test_a_video_file_with_another_format_and_category(tmp_path, capsys):
    write_animation(tmp_path / "in.mp4", moving_object_clip(10, 40), fps=12)
    arguments = ["--video-path", str(tmp_path / "in.mp4"), "--video-format", "mp4", "--method", "hirescam"]
    code = main([*arguments, "--category", "abseiling", "--max-frames", "9", "--output-dir", str(tmp_path), *SMALL])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "r3d_18 on" in out and "(9 frames, windows of 8)" in out and "hirescam at layer layer3 for 0" in out
    frames, fps = read_video(tmp_path / "hirescam_video.mp4")
    assert frames.shape == (9, 40, 40, 3) and fps == pytest.approx(12)
    saved = np.load(tmp_path / "hirescam_video.npz")
    assert saved["maps"].shape == (9, 32, 32) and saved["window_starts"].tolist() == [0, 1]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            ["--video-model", "r3d_18", "--image-dir", "x"],
            "--image-dir (it takes images; give a folder of videos as --video-path)",
        ),
        (["--video-model", "r3d_18", "--aug-smooth"], "--aug-smooth does not apply with --video-model"),
        (["--video-model", "r3d_18", "--model", "resnet18"], "--model does not apply with --video-model"),
        (["--video-model", "r3d_18", "--detector", "retinanet"], "--detector (another task)"),
        (["--video-model", "r3d_18", "--window", "0"], "--window must be at least 1"),
        (["--video-model", "r3d_18", "--method", "gradcam,hirescam"], "one method per video"),
        (["--video-model", "r3d_18", "--category", "cat"], "Kinetics-400 class index 0-399 or name"),
        (["--video-model", "nosuch"], "invalid choice: 'nosuch'"),
        (["--video-path", "missing.mp4"], "--video-path: missing.mp4: no such video file"),
        (["--video-model", "r3d_18", "--weights", "missing.pth"], "--weights missing.pth: no such file"),
        (["--video-model", "r3d_18", "--target-layer", "layer9"], "'layer9' is not a layer of r3d_18"),
    ],
)
def test_misuse_is_a_one_line_error(arguments, message, tmp_path, capsys):
    code = main([*arguments, "--output-dir", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0 and message in err and len(err.strip().splitlines()) <= 2, err
    assert not (tmp_path / "out").exists()


def test_weights_of_another_model_are_refused(tmp_path, capsys):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pth")
    code = main(["--video-model", "mc3_18", "--weights", str(tmp_path / "other.pth"), *SMALL])
    err = capsys.readouterr().err
    assert code == 1 and "not a mc3_18 state dict" in err, err


def test_a_folder_of_videos_mirrors_its_tree_and_resumes(tmp_path, capsys):
    """Two videos (one in a sub-folder) and an unreadable one: two animations and npz
    files, the bad one reported; a second run skips both."""
    source = tmp_path / "videos"
    (source / "sub").mkdir(parents=True)
    write_animation(source / "a.mp4", moving_object_clip(8, 32), fps=8)
    write_animation(source / "sub" / "b.gif", moving_object_clip(6, 24), fps=5)
    (source / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "out"
    arguments = ["--video-path", str(source), "--output-dir", str(out), "--method", "eigencam", *SMALL]
    assert main(arguments) == 0
    printed, err = capsys.readouterr()
    assert "3 videos under" in printed and "0 already done, 3 to explain" in printed
    assert "skipped" in err and "broken.mp4" in err
    assert np.load(out / "a.eigencam.npz")["maps"].shape == (8, 32, 32)
    assert read_video(out / "sub" / "b.eigencam.gif")[0].shape == (6, 24, 24, 3)
    assert not (out / "broken.eigencam.npz").exists()
    assert main(arguments) == 0
    assert "2 already done, 1 to explain" in capsys.readouterr().out


def test_a_folder_without_readable_videos_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["--video-path", str(tmp_path / "empty"), *SMALL]) == 2
    assert "no video file (.mp4, .avi" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.avi").write_bytes(b"not a video")
    assert main(["--video-path", str(tmp_path / "bad"), "--output-dir", str(tmp_path / "out"), *SMALL]) == 1
    assert "no video could be read" in capsys.readouterr().err
