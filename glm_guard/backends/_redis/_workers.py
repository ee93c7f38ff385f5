"""The background threads of one process: heartbeat, lease renewal, release listener.

Each starts on first need and is a daemon: a process that never waits for a slot never
subscribes, and one without concurrency limits never renews anything.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable

from ._connections import Connections
from ._health import Health

logger = logging.getLogger("glm_guard")


class _Worker:
    """One daemon thread running ``_loop``, started once, stopped by an event."""

    thread_name = "glm-guard-worker"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
                    self._thread.start()

    def _loop(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()


class Heartbeat(_Worker):
    """Counts the live processes sharing this Redis, so one in an outage takes its share of a limit.

    Every process refreshes its own member of one sorted set every few seconds; members that
    stop refreshing drop out.  The count last seen is kept for when Redis goes away.
    """

    INTERVAL = 2.0
    thread_name = "glm-guard-heartbeat"

    def __init__(self, connections: Connections, health: Health, key: str) -> None:
        super().__init__()
        self._connections = connections
        self._health = health
        self._key = key
        self._member = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.live_processes = 1

    def beat(self) -> None:
        ttl_ms = int(self.INTERVAL * 3 * 1000)
        self.live_processes = max(1, int(self._connections.run("heartbeat", [self._key], [self._member, ttl_ms])))

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._health.available():
                # Also a pool closed under it by close(): a background beat must never raise.
                with contextlib.suppress(Exception):
                    self.beat()
            self._stop.wait(self.INTERVAL)


class LeaseKeeper(_Worker):
    """Renews this process's concurrency leases every lease / 3, so only a dead holder's expire.

    Adding and dropping a lease is a set operation on the admission path; the sets are kept
    (empty) between admissions.
    """

    thread_name = "glm-guard-leases"

    def __init__(self, connections: Connections, lease: float) -> None:
        super().__init__()
        self._connections = connections
        self._lease = lease
        self._held: dict[str, set[bytes]] = {}

    def add(self, leases_key: str, token: bytes) -> None:
        with self._lock:
            tokens = self._held.get(leases_key)
            if tokens is None:
                tokens = self._held[leases_key] = set()
            tokens.add(token)
        self.start()

    def discard(self, leases_key: str, token: bytes) -> None:
        with self._lock:
            tokens = self._held.get(leases_key)
            if tokens is not None:
                tokens.discard(token)

    def _loop(self) -> None:
        lease_ms = int(self._lease * 1000)
        while not self._stop.wait(self._lease / 3):
            with self._lock:
                held = [(key, list(tokens)) for key, tokens in self._held.items() if tokens]
            for leases_key, tokens in held:
                try:
                    self._connections.run("renew", [leases_key], [lease_ms, *tokens])
                except Exception as error:  # keep renewing the others; the lease covers a blip
                    logger.warning("glm_guard: could not renew leases on %s: %s", leases_key, type(error).__name__)


class ReleaseListener(_Worker):
    """Wakes this process's waiting callers when any process gives a concurrency slot back.

    One redis-py ``PubSub`` per process, started by the first wait for a slot; without it a
    waiter would notice a free slot only on its next poll.
    """

    thread_name = "glm-guard-release"

    def __init__(self, connections: Connections, pattern: str) -> None:
        super().__init__()
        self._connections = connections
        self._pattern = pattern
        self._waiters: dict[str, Callable[[], None]] = {}

    def watch(self, channel: str, wake: Callable[[], None]) -> None:
        with self._lock:
            self._waiters[channel] = wake
        self.start()

    def unwatch(self, channel: str) -> None:
        with self._lock:
            self._waiters.pop(channel, None)

    def _loop(self) -> None:
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self._connections.client().pubsub(ignore_subscribe_messages=True)
                pubsub.psubscribe(self._pattern)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is not None:
                        self._wake(message.get("channel"))
            except Exception as error:  # waiters still poll; reconnect after a pause
                logger.debug("glm_guard: release listener reconnecting after %s", type(error).__name__)
                self._stop.wait(1.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        pubsub.close()

    def _wake(self, channel: object) -> None:
        name = channel.decode() if isinstance(channel, bytes) else str(channel)
        with self._lock:
            wake = self._waiters.get(name)
        if wake is not None:
            wake()
