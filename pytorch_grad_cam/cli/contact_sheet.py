"""The HTML contact sheet of a folder run: ``index.html`` in the output folder, one card
per input image (its thumbnail, one overlay per method, the predicted and explained
classes, the metrics), paged, from the rows of ``results.csv``.

The page is one static file that works from ``file://`` with nothing else: inline CSS,
a little plain JavaScript, no external resources. The records travel inside it as JSON
and only the current page's cards are built (with lazily loaded images), so a run of
tens of thousands of images opens as fast as a run of ten. The page number lives in
the URL (``index.html#page=3``, and ``&status=unreadable`` for the filter).
"""

from __future__ import annotations

import html
import json
import numbers
import os
import re
import tempfile
from pathlib import Path
from typing import Dict, List, Mapping, Sequence
from urllib.parse import quote

__all__ = ["RESULT_COLUMNS", "page_count", "write_contact_sheet"]

# The fixed columns of results.csv, in order; any other column is a metric.
RESULT_COLUMNS = (
    "path",
    "method",
    "status",
    "predicted_class",
    "predicted_label",
    "predicted_score",
    "explained_class",
    "explained_label",
    "thumbnail",
    "overlay",
    "map",
)
# The columns that hold a path relative to the output folder (URL-encoded on the page).
_LINK_COLUMNS = frozenset({"thumbnail", "overlay", "map"})
# The position of each fixed column in a row of the embedded JSON (after "path", which
# the card holds once). Kept in step with ROW in the script below.
_ROW_COLUMNS = RESULT_COLUMNS[1:8] + ("overlay", "map")


def _check_page_size(page_size: object) -> int:
    """Return ``page_size`` as an int; raise TypeError/ValueError naming it otherwise."""
    if isinstance(page_size, bool) or not isinstance(page_size, numbers.Integral):
        raise TypeError(
            f"page_size must be a whole number of cards per page, got {page_size!r} "
            f"({type(page_size).__name__}); pass an int such as page_size=48 (the default)"
        )
    if page_size < 1:
        raise ValueError(
            f"page_size must be at least 1 card per page, got {page_size!r}; "
            "pass a positive int such as page_size=48 (the default)"
        )
    return int(page_size)


