"""MkDocs hook (mkdocs.yml ``hooks:``): the library's docstrings use Sphinx roles
(:class:`BaseCAM`, :func:`~pytorch_grad_cam.utils.image.show_cam_on_image`), which
Markdown renders as the role's name followed by the code. The API reference drops the
role name, and a leading ``~`` shortens the path to its last part, as Sphinx does."""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:attr|class|data|exc|func|meth|mod|obj):(?=<code>)")
SHORTENED = re.compile(r"<code>~(?:[\w]+\.)*([\w]+)</code>")


def on_page_content(html: str, **_: object) -> str:
    """The page's HTML with the Sphinx role names dropped (MkDocs' page-content event)."""
    return SHORTENED.sub(r"<code>\1</code>", ROLE.sub("", html))
