"""LeGrad side by side: this library's LeGrad against torchcam 0.5's (on a torchvision
ViT-B/16) and against ``legrad-torch`` (on an open_clip ViT-B-16 built from its config),
each installed in its own throwaway interpreter outside the repository, never a
dependency. Same weights, inputs and targets: this script saves them, runs itself in the
other interpreter (``--side``) to compute that library's maps through its documented API,
and prints the per-image Pearson correlation of the maps (theirs resized bilinearly to
ours, the input's size) for several block choices, the first block alone included (where
a difference in the score's formula shows most).

A control row per peer computes LeGrad with the score this library used before: every
token through the final norm and head, scored and summed (instead of the head of the
tokens' mean). It measures how far that formula sits from both peers, i.e. why the maps
used to differ.

    python benchmarks/compare_legrad.py --torchcam-with /path/to/torchcam-venv/bin/python \\
        --legrad-with /path/to/legrad-venv/bin/python

legrad-torch pins open_clip_torch <= 2.23, so its interpreter loads the state dict this
side's open_clip saved into the same architecture built by its own open_clip (the image
embeddings of both are compared first).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

REPOSITORY = Path(__file__).resolve().parents[1]
CLASSES = [3, 281]
# The last 4 (torchcam's documented example), every block, the first block alone.
TORCHCAM_BLOCKS = {"last 4 blocks": slice(-4, None), "all 12 blocks": slice(None), "first block alone": slice(0, 1)}
LEGRAD_INDICES = (-1, -2, -4, 0)  # legrad-torch's layer_index (its default is -2)


# ----------------------------------------------------------------- cases (both sides)
def torchvision_vit() -> torch.nn.Module:
    """torchvision's ViT-B/16 architecture, random weights (seed 0), the head too (zeros by default)."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None)
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    return model.eval()


