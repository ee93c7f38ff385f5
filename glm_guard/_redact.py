"""The one way glm_guard shows a URL that may hold a secret: in errors, logs, reprs, stats, the CLI.

A Redis URL carries a password as ``:password@``, ``user:password@`` or ``?password=``, and a
password with a raw ``/``, ``?``, ``#`` or ``@`` makes a URL parser cut it where its author
did not mean to (``redis://:pa/ss@host`` has no host and the path ``/ss@host``).  Masking
"the password" of such a URL masks the wrong text, so the safe form is built only from parts
known to be harmless (scheme, host, port, path, the names of the parameters redis-py reads);
any other part shows as ``***``, and a URL whose parts cannot be told apart shows only its
scheme and ``<redacted>``.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from typing import Final

__all__ = ["HOST", "MASK", "REDACTED", "URL_PARAMETERS", "UrlParts", "mask_url", "split_url"]

MASK: Final = "***"
REDACTED: Final = "<redacted>"

_SCHEME: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]{0,31})://(.*)", re.DOTALL)
_NAME: Final = re.compile(r"[A-Za-z0-9._~-]{1,64}")  # a user name shown beside a masked password
HOST: Final = re.compile(r"[A-Za-z0-9._-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")
_PORT: Final = re.compile(r"[0-9]{1,6}")
_PATH: Final = re.compile(r"/[A-Za-z0-9._~/-]{0,256}")
_VALUE: Final = re.compile(r"[A-Za-z0-9._~/,-]{0,128}")
_SECRET_NAME: Final = re.compile(r"pass|secret|token|auth|cred", re.IGNORECASE)

#: The query parameters redis-py reads from a URL.  Any other name is shown as ``***``: a
#: password with a raw ``&`` spills its tail into a "parameter" of its own.
URL_PARAMETERS: Final = frozenset(
    {
        "client_name",
        "db",
        "decode_responses",
        "encoding",
        "encoding_errors",
        "health_check_interval",
        "lib_name",
        "lib_version",
        "max_connections",
        "password",
        "protocol",
        "retry_on_error",
        "retry_on_timeout",
        "socket_connect_timeout",
        "socket_keepalive",
        "socket_read_size",
        "socket_timeout",
        "ssl_ca_certs",
        "ssl_ca_data",
        "ssl_ca_path",
        "ssl_cert_reqs",
        "ssl_certfile",
        "ssl_check_hostname",
        "ssl_ciphers",
        "ssl_keyfile",
        "ssl_min_version",
        "ssl_password",
        "ssl_validate_ocsp",
        "ssl_validate_ocsp_stapled",
        "timeout",
        "username",
    }
)


@dataclass(frozen=True, slots=True)
class UrlParts:
    """A URL cut the way redis-py's parser cuts it, each part as written (not yet decoded)."""

    scheme: str  # lower case
    userinfo: str | None  # everything before the last "@", or None without one
    host: str  # "" when there is none; an IPv6 address keeps its brackets; "h:p,h:p" for several nodes
    port: str | None  # the text after the host's ":", or None without one
    path: str
    query: tuple[tuple[str, str], ...]
    fragment: str | None

    def safe(self) -> str:
        """The URL with every part that is not known to be harmless replaced by ``***``."""
        text = f"{self.scheme}://"
        if self.userinfo is not None:
            user, colon, _ = self.userinfo.partition(":")
            if not colon:  # "secret@host": redis-py takes it for a user name, people for a password
                text += f"{MASK}@"
            else:
                text += f"{user if not user or _NAME.fullmatch(user) else MASK}:{MASK}@"
        text += ",".join(_safe_host(node) for node in self.host.split(","))
        if self.port is not None:
            text += ":" + _safe_port(self.port)
        text += self.path if not self.path or _PATH.fullmatch(self.path) else "/" + MASK
        if self.query:
            text += "?" + "&".join(_safe_parameters(self.query))
        if self.fragment is not None:
            text += "#" + MASK
        return text


def _safe_name(host: str) -> str:
    return host if not host or HOST.fullmatch(host) else MASK


def _safe_port(port: str) -> str:
    return port if not port or _PORT.fullmatch(port) else MASK


def _safe_host(node: str) -> str:
    """The host, or one ``host[:port]`` of a Sentinel or Cluster URL's list of nodes."""
    host, colon, port = node.rpartition(":") if node.rpartition("]")[2].count(":") == 1 else (node, "", "")
    return _safe_name(host) + (colon and ":" + _safe_port(port))


def _safe_parameters(query: tuple[tuple[str, str], ...]) -> list[str]:
    shown = []
    after_secret = False  # a raw "&" in a password makes what follows it part of the secret
    for name, value in query:
        known = name in URL_PARAMETERS and not after_secret
        secret = _SECRET_NAME.search(name) is not None
        visible = known and not secret and _VALUE.fullmatch(value) is not None
        shown.append(f"{name if known else MASK}={value if visible else MASK}")
        after_secret = after_secret or secret
    return shown


def split_url(url: str) -> UrlParts | None:
    """``url`` cut into its parts, or ``None`` when they cannot be told apart.

    The user information ends at the last ``@``; when it holds a raw ``/``, ``?`` or ``#``
    (or an ``@`` stands in the path or the query) a parser and a reader disagree on where the
    host begins, so nothing but the scheme can be trusted.
    """
    match = _SCHEME.fullmatch(url)
    if match is None:
        return None
    scheme, rest = match.group(1).lower(), match.group(2)
    userinfo = None
    if "@" in rest:
        userinfo, _, rest = rest.rpartition("@")
        if any(mark in userinfo for mark in "/?#"):
            return None
    rest, hashmark, fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    port: str | None
    if "," in authority:  # Sentinel's or Cluster's nodes, "host:port,host:port": each is read on its own
        host, port = authority, None
    elif authority.startswith("["):
        host, bracket, after = authority.partition("]")
        host += bracket
        if after and not after.startswith(":"):
            return None
        port = after[1:] if after else None
    else:
        host, colon, port_text = authority.partition(":")
        port = port_text if colon else None
    pairs = tuple(urllib.parse.parse_qsl(query, keep_blank_values=True))
    return UrlParts(scheme, userinfo, host, port, slash + path, pairs, fragment if hashmark else None)


def mask_url(url: object) -> str:
    """``url`` safe to print: no password, token or unrecognised part of it survives.

    ``redis://:s3cret@host:6379/0`` becomes ``redis://:***@host:6379/0``, ``?password=s3cret``
    becomes ``?password=***``, and a URL that cannot be cut unambiguously becomes
    ``redis://<redacted>``.  Text without a scheme is shown only when it is a plain name.
    """
    if not isinstance(url, str):
        return REDACTED
    parts = split_url(url)
    if parts is not None:
        return parts.safe()
    match = _SCHEME.match(url)
    if match is not None:
        return f"{match.group(1).lower()}://{REDACTED}"
    return url if HOST.fullmatch(url) else REDACTED
