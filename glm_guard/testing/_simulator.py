"""The GLM chat-completions simulator: its public face, and the thread its server runs on.

The server runs its own event loop in a background thread so that sync SDK clients,
threads and the caller's own asyncio loop (pytest-asyncio) can all talk to it without
sharing a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import Self, Unpack

from ._chat import API_PREFIX
from ._config import SimulatorConfig, SimulatorOptions, StreamFailReason
from ._engine import Engine, StreamFault
from ._records import RequestRecord, SimulatorStats
from ._server import Server

__all__ = ["GLMSimulator", "run_simulator"]

log = logging.getLogger("glm_guard.testing.simulator")


def _resolve(stop: asyncio.Future[float], grace: float) -> None:
    """Ask the server to stop within ``grace`` seconds; a second request changes nothing."""
    if not stop.done():
        stop.set_result(grace)


class GLMSimulator:
    """A local stand-in for GLM's ``/api/paas/v4/chat/completions`` (OpenAI-compatible).

    Construct with a :class:`SimulatorConfig` and/or keyword options, then ``start()`` it
    (or use it as a context manager). Point an SDK at :attr:`base_url`. Behaviour can be
    changed while running with :meth:`update`, :meth:`force_next`, :meth:`set_model_fault`
    and :meth:`fail_next_streams`; all of these are thread-safe.
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        /,
        **options: Unpack[SimulatorOptions],
    ) -> None:
        base = config if config is not None else SimulatorConfig()
        self._engine = Engine(base.replace(**options) if options else base)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future[float] | None = None  # resolved with the grace period
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._port: int | None = None
        self._host = self._engine.config.host
        self._lifecycle = threading.Lock()

    # -- public properties ---------------------------------------------------------

    @property
    def config(self) -> SimulatorConfig:
        """The live configuration (replaced atomically by :meth:`update`)."""
        return self._engine.config

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._port is not None

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The bound port; with ``port=0`` it is only known once started."""
        if self._port is None:
            if self.config.port:
                return self.config.port
            raise RuntimeError("simulator not started: the port is chosen at start()")
        return self._port

    @property
    def base_url(self) -> str:
        """What both SDKs take as ``base_url``; they append ``/chat/completions``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}{API_PREFIX}"

    @property
    def chat_url(self) -> str:
        """Full URL of the chat-completions endpoint, for raw HTTP clients."""
        return f"{self.base_url}/chat/completions"

    @property
    def stats(self) -> SimulatorStats:
        """A consistent snapshot of the counters."""
        return self._engine.stats()

    # -- runtime control -----------------------------------------------------------

    def reset_stats(self) -> None:
        """Zero the counters, history and rate windows (in-flight requests are kept)."""
        self._engine.reset()

    def history(self) -> tuple[RequestRecord, ...]:
        """The last 10 000 decisions, oldest first; useful to time retries."""
        return self._engine.history()

    def update(self, **changes: Unpack[SimulatorOptions]) -> SimulatorConfig:
        """Change options at run time; returns the new config. ``host``/``port`` cannot change."""
        if {"host", "port"} & changes.keys() and self._port is not None:
            raise ValueError("host and port cannot change while running")
        new = self.config.replace(**changes)
        self._engine.set_config(new)
        return new

    def set_faults(self, faults: Mapping[str, float]) -> None:
        """Replace the random fault probabilities (``{"1305": 0.1}``)."""
        self.update(faults=faults)

    def set_model_fault(self, model: str, code: str | None) -> None:
        """Make every request for ``model`` get ``code`` (``None`` clears it)."""
        faults = dict(self.config.model_faults)
        if code is None:
            faults.pop(model, None)
        else:
            faults[model] = str(code)
        self.update(model_faults=faults)

    def force_next(self, code: str, count: int = 1, *, model: str | None = None) -> None:
        """The next ``count`` authenticated requests (for ``model``, or any) get ``code``.

        Takes precedence over limits and random faults; queued calls apply in order.
        ``sim.force_next("1302", 2)`` gives "fail twice, then succeed" for retry tests.
        """
        self._engine.force_next(str(code), count, model)

    def fail_next_streams(
        self,
        count: int = 1,
        *,
        after_chunks: int = 1,
        reason: StreamFailReason = "network_error",
    ) -> None:
        """The next ``count`` admitted streams break after ``after_chunks`` content chunks."""
        if after_chunks < 0:
            raise ValueError("after_chunks must be >= 0")
        self._engine.fail_next_streams(count, StreamFault(after_chunks, reason))

    def clear_faults(self) -> None:
        """Drop forced codes, per-model faults, random faults, overloads and stream failures."""
        self._engine.clear_forced()
        self._engine.clear_overload(None)
        self.update(faults={}, model_faults={}, stream_fail_after=None)

    # -- capacity timeline, quota, arrears, overload -------------------------------------

    def restart_timeline(self) -> float:
        """Start the capacity timeline again from its first phase, now.

        ``start()`` and setting a new ``capacity_timeline`` also restart it. Returns the
        new :attr:`timeline_origin`.
        """
        return self._engine.restart_timeline()

    @property
    def timeline_origin(self) -> float:
        """``time.monotonic()`` at which the capacity timeline's elapsed time was 0.

        With :meth:`history`'s times: ``config.capacity_at(record.time - sim.timeline_origin)``
        is the capacity that request met.
        """
        return self._engine.origin

    def capacity_at(self, monotonic_time: float) -> int | None:
        """The per-(key, model) capacity at a ``time.monotonic()`` instant of this run."""
        return self.config.capacity_at(monotonic_time - self._engine.origin)

    def exhaust_quota(self, code: str = "1308", *, reset_in: float = 3600.0, api_key: str | None = None) -> float:
        """Close the quota window now: ``api_key`` (or every key) answers ``code`` until the reset.

        ``code`` is "1308", "1310" or "1304". Returns the reset moment in epoch seconds
        (a whole second: what the message names, in China Standard Time).
        """
        return self._engine.exhaust_quota(api_key, str(code), reset_in)

    def clear_quota(self, api_key: str | None = None) -> None:
        """Reopen ``api_key``'s quota window (every window with ``None``) and reset its count."""
        self._engine.clear_quota(api_key)

    def set_arrears(self, arrears: bool | Iterable[str] = True) -> None:
        """Put every key (``True``), some keys, or none (``False``) in arrears: 1113 until cleared."""
        self.update(arrears=arrears)

    def overload_model(
        self,
        model: str,
        *,
        code: str = "1305",
        fraction: float = 1.0,
        duration: float | None = None,
        switch_to: str = "glm-4-flash",
    ) -> None:
        """Make ``model`` answer ``code`` ("1305", or "1312" naming ``switch_to``).

        Applies to a ``fraction`` of its requests (drawn from the seeded RNG), for
        ``duration`` seconds or until :meth:`clear_overload`; other models are unaffected.
        """
        self._engine.overload(model, str(code), fraction, duration, switch_to)

    def clear_overload(self, model: str | None = None) -> None:
        """End ``model``'s overload (every model's with ``None``)."""
        self._engine.clear_overload(model)

    def overloaded_models(self) -> tuple[str, ...]:
        """Models overloaded now, sorted."""
        return self._engine.overloaded()

    # -- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 5.0) -> Self:
        """Bind and serve on a background thread; returns once the port is listening."""
        with self._lifecycle:
            if self._thread is not None:
                raise RuntimeError("simulator already started")
            self._ready.clear()
            self._startup_error = None
            self._engine.restart_timeline()
            self._thread = threading.Thread(target=self._thread_main, name="glm-simulator", daemon=True)
            self._thread.start()
            if not self._ready.wait(timeout):
                raise RuntimeError("simulator did not start in time")
            error = self._take_startup_error()
            if error is not None:
                self._thread.join(timeout)
                self._thread = None
                raise error
            log.debug("GLM simulator listening on %s", self.base_url)
            return self

    def _take_startup_error(self) -> BaseException | None:
        error, self._startup_error = self._startup_error, None
        return error

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish (up to ``timeout``), then close all.

        Idempotent. ``timeout`` defaults to ``config.stop_timeout``.
        """
        with self._lifecycle:
            thread, loop, stop = self._thread, self._loop, self._stop
            if thread is None:
                return
            grace = self.config.stop_timeout if timeout is None else timeout
            if loop is not None and stop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # loop already finished
                    loop.call_soon_threadsafe(_resolve, stop, grace)
            thread.join(grace + 5.0)
            if thread.is_alive():  # pragma: no cover - only if a handler ignores cancellation
                raise RuntimeError("simulator thread did not stop")
            self._thread = None
            self._loop = None
            self._stop = None
            self._port = None
            log.debug("GLM simulator stopped")

    def __enter__(self) -> Self:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.base_url if self._port is not None else "not started"
        cfg = self.config
        return f"GLMSimulator({where}, concurrency={cfg.concurrency}, keys={len(frozenset(cfg.api_keys or ()))})"

    # -- server thread ----------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # surfaced to start(); never escapes the thread
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()
            else:  # pragma: no cover - defensive
                log.exception("GLM simulator crashed")

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = self._loop.create_future()
        await Server(self._engine).run(self._stop, self._listening)

    def _listening(self, port: int) -> None:
        self._port = port
        self._ready.set()


@contextlib.contextmanager
def run_simulator(
    config: SimulatorConfig | None = None, /, **options: Unpack[SimulatorOptions]
) -> Iterator[GLMSimulator]:
    """Start a :class:`GLMSimulator` for the duration of a ``with`` block.

    >>> with run_simulator(concurrency=1) as sim:  # doctest: +SKIP
    ...     client = openai.OpenAI(api_key="k", base_url=sim.base_url, max_retries=0)
    """
    sim = GLMSimulator(config, **options)
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()
