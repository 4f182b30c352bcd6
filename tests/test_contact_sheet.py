"""The contact sheet (``index.html``) of a folder run.

The pure-Python tests check what the file holds: the atomic write, the JSON block's
escaping, the page arithmetic, the grouping of rows into cards, the errors. The
browser tests open the page from ``file://`` in a real headless Chromium (Debian's
``chromium`` package, driven by Playwright with that executable) over a synthetic
output folder of small JPEGs, and check what a user sees: no console or page errors,
every picture loads, the cards on each page are exactly the expected images (by the
next button and by ``#page=N``), the counts, and that hostile file names and error
texts stay text. Without a ``chromium`` on the PATH the browser tests are skipped with
that reason, unless ``REQUIRE_BROWSER=1`` (set by ``.ci/run``), which makes them fail.
"""

from __future__ import annotations

import csv
import json
import math
import re
import time
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import cv2
import numpy as np
import pytest
from chromium import chromium

from pytorch_grad_cam.cli import contact_sheet
from pytorch_grad_cam.cli.contact_sheet import RESULT_COLUMNS, page_count, write_contact_sheet

METHODS = ("gradcam", "scorecam")
# A name with a space, '#', '%', '&', quotes, '<', '>' and unicode, in a folder with a space.
HOSTILE = "sub dir/<b>café & \"tea\" '#1' 100%.jpg"
# An error message that would end the JSON block or open markup if it were not escaped.
INJECTION = "error: RuntimeError: boom </script><!-- <img src=x onerror=alert(1)> & done"
READABLE = [
    "a.jpg",
    "b.png",
    "c.JPEG",
    "d.bmp",
    "e.webp",
    "nested/f.jpg",
    "nested/deeper/g.png",
    "h.jpg",
    "i.jpg",
    "ünïcode/ж.jpg",
    HOSTILE,
    "k.jpg",
    "l.png",
]
UNREADABLE = {"broken.jpg": "unreadable: not an image", "z truncated #2.png": "unreadable: truncated file"}
ERROR_ROW = ("h.jpg", "scorecam")  # this method failed on this image
PAGE_SIZE = 4


def _record(path: str, method: str, status: str, **columns: str) -> Dict[str, str]:
    record = dict.fromkeys(RESULT_COLUMNS, "")
    record.update(path=path, method=method, status=status, **columns)
    return record


