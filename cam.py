"""Explain what an ImageNet classifier sees in a photo: a CAM overlay, guided
backpropagation, and both combined (``python cam.py --help``).

    python cam.py --image-path <path> --method <method> [--use-cuda] [--aug-smooth] [--eigen-smooth]
    python cam.py --image-path examples/cat.jpg --model efficientnet_lite0   # offline, pretrained

The same program as the ``pytorch-grad-cam`` command that ``pip install`` puts on the
PATH; it lives in pytorch_grad_cam/cli/.
"""

import sys

from pytorch_grad_cam.cli import main

if __name__ == "__main__":
    sys.exit(main(default_model="resnet50"))
