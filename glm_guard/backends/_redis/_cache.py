"""Cached results shared by every process: JSON by default, signed pickle only on request.

While Redis is away the store keeps working from a cache in this process: a miss costs one
call to the provider, never an error in the caller's face.  One process computes an entry
while the others wait for it: the first to ``SET ... NX`` the entry's fill key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import pickle
from typing import TYPE_CHECKING, Final

from ..._cache_keys import KEY_VERSION
from ..._config import get_settings
from ..._errors import BackendError
from .._base import CacheStore
from .._local import LocalCacheStore
from ._tokens import new_token

if TYPE_CHECKING:
    from ._backend import RedisBackend

logger = logging.getLogger("glm_guard")

_JSON_TAG: Final = b"gg1j:"
_PICKLE_TAG: Final = b"gg1p:"


class RedisCacheStore(CacheStore):
    """One namespace's entries under ``{prefix}cache:{KEY_VERSION}:{namespace digest}:``."""

    def __init__(
        self,
        backend: RedisBackend,
        namespace: str,
        ttl: float | None,
        serializer: str = "json",
        owner: str = "",
        maxsize: int = 1024,
    ) -> None:
        self._backend = backend
        self._connections = backend.connections
        digest = hashlib.blake2b(namespace.encode(), digest_size=10).hexdigest()
        self._prefix = f"{backend.prefix}cache:{KEY_VERSION}:{digest}:"
        self._ttl_ms = None if ttl is None else max(int(ttl * 1000), 1)
        self._fill_ms = int(backend.fill_lease * 1000)
        self._name = owner or namespace
        self._serializer = serializer
        self._secret = get_settings().cache_secret.encode() if serializer == "pickle" else b""
        self._warned = False
        self.corrupt_entries = 0
        self._local = LocalCacheStore(ttl, maxsize)
        self._claims: dict[str, bytes] = {}  # digest -> our fill token, for a compare-and-delete

    # -- encoding ---------------------------------------------------------------------------

    def encode(self, value: object) -> bytes | None:
        """The stored form of ``value``; ``None`` (with one warning) when it cannot be kept faithfully."""
        if self._serializer == "pickle":
            try:
                body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:  # the answer was paid for: return it, just do not cache it
                self._warn_not_cached(value, "pickle")
                return None
            return _PICKLE_TAG + hmac.new(self._secret, body, hashlib.sha256).digest() + body
        if not _json_native(value, 0):
            self._warn_not_cached(value, "JSON")
            return None
        return _JSON_TAG + json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()

    def _warn_not_cached(self, value: object, form: str) -> None:
        if not self._warned:
            self._warned = True
            logger.warning(
                "glm_guard: %s returned a %s, which %s cannot store faithfully; its results are not cached",
                self._name,
                type(value).__qualname__,
                form,
            )

    def decode(self, raw: object) -> tuple[bool, object]:
        """``(True, value)``, or a miss for anything absent, corrupt, foreign or unsigned."""
        if raw is None:
            return False, None
        try:
            if isinstance(raw, bytes) and raw.startswith(_JSON_TAG):
                return True, json.loads(raw[len(_JSON_TAG) :])
            if isinstance(raw, bytes) and raw.startswith(_PICKLE_TAG) and self._serializer == "pickle":
                signature, body = raw[len(_PICKLE_TAG) : len(_PICKLE_TAG) + 32], raw[len(_PICKLE_TAG) + 32 :]
                expected = hmac.new(self._secret, body, hashlib.sha256).digest()
                if hmac.compare_digest(signature, expected):
                    return True, pickle.loads(body)  # signed with our secret: written by us
        except Exception:  # a renamed class, a failing __setstate__, deep JSON: all a miss
            pass
        self.corrupt_entries += 1
        return False, None

    # -- the CacheStore interface ------------------------------------------------------------

    def _shared(self) -> bool:
        return self._backend.health.available()

    def _down(self, error: BackendError) -> None:
        self._backend.health.failed(error)
        self._backend.health.served_without_redis()

    def get(self, key: str) -> tuple[bool, object]:
        if self._shared():
            try:
                return self.decode(self._connections.call(lambda client: client.get(self._prefix + key)))
            except BackendError as error:
                self._down(error)
        return self._local.get(key)

    def set(self, key: str, value: object) -> None:
        data = self.encode(value)
        if data is None:
            return
        if self._shared():
            try:
                self._connections.call(lambda client: client.set(self._prefix + key, data, px=self._ttl_ms))
                return
            except BackendError as error:
                self._down(error)
        self._local.set(key, value)

    async def get_async(self, key: str) -> tuple[bool, object]:
        if self._shared():
            try:
                return self.decode(await self._connections.call_async(lambda client: client.get(self._prefix + key)))
            except BackendError as error:
                self._down(error)
        return self._local.get(key)

    async def set_async(self, key: str, value: object) -> None:
        data = self.encode(value)
        if data is None:
            return
        if self._shared():
            try:
                await self._connections.call_async(lambda client: client.set(self._prefix + key, data, px=self._ttl_ms))
                return
            except BackendError as error:
                self._down(error)
        self._local.set(key, value)

    # -- one process computes an entry, the others wait for it --------------------------------

    def claim(self, key: str) -> bool:
        if not self._shared():
            return True
        token = new_token()
        fill = self._prefix + key + ":fill"
        try:
            won = self._connections.call(lambda client: client.set(fill, token, nx=True, px=self._fill_ms))
        except BackendError as error:
            self._down(error)
            return True
        if won:  # None: someone else's
            self._claims[key] = token
        return bool(won)

    def unclaim(self, key: str) -> None:
        token = self._claims.pop(key, None)
        if token is not None and self._shared():
            try:
                self._connections.run("unclaim", [self._prefix + key + ":fill"], [token])
            except BackendError as error:  # the claim expires by itself
                self._down(error)

    async def claim_async(self, key: str) -> bool:
        if not self._shared():
            return True
        token = new_token()
        fill = self._prefix + key + ":fill"
        try:
            won = await self._connections.call_async(lambda client: client.set(fill, token, nx=True, px=self._fill_ms))
        except BackendError as error:
            self._down(error)
            return True
        if won:
            self._claims[key] = token
        return bool(won)

    async def unclaim_async(self, key: str) -> None:
        token = self._claims.pop(key, None)
        if token is not None and self._shared():
            try:
                await self._connections.run_async("unclaim", [self._prefix + key + ":fill"], [token])
            except BackendError as error:
                self._down(error)


def _json_native(value: object, depth: int) -> bool:
    """Whether JSON gives ``value`` back equal and of the same types (no tuples, no sets)."""
    if depth > 64:
        return False
    if value is None or isinstance(value, (str, bool, int)):
        return True
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if type(value) is list:
        return all(_json_native(item, depth + 1) for item in value)
    if type(value) is dict:
        return all(isinstance(k, str) and _json_native(v, depth + 1) for k, v in value.items())
    return False