def images(seed: int) -> torch.Tensor:
    """Two smooth random images (seeded): low-frequency noise, so maps have structure."""
    low = torch.randn(2, 3, 14, 14, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(low, size=(224, 224), mode="bilinear", align_corners=False)


# ----------------------------------------------------------------- their side
def torchcam_maps(directory: Path) -> None:
    from torchcam.methods import LeGrad

    model = torchvision_vit()
    model.load_state_dict(torch.load(directory / "torchvision.pt", weights_only=True))
    x = torch.load(directory / "images.pt", weights_only=True)
    result = {}
    for name, chosen in TORCHCAM_BLOCKS.items():
        maps = []
        for image, category in zip(x, CLASSES):
            with LeGrad(model, list(model.encoder.layers)[chosen]) as extractor:
                scores = model(image[None])
                maps.append(extractor(category, scores)[0].detach()[0])
        result[name] = torch.stack(maps)
    torch.save(result, directory / "torchcam_maps.pt")


def legrad_torch_maps(directory: Path) -> None:
    import open_clip
    from legrad import LeWrapper

    x = torch.load(directory / "images.pt", weights_only=True)
    text = torch.load(directory / "text.pt", weights_only=True)
    result = {}
    for index in LEGRAD_INDICES:
        model = open_clip.create_model("ViT-B-16", pretrained=None)
        model.load_state_dict(torch.load(directory / "open_clip.pt", weights_only=True))
        model.eval()
        if index == LEGRAD_INDICES[0]:
            with torch.no_grad():
                result["embedding"] = model.encode_image(x)
        wrapped = LeWrapper(model, layer_index=index)
        result[index] = torch.cat([wrapped.compute_legrad(text[i : i + 1], x[i : i + 1]).detach() for i in range(2)])
    torch.save(result, directory / "legrad_maps.pt")


# ----------------------------------------------------------------- our side
def per_token_legrad():
    """LeGrad with the previous score: s^l = Σ_i target(head(z^l_i)), every token through
    the head and scored, instead of target(head(mean_i z^l_i)). The control row."""
    from pytorch_grad_cam import LeGrad

    class PerTokenLeGrad(LeGrad):
        def backward(self, loss, record, recorder) -> None:
            attention = self.attention_record()
            for tokens, probabilities in zip(recorder.layer_outputs, attention.maps):
                per_token = self.head(tokens)  # (B, N, ...): each token scored by its image's target
                count = per_token.shape[1]
                targets = [target for target in record.targets for _ in range(count)]
                layer_score = self.score(targets, per_token.flatten(0, 1)).sum()
                (gradient,) = torch.autograd.grad(layer_score, probabilities, retain_graph=True)
                attention.gradients.append(gradient.detach())

    return PerTokenLeGrad


def correlation(ours: torch.Tensor, theirs: torch.Tensor) -> list:
    """Per image: Pearson's r of the two maps, theirs resized bilinearly to ours."""
    theirs = theirs.reshape(ours.shape[0], 1, *theirs.shape[-2:]).double()
    theirs = F.interpolate(theirs, size=ours.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    values = []
    for a, b in zip(ours.double().flatten(1), theirs.flatten(1)):
        a, b = a - a.mean(), b - b.mean()
        values.append(float((a @ b) / (a.norm() * b.norm())))
    return values


def compare_torchcam(python: str, directory: Path) -> None:
    from pytorch_grad_cam import LeGrad
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = torchvision_vit()
    torch.save(model.state_dict(), directory / "torchvision.pt")
    subprocess.run([python, __file__, "--side", "torchcam", "--directory", str(directory)], check=True)
    theirs = torch.load(directory / "torchcam_maps.pt", weights_only=True)
    x = torch.load(directory / "images.pt", weights_only=True)
    targets = [ClassifierOutputTarget(c) for c in CLASSES]
    print("\n| torchcam 0.5 LeGrad, torchvision ViT-B/16 | r image 1 | r image 2 |\n|---|---:|---:|")
    for method, label in ((LeGrad, ""), (per_token_legrad(), " (control: per-token score)")):
        for name, chosen in TORCHCAM_BLOCKS.items():
            ours = torch.from_numpy(method(model, list(model.encoder.layers)[chosen])(x, targets))
            r = correlation(ours, theirs[name])
            print(f"| {name}{label} | {r[0]:.6f} | {r[1]:.6f} |")


def compare_legrad_torch(python: str, directory: Path) -> None:
    import open_clip

    from pytorch_grad_cam import LeGrad

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    torch.save(model.state_dict(), directory / "open_clip.pt")
    text = F.normalize(torch.randn(2, model.visual.output_dim, generator=torch.Generator().manual_seed(1)), dim=-1)
    torch.save(text, directory / "text.pt")
    subprocess.run([python, __file__, "--side", "legrad", "--directory", str(directory)], check=True)
    theirs = torch.load(directory / "legrad_maps.pt", weights_only=True)
    x = torch.load(directory / "images.pt", weights_only=True)
    with torch.no_grad():
        ours_embedding = model.encode_image(x)
    print(
        f"\nimage embeddings, open_clip 3.3 vs 2.23: max |diff| {(ours_embedding - theirs['embedding']).abs().max():.2e}"
    )
    targets = [lambda emb, t=t: F.cosine_similarity(emb, t, dim=-1) for t in text]
    blocks = list(model.visual.transformer.resblocks)
    print("\n| legrad-torch, open_clip ViT-B-16 | our blocks | r image 1 | r image 2 |\n|---|---|---:|---:|")
    for index in LEGRAD_INDICES:
        chosen = blocks[index:] if index else blocks
        ours = torch.from_numpy(LeGrad(model.visual, chosen)(x, targets))
        r = correlation(ours, theirs[index])
        print(f"| layer_index={index} | last {len(chosen)} | {r[0]:.6f} | {r[1]:.6f} |")
    for index in (LEGRAD_INDICES[0], 0):
        chosen = blocks[index:] if index else blocks
        ours = torch.from_numpy(per_token_legrad()(model.visual, chosen)(x, targets))
        r = correlation(ours, theirs[index])
        print(f"| layer_index={index} (control: per-token score) | last {len(chosen)} | {r[0]:.6f} | {r[1]:.6f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torchcam-with", metavar="PYTHON", help="an interpreter with torchcam 0.5.0")
    parser.add_argument("--legrad-with", metavar="PYTHON", help="an interpreter with legrad-torch")
    parser.add_argument("--side", choices=["torchcam", "legrad"], help=argparse.SUPPRESS)
    parser.add_argument("--directory", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side == "torchcam":
        return torchcam_maps(args.directory)
    if args.side == "legrad":
        return legrad_torch_maps(args.directory)
    sys.path.insert(0, str(REPOSITORY))
    with tempfile.TemporaryDirectory(prefix="compare-legrad-") as name:
        directory = Path(name)
        torch.save(images(0), directory / "images.pt")
        if args.torchcam_with:
            compare_torchcam(args.torchcam_with, directory)
        if args.legrad_with:
            compare_legrad_torch(args.legrad_with, directory)
        if not (args.torchcam_with or args.legrad_with):
            parser.error("pass --torchcam-with PYTHON and/or --legrad-with PYTHON")


if __name__ == "__main__":
    main()
