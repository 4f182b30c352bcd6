"""Explain what an ImageNet classifier sees in a photo: a CAM overlay, guided
backpropagation, and both combined.

    python cam.py --image-path <path> --method <method> [--use-cuda] [--aug-smooth] [--eigen-smooth]
    python cam.py --image-path examples/cat.jpg --model efficientnet_lite0   # offline, pretrained

Writes <method>_cam.jpg, <method>_gb.jpg and <method>_cam_gb.jpg (the photo's size)
into --output-dir and prints the model's top-5 classes. Methods: every name in
pytorch_grad_cam.METHODS. Models: pytorch_grad_cam.utils.model_zoo.MODELS.
"""
import sys

from pytorch_grad_cam.utils.cli import main

if __name__ == "__main__":
    sys.exit(main(default_model="resnet50", description=__doc__))