def _write_jpeg(path: Path, colour: Tuple[int, int, int], size: Tuple[int, int] = (24, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = np.zeros((size[1], size[0], 3), np.uint8)
    picture[:] = colour
    ok, encoded = cv2.imencode(".jpg", picture)
    assert ok
    path.write_bytes(encoded.tobytes())  # cv2.imwrite cannot take every unicode name


def _build_output(output_dir: Path) -> List[Dict[str, str]]:
    """A folder run's outputs and its results.csv rows: 13 readable images x 2 methods
    (one method failed on one image) and 2 unreadable images, sorted by path."""
    records = []
    for index, path in enumerate(READABLE):
        thumbnail = f"{path}.thumb.jpg"
        _write_jpeg(output_dir / thumbnail, (index * 17 % 256, 80, 200))
        for method in METHODS:
            if (path, method) == ERROR_ROW:
                records.append(_record(path, method, INJECTION, thumbnail=thumbnail))
                continue
            overlay, raw_map = f"{path}.{method}.jpg", f"{path}.{method}.npz"
            _write_jpeg(output_dir / overlay, (200, index * 17 % 256, 40), (32, 24))
            np.savez_compressed(output_dir / raw_map, cam=np.zeros((4, 4), np.float16))
            records.append(
                _record(
                    path,
                    method,
                    "ok",
                    predicted_class=str(281 + index),
                    predicted_label="tabby, tabby cat",
                    predicted_score=f"0.{index:02d}",
                    explained_class=str(281 + index),
                    explained_label="tabby, tabby cat",
                    thumbnail=thumbnail,
                    overlay=overlay,
                    map=raw_map,
                    road=f"0.{index + 10}",
                    deletion=f"0.{index + 20}",
                )
            )
    for path, status in UNREADABLE.items():
        methods = METHODS if path == "broken.jpg" else ("gradcam",)
        records.extend(_record(path, method, status, road="", deletion="") for method in methods)
    records.sort(key=lambda record: (record["path"], record["method"]))
    return records


def _expected_cards(records: List[Dict[str, str]]) -> List[str]:
    return list(dict.fromkeys(record["path"] for record in records))


def _pictures(records: List[Dict[str, str]], paths: List[str]) -> int:
    """The <img> count of the cards of ``paths``: a thumbnail per readable image and an
    overlay per successful row."""
    thumbnails = sum(1 for path in paths if path not in UNREADABLE)
    return thumbnails + sum(1 for r in records if r["path"] in paths and r["status"] == "ok")


# ---------------------------------------------------------------- pure Python


@pytest.mark.parametrize(
    "n_cards, page_size, pages",
    [(0, 48, 1), (1, 48, 1), (48, 48, 1), (49, 48, 2), (15, 4, 4), (16, 4, 4), (17, 4, 5), (5, 1, 5)],
)
def test_page_count_by_hand(n_cards: int, page_size: int, pages: int) -> None:
    assert page_count(n_cards, page_size) == pages


def test_page_count_is_ceil_everywhere() -> None:
    for page_size in (1, 2, 3, 7, 48):
        for n_cards in range(1, 200):
            assert page_count(n_cards, page_size) == math.ceil(n_cards / page_size)


@pytest.mark.parametrize("bad", [0, -3])
def test_page_size_below_one_is_refused(tmp_path: Path, bad: int) -> None:
    with pytest.raises(
        ValueError, match=rf"page_size must be at least 1 .*got {bad}; pass a positive int such as page_size=48"
    ):
        write_contact_sheet(tmp_path, [], page_size=bad)
    with pytest.raises(ValueError, match=rf"got {bad}"):
        page_count(10, bad)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("bad", [2.5, "48", True, None])
def test_page_size_of_the_wrong_type_is_refused(tmp_path: Path, bad: object) -> None:
    with pytest.raises(
        TypeError, match=re.escape(f"got {bad!r} ({type(bad).__name__}); pass an int such as page_size=48")
    ):
        write_contact_sheet(tmp_path, [], page_size=bad)  # type: ignore[arg-type]


def test_records_without_path_or_status_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"records\[1\] has no 'path' or 'status' column"):
        write_contact_sheet(tmp_path, [_record("a.jpg", "gradcam", "ok"), {"method": "gradcam"}])
    with pytest.raises(TypeError, match=r"records\[0\] must be a mapping .* got list"):
        write_contact_sheet(tmp_path, [["a.jpg"]])  # type: ignore[list-item]


def _data_block(document: str) -> dict:
    match = re.search(r'<script type="application/json" id="sheet-data">(.*?)</script>', document, re.S)
    assert match is not None
    return json.loads(match.group(1))


def test_write_is_atomic_and_deterministic(tmp_path: Path) -> None:
    records = [_record("a.jpg", "gradcam", "ok", thumbnail="a.thumb.jpg", overlay="a.gradcam.jpg")]
    (tmp_path / "index.html").write_text("old", encoding="utf-8")
    path = write_contact_sheet(tmp_path, records)
    assert path == tmp_path / "index.html"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html"]  # no temporary left
    assert (path.stat().st_mode & 0o777) == 0o644
    first = path.read_bytes()
    write_contact_sheet(tmp_path, records)
    assert path.read_bytes() == first  # the same records give the same bytes


def test_a_failed_write_leaves_the_old_page_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "index.html").write_text("old", encoding="utf-8")

    def refuse(source: str, target: object) -> None:
        assert Path(source).read_bytes().startswith(b"<!DOCTYPE html>")  # written in full first
        raise OSError("disk full")

    monkeypatch.setattr(contact_sheet.os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_contact_sheet(tmp_path, [_record("a.jpg", "gradcam", "ok")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html"]
    assert (tmp_path / "index.html").read_text(encoding="utf-8") == "old"


def test_json_block_cannot_end_the_script_and_round_trips(tmp_path: Path) -> None:
    nasty = "x </script><!-- <SCRIPT>alert(1)</Script> & \u2028 \u2029 café ж \udcff"
    records = [
        _record(f"dir/{nasty}.jpg", "grad</script>cam", "error: " + nasty, road=nasty),
        _record("b.jpg", "gradcam", "ok"),
    ]
    document = write_contact_sheet(tmp_path, records, title="t").read_text(encoding="utf-8")
    assert document.isascii()
    block = document.split('id="sheet-data">', 1)[1].split("</script>", 1)[0]
    assert not re.search(r"[<>&]", block)
    assert len(re.findall(r"</script", document, re.I)) == 2  # the two real closing tags
    assert "<!--" not in document
    data = _data_block(document)
    card = data["cards"][0]
    assert card[0] == f"dir/{nasty}.jpg"
    assert card[3][0][0] == "grad</script>cam" and card[3][0][1] == "error: " + nasty
    assert data["metrics"] == ["road"] and card[3][0][-1] == [nasty]
    assert [c[2] for c in data["cards"]] == ["error", "ok"]


def test_title_is_escaped_once_and_not_substituted(tmp_path: Path) -> None:
    document = write_contact_sheet(tmp_path, [], title='<i>"run"</i> & @DATA@').read_text(encoding="utf-8")
    assert document.count("<title>&lt;i&gt;&quot;run&quot;&lt;/i&gt; &amp; @DATA@</title>") == 1
    assert "<i>" not in document
    assert _data_block(document) == {"page_size": 48, "metrics": [], "cards": []}


def test_cards_group_rows_and_encode_urls(tmp_path: Path) -> None:
    records = [
        _record(
            "q/a b#1%.jpg",
            "gradcam",
            "ok",
            thumbnail="q/a b#1%.jpg.thumb.jpg",
            overlay="q/a b#1%.jpg.gradcam.jpg",
            map="q/m?.npz",
            road="0.5",
        ),
        _record("z.jpg", "gradcam", "unreadable: not an image"),
        _record("q/a b#1%.jpg", "eigencam", "error: boom", thumbnail="q/a b#1%.jpg.thumb.jpg", deletion="0.25"),
        _record("ж.jpg", "gradcam", "ok", overlay="ж.jpg.gradcam.jpg"),
        _record("\udcff.jpg", "gradcam", "ok", overlay="\udcff.jpg.gradcam.jpg"),
    ]
    data = _data_block(write_contact_sheet(tmp_path, records, page_size=2).read_text(encoding="utf-8"))
    assert data["page_size"] == 2 and data["metrics"] == ["road", "deletion"]
    assert [card[0] for card in data["cards"]] == ["q/a b#1%.jpg", "z.jpg", "ж.jpg", "\udcff.jpg"]
    first = data["cards"][0]
    assert first[1] == "q/a%20b%231%25.jpg.thumb.jpg" and first[2] == "error"
    assert [row[0] for row in first[3]] == ["gradcam", "eigencam"]
    assert first[3][0][7:] == ["q/a%20b%231%25.jpg.gradcam.jpg", "q/m%3F.npz", ["0.5", ""]]
    assert first[3][1][7:] == ["", "", ["", "0.25"]]
    assert data["cards"][1][1:3] == ["", "unreadable"]
    assert data["cards"][2][3][0][7] == "%D0%B6.jpg.gradcam.jpg"
    assert data["cards"][3][3][0][7] == "%FF.jpg.gradcam.jpg"  # the name's own byte on disk


def test_the_datasets_page_rebuild_snippet_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rebuild snippet of docs/datasets.md's "Contact sheet" section, alone, on a
    results.csv written here: the page it writes has the snippet's page size."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "datasets.md").read_text(encoding="utf-8")
    section = page.split("## Contact sheet (`index.html`)", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```python\n(.*?)^```", section, flags=re.S | re.M)
    code = next(block for block in blocks if "write_contact_sheet(" in block)
    (tmp_path / "out").mkdir()
    records = [_record("a b.jpg", "gradcam", "ok", overlay="a b.jpg.gradcam.jpg", road="0.5")]
    with open(tmp_path / "out" / "results.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "<docs/datasets.md contact sheet snippet>", "exec"), {})
    data = _data_block((tmp_path / "out" / "index.html").read_text(encoding="utf-8"))
    assert data["page_size"] == 96 and data["metrics"] == ["road"]
    assert data["cards"][0][3][0][7] == "a%20b.jpg.gradcam.jpg"


# ---------------------------------------------------------------- in Chromium


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One headless Chromium for the module: the system's ``chromium`` executable."""
    yield from chromium("the contact sheet's browser tests")


class Sheet:
    """One browser tab on a contact sheet, recording what would be an error for a user."""

    def __init__(self, browser: object, url: str) -> None:
        self.page = browser.new_page(viewport={"width": 1280, "height": 800})  # type: ignore[attr-defined]
        self.problems: List[str] = []
        self.page.on(
            "console", lambda m: m.type in ("error", "warning") and self.problems.append(f"console {m.type}: {m.text}")
        )
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("requestfailed", lambda r: self.problems.append(f"failed request: {r.url}"))
        self.page.on("dialog", lambda d: (self.problems.append(f"dialog: {d.message}"), d.dismiss()))
        self.page.goto(url)

    def cards(self) -> List[str]:
        return self.page.eval_on_selector_all("article.card", "cs => cs.map(c => c.dataset.path)")

    def where(self) -> Tuple[int, int]:
        return tuple(int(self.page.get_attribute("body", name)) for name in ("data-page", "data-pages"))  # type: ignore[return-value]

    def image_widths(self) -> List[Tuple[str, int, str]]:
        """Every <img> of the page, scrolled into view and waited for: (src, naturalWidth, loading)."""
        return self.page.evaluate(
            """async () => {
                const out = [];
                for (const img of document.querySelectorAll("img")) {
                    img.scrollIntoView();
                    if (!img.complete) await new Promise(done => {
                        img.addEventListener("load", done, {once: true});
                        img.addEventListener("error", done, {once: true});
                        setTimeout(done, 5000);
                    });
                    out.push([img.getAttribute("src"), img.naturalWidth, img.loading]);
                }
                window.scrollTo(0, 0);
                return out;
            }"""
        )

    def check(self) -> None:
        assert self.problems == []
        self.page.close()


@pytest.fixture(scope="module")
def run_output(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, List[Dict[str, str]]]:
    output_dir = tmp_path_factory.mktemp("run out")  # a space in the file:// URL too
    records = _build_output(output_dir)
    write_contact_sheet(output_dir, records, page_size=PAGE_SIZE, title="<i>run</i> & co")
    return output_dir, records


def test_every_page_by_next_shows_its_cards_and_its_pictures(browser: object, run_output: Tuple[Path, list]) -> None:
    output_dir, records = run_output
    expected = _expected_cards(records)
    assert len(records) == 29 and len(expected) == 15
    pages = page_count(len(expected), PAGE_SIZE)
    sheet = Sheet(browser, (output_dir / "index.html").as_uri())
    assert sheet.page.title() == "<i>run</i> & co"
    counts = sheet.page.eval_on_selector_all(
        "[data-count]", "bs => Object.fromEntries(bs.map(b => [b.dataset.count, +b.textContent]))"
    )
    assert counts == {"images": 15, "ok": 12, "unreadable": 2, "error": 1}
    seen: List[str] = []
    for page in range(1, pages + 1):
        assert sheet.where() == (page, pages)
        on_page = sheet.cards()
        assert on_page == expected[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
        seen += on_page
        images = sheet.image_widths()
        assert len(images) == _pictures(records, on_page)
        assert [src for src, width, _ in images if width <= 0] == []
        assert {loading for _, _, loading in images} <= {"lazy"}
        assert sheet.page.is_disabled("#prev") == (page == 1)
        assert sheet.page.is_disabled("#next") == (page == pages)
        if page < pages:
            sheet.page.click("#next")
            # Drawn by the hashchange handler after the click returns: wait for the page.
            sheet.page.wait_for_function("p => document.body.dataset.page === String(p)", arg=page + 1)
    assert sorted(seen) == sorted(expected) and len(seen) == len(set(seen))
    sheet.check()


def test_page_number_in_the_hash_and_buttons(browser: object, run_output: Tuple[Path, list]) -> None:
    output_dir, records = run_output
    expected = _expected_cards(records)
    url = (output_dir / "index.html").as_uri()
    seen: List[str] = []
    sheet = Sheet(browser, "about:blank")
    for page in range(1, 5):  # each a fresh load of its URL
        sheet.page.goto("about:blank")
        sheet.page.goto(f"{url}#page={page}")
        assert sheet.where() == (page, 4)
        seen += sheet.cards()
        assert sheet.cards() == expected[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    assert seen == expected
    sheet.page.goto(url)
    sheet.page.click("#pages button[data-page='3']")
    # The page is drawn by the hashchange handler, after the click returns: wait for it.
    sheet.page.wait_for_function("p => document.body.dataset.page === String(p)", arg=3)
    assert sheet.page.url.endswith("#page=3") and sheet.where() == (3, 4)
    assert sheet.page.get_attribute("#pages button[aria-current=page]", "data-page") == "3"
    sheet.page.click("#prev")
    sheet.page.wait_for_function("p => document.body.dataset.page === String(p)", arg=2)
    assert sheet.where() == (2, 4) and sheet.cards() == expected[4:8]
    for hash_, page in (("#page=99", 4), ("#page=0", 1), ("#page=abc", 1), ("#status=nonsense&page=2", 2)):
        sheet.page.evaluate("h => { location.hash = h; }", hash_)
        sheet.page.wait_for_function("p => document.body.dataset.page === String(p)", arg=page)
        assert len(sheet.cards()) == (3 if page == 4 else 4)
    sheet.check()


def test_status_filter(browser: object, run_output: Tuple[Path, list]) -> None:
    output_dir, _ = run_output
    sheet = Sheet(browser, (output_dir / "index.html").as_uri() + "#page=3")
    sheet.page.select_option("#filter", "unreadable")
    assert sheet.page.url.endswith("#page=1&status=unreadable")
    assert sheet.cards() == sorted(UNREADABLE) and sheet.where() == (1, 1)
    statuses = sheet.page.eval_on_selector_all(".card .status", "s => s.map(x => x.textContent)")
    assert statuses == ["unreadable: not an image", "unreadable: not an image", "unreadable: truncated file"]
    sheet.page.select_option("#filter", "error")
    assert sheet.cards() == [ERROR_ROW[0]]
    sheet.page.select_option("#filter", "ok")
    assert len(sheet.cards()) == PAGE_SIZE and sheet.where() == (1, 3)
    sheet.check()


def test_hostile_names_and_messages_stay_text(browser: object, run_output: Tuple[Path, list]) -> None:
    output_dir, records = run_output
    page = _expected_cards(records).index(HOSTILE) // PAGE_SIZE + 1
    sheet = Sheet(browser, (output_dir / "index.html").as_uri() + f"#page={page}")
    headings = sheet.page.eval_on_selector_all(".card h2", "hs => hs.map(h => h.textContent)")
    assert HOSTILE in headings
    assert sheet.page.evaluate("document.querySelectorAll('main b, main i, h1 i').length") == 0
    assert sheet.page.text_content("h1") == "<i>run</i> & co"
    assert (
        sheet.page.evaluate(
            "p => [...document.querySelectorAll('.card')].find(c => c.dataset.path === p)"
            ".querySelectorAll('figure.result img').length",
            HOSTILE,
        )
        == 2
    )
    widths = [width for _, width, _ in sheet.image_widths()]
    assert len(widths) == _pictures(records, sheet.cards()) and min(widths) > 0
    sheet.check()
    sheet = Sheet(browser, (output_dir / "index.html").as_uri() + "#status=error")
    assert sheet.page.text_content(".card .status") == INJECTION
    assert sheet.page.evaluate("document.querySelectorAll('img[src=x]').length") == 0
    assert sheet.page.evaluate("document.querySelectorAll('script').length") == 2
    sheet.check()


def test_a_large_run_builds_only_one_page(browser: object, tmp_path: Path) -> None:
    _write_jpeg(tmp_path / "t.jpg", (10, 200, 10))
    _write_jpeg(tmp_path / "o.jpg", (200, 10, 10))
    images = 10_000
    records = [
        _record(
            f"class_{i % 100}/img_{i:05d}.jpg",
            method,
            "ok",
            thumbnail="t.jpg",
            overlay="o.jpg",
            predicted_score="0.5",
            road="0.1",
        )
        for i in range(images)
        for method in METHODS
    ]
    started = time.perf_counter()
    path = write_contact_sheet(tmp_path, records)
    written = time.perf_counter() - started
    sheet = Sheet(browser, path.as_uri())
    opened = time.perf_counter() - started - written
    print(
        f"{len(records)} rows: written in {written:.2f} s ({path.stat().st_size / 1e6:.2f} MB), opened in {opened:.2f} s"
    )
    assert round(path.stat().st_size / 1e6, 1) == 1.5  # docs/datasets.md's figure
    assert sheet.where() == (1, page_count(images, 48)) == (1, 209)
    assert len(sheet.cards()) == 48
    assert sheet.page.evaluate("document.querySelectorAll('img').length") == 48 * 3
    sheet.page.goto(path.as_uri() + "#page=209")
    assert sheet.cards() == [f"class_{i % 100}/img_{i:05d}.jpg" for i in range(208 * 48, images)]
    assert sheet.page.text_content("[data-count=ok]") == str(images)
    sheet.check()
