"""The explorer in a real browser: the page (``pytorch_grad_cam.explorer.app``) served on
a free port of 127.0.0.1 in this process, opened in headless Chromium (Debian's, driven
by Playwright; see chromium.py for when the test skips or fails) with every request
outside 127.0.0.1 blocked and recorded. A user's path through it: pick a photo, run,
switch the method and then the layer and see the overlay and the snippet change,
download the maps and find the library's own call in them, upload a broken file and
read the message, choose a model with random weights and see the banner; choose a
detector, see its box list and its overlay, then CLIP and its prompts' maps; no request
leaves the machine and the console stays free of errors and warnings.

``EXPLORER_SCREENSHOT=docs/explorer.png`` also saves the page after the two-method run
(the docs' picture).
"""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import cv2
import numpy as np
import pytest
import torch
from chromium import chromium
from torch import nn

from pytorch_grad_cam import EigenCAM
from pytorch_grad_cam.cli.jobs import model_input, read_photo
from pytorch_grad_cam.cli.model_zoo import MODELS
from pytorch_grad_cam.explorer import models, register_model
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

ROOT = Path(__file__).resolve().parents[1]
#: gradio's queue calls pandas options that pandas 3 deprecates: its business, not the page's.
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")
TIMEOUT_MS = 120_000  # a wait on a busy shared machine (a run seen to take over 60 s once)
#: The one warning gradio's own client logs (after a file upload), from a stub of its event
#: stream: ``close: () => console.warn("Method not implemented.")``. Any other warning counts.
GRADIO_STREAM_STUB = "Method not implemented."  # a run on a busy 2-core machine


def _random_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )


