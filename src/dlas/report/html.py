"""Rendering the report and the viewer with the Jinja2 templates shipped in the package.

The templates (``templates/*.j2``) include their CSS and JavaScript inline, so each page is
one file that needs nothing else: no fonts, scripts or images are fetched, and a
Content-Security-Policy in each page makes the browser refuse any request beyond the page's own
``data:`` images, should a future change try one.
"""

from __future__ import annotations

import base64
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2

__all__ = ["environment", "png_data_uri", "render_report"]


@cache
def environment() -> jinja2.Environment:
    """The Jinja2 environment of the report templates (HTML autoescaping on)."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("dlas.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"], default=True),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=False,
    )


def png_data_uri(path: Path) -> tuple[str, int, int]:
    """A PNG file as a ``data:`` URI, with its width and height in pixels."""
    from PIL import Image

    data = path.read_bytes()
    with Image.open(path) as image:
        width, height = image.size
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii"), width, height


def render_report(context: dict[str, Any]) -> str:
    """The HTML report from its context (see :func:`dlas.report.build.build_report`)."""
    return environment().get_template("report.html.j2").render(**context)
