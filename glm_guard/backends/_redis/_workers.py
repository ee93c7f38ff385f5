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
import time
import uuid
from collections.abc import Callable

from ..._errors import BackendRequestError
from ...monitoring._events import LeaseLost, emit, wall_clock
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

    It also gives back, in the background, the leases of callers that went away: a task
    cancelled while its admission was on the wire, or a release Redis did not take.  Such a
    lease may have been granted after the caller stopped waiting for the answer (a request
    still queued at a paused server runs when it wakes), so it is released twice, the second
    time after the first was answered: by then the server has read every request sent
    before.  A lease that expired under a live holder (a process frozen past its lease) is
    reported: meanwhile its slot may have been given to another caller.
    """

    thread_name = "glm-guard-leases"
    #: How often an abandoned lease is asked for again while Redis does not take it.
    ABANDONED_RETRY = 0.25

    def __init__(self, connections: Connections, lease: float) -> None:
        super().__init__()
        self._connections = connections
        self._lease = lease
        self._held: dict[str, set[bytes]] = {}
        self._names: dict[str, str] = {}  # leases key -> the limiter's key, for reports
        self._abandoned: dict[tuple[str, str, bytes], int] = {}  # (leases key, channel, token) -> releases done
        self._wake = threading.Event()

    def add(self, key: str, leases_key: str, token: bytes) -> None:
        """Renew ``token`` (a lease of limiter ``key``) until it is discarded or abandoned."""
        with self._lock:
            self._names[leases_key] = key
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

    def held(self, leases_key: str) -> list[bytes]:
        """The leases this process holds (and renews) in ``leases_key``."""
        with self._lock:
            return list(self._held.get(leases_key, ()))

    def abandon(self, leases_key: str, channel: str, token: bytes) -> None:
        """Stop renewing ``token`` and give it back from this thread, however long Redis takes."""
        with self._lock:
            tokens = self._held.get(leases_key)
            if tokens is not None:
                tokens.discard(token)
            self._abandoned.setdefault((leases_key, channel, token), 0)
        self._wake.set()
        self.start()

    def stop(self) -> None:
        super().stop()
        self._wake.set()

    def abandoned(self) -> int:
        """How many given-up leases still wait to be released (tests and stats)."""
        with self._lock:
            return len(self._abandoned)

    def _loop(self) -> None:
        renew_every = self._lease / 3
        next_renewal = time.monotonic() + renew_every
        while not self._stop.is_set():
            wait = next_renewal - time.monotonic()
            if self._abandoned:
                wait = min(wait, self.ABANDONED_RETRY)
            self._wake.wait(max(wait, 0.0))
            self._wake.clear()
            if self._stop.is_set():
                return
            self._release_abandoned()
            if time.monotonic() >= next_renewal:
                self._renew()
                next_renewal = time.monotonic() + renew_every

    def _release_abandoned(self) -> None:
        with self._lock:
            pending = list(self._abandoned)
        for leases_key, channel, token in pending:
            try:
                self._connections.run("release", [leases_key], [token, channel])
            except BackendRequestError as error:  # rejected, not unanswered: asking again would not help
                logger.error("glm_guard: %s", error)
            except Exception:  # Redis away or paused: asked again on the next turn
                return
            with self._lock:
                entry = (leases_key, channel, token)
                done = self._abandoned.get(entry, 0) + 1
                if done >= 2:
                    self._abandoned.pop(entry, None)
                else:
                    self._abandoned[entry] = done
        if self._abandoned:
            self._wake.set()  # the second release goes at once, now the first was answered

    def _renew(self) -> None:
        lease_ms = int(self._lease * 1000)
        with self._lock:
            held = [(key, list(tokens)) for key, tokens in self._held.items() if tokens]
        for leases_key, tokens in held:
            try:
                missing = self._connections.run("renew", [leases_key], [lease_ms, *tokens])
            except Exception as error:  # keep renewing the others; the lease covers a blip
                logger.warning("glm_guard: could not renew leases on %s: %s", leases_key, type(error).__name__)
                continue
            if not missing:
                continue
            with self._lock:
                still_held = set(self._held.get(leases_key, ()))
            lost = [token for token in missing if token in still_held]
            for token in missing:
                if token not in still_held:  # given back while this renewal was on its way: again
                    self.abandon(leases_key, _channel(leases_key), token)
            if lost:
                self._report_lost(self._names.get(leases_key, leases_key), len(lost))

    @staticmethod
    def _report_lost(key: str, count: int) -> None:
        logger.warning(
            "glm_guard: %d concurrency lease(s) on %s had expired or vanished before this process renewed them "
            "(a process frozen for longer than the lease, or Redis lost its data); their slots may have been "
            "given to other callers meanwhile, so more calls than the limit may be in flight until they end",
            count,
            key,
        )
        emit(LeaseLost(key, count, wall_clock()))


def _channel(leases_key: str) -> str:
    """The release channel of the limiter whose leases live at ``leases_key`` (see ``RedisBackend.key``)."""
    return leases_key.removesuffix("leases") + "released"


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
        self._waiters: dict[str, set[Callable[[], None]]] = {}

    def watch(self, channel: str, wake: Callable[[], None]) -> None:
        """Call ``wake()`` on the next release notice on ``channel``, until ``unwatch``."""
        with self._lock:
            self._waiters.setdefault(channel, set()).add(wake)
        self.start()

    def unwatch(self, channel: str, wake: Callable[[], None]) -> None:
        with self._lock:
            wakers = self._waiters.get(channel)
            if wakers is not None:
                wakers.discard(wake)
                if not wakers:
                    del self._waiters[channel]

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
            wakers = list(self._waiters.get(name, ()))
        for wake in wakers:
            wake()
