"""The monitor page: an HTML file, its script and its style, shipped in the package.

They hold no data and need no token: the script fetches the JSON endpoints with the bearer
token the operator gives it (typed into the page, or in the URL's fragment, which browsers
never send to the server), so the token is never in a URL a server or proxy logs.  Nothing
loads from another origin; the Content-Security-Policy says so to the browser too.
"""

from __future__ import annotations

import functools
import html
from importlib import resources
from typing import Final

__all__ = ["ASSETS", "asset"]

_HTML: Final = "text/html; charset=utf-8"
#: Path under the app's root -> (file in ``static/``, content type).
ASSETS: Final = {
    "/": ("index.html", _HTML),
    "/monitor.js": ("monitor.js", "text/javascript; charset=utf-8"),
    "/monitor.css": ("monitor.css", "text/css; charset=utf-8"),
}
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@functools.cache
def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def asset(path: str, api_prefix: str) -> tuple[bytes, str]:
    """The file served at ``path``; the page learns where the JSON endpoints are from the app.

    The API path is written relative (no leading slash), so the page also works where the
    app is mounted under a prefix, as long as it is opened with its trailing slash.
    """
    name, content_type = ASSETS[path]
    body = _read(name)
    if name == "index.html":
        relative = html.escape(api_prefix.lstrip("/"), quote=True)
        body = body.replace(b"{{API}}", relative.encode("utf-8"))
    return body, content_type
