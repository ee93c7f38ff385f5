"""The built-in stats recorder: a subscriber that counts every event, here or in a shared store.

Its callback only appends the event to a buffer, so a guarded call pays for an append; a
daemon thread folds the buffer into per-minute counters every second (and before every
read), and, when the process shares its stats, adds them to the backend's
:class:`~glm_guard.backends.SharedStats` store, so every reader sees the whole fleet.

Where the numbers go: ``configure_stats(backend=...)`` when called; else the backend
``GLM_GUARD_BACKEND`` names, when it shares stats (Redis); else the first backend that shares
stats a guard was given explicitly (``LLMClient(backend=...)``'s, say); else nowhere but here.
A process that dies loses what it recorded since its last flush (about one second).  A worker
process started by ``multiprocessing`` (a ``Pool`` worker) may be ended by ``terminate()`` or
leave through ``os._exit``, where no exit hook runs, so there every finished call is flushed
before it returns to its caller.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final, Protocol

from .. import _config
from .._errors import ConfigurationError
from ..backends._base import Counters, SharedStats, SharesStats
from ._counters import RETENTION_MINUTES, ProcessCounters, fold, merge
from ._events import CallEvent, GuardEvent, subscribe

if TYPE_CHECKING:
    from ..backends._base import Backend

__all__ = ["RECORDER", "CounterSource", "Recorder", "configure_stats", "ensure_started"]

logger = logging.getLogger("glm_guard")

FLUSH_SECONDS: Final = 1.0
ALERT_CHECK_SECONDS: Final = 10.0


class CounterSource(Protocol):
    """Somewhere counters can be read from: this process, or a shared store."""

    name: str

    def totals(self) -> Counters: ...

    def window(self, first_minute: int, last_minute: int) -> Counters: ...


def _settings_signature(settings: _config.Settings) -> tuple[str, str | None, str]:
    return (settings.backend, settings.redis_url, settings.key_prefix)


class Recorder:
    """Counts events into per-minute counters and ships them to the shared store, once a second.

    ``clock`` is the wall clock that decides which minutes a read covers (tests pass a fake one).
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.local = ProcessCounters()
        self.buffer: collections.deque[GuardEvent] = collections.deque()  # appends and pops are atomic
        self._codes: dict[str, str] = {}
        self._pending: dict[int, Counters] = {}
        self._default_sink: tuple[tuple[str, str | None, str], SharedStats] | None = None
        self._named_sink: SharedStats | None = None
        self._explicit_sink: SharedStats | None = None
        self._explicitly_local = False
        self._unsubscribe: Callable[[], None] | None = None
        self._thread: threading.Thread | None = None
        self._new_locks()
        self._flush_failing = False
        self.flush_every_call = False
        self.alert_check: Callable[[], object] | None = None

    def _new_locks(self) -> None:
        self._lock = threading.Lock()
        self._drain_lock = threading.Lock()  # a reader waits for a count under way
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()

    # -- recording on and off --------------------------------------------------------------------

    @property
    def recording(self) -> bool:
        return self._unsubscribe is not None

    def set_recording(self, enabled: bool) -> None:
        with self._lock:
            if self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None
            if enabled:
                # Usually the subscriber is the buffer's own append: a call pays for no more.
                self._unsubscribe = subscribe(self._record_and_flush if self.flush_every_call else self.buffer.append)

    def _record_and_flush(self, event: GuardEvent) -> None:
        self.buffer.append(event)
        if event.__class__ is CallEvent and not self._flush_failing and self.sink():
            self.sync()

    def flush_after_every_call(self) -> None:
        """From now on each finished call reaches the sink before it returns (a worker process)."""
        self.flush_every_call = True
        if self.recording:
            self.set_recording(True)

    # -- the sink --------------------------------------------------------------------------------

    def note_backend(self, backend: object, *, chosen_by_environment: bool) -> None:
        """A guard was applied with ``backend``: when it shares stats, this process may report there.

        The backend ``GLM_GUARD_BACKEND`` names wins; else the first shared one a guard named.
        """
        if not isinstance(backend, SharesStats):
            return
        store = backend.shared_stats()
        if not chosen_by_environment:
            if self._named_sink is None:
                self._named_sink = store
            return
        settings = _config._settings
        current = self._default_sink
        if settings is not None and (current is None or current[1] is not store):
            self._default_sink = (_settings_signature(settings), store)

    def forget_backends(self) -> None:
        """Share nowhere until a guard or ``configure_stats`` names a store again (tests)."""
        self._default_sink = self._named_sink = self._explicit_sink = None
        self._explicitly_local = False

    def set_sink(self, store: SharedStats | None, *, local: bool = False) -> None:
        self._explicit_sink = store
        self._explicitly_local = local

    def sink(self) -> SharedStats | None:
        """Where this process's counters are shared now, if anywhere."""
        if self._explicit_sink is not None:
            return self._explicit_sink
        if self._explicitly_local:
            return None
        if self._default_sink is not None:
            signature, store = self._default_sink
            current = _config._settings
            # Settings reloaded with another backend: decorators applied from now on go elsewhere.
            if current is not None and _settings_signature(current) == signature:
                return store
        return self._named_sink

    def source(self) -> CounterSource:
        sink = self.sink()
        return self.local if sink is None else sink

    # -- folding and flushing ----------------------------------------------------------------------

    def drain(self) -> None:
        """Fold everything buffered so far into the counters (and into what the sink still needs).

        A reader's drain waits for one under way in another thread: events taken from the buffer
        but not yet counted would be missing from what the reader reads next.
        """
        with self._drain_lock:
            buffer = self.buffer
            events = [buffer.popleft() for _ in range(len(buffer))]
            if events:
                self.ingest(events)

    def ingest(self, events: Iterable[GuardEvent]) -> None:
        """Count ``events`` as if this process had just recorded them."""
        batch = fold(events, self._codes)
        sink = self.sink()
        with self._lock:
            self.local.add(batch, int(self.clock() // 60))
            if sink is not None:
                for minute, per_key in batch.items():
                    merge(self._pending.setdefault(minute, {}), per_key)

    def flush(self) -> None:
        """Send pending counters to the sink; on failure keep them for the next try."""
        sink = self.sink()
        with self._flush_lock:
            with self._lock:
                pending, self._pending = self._pending, {}
            if not pending or sink is None:
                return
            try:
                sink.add(pending)
            except Exception as error:
                oldest = int(self.clock() // 60) - RETENTION_MINUTES
                with self._lock:
                    for minute, per_key in pending.items():
                        if minute >= oldest:
                            merge(self._pending.setdefault(minute, {}), per_key)
                if not self._flush_failing:
                    self._flush_failing = True
                    logger.warning(
                        "glm_guard: could not write stats to the shared store (%s); keeping them for the next try",
                        type(error).__name__,
                    )
            else:
                if self._flush_failing:
                    self._flush_failing = False
                    logger.warning("glm_guard: writing stats to the shared store again")

    def sync(self) -> None:
        """Drain and flush now, so a read sees everything this process recorded."""
        self.drain()
        self.flush()

    # -- the background thread -------------------------------------------------------------------

    def start(self) -> None:
        """Start the once-a-second thread (idempotent; a forked child starts its own)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="glm-guard-stats", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, *, join: bool = False) -> None:
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if join and thread is not None and thread is not threading.current_thread():
            thread.join(5)

    def _run(self) -> None:
        next_check = time.monotonic() + ALERT_CHECK_SECONDS
        while not self._stop.is_set():
            self._wake.wait(FLUSH_SECONDS)
            self._wake.clear()
            try:
                self.sync()
            except Exception:  # never let the thread die: the next second tries again
                logger.debug("glm_guard: stats flush failed", exc_info=True)
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + ALERT_CHECK_SECONDS
                check = self.alert_check
                if check is not None:
                    try:
                        check()
                    except Exception:
                        logger.debug("glm_guard: alert check failed", exc_info=True)

    def reset(self) -> None:
        """Forget every counter of this process (tests; a forked child)."""
        self.buffer.clear()
        with self._lock:
            self.local = ProcessCounters()
            self._pending = {}

    def after_fork_in_child(self) -> None:
        running = self._thread is not None
        self._thread = None
        self._new_locks()  # a lock (or an event's) held by a parent thread stays held here
        self.reset()  # the parent reports what it recorded; the child starts from zero
        if running and self.recording:
            self.start()


RECORDER = Recorder()
_configured = False


def ensure_started() -> None:
    """At the first decoration: take ``GLM_GUARD_STATS`` into account and start the thread."""
    global _configured
    if not _configured:
        _configured = True
        settings = _config._settings or _config.get_settings()
        RECORDER.set_recording(settings.stats_enabled)
        atexit.register(_flush_at_exit)
        _flush_every_call_in_worker_processes()
    if RECORDER.recording:
        RECORDER.start()


def _flush_at_exit() -> None:
    try:
        RECORDER.stop()
        RECORDER.sync()
    except Exception:
        logger.debug("glm_guard: final stats flush failed", exc_info=True)


def _flush_every_call_in_worker_processes() -> None:
    import multiprocessing.util

    multiprocessing.util.register_after_fork(RECORDER, _in_a_worker_process)


def _in_a_worker_process(recorder: Recorder) -> None:
    recorder.flush_after_every_call()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=RECORDER.after_fork_in_child)


def configure_stats(*, enabled: bool | None = None, backend: str | Backend | None = None) -> None:
    """Turn recording on or off, or choose where this process shares its counters.

    ``enabled=False`` stops recording (as ``GLM_GUARD_STATS=0`` does); calls then cost only a
    flag check.  ``backend`` is ``"local"`` (keep counters in this process even when
    ``GLM_GUARD_BACKEND`` is Redis), ``"redis"``, a Redis URL, or a ``RedisBackend``: every
    process naming the same one reads and writes the same counters.
    """
    global _configured
    if enabled is not None:
        if not isinstance(enabled, bool):
            raise ConfigurationError("enabled", f"must be True or False, got {enabled!r}")
        if not _configured:
            ensure_started()
        RECORDER.set_recording(enabled)
        if enabled:
            RECORDER.start()
    if backend is not None:
        if isinstance(backend, str) and backend.strip().lower() == "local":
            RECORDER.set_sink(None, local=True)
            return
        from ..backends import get_backend

        store = get_backend(backend)
        if not isinstance(store, SharesStats):
            raise ConfigurationError("backend", "must be 'local' or a backend that shares stats, such as Redis")
        RECORDER.sync()
        RECORDER.set_sink(store.shared_stats())
