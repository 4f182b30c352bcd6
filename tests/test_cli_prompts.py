"""cam.py --clip NAME --prompts "...": one map per prompt for an open_clip model built from
its config (random weights, said), the picture and the maps written, the maps equal to
explain_prompts on the same model and photo, and every misuse a one-line error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pytorch_grad_cam.cli import main
from pytorch_grad_cam.cli.detect import BUNDLED_PHOTO
from pytorch_grad_cam.cli.jobs import read_photo
from pytorch_grad_cam.cli.prompts import square
from pytorch_grad_cam.vision_language import explain_prompts

open_clip = pytest.importorskip("open_clip", reason="open_clip_torch is an optional test extra (make test installs it)")


def test_prompts_write_the_picture_and_the_maps_of_explain_prompts(tmp_path, capsys):
    code = main(["--clip", "ViT-B-32", "--prompts", "a cat, a dog", "--output-dir", str(tmp_path), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "random weights explain nothing" in err
    lines = [line for line in out.splitlines() if "cosine" in line]
    assert [line.split(":")[0] for line in lines] == ["'a cat'", "'a dog'"]
    assert (tmp_path / "gradcam_prompts.jpg").stat().st_size > 10_000
    saved = np.load(tmp_path / "gradcam_prompts.npz")
    assert saved["prompts"].tolist() == ["a cat", "a dog"] and saved["maps"].shape == (2, 224, 224)

    torch.manual_seed(0)  # the command line's model: open_clip's config, seed 0
    model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    config = model.visual.preprocess_cfg
    rgb = square(read_photo(BUNDLED_PHOTO), 224)
    image = torch.from_numpy((rgb - np.float32(config["mean"])) / np.float32(config["std"])).permute(2, 0, 1)[None]
    expected = explain_prompts(model, image, ["a cat", "a dog"], tokenizer=open_clip.get_tokenizer("ViT-B-32"))
    np.testing.assert_allclose(saved["maps"], expected.maps[0], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(saved["winners"], expected.winners[0])
    for line, cosine in zip(lines, expected.scores[0]):
        assert f"cosine {cosine:.4f}" in line


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--prompts", "a cat"], "--prompts needs --clip NAME"),
        (["--clip", "ViT-B-32"], "--clip needs --prompts"),
        (["--clip", "ViT-B-32", "--prompts", "a cat", "--category", "3"], "--category does not apply with --clip"),
        (["--clip", "ViT-B-32", "--prompts", "a cat", "--eigen-smooth"], "--eigen-smooth does not apply with --clip"),
        (["--clip", "ViT-B-32", "--prompts", " , "], "no prompt"),
        (["--clip", "NoSuchModel", "--prompts", "a cat"], "--clip NoSuchModel: not an open_clip model"),
        (["--clip", "ViT-B-32", "--prompts", "a cat", "--detector", "retinanet"], "two tasks"),
        (["--clip", "ViT-B-32", "--prompts", "a cat", "--method", "eigencam"], "does not depend on the target"),
    ],
)
def test_misuse_is_a_one_line_error(arguments, message, tmp_path, capsys):
    code = main([*arguments, "--output-dir", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0 and message in err, err
    assert not list(tmp_path.iterdir())


def test_vision_language_page_commands_parse():
    """Every ``cam.py --clip`` command of docs/vision-language.md names an open_clip model and parses."""
    import re
    import shlex
    from pathlib import Path

    from pytorch_grad_cam.cli.arguments import build_parser
    from pytorch_grad_cam.cli.model_zoo import MODELS

    page = (Path(__file__).resolve().parents[1] / "docs" / "vision-language.md").read_text(encoding="utf-8")
    shell = "".join(re.findall(r"^```bash\n(.*?)^```", page, flags=re.S | re.M))
    commands = re.findall(r"^python cam\.py (--clip .+?)(?:\s+#.*)?$", shell, flags=re.M)
    assert len(commands) >= 2, commands
    parser = build_parser(MODELS, "resnet50")
    for command in commands:
        args = parser.parse_args(shlex.split(command))
        assert args.clip in open_clip.list_models() and args.prompts, command
