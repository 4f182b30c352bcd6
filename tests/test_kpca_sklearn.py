"""KPCA-CAM's kernel principal component against scikit-learn's ``KernelPCA``
(docs/decisions.md, D10: scikit-learn is a test-only oracle).

For every kernel, on real activations (pretrained EfficientNet-Lite0 on two photos, at a
14×14 and a 7×7 layer): ``get_2d_projection_kernel`` equals
``KernelPCA(n_components=1, kernel=..., gamma=...).fit_transform`` of each image's centred
pixel vectors, up to sign. Measured: at most 6e-8 of the map's largest magnitude (float32
rounding of our result); the tolerance is 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest
import sklearn.decomposition as sklearn_decomposition
import torch
from cam_reference import single_thread_module  # noqa: F401 - autouse fixture
from conftest import efficientnet_input

from pytorch_grad_cam.utils.svd_on_activations import KERNELS, get_2d_projection_kernel


@pytest.fixture(scope="module")
def real_activations(efficientnet_lite0):
    """{layer: (2, K, h, w) float32}: the cat and the espresso at block 10 (14×14×112)
    and at ``_swish``, the head's ReLU6 (7×7×1280)."""
    from skimage import data

    model = efficientnet_lite0
    images = torch.cat([efficientnet_input(data.chelsea())[0], efficientnet_input(data.coffee())[0]])
    recorded = {}
    layers = {"block10": model._blocks[10], "swish": model._swish}
    handles = [
        layer.register_forward_hook(lambda module, inputs, output, name=name: recorded.__setitem__(name, output))
        for name, layer in layers.items()
    ]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return {name: output.numpy() for name, output in recorded.items()}


def sklearn_projection(activations: np.ndarray, kernel: str, gamma) -> np.ndarray:
    """Per image: the (positions, K) pixel vectors, each channel centred, through KernelPCA."""
    maps = []
    for image in activations:
        pixels = image.reshape(image.shape[0], -1).T.astype(np.float64)
        pixels = pixels - pixels.mean(axis=0)
        kpca = sklearn_decomposition.KernelPCA(n_components=1, kernel=kernel, gamma=gamma)
        maps.append(kpca.fit_transform(pixels)[:, 0].reshape(image.shape[1:]))
    return np.stack(maps)


CASES = [(layer, kernel, None) for layer in ("block10", "swish") for kernel in KERNELS] + [
    ("block10", kernel, 0.5 / 112) for kernel in KERNELS
]


@pytest.mark.parametrize("layer,kernel,gamma", CASES)
def test_kernel_projection_equals_sklearn_kernel_pca_up_to_sign(real_activations, layer, kernel, gamma):
    activations = real_activations[layer]
    ours = get_2d_projection_kernel(activations, kernel, gamma)
    expected = sklearn_projection(activations, kernel, gamma)
    assert ours.shape == expected.shape == (activations.shape[0], *activations.shape[2:])
    for got, reference in zip(ours, expected):
        scale = np.abs(reference).max()
        assert scale > 1e-3  # a real component, not a vacuous comparison
        error = min(np.abs(got - reference).max(), np.abs(got + reference).max()) / scale
        assert error < 1e-5, (layer, kernel, gamma, error)
