"""The compatibility decisions of docs/decisions.md (D1-D12), where we fix grad-cam's
flaws instead of copying them, are each guarded by a test that fails if the flaw comes
back. Most are tested where their feature lives; docs/decisions.md names those tests and
tests/test_repository_hygiene.py checks that every named test exists. D2 and D10 have no
better home and are tested here.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from pytorch_grad_cam import METHODS
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("error", [IndexError("inside with"), ValueError("inside with")])
def test_with_never_swallows_an_exception(error: Exception) -> None:
    """docs/decisions.md, D2: grad-cam's ``__exit__`` swallows IndexError; ours lets every exception
    out, and a wrong class index (an IndexError from the call) reaches the caller too."""
    torch.manual_seed(0)
    net = _Net().eval()
    with pytest.raises(type(error), match="inside with"):
        with METHODS["gradcam"](net, [net.conv]) as cam:
            cam(torch.rand(1, 3, 8, 8), targets=[ClassifierOutputTarget(1)])
            raise error
    with pytest.raises(IndexError):
        with METHODS["gradcam"](net, [net.conv]) as cam:
            cam(torch.rand(1, 3, 8, 8), targets=[ClassifierOutputTarget(7)])


_BLOCKED_IMPORTS = textwrap.dedent(
    """
    import importlib, pkgutil, sys
    sys.path.insert(0, sys.argv[1])
    for name in ("sklearn", "scipy", "matplotlib"):
        sys.modules[name] = None  # any import of them now raises ImportError
    import numpy as np, torch
    import pytorch_grad_cam
    # The library, not the applications: the command line (its demo extras, scikit-image's
    # photos, use scipy) and the browser explorer (gradio).
    app = ("pytorch_grad_cam.cli", "pytorch_grad_cam.explorer")
    for module in pkgutil.walk_packages(pytorch_grad_cam.__path__, "pytorch_grad_cam."):
        if not module.name.startswith(app):
            importlib.import_module(module.name)
    # The features that grad-cam builds on those libraries run without them.
    from pytorch_grad_cam import KPCA_CAM
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    x = torch.rand(2, 3, 16, 16)
    maps = KPCA_CAM(net, [net[1]])(x)
    targets = [ClassifierOutputTarget(0)] * 2
    scores = ROADCombined(percentiles=[20, 80])(x, maps, targets, net)
    assert np.isfinite(scores).all() and maps.shape == (2, 16, 16)
    try:
        from pytorch_grad_cam import DeepFeatureFactorization
    except ImportError:
        DeepFeatureFactorization = None
    if DeepFeatureFactorization is not None:
        concepts, explanations = DeepFeatureFactorization(net, net[1])(x, n_components=2)
        assert len(explanations) == 2
    print("ok")
    """
)


def test_no_scikit_learn_scipy_or_matplotlib_at_run_time() -> None:
    """docs/decisions.md, D10: with scikit-learn, scipy and matplotlib made unimportable, every module
    of the library imports, and KPCA-CAM, ROAD (and DFF, where present) run."""
    result = subprocess.run(
        [sys.executable, "-c", _BLOCKED_IMPORTS, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
