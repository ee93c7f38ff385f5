"""The Lua scripts, shipped as package data in ``glm_guard/backends/lua`` and run by SHA.

Work that must be atomic is one script.  redis-py's ``Script`` objects send ``EVALSHA``
and, after a NOSCRIPT reply (a restart, ``SCRIPT FLUSH``, a failover), load the source and
send it once more, so nothing here encodes a request by hand.  On a Cluster, ``EVALSHA`` goes
to the node that holds its keys' slot (every key of one script shares the limit's ``{K}``
hash tag).
"""

from __future__ import annotations

import functools
import importlib.resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript, Script

    from ._clients import AsyncClient, Client

NAMES = (
    "acquire",
    "release",
    "learn",
    "pause",
    "unpause",
    "renew",
    "adopt",
    "cooldown",
    "heartbeat",
    "confirm",
    "unclaim",
    "retry_budget",
    "settle",
)


#: Lua shared by several scripts (a script is sent whole, so it goes before each that uses it).
SHARED = {"acquire": ("_reservations",), "settle": ("_reservations",)}


@functools.cache
def sources() -> dict[str, str]:
    """Every script's source, with the shared Lua it uses before it, read once per process."""
    files = importlib.resources.files("glm_guard.backends").joinpath("lua")

    def text(name: str) -> str:
        return files.joinpath(f"{name}.lua").read_text("utf-8")

    return {name: "".join(text(part) + "\n" for part in SHARED.get(name, ())) + text(name) for name in NAMES}


def register(client: Client) -> dict[str, Script]:
    """The scripts bound to ``client``; registering only hashes them, it sends nothing."""
    return {name: client.register_script(source) for name, source in sources().items()}


def register_async(client: AsyncClient) -> dict[str, AsyncScript]:
    return {name: client.register_script(source) for name, source in sources().items()}
