"""Take docs/explorer.png, the picture of docs/explorer.md: the explorer served on a free
port of 127.0.0.1, opened in headless Chromium (Debian's ``chromium``, driven by
Playwright), the bundled cat explained by Grad-CAM and EigenCAM side by side with two
metrics, the page photographed and reduced to a 256-colour PNG (to keep it small).

    python docs/make_explorer_screenshot.py            # writes docs/explorer.png
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def photograph(url: str, output: Path, executable: str) -> None:
    """Run the two-method view on the page at ``url`` and save the page as ``output``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(120_000)
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url) else route.abort())
        page.goto(url)
        page.wait_for_function("document.querySelector('#class input')?.value?.includes('(285)')")
        page.locator("#methods").get_by_label("eigencam", exact=True).check()
        for metric in ("drop-in-confidence", "increase-in-confidence"):
            page.locator("#metrics").get_by_label(metric, exact=True).check()
        page.locator("#run").click()
        page.wait_for_function("document.querySelector('#snippet .cm-content')?.innerText?.includes('EigenCAM(')")
        page.wait_for_function("document.querySelector('#metric-values')?.innerText?.includes('eigencam')")
        page.wait_for_timeout(500)  # let the gallery's images finish drawing
        page.screenshot(path=str(output), full_page=True)
        browser.close()


def shrink(path: Path) -> int:
    """Rewrite the PNG at ``path`` with a 256-colour palette; its size in bytes."""
    from PIL import Image

    with Image.open(path) as image:
        reduced = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    reduced.save(path, optimize=True)
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "explorer.png")
    args = parser.parse_args()
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        sys.exit("make_explorer_screenshot.py: no chromium on the PATH (apt-get install chromium)")
    from pytorch_grad_cam.explorer.app import THEME, build_app

    port = free_port()
    demo = build_app("efficientnet_lite0")
    demo.queue().launch(
        server_name="127.0.0.1", server_port=port, share=False, prevent_thread_lock=True,
        theme=THEME, footer_links=[], quiet=True,
    )  # fmt: skip
    try:
        photograph(f"http://127.0.0.1:{port}", args.output, executable)
    finally:
        demo.close()
    print(f"wrote {args.output} ({shrink(args.output) / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
