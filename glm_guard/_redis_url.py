"""Whether a Redis URL will be read by redis-py as its author meant: one validator for every scheme.

redis-py reads a URL only when it opens its first connection, so a bad one used to pass here
and then fail every call (a port out of range, ``?db=abc``, an unknown parameter), or quietly
connect somewhere else (``redis://host/abc`` is database 0, ``unix://`` no socket at all).
Each scheme is one entry of ``_SCHEMES``: its check, the query parameters it takes, the kind
of deployment it names and the scheme redis-py reads for each of its nodes.  Sentinel and
Cluster URLs (``redis+sentinel://h:p,h:p/service``, ``redis+cluster://h:p,h:p``) name several
nodes, which redis-py takes one at a time: :func:`redis_target` cuts them into one plain URL
per node, and each of those passes the same checks as a ``redis://`` URL.  Errors name the
variable or parameter and show the URL only through :func:`~glm_guard._redact.mask_url`.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from ._errors import ConfigurationError
from ._redact import HOST, URL_PARAMETERS, UrlParts, mask_url, split_url

__all__ = ["REDIS_SCHEMES", "RedisTarget", "check_redis_url", "redis_target"]

_DIGITS: Final = re.compile(r"[0-9]{1,9}")
_DATABASE_PATH: Final = re.compile(r"/?[0-9]{0,9}")
_SERVICE: Final = re.compile(r"/[A-Za-z0-9._-]{1,64}")

#: Parameters redis-py would take from the URL over what glm_guard sets, and why they may not.
_REFUSED: Final = {
    "socket_timeout": "glm_guard sets the Redis timeouts itself (GLM_GUARD_REDIS_TIMEOUT, or socket_timeout=)",
    "socket_connect_timeout": "glm_guard sets the Redis timeouts itself (GLM_GUARD_REDIS_TIMEOUT, or socket_timeout=)",
    "timeout": "glm_guard sets the Redis timeouts itself (GLM_GUARD_REDIS_TIMEOUT, or socket_timeout=)",
    "retry_on_timeout": "glm_guard decides what is retried: a paused server must cost one timeout, not two",
    "retry_on_error": "glm_guard decides what is retried: a paused server must cost one timeout, not two",
    "decode_responses": "glm_guard reads Redis replies as bytes",
}

#: What each kind of URL may carry: what redis-py reads from a URL, less what glm_guard sets
#: itself; TLS options only with ``rediss``, TCP options not on a Unix socket, no database
#: on a Cluster (it has only database 0).
_TLS: Final = URL_PARAMETERS - _REFUSED.keys()
_TCP: Final = frozenset(name for name in _TLS if not name.startswith("ssl_"))
_COMMON: Final = _TCP - {"socket_keepalive"}
_CLUSTER: Final = _TCP - {"db"}

#: Query parameters with a number for a value, and the rule their number must follow.
_NUMBERS: Final[dict[str, tuple[Callable[[int], bool], str]]] = {
    "db": (lambda n: n >= 0, "a database number >= 0"),
    "health_check_interval": (lambda n: n >= 0, "a whole number of seconds >= 0"),
    "max_connections": (lambda n: n > 0, "a positive integer"),
    "socket_read_size": (lambda n: n > 0, "a positive integer"),
    "protocol": (lambda n: n in (2, 3), "2 or 3"),
}

Kind = Literal["server", "sentinel", "cluster"]


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """What a checked URL names, as redis-py takes it.

    ``urls`` holds one ``redis://``, ``rediss://`` or ``unix://`` URL per node the URL names
    (a single server, or the sentinels, or the cluster's startup nodes), each with the URL's
    credentials and query; ``service`` is the name Sentinel knows the primary by.
    """

    kind: Kind
    urls: tuple[str, ...]
    service: str = ""


def _tcp(parts: UrlParts) -> str | None:
    if not parts.host:
        return "has no host"
    if not HOST.fullmatch(parts.host):
        return "has an invalid host"
    if parts.port and not (_DIGITS.fullmatch(parts.port) and 1 <= int(parts.port) <= 65535):
        return "port must be from 1 to 65535"
    if not _DATABASE_PATH.fullmatch(parts.path):
        return "must name the database as a number after the host (redis://host:6379/0)"
    return None


def _unix(parts: UrlParts) -> str | None:
    if parts.host or parts.port is not None:
        return "names a host, which a unix:// URL has none of (unix:///path/to/redis.sock)"
    if parts.path in ("", "/"):
        return "needs the socket's path (unix:///path/to/redis.sock)"
    return None


def _sentinel(parts: UrlParts) -> str | None:
    if not parts.host:
        return "has no sentinel host"
    if not _SERVICE.fullmatch(parts.path):
        return "must name the primary's service after the sentinels (redis+sentinel://host:26379/mymaster)"
    return None


def _cluster(parts: UrlParts) -> str | None:
    if not parts.host:
        return "has no cluster node"
    if parts.path not in ("", "/"):
        return "has a path, but a Redis Cluster has only database 0 (redis+cluster://host:6379,host:6380)"
    return None


@dataclass(frozen=True, slots=True)
class _Scheme:
    check: Callable[[UrlParts], str | None]
    parameters: frozenset[str]
    kind: Kind
    node_scheme: str  # what redis-py reads for each node
    default_port: int = 6379


_SERVER_TCP: Final = _Scheme(_tcp, _TCP, "server", "redis")
_SERVER_TLS: Final = _Scheme(_tcp, _TLS, "server", "rediss")
_SERVER_UNIX: Final = _Scheme(_unix, _COMMON, "server", "unix")
_SENTINEL: Final = _Scheme(_sentinel, _TCP, "sentinel", "redis", 26379)
_CLUSTER_NODES: Final = _Scheme(_cluster, _CLUSTER, "cluster", "redis")

#: scheme -> what it names and how it is checked; the Valkey spellings mean the same.
_SCHEMES: Final[dict[str, _Scheme]] = {
    "redis": _SERVER_TCP,
    "rediss": _SERVER_TLS,
    "unix": _SERVER_UNIX,
    "redis+unix": _SERVER_UNIX,
    "redis+sentinel": _SENTINEL,
    "redis+cluster": _CLUSTER_NODES,
    "valkey": _SERVER_TCP,
    "valkeys": _SERVER_TLS,
    "valkey+unix": _SERVER_UNIX,
    "valkey+sentinel": _SENTINEL,
    "valkey+cluster": _CLUSTER_NODES,
}
REDIS_SCHEMES: Final = tuple(_SCHEMES)


def check_redis_url(url: object, name: str) -> None:
    """Fail with a :class:`ConfigurationError` naming ``name`` unless redis-py reads ``url`` as meant."""
    if not isinstance(url, str):
        raise ConfigurationError(name, f"must be a Redis URL string, got {type(url).__name__}")
    shown = mask_url(url)
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in _SCHEMES:
        *others, last = (f"{known}://" for known in REDIS_SCHEMES)
        raise ConfigurationError(name, f"must be a {', '.join(others)} or {last} URL, got {shown!r}")
    if any(char.isspace() or not char.isprintable() for char in url):
        raise ConfigurationError(name, f"contains whitespace or control characters: {shown!r}")
    parts = split_url(url)
    entry = _SCHEMES[scheme]
    problem = None if parts is None else entry.check(parts)
    if parts is not None and problem is None:
        for node in _target(url, parts, entry).urls:  # each as redis-py will read it
            node_parts = split_url(node)
            problem = None if node_parts is None else _SCHEMES[node_parts.scheme].check(node_parts)
            if problem is not None:
                break
            if node_parts is None or not _agrees_with_urllib(node, node_parts):
                parts = None
                break
    if parts is None:
        raise ConfigurationError(
            name,
            f"cannot be read unambiguously ({shown!r}): percent-encode '/', '?', '#', '@', '[' and ']' "
            "in the user name and password (for example '/' as %2F)",
        )
    problem = problem or _query_problem(parts, entry.parameters)
    if problem is not None:
        raise ConfigurationError(name, f"{problem}: {shown!r}")


def redis_target(url: str) -> RedisTarget:
    """What ``url`` (which :func:`check_redis_url` accepted) names, as URLs redis-py reads."""
    parts = split_url(url)
    scheme = url.partition("://")[0].lower()
    if parts is None or scheme not in _SCHEMES:
        raise ValueError("not a checked Redis URL")  # never shown the URL: it may hold a password
    return _target(url, parts, _SCHEMES[scheme])


def _target(url: str, parts: UrlParts, entry: _Scheme) -> RedisTarget:
    rest = url.partition("://")[2]
    if entry.kind == "server":
        return RedisTarget("server", (f"{entry.node_scheme}://{rest}",))
    auth = "" if parts.userinfo is None else parts.userinfo + "@"
    query = rest.partition("#")[0].partition("?")[2]
    tail = f"?{query}" if query else ""
    nodes = []
    listed = parts.host if parts.port is None else f"{parts.host}:{parts.port}"
    for node in listed.split(","):
        host, colon, port = node.rpartition(":") if ":" in node.rpartition("]")[2] else (node, "", "")
        address = f"{host}:{port}" if colon and port else f"{host}:{entry.default_port}"  # "h:" too
        nodes.append(f"{entry.node_scheme}://{auth}{address}{tail}")
    return RedisTarget(entry.kind, tuple(nodes), parts.path.lstrip("/"))


def _agrees_with_urllib(url: str, parts: UrlParts) -> bool:
    """Whether redis-py's parser (``urllib.parse``) finds the same host, port, path and query."""
    try:
        parsed = urllib.parse.urlsplit(url)
        found = (parsed.hostname or "", parsed.port, parsed.path)
    except ValueError:  # e.g. a raw "[" in the password
        return False
    expected = (parts.host.strip("[]").lower(), int(parts.port) if parts.port else None, parts.path)
    return found == expected and tuple(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True)) == parts.query


def _query_problem(parts: UrlParts, parameters: frozenset[str]) -> str | None:
    names = [name for name, _ in parts.query]
    for name in names:
        if name in _REFUSED:
            return f"query parameter {name} is not accepted: {_REFUSED[name]}"
    unknown = [name for name in names if name not in parameters]
    if unknown:
        return (
            f"has {len(unknown)} query parameter(s) redis-py does not take from a {parts.scheme}:// URL "
            "(names it does not know at all are shown as ***)"
        )
    for name, value in parts.query:
        if name in _NUMBERS:
            valid, rule = _NUMBERS[name]
            if not (_DIGITS.fullmatch(value) and valid(int(value))):
                return f"query parameter {name} must be {rule}"
    return None