def page_count(n_cards: int, page_size: int) -> int:
    """The number of pages the sheet has for ``n_cards`` cards (one per input image):
    ``ceil(n_cards / page_size)``, and 1 for no cards (an empty first page).

    Returns:
        The page count, an int >= 1.

    Raises:
        TypeError, ValueError: ``page_size`` is not a positive int, or ``n_cards`` is
            negative.
    """
    page_size = _check_page_size(page_size)
    if n_cards < 0:
        raise ValueError(f"n_cards must be >= 0, got {n_cards!r}")
    return max(1, -(-n_cards // page_size))


def _url(relative_path: str) -> str:
    """A relative posix path as a URL: each segment percent-encoded (spaces, ``#``,
    ``%``, ``?``, quotes, unicode; a name that was not valid UTF-8 on disk keeps its
    original bytes), the ``/`` between segments kept."""
    if not relative_path:
        return ""
    return "/".join(quote(part, safe="", errors="surrogateescape") for part in relative_path.split("/"))


def _card_state(statuses: Sequence[str]) -> str:
    """``ok`` when every row of an image is ``ok``; else ``unreadable`` when one says so;
    else ``error`` (an ``error: ...`` row, or a status we do not know)."""
    if all(status == "ok" for status in statuses):
        return "ok"
    if any(status.startswith("unreadable") for status in statuses):
        return "unreadable"
    return "error"


def _sheet_data(records: Sequence[Mapping[str, str]], page_size: int) -> Dict[str, object]:
    """The records grouped into cards (one per ``path``, in order of first appearance),
    in the compact form the page's script reads:

    ``{"page_size": n, "metrics": [name, ...], "cards": [[path, thumbnail_url, state,
    [[method, status, predicted_class, predicted_label, predicted_score,
    explained_class, explained_label, overlay_url, map_url, [metric value, ...]], ...]],
    ...]}`` (a metric value is ``""`` where that row has none).
    """
    metric_names: List[str] = []
    seen_metrics = set()
    rows: List[Dict[str, str]] = []
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise TypeError(
                f"records[{index}] must be a mapping of column name to string (a row of "
                f"results.csv, e.g. from csv.DictReader), got {type(record).__name__}"
            )
        if "path" not in record or "status" not in record:
            raise ValueError(
                f"records[{index}] has no 'path' or 'status' column (columns: "
                f"{sorted(record)}); pass the rows of results.csv, which has "
                f"{', '.join(RESULT_COLUMNS)}"
            )
        row = {str(key): "" if value is None else str(value) for key, value in record.items()}
        rows.append(row)
        for key in row:
            if key not in RESULT_COLUMNS and key not in seen_metrics:
                seen_metrics.add(key)
                metric_names.append(key)

    cards: Dict[str, List[object]] = {}
    for row in rows:
        card = cards.get(row["path"])
        if card is None:
            card = cards[row["path"]] = [row["path"], "", "", []]
        if not card[1] and row.get("thumbnail"):
            card[1] = _url(row["thumbnail"])
        values: List[object] = [
            _url(row.get(column, "")) if column in _LINK_COLUMNS else row.get(column, "") for column in _ROW_COLUMNS
        ]
        values.append([row.get(name, "") for name in metric_names])
        card[3].append(values)
    for card in cards.values():
        card[2] = _card_state([values[1] for values in card[3]])
    return {"page_size": page_size, "metrics": metric_names, "cards": list(cards.values())}


def _script_json(data: object) -> str:
    """``data`` as JSON that is safe inside a ``<script>`` element: ASCII only (so a
    file name that is not valid UTF-8 survives, as ``\\udcxx``), and no ``<``, ``>`` or
    ``&`` at all (as ``\\u003c`` and so on), so neither ``</script>`` nor ``<!--`` can
    appear. These characters only ever occur inside JSON strings, where the escapes
    mean the same characters to ``JSON.parse``."""
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def write_contact_sheet(
    output_dir: Path,
    records: Sequence[Mapping[str, str]],
    page_size: int = 48,
    title: str = "pytorch_grad_cam results",
) -> Path:
    """Write the contact sheet ``output_dir/index.html`` of a folder run.

    One card per input image (the records grouped by ``path``, in the order they first
    appear): its thumbnail, then per method its overlay (a link to the full picture),
    the predicted class, label and score, the explained class, the metrics and a link
    to the raw map; an unreadable image or a failed method shows its status text. A
    summary line counts the images, those whose every row is ``ok``, the unreadable
    ones and those with an error. The file is written to a temporary name in
    ``output_dir`` and renamed over ``index.html``, so a reader never sees half a page.
    The same records give the same bytes.

    Args:
        output_dir: the run's output folder (created if missing); the ``thumbnail``,
            ``overlay`` and ``map`` columns are paths relative to it.
        records: the rows of ``results.csv`` as mappings of column name to string:
            ``path`` (the input image, relative to the input folder, posix), ``method``,
            ``status`` (``ok``, ``unreadable: <reason>`` or ``error: <message>``),
            ``predicted_class``, ``predicted_label``, ``predicted_score``,
            ``explained_class``, ``explained_label``, ``thumbnail``, ``overlay``,
            ``map``, then any metric columns (shown as name: value). Missing columns
            other than ``path`` and ``status`` count as empty strings.
        page_size: cards per page.
        title: the page's title and heading.

    Returns:
        The path of the written ``index.html``.

    Raises:
        TypeError: ``page_size`` is not an int, or a record is not a mapping.
        ValueError: ``page_size`` < 1, or a record has no ``path`` or ``status``.
        OSError: the folder cannot be created or written (no temporary file is left).
    """
    page_size = _check_page_size(page_size)
    data = _sheet_data(records, page_size)
    parts = {
        "TITLE": html.escape(str(title), quote=True),
        "STYLE": _STYLE,
        "SCRIPT": _SCRIPT,
        "DATA": _script_json(data),
    }
    # One pass, so a title that contains "@DATA@" stays text.
    document = re.sub(r"@(TITLE|STYLE|SCRIPT|DATA)@", lambda match: parts[match.group(1)], _TEMPLATE)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / "index.html"
    descriptor, temporary = tempfile.mkstemp(prefix=".index.html.", suffix=".tmp", dir=output_dir)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            # Only the title can hold text that is not ASCII here; "replace" keeps a
            # title with an undecodable character from failing the whole run.
            handle.write(document.encode("utf-8", errors="replace"))
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it private; a web page is for reading
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    return target


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>@TITLE@</title>
<style>@STYLE@</style>
</head>
<body>
<header id="top">
<h1>@TITLE@</h1>
<p id="summary"></p>
<nav id="pager" aria-label="pages">
<label>show <select id="filter">
<option value="all">all images</option>
<option value="ok">ok</option>
<option value="unreadable">unreadable</option>
<option value="error">with errors</option>
</select></label>
<button type="button" id="prev" aria-label="previous page">&#8592; prev</button>
<span id="pages"></span>
<button type="button" id="next" aria-label="next page">next &#8594;</button>
<span id="where"></span>
</nav>
</header>
<noscript><p>This page builds its cards with JavaScript; results.csv next to it holds the same rows.</p></noscript>
<main id="cards"></main>
<script type="application/json" id="sheet-data">@DATA@</script>
<script>@SCRIPT@</script>
</body>
</html>
"""

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f4f4f4;color:#222}
header{position:sticky;top:0;background:#fff;border-bottom:1px solid #ccc;padding:.5em 1em;z-index:1}
h1{font-size:1.2em;margin:0 0 .2em}
#summary{margin:0 0 .4em}
#summary b{font-weight:600}
nav button{font:inherit;margin:0 1px;padding:.1em .5em;cursor:pointer}
nav button[aria-current=page]{font-weight:700;background:#333;color:#fff}
nav button:disabled{cursor:default}
#where{margin-left:.6em;color:#555}
main{display:flex;flex-wrap:wrap;gap:12px;padding:12px}
.card{background:#fff;border:1px solid #ccc;border-radius:4px;padding:8px;max-width:100%}
.card.unreadable{border-color:#b58900;background:#fffbea}
.card.error{border-color:#c0392b;background:#fff3f1}
.card h2{font-size:1em;margin:0 0 6px;word-break:break-all;font-weight:600}
.row{display:flex;gap:8px;flex-wrap:wrap}
figure{margin:0;width:180px}
figure img,.noimg{width:180px;height:180px;object-fit:contain;background:#eee;display:block}
.noimg{display:flex;align-items:center;justify-content:center;color:#777}
figcaption{font-size:12px;word-break:break-word}
figcaption .method{font-weight:700}
.status{color:#a33;white-space:pre-wrap}
dl{margin:2px 0;display:grid;grid-template-columns:auto 1fr;column-gap:6px}
dt{color:#555}dd{margin:0}
.empty{padding:2em;color:#555}
"""

# Builds the DOM with createElement/textContent only (never innerHTML), so no text
# from the records can become markup; URLs arrive already percent-encoded.
_SCRIPT = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("sheet-data").textContent);
  // One row: the columns after "path", in write_contact_sheet's _ROW_COLUMNS order.
  var ROW = {method: 0, status: 1, predictedClass: 2, predictedLabel: 3, predictedScore: 4,
             explainedClass: 5, explainedLabel: 6, overlay: 7, map: 8, metrics: 9};
  var CARD = {path: 0, thumbnail: 1, state: 2, rows: 3};
  var FILTERS = ["all", "ok", "unreadable", "error"];
  var cards = data.cards, pageSize = data.page_size;

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== "") node.textContent = text;
    return node;
  }
  function joined(parts, sep) {
    return parts.filter(function (p) { return p !== ""; }).join(sep);
  }
  function image(url, alt) {
    var a = el("a"), img = el("img");
    a.href = url;
    img.src = url;
    img.alt = alt;
    img.loading = "lazy";
    img.decoding = "async";
    a.appendChild(img);
    return a;
  }

  var counts = {images: cards.length, ok: 0, unreadable: 0, error: 0};
  cards.forEach(function (card) { counts[card[CARD.state]] += 1; });
  (function summary() {
    var node = document.getElementById("summary");
    [["images", "images"], ["ok", "ok"], ["unreadable", "unreadable"], ["error", "with errors"]]
      .forEach(function (item, i) {
        if (i) node.appendChild(document.createTextNode(" \u00b7 "));
        var b = el("b", "", String(counts[item[0]]));
        b.setAttribute("data-count", item[0]);
        node.appendChild(b);
        node.appendChild(document.createTextNode(" " + item[1]));
      });
  })();

  function readHash() {
    var params = new URLSearchParams(location.hash.replace(/^#/, ""));
    var filter = params.get("status") || "all";
    if (FILTERS.indexOf(filter) < 0) filter = "all";
    var page = parseInt(params.get("page") || "1", 10);
    return {page: isNaN(page) ? 1 : page, filter: filter};
  }
  function hashFor(page, filter) {
    return "#page=" + page + (filter === "all" ? "" : "&status=" + filter);
  }
  function go(page, filter) { location.hash = hashFor(page, filter); }

  function renderCard(card) {
    var node = el("article", "card " + card[CARD.state]);
    node.setAttribute("data-path", card[CARD.path]);
    node.setAttribute("data-state", card[CARD.state]);
    node.appendChild(el("h2", "path", card[CARD.path]));
    var row = el("div", "row");
    var thumb = el("figure", "thumbnail");
    thumb.appendChild(card[CARD.thumbnail] ? image(card[CARD.thumbnail], "input image")
                                            : el("div", "noimg", "no thumbnail"));
    thumb.appendChild(el("figcaption", "", "input"));
    row.appendChild(thumb);
    card[CARD.rows].forEach(function (r) {
      var fig = el("figure", "result");
      fig.setAttribute("data-method", r[ROW.method]);
      fig.setAttribute("data-status", r[ROW.status]);
      if (r[ROW.overlay]) fig.appendChild(image(r[ROW.overlay], (r[ROW.method] || "CAM") + " overlay"));
      else if (r[ROW.status] !== "ok") fig.appendChild(el("div", "noimg", r[ROW.status].split(":")[0]));
      var cap = el("figcaption");
      cap.appendChild(el("div", "method", r[ROW.method]));
      if (r[ROW.status] !== "ok") cap.appendChild(el("div", "status", r[ROW.status]));
      var dl = el("dl");
      function item(name, value) {
        if (value === "") return;
        dl.appendChild(el("dt", "", name));
        dl.appendChild(el("dd", "", value));
      }
      var score = r[ROW.predictedScore] ? "(" + r[ROW.predictedScore] + ")" : "";
      item("predicted", joined([r[ROW.predictedClass], r[ROW.predictedLabel], score], " "));
      item("explained", joined([r[ROW.explainedClass], r[ROW.explainedLabel]], " "));
      data.metrics.forEach(function (name, i) { item(name, r[ROW.metrics][i]); });
      if (dl.firstChild) cap.appendChild(dl);
      if (r[ROW.map]) {
        var link = el("a", "map", "raw map");
        link.href = r[ROW.map];
        cap.appendChild(link);
      }
      fig.appendChild(cap);
      row.appendChild(fig);
    });
    node.appendChild(row);
    return node;
  }

  function pageButton(page, current, filter) {
    var b = el("button", "page", String(page));
    b.type = "button";
    b.setAttribute("data-page", String(page));
    if (page === current) b.setAttribute("aria-current", "page");
    b.addEventListener("click", function () { go(page, filter); });
    return b;
  }

  var state = {page: 1, pages: 1, filter: "all"};
  function render() {
    var wanted = readHash();
    var shown = wanted.filter === "all" ? cards : cards.filter(function (c) {
      return c[CARD.state] === wanted.filter;
    });
    var pages = Math.max(1, Math.ceil(shown.length / pageSize));
    var page = Math.min(Math.max(1, wanted.page), pages);
    state = {page: page, pages: pages, filter: wanted.filter};
    document.getElementById("filter").value = wanted.filter;

    var list = document.getElementById("pages");
    list.textContent = "";
    var last = 0;
    for (var p = 1; p <= pages; p++) {
      if (p === 1 || p === pages || Math.abs(p - page) <= 2) {
        if (last && p > last + 1) list.appendChild(el("span", "gap", "\u2026"));
        list.appendChild(pageButton(p, page, wanted.filter));
        last = p;
      }
    }
    document.getElementById("prev").disabled = page <= 1;
    document.getElementById("next").disabled = page >= pages;
    var first = (page - 1) * pageSize;
    var slice = shown.slice(first, first + pageSize);
    document.getElementById("where").textContent = slice.length
      ? "page " + page + " of " + pages + ": images " + (first + 1) + "\u2013" + (first + slice.length) + " of " + shown.length
      : "page 1 of 1: no images";

    var main = document.getElementById("cards");
    main.textContent = "";
    var fragment = document.createDocumentFragment();
    slice.forEach(function (card) { fragment.appendChild(renderCard(card)); });
    if (!slice.length) fragment.appendChild(el("p", "empty", "No images to show."));
    main.appendChild(fragment);
    document.body.setAttribute("data-page", String(page));
    document.body.setAttribute("data-pages", String(pages));
  }

  document.getElementById("prev").addEventListener("click", function () { go(state.page - 1, state.filter); });
  document.getElementById("next").addEventListener("click", function () { go(state.page + 1, state.filter); });
  document.getElementById("filter").addEventListener("change", function (e) { go(1, e.target.value); });
  document.addEventListener("keydown", function (e) {
    if (e.target.tagName === "SELECT" || e.target.tagName === "INPUT") return;
    if (e.key === "ArrowLeft" && state.page > 1) go(state.page - 1, state.filter);
    if (e.key === "ArrowRight" && state.page < state.pages) go(state.page + 1, state.filter);
  });
  window.addEventListener("hashchange", function () { render(); window.scrollTo(0, 0); });
  render();
})();
"""