@pytest.fixture(scope="module")
def explorer() -> Iterator[str]:
    """The explorer's URL, served in this process until the module's tests are done."""
    pytest.importorskip("gradio", reason='the explorer needs gradio: pip install "grad-cam[explore]"')
    from pytorch_grad_cam.explorer.app import THEME, build_app

    register_model("random-cnn", _random_cnn, input_size=(32, 32), random_weights=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo = build_app("efficientnet_lite0")
    demo.queue().launch(
        server_name="127.0.0.1", server_port=port, share=False, prevent_thread_lock=True,
        theme=THEME, footer_links=[], quiet=True,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        demo.close()
        models.REGISTERED.pop("random-cnn", None)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    yield from chromium("the explorer's browser tests")


class Page:
    """One tab on the explorer that records console errors and warnings, page errors,
    and blocks (and records) every request that would leave 127.0.0.1."""

    def __init__(self, browser: object, url: str) -> None:
        self.url = url
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)  # type: ignore[attr-defined]
        self.problems: List[str] = []
        self.outside: List[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.route("**/*", self._route)
        self.page.goto(url)
        self.page.set_default_timeout(TIMEOUT_MS)

    def _console(self, message: object) -> None:
        kind, text = message.type, message.text  # type: ignore[attr-defined]
        if kind == "error" or (kind == "warning" and text != GRADIO_STREAM_STUB):
            self.problems.append(f"console {kind}: {text}")

    def _route(self, route: object) -> None:
        if route.request.url.startswith(self.url):  # type: ignore[attr-defined]
            route.continue_()  # type: ignore[attr-defined]
        else:
            self.outside.append(route.request.url)  # type: ignore[attr-defined]
            route.abort()  # type: ignore[attr-defined]

    def text(self, elem_id: str) -> str:
        return self.page.locator(f"#{elem_id}").inner_text()

    def snippet(self) -> str:
        return self.page.locator("#snippet .cm-content").inner_text()

    def choose(self, elem_id: str, text: str) -> None:
        """Type ``text`` into dropdown ``elem_id`` (as a user searches it) and choose the first
        option that holds it."""
        box = self.page.locator(f"#{elem_id} input")
        box.click()
        box.press("Control+a")
        box.press_sequentially(text)
        self.page.locator(f"#{elem_id}").get_by_role("option").filter(has_text=text).first.click()

    def run_until(self, snippet_holds: str, previous_src: str) -> Tuple[str, np.ndarray]:
        """Click Run, wait for a snippet holding ``snippet_holds`` and a new first overlay:
        its URL and its pixels (RGB)."""
        self.page.locator("#run").click()
        self.page.wait_for_function(
            "([text, src]) => { const code = document.querySelector('#snippet .cm-content');"
            " const img = document.querySelector('#overlays img');"
            " return code && code.innerText.includes(text) && img && img.getAttribute('src') !== src; }",
            arg=[snippet_holds, previous_src],
        )
        src = self.page.locator("#overlays img").first.get_attribute("src")
        body = self.page.request.get(src if src.startswith("http") else self.url + src).body()
        return src, cv2.cvtColor(cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _category(page: Page) -> int:
    """The class chosen in the dropdown ('espresso (967): 71.2 %' -> 967)."""
    value = page.page.locator("#class input").input_value()
    return int(re.search(r"\((\d+)\)", value)[1])


def test_a_user_explores_a_photo(browser: object, explorer: str, tmp_path: Path) -> None:
    page = Page(browser, explorer)
    page.page.wait_for_function("document.querySelector('#layer input')?.value?.startsWith('_swish')")
    page.page.get_by_label("coffee.jpg").check()
    page.page.wait_for_function("document.querySelector('#class input')?.value?.includes('(967)')")  # espresso
    category = _category(page)
    src, gradcam = page.run_until("ClassifierOutputTarget(967)", "")
    assert "examples/coffee.jpg" in page.snippet() and "--method gradcam" in page.text("command")
    if os.environ.get("EXPLORER_SCREENSHOT"):
        page.page.screenshot(path=os.environ["EXPLORER_SCREENSHOT"], full_page=True)

    page.page.locator("#methods").get_by_label("gradcam", exact=True).uncheck()
    page.page.locator("#methods").get_by_label("eigencam", exact=True).check()
    src, eigencam = page.run_until("EigenCAM(model=model", src)
    assert gradcam.shape == eigencam.shape == read_photo(ROOT / "examples" / "coffee.jpg").shape
    assert np.abs(gradcam.astype(int) - eigencam).mean() > 5  # another method, another map

    page.choose("layer", "_blocks.15 (")
    src, layer15 = page.run_until("['_blocks.15']", src)
    assert np.abs(layer15.astype(int) - eigencam).mean() > 5
    assert "--method eigencam --target-layer _blocks.15 --category 967" in page.text("command")

    with page.page.expect_download() as download:
        page.page.locator("#downloads a[href*='maps.npz']").click()
    saved = tmp_path / "maps.npz"
    download.value.save_as(saved)
    lite0 = models.loaded_model("efficientnet_lite0")
    input_tensor = model_input(read_photo(ROOT / "examples" / "coffee.jpg"), MODELS["efficientnet_lite0"])
    with EigenCAM(model=lite0.model, target_layers=[dict(lite0.model.named_modules())["_blocks.15"]]) as cam:
        expected = cam(input_tensor, targets=[ClassifierOutputTarget(category)])[0]
    with np.load(saved) as maps:
        assert sorted(maps.files) == ["category", "eigencam", "layer"] and int(maps["category"]) == category
        np.testing.assert_allclose(maps["eigencam"], expected, atol=1e-6)

    broken = tmp_path / "holiday.jpg"
    broken.write_text("this is not a photo\n")
    page.page.locator("#upload input[type=file]").set_input_files(str(broken))
    page.page.wait_for_function("document.querySelector('#message')?.innerText?.includes('Upload refused')")
    assert "holiday.jpg: not an image that OpenCV can decode" in page.text("message")
    good = tmp_path / "my cat.png"  # a photo that reads: the message goes, its classes come
    cv2.imwrite(str(good), cv2.imread(str(ROOT / "examples" / "cat.jpg"))[:, :300])
    page.page.locator("#upload input[type=file]").set_input_files(str(good))
    page.page.wait_for_function("document.querySelector('#class input')?.value?.includes('(285)')")
    assert page.text("message").strip() == ""
    page.page.locator("#class-search input, #class-search textarea").first.fill("tabby")
    page.page.locator("#class-search input, #class-search textarea").first.press("Enter")
    page.page.wait_for_function("document.querySelector('#class input')?.value === 'tabby (281)'")
    src, uploaded = page.run_until("'my cat.png'", src)
    assert uploaded.shape == (300, 300, 3) and "ClassifierOutputTarget(281)" in page.snippet()

    assert page.text("weights-banner").strip() == ""
    page.choose("model", "random-cnn")
    page.page.wait_for_function("document.querySelector('#weights-banner')?.innerText?.includes('random weights')")
    page.page.wait_for_function("document.querySelector('#layer input')?.value?.startsWith('1 (ReLU')")

    assert page.outside == [] and page.problems == []
    page.page.close()


def test_a_long_method_shows_progress_and_cancel_stops_it(browser: object, explorer: str) -> None:
    """ScoreCAM (a forward pass per batch of channels) shows its tqdm progress on the page;
    Cancel stops it at its next forward pass, leaving the model without hooks."""
    page = Page(browser, explorer)
    page.page.wait_for_function("document.querySelector('#class input')?.value?.includes('(285)')")
    page.page.locator("#methods").get_by_label("gradcam", exact=True).uncheck()
    page.page.locator("#methods").get_by_label("scorecam", exact=True).check()
    page.page.locator("#run").click()
    page.page.wait_for_function(  # the tqdm bar on the overlays, past its first batch
        "/^ScoreCAM: [1-9]\\d* \\/ \\d+ copy$/.test("
        "document.querySelector('#overlays [role=progressbar]')?.getAttribute('aria-valuetext'))"
    )
    page.page.locator("#cancel").click()
    page.page.wait_for_function("document.querySelector('#message')?.innerText?.includes('Cancelled.')")
    model = models.loaded_model("efficientnet_lite0").model
    deadline = time.monotonic() + 120
    while any(module._forward_hooks or module._forward_pre_hooks for module in model.modules()):
        assert time.monotonic() < deadline, "the cancelled run still holds hooks on the model after 120 s"
        time.sleep(0.2)
    assert page.page.locator("#overlays img").count() == 0  # nothing was shown
    assert page.outside == [] and page.problems == []
    page.page.close()


def test_a_user_explains_a_detector_box_and_clip_prompts(browser: object, explorer: str) -> None:
    """Choosing a detector turns the class into a box list (its random-weights banner up);
    Run draws the box with its map and gives the detector's snippet and command. Choosing
    CLIP turns it into a prompts box; Run shows a map per prompt and which prompt wins where."""
    page = Page(browser, explorer)
    page.page.wait_for_function("document.querySelector('#layer input')?.value?.startsWith('_swish')")
    page.choose("model", "detector: ssdlite")
    page.page.wait_for_function("document.querySelector('#weights-banner')?.innerText?.includes('random weights')")
    page.page.wait_for_function("/^0: \\S.* 0\\.011$/.test(document.querySelector('#box input')?.value)")
    page.page.locator("#confidence").wait_for(state="visible")
    page.page.locator("#class").wait_for(state="hidden")
    src, boxes = page.run_until("detections[0].cam", "")
    assert boxes.shape == read_photo(ROOT / "examples" / "cat.jpg").shape
    assert "python cam.py --detector ssdlite --image-path examples/cat.jpg --method gradcam" in page.text("command")

    page.choose("model", "clip: ViT-B-32")
    page.page.wait_for_function("document.querySelector('#weights-banner')?.innerText?.includes('ViT-B-32 has random')")
    page.page.locator("#prompts").wait_for(state="visible")
    page.page.locator("#box").wait_for(state="hidden")
    page.page.locator("#layer").wait_for(state="hidden")
    page.page.locator("#prompts textarea, #prompts input").first.fill("a cat, a dog")
    src, first = page.run_until("prompts = ['a cat', 'a dog']", src)
    assert first.shape == (224, 224, 3) and page.page.locator("#overlays img").count() == 3  # 2 prompts, winners
    assert "--clip ViT-B-32 --prompts 'a cat,a dog'" in page.text("command")
    assert page.text("metric-values").count("cosine") == 2
    assert page.outside == [] and page.problems == []
    page.page.close()

    # The page's handler when the confidence leaves no box (random weights: every score 1/91).
    from pytorch_grad_cam.explorer.app import on_confidence

    boxes, message = on_confidence("detector: ssdlite", str(ROOT / "examples" / "cat.jpg"), 0.5)
    assert boxes["choices"] == [] and boxes["value"] is None
    assert message.startswith("**No box:** no box at confidence >= 0.5 on this photo; lower the confidence")
