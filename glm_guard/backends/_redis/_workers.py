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
from typing import Any

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

    def __init__(self, connections: Connections, health: Health, key: str, live_processes: int = 1) -> None:
        super().__init__()
        self._connections = connections
        self._health = health
        self._key = key
        self._member = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.live_processes = live_processes

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

    It also gives back, in the background, what callers that went away may hold: a lease, or
    a reserved start, granted while the caller's request was on the wire (a task cancelled
    then, or a request still queued at a paused server, which runs when it wakes), or a
    release Redis did not take.  Each such request is sent twice, the second time after the
    first was answered: by then the server has read every request sent before.  A lease that
    expired under a live holder (a process frozen past its lease) is reported and put back:
    meanwhile its slot may have been given to another caller.
    """

    thread_name = "glm-guard-leases"
    #: How often a give-back is asked for again while Redis does not take it.
    GIVE_BACK_RETRY = 0.25

    def __init__(self, connections: Connections, lease: float) -> None:
        super().__init__()
        self._connections = connections
        self._lease = lease
        self._held: dict[str, set[bytes]] = {}
        self._owners: dict[str, tuple[str, str]] = {}  # leases key -> (limiter key, release channel)
        self._give_backs: dict[tuple[str, tuple[str, ...], tuple[Any, ...]], int] = {}  # request -> times answered
        self._wake = threading.Event()

    def add(self, key: str, leases_key: str, channel: str, token: bytes) -> None:
        """Renew ``token`` (a lease of limiter ``key``) until it is discarded or abandoned."""
        with self._lock:
            self._owners[leases_key] = (key, channel)
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
        """Stop renewing ``token`` and release it from this thread, however long Redis takes."""
        self.discard(leases_key, token)
        self._give_back("release", (leases_key,), (token, channel))

    def unreserve(self, keys: list[str], token: bytes) -> None:
        """Like ``abandon``, and give back the start reserved with it (``keys``: acquire.lua's)."""
        self.discard(keys[1], token)
        self._give_back("confirm", tuple(keys), (token, 1))  # confirm with "late": start and lease back

    def _give_back(self, script: str, keys: tuple[str, ...], args: tuple[Any, ...]) -> None:
        with self._lock:
            self._give_backs.setdefault((script, keys, args), 0)
        self._wake.set()
        self.start()

    def stop(self) -> None:
        super().stop()
        self._wake.set()

    def abandoned(self) -> int:
        """How many give-backs still wait for Redis (tests and stats)."""
        with self._lock:
            return len(self._give_backs)

    def _loop(self) -> None:
        renew_every = self._lease / 3
        next_renewal = time.monotonic() + renew_every
        while not self._stop.is_set():
            wait = next_renewal - time.monotonic()
            if self._give_backs:
                wait = min(wait, self.GIVE_BACK_RETRY)
            self._wake.wait(max(wait, 0.0))
            self._wake.clear()
            if self._stop.is_set():
                return
            self._send_give_backs()
            if time.monotonic() >= next_renewal:
                self._renew()
                next_renewal = time.monotonic() + renew_every

    def _send_give_backs(self) -> None:
        with self._lock:
            pending = list(self._give_backs)
        for request in pending:
            script, keys, args = request
            try:
                self._connections.run(script, list(keys), list(args))
            except BackendRequestError as error:  # rejected, not unanswered: asking again would not help
                logger.error("glm_guard: %s", error)
            except Exception:  # Redis away or paused: asked again on the next turn
                return
            with self._lock:
                answered = self._give_backs.get(request, 0) + 1
                if answered >= 2:
                    self._give_backs.pop(request, None)
                else:
                    self._give_backs[request] = answered
        if self._give_backs:
            self._wake.set()  # the second request goes at once, now the first was answered

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
                key, channel = self._owners[leases_key]
            for token in missing:
                if token not in still_held:  # given back while this renewal was on its way: again
                    self.abandon(leases_key, channel, token)
            lost = sum(1 for token in missing if token in still_held)
            if lost:
                self._report_lost(key, lost)

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
