"""Cached results shared by every process: JSON by default, signed pickle only on request.

With ``GLM_GUARD_CACHE_SECRET`` set, every entry is signed (HMAC-SHA256) together with the
Redis key it was written under, its serializer and its deadline; a reader serves only an
entry whose signature matches the key it asked for, before the signed deadline, so an entry
planted, altered, copied to another key or kept past its time is a miss.  Without a secret
(JSON only) entries are plain: anyone who can write to the Redis can plant answers.

Every entry expires: ``ttl=None`` means :data:`DEFAULT_MAX_TTL` here, since ``maxsize``
cannot bound a store other processes fill.

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
import time
from typing import TYPE_CHECKING, Final

from ..._cache_keys import KEY_VERSION
from ..._config import get_settings
from ..._errors import BackendError, ConfigurationError
from .._base import CacheStore
from .._local import LocalCacheStore
from ._tokens import new_token

if TYPE_CHECKING:
    from ._backend import RedisBackend

__all__ = ["DEFAULT_MAX_TTL", "RedisCacheStore", "seal"]

logger = logging.getLogger("glm_guard")

#: Seconds an entry of ``cached_response(ttl=None)`` lives in Redis: every key expires.
DEFAULT_MAX_TTL: Final = 24 * 3600.0
# Redis refuses an expiry that overflows its clock; no cache needs more than this anyway.
_MAX_TTL_MS: Final = 10**15

_PLAIN: Final = b"gg2j:"  # + JSON: no secret set, so nothing to check it against
_SIGNED: Final = b"gg2s:"  # + serializer byte + deadline (8 bytes, ms since the epoch) + HMAC + body
_SERIALIZER_BYTE: Final = {"json": b"j", "pickle": b"p"}
_HEADER: Final = len(_SIGNED) + 1 + 8
_MAC_SIZE: Final = 32


def seal(secret: bytes, redis_key: str, serializer: str, deadline_ms: int, body: bytes) -> bytes:
    """A signed entry: valid only under ``redis_key``, for ``serializer``, until ``deadline_ms``."""
    head = _SIGNED + _SERIALIZER_BYTE[serializer] + deadline_ms.to_bytes(8, "big")
    return head + _mac(secret, redis_key, head, body) + body


def _mac(secret: bytes, redis_key: str, head: bytes, body: bytes) -> bytes:
    key = redis_key.encode()
    signer = hmac.new(secret, len(key).to_bytes(4, "big") + key + head, hashlib.sha256)
    signer.update(body)
    return signer.digest()


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
        if serializer not in _SERIALIZER_BYTE:
            raise ConfigurationError("serializer", f"must be 'json' or 'pickle', got {serializer!r}")
        self._secret = get_settings().cache_secret.encode()
        if serializer == "pickle" and not self._secret:
            raise ConfigurationError("GLM_GUARD_CACHE_SECRET", "must be set to sign pickled cache entries")
        self._backend = backend
        self._connections = backend.connections
        digest = hashlib.blake2b(namespace.encode(), digest_size=10).hexdigest()
        self._prefix = f"{backend.prefix}cache:{KEY_VERSION}:{digest}:"
        lifetime = DEFAULT_MAX_TTL if ttl is None else ttl
        self._ttl_ms = min(max(int(lifetime * 1000), 1), _MAX_TTL_MS)
        self._fill_ms = int(backend.fill_lease * 1000)
        self._name = owner or namespace
        self._serializer = serializer
        self._warned = False
        #: Entries present but refused: corrupt, forged, signed for another key, or signed when
        #: this process has no secret (and unsigned when it has one).
        self.corrupt_entries = 0
        self._local = LocalCacheStore(ttl, maxsize)
        self._claims: dict[str, bytes] = {}  # digest -> our fill token, for a compare-and-delete

    # -- encoding ---------------------------------------------------------------------------

    def encode(self, key: str, value: object) -> bytes | None:
        """The stored form of ``value`` under ``key``; ``None`` (one warning) when it cannot be kept faithfully."""
        body: bytes | None
        if self._serializer == "pickle":
            try:
                body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:  # the answer was paid for: return it, just do not cache it
                self._warn_not_cached(value, "pickle")
                return None
        else:
            body = _json_body(value)
            if body is None:
                self._warn_not_cached(value, "JSON")
                return None
            if not self._secret:
                return _PLAIN + body
        deadline = int(time.time() * 1000) + self._ttl_ms
        return seal(self._secret, self._prefix + key, self._serializer, deadline, body)

    def _warn_not_cached(self, value: object, form: str) -> None:
        if not self._warned:
            self._warned = True
            logger.warning(
                "glm_guard: %s returned a %s, which %s cannot store faithfully; its results are not cached",
                self._name,
                type(value).__qualname__,
                form,
            )

    def decode(self, key: str, raw: object) -> tuple[bool, object]:
        """``(True, value)``, or a miss for anything absent, expired, corrupt, foreign or unsigned."""
        if raw is None:
            return False, None
        try:
            if isinstance(raw, bytes):
                if not self._secret:
                    if raw.startswith(_PLAIN):
                        return True, _json_value(raw[len(_PLAIN) :])
                else:
                    body = self._verified(key, raw)
                    if body is not None:  # signed by a holder of our secret, for this key
                        if int.from_bytes(raw[_HEADER - 8 : _HEADER], "big") <= time.time() * 1000:
                            return False, None  # kept or replayed past its deadline
                        return True, pickle.loads(body) if self._serializer == "pickle" else _json_value(body)
        except Exception:  # a renamed class, a failing __setstate__, deep JSON: all a miss
            pass
        self.corrupt_entries += 1
        return False, None

    def _verified(self, key: str, raw: bytes) -> bytes | None:
        """The body of an entry signed for ``key`` with our secret and serializer, else ``None``."""
        head = raw[:_HEADER]
        if len(raw) < _HEADER + _MAC_SIZE or head[: len(_SIGNED) + 1] != _SIGNED + _SERIALIZER_BYTE[self._serializer]:
            return None
        signature, body = raw[_HEADER : _HEADER + _MAC_SIZE], raw[_HEADER + _MAC_SIZE :]
        if not hmac.compare_digest(signature, _mac(self._secret, self._prefix + key, head, body)):
            return None
        return body

    # -- the CacheStore interface ------------------------------------------------------------

    def _shared(self) -> bool:
        return self._backend.health.available()

    def _down(self, error: BackendError) -> None:
        self._backend.health.failed(error)
        self._backend.health.served_without_redis()

    def get(self, key: str) -> tuple[bool, object]:
        if self._shared():
            try:
                return self.decode(key, self._connections.call(lambda client: client.get(self._prefix + key)))
            except BackendError as error:
                self._down(error)
        return self._local.get(key)

    def set(self, key: str, value: object) -> None:
        data = self.encode(key, value)
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
                raw = await self._connections.call_async(lambda client: client.get(self._prefix + key))
                return self.decode(key, raw)
            except BackendError as error:
                self._down(error)
        return self._local.get(key)

    async def set_async(self, key: str, value: object) -> None:
        data = self.encode(key, value)
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


def _json_body(value: object) -> bytes | None:
    """``value`` as JSON, if JSON gives it back equal and of the same types; else ``None``."""
    if not _json_native(value, 0):
        return None
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
    except ValueError:  # an int of more digits than int() parses by default
        return None


def _json_value(body: bytes) -> object:
    return json.loads(body.decode("utf-8", "surrogatepass"))  # as _json_body wrote it


def _json_native(value: object, depth: int) -> bool:
    """Whether JSON gives ``value`` back equal and of the same types (no tuples, sets, subclasses)."""
    if depth > 64:
        return False
    kind = type(value)
    if value is None or kind is str or kind is bool or kind is int:
        return True
    if kind is float:
        return value == value and value not in (float("inf"), float("-inf"))
    if type(value) is list:
        return all(_json_native(item, depth + 1) for item in value)
    if type(value) is dict:
        return all(type(k) is str and _json_native(v, depth + 1) for k, v in value.items())
    return False
