"""One admission through Redis: what the acquire script is told, what its replies mean, and the waiting.

``acquire.lua`` checks the cooldown, the window and the concurrency leases at once, on the
server's clock, and under contention reserves the next legal start instead of refusing: the
caller sleeps until then and starts without asking again.  Within a process one caller per
key talks to Redis at a time, and of those refused for want of a slot only the first asks
again (``_gates``), so a thousand waiting tasks cost Redis what one does.

A caller that goes away (cancelled, timed out) at any point gives back what it may hold at
once: a lease whose grant it did not see is released in the background (``LeaseKeeper``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Final, NamedTuple, TypeVar

from ..._auto_concurrency import AutoConcurrency
from ..._errors import BackendError, RateLimitTimeout
from .._base import LimitPolicy
from .._local import _resolve
from .._pauses import KeyPaused
from ._gates import ASKERS_PER_KEY, Gate
from ._steps import Ask, AwaitRelease, QueueForSlot, Sleep, Step, Steps, TakeShare
from ._tokens import new_token

if TYPE_CHECKING:
    from ._backend import RedisBackend
    from ._local_share import LocalShare

T = TypeVar("T")

#: How long a waiter for a concurrency slot sleeps at most before asking again, in case
#: the release notice was missed (a holder that died gives its slot back by lease expiry).
CONCURRENCY_POLL_SECONDS: Final = 0.25
#: A caller that may start this much after the moment Redis gave it gives the slot back and
#: asks again: started that late it could share a window with the starts given after its own.
#: The moment is known only within the request's round trip, so that counts as late too.
LATE_START_SECONDS: Final = 0.01
#: Redis decides a start on its clock; the caller starts after the reply arrives (and any
#: sleep).  The window is kept this much longer than ``period`` (at most 2 % of it), so a
#: start up to LATE_START_SECONDS late, as the caller sees it, still never shares a window
#: with ``calls`` others.  A 60 s window loses 0.03 % of its budget, a 1 s window 2 %.
WINDOW_MARGIN_SECONDS: Final = 0.02

_ADMITTED, _RESERVED = 1, 2  # the acquire script's reply codes; 0 refuses
_CONCURRENCY_BOUND = 3  # a refusal's reason: every slot is held
_PAUSED = 4  # a refusal's reason: a pause refuses every call
_TOKENS_BOUND = 5  # a refusal's reason: the token budget is spent (a settle may free some)
_FREED_BY_RELEASE = (_CONCURRENCY_BOUND, _TOKENS_BOUND)  # a release or a settle may end these waits


class Grant(NamedTuple):
    """What an admission holds: its lease (``None`` without a concurrency limit), and under a
    learned limit the epoch it was admitted in, which its answer must name to teach the limit."""

    token: bytes | None
    epoch: int | None = None
    limit: int | None = None  # the learned limit the admission was made under
    probe: int | None = None  # the start of the pause this call probes (see ``_pauses``)
    running: int = 0  # under a learned limit: the calls running when it was admitted, itself included
    spent: bytes | None = None  # under a token budget: the token its reservation is kept under


def _granted(token: bytes | None, reply: list[Any]) -> Grant:
    """An admitting reply's long form ``{code, wait, epoch, limit, since, running}`` (-1: does not apply)."""
    if len(reply) < 6:
        return Grant(token)
    epoch, limit, since, running = (int(value) for value in reply[2:6])
    return Grant(
        token,
        None if epoch < 0 else epoch,
        None if limit < 0 else limit,
        None if since < 0 else since,
        max(running, 0),
    )


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def window_ms(period: float) -> int:
    """The window the script enforces for ``period``: the period plus its margin, in ms."""
    return int(period * 1000) + int(min(WINDOW_MARGIN_SECONDS, period * 0.02) * 1000)


def remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


class SharedAdmission:
    """Admits calls of one key through Redis, for every thread and event loop of this process.

    ``local_share`` is the key's share for outages: its limiter holds the cooldown this process
    set last (read, not asked, when a reserved start wakes), and it counts some leases as its
    own calls, so every lease this admission drops is reported to it.
    """

    def __init__(self, backend: RedisBackend, key: str, local_share: LocalShare) -> None:
        self.key = key
        self._backend = backend
        self._local_share = local_share
        self.starts_key = backend.key(key, "starts")
        self.leases_key = backend.key(key, "leases")
        self.learned_key = backend.key(key, "learned")
        self.pause_key = backend.key(key, "paused")
        cooldown_key = backend.key(key, "cooldown")
        self.spent_key = backend.key(key, "spent")
        self.sizes_key = backend.key(key, "spent_sizes")
        self.keys = [  # acquire.lua's
            self.starts_key,
            self.leases_key,
            cooldown_key,
            self.learned_key,
            self.pause_key,
            self.spent_key,
            self.sizes_key,
            backend.key(key, "burst"),
        ]
        self.channel = backend.key(key, "released")
        self._askers = Gate(ASKERS_PER_KEY)  # this process's callers talking to Redis about the key
        self._slot_queue = Gate(1)  # its callers refused for want of a slot: only the first asks again
        self._lease_ms = int(backend.lease * 1000)
        self._round_trip = 0.0  # the usual admission round trip, a floor that drifts up slowly
        self.ever_answered = False  # Redis answered an admission of this key here: its window is in use

    def after_fork(self) -> None:
        """The parent's threads are gone from a forked child: so are their places in the queues."""
        self._askers.after_fork()
        self._slot_queue.after_fork()

    def _args(self, policy: LimitPolicy, deadline: float | None) -> list[Any]:
        """The acquire script's arguments: the limits as one string, and a fresh token."""
        left_ms = -1 if deadline is None else max(int((deadline - time.monotonic()) * 1000), 0)
        window = window_ms(policy.period) if policy.calls else int(policy.period * 1000)
        concurrency = policy.concurrency
        if isinstance(concurrency, AutoConcurrency):  # the script reads the learned limit
            learning = f" {concurrency.min} {concurrency.max} {concurrency.start}"
            limits = f"{policy.calls or 0} {window} 0 {self._lease_ms} {left_ms}{learning}"
        else:
            limits = f"{policy.calls or 0} {window} {concurrency or 0} {self._lease_ms} {left_ms}"
        if policy.tokens is None and policy.burst is None:
            return [limits, new_token()]
        # The same step checks the token budget and the burst cap (ARGV[3] is the tests' clock).
        tokens = "" if policy.tokens is None else f"{policy.tokens} {policy.reserve} {window_ms(policy.period)}"
        burst = "" if policy.burst is None else f"{policy.burst[0]} {window_ms(policy.burst[1])}"
        return [limits, new_token(), "", tokens, burst]

    def _paused(self) -> bool:
        """A pause this process set is in force (checked without a round trip): a cooldown, or
        the local share's pause into an outage (then the check costs one needless round trip).

        A reserved caller re-checks Redis only then: asking on every reserved start would add
        a round trip that, under a crowd, delays starts into the next window.  A cooldown set
        by another process after the reservation was made is not seen by it (known gap).
        """
        return self._local_share.limiter.state.cooldown_until > time.monotonic()

    def _late(self, policy: LimitPolicy, sent: float, answered: float, wait: float) -> bool:
        """Whether a start given by a request sent at ``sent`` may now be too late to take.

        Redis chose it at some moment after ``sent``; only the part of the round trip beyond
        the usual one counts, so a distant Redis does not make every start late.
        """
        if policy.calls is None and policy.tokens is None and policy.burst is None:
            return False  # no window to share
        trip = answered - sent
        usual = self._round_trip
        self._round_trip = trip if trip < usual or not usual else usual + (trip - usual) * 0.01
        return time.monotonic() - (sent + wait) > LATE_START_SECONDS + min(usual or trip, trip)

    def _hold(self, policy: LimitPolicy, token: bytes) -> bytes | None:
        """An admission's lease, now renewed by this process; ``None`` without a concurrency limit."""
        if policy.concurrency is None:
            return None
        self._backend.leases.add(self.key, self.leases_key, self.channel, token)
        return token

    def abandon(self, token: bytes) -> None:
        """Give ``token``'s lease back from the background: its caller is gone, or Redis did not answer."""
        self._local_share.lease_ended(token)
        self._backend.leases.abandon(self.leases_key, self.channel, token)

    def _unreserve(self, token: bytes) -> None:
        """Give back, from the background, the start (and lease) reserved for a caller that went away."""
        self._local_share.lease_ended(token)
        self._backend.leases.unreserve(self.keys, token)

    def _refused_wait(self, reply: list[Any], deadline: float | None, max_wait: float | None) -> float:
        """How long a refused caller sleeps before asking again; raises when past ``deadline``."""
        wait = max(int(reply[1]), 1) / 1000.0
        concurrency_bound = int(reply[2]) in _FREED_BY_RELEASE
        if concurrency_bound:
            wait = min(wait, CONCURRENCY_POLL_SECONDS)
        if deadline is not None and max_wait is not None:
            left = deadline - time.monotonic()
            if concurrency_bound and left <= 0:
                raise RateLimitTimeout(self.key, max_wait, None)
            if not concurrency_bound and wait > left:
                raise RateLimitTimeout(self.key, max_wait, max_wait - left + wait)
            wait = min(wait, max(left, 0.0))
        return wait

    def admission(self, policy: LimitPolicy, max_wait: float | None) -> Generator[Step, Any, Grant]:
        """Every decision of one admission, without I/O: it yields what to do, the driver does it.

        The driver sends back each step's outcome (the script's reply), or throws in its
        failure.  Returns the lease now held, and its epoch under a learned limit.
        A caller refused for want of a slot queues behind this process's earlier ones and
        asks again when it is first and a slot was given back.  A start taken late, or
        reserved across a cooldown, is given back and the caller asks again: up to three
        times for lateness, so a slow host still gets its turn.  Whatever goes wrong, a
        lease or a reserved start this caller may hold is given back before the failure leaves.
        """
        self._backend.heartbeat.start()
        patience = 3
        deadline = None if max_wait is None else time.monotonic() + max_wait
        leave_queue: Callable[[], None] | None = None
        try:
            if policy.concurrency is not None or policy.tokens is not None:  # behind this process's waiting callers
                leave_queue, _ = yield from self._queue_for_slot(deadline, max_wait, if_busy=True)
            while True:
                while True:
                    args = self._args(policy, deadline)
                    token = args[1]
                    sent = time.monotonic()
                    try:
                        reply = yield Ask("acquire", self.keys, args)
                    except BaseException:  # the script may have run: a start and a lease nobody holds
                        if policy.calls is not None or policy.tokens is not None or policy.burst is not None:
                            self._unreserve(token)
                        elif policy.concurrency is not None:
                            self.abandon(token)
                        raise
                    answered = time.monotonic()
                    self.ever_answered = True
                    code = int(reply[0])
                    if code:
                        break
                    if int(reply[2]) == _PAUSED:
                        raise KeyPaused(self.key, _text(reply[3]), int(reply[1]) / 1000.0)
                    wait = self._refused_wait(reply, deadline, max_wait)
                    if int(reply[2]) not in _FREED_BY_RELEASE:
                        yield Sleep(wait)
                        continue
                    if leave_queue is None:
                        leave_queue, waited = yield from self._queue_for_slot(deadline, max_wait, if_busy=False)
                        if waited:  # others were first: a slot may have come free meanwhile
                            continue
                    yield AwaitRelease(wait)
                held = self._hold(policy, token)
                if leave_queue is not None:
                    leave_queue()  # the next in line may ask now
                    leave_queue = None
                grant = _granted(held, reply)._replace(spent=None if policy.tokens is None else token)
                # A probe keeps its start however late: the pause refuses every other caller
                # for one more interval, so nobody starts close behind it, and a probe given
                # back would leave the key paused for that interval with nothing sent.
                probing = grant.probe is not None
                if code == _ADMITTED and (probing or patience <= 0 or not self._late(policy, sent, answered, 0.0)):
                    return grant
                wait = int(reply[1]) / 1000.0 if code == _RESERVED else 0.0
                try:
                    if wait:
                        yield Sleep(wait)
                    if probing:
                        return grant
                    late = patience > 0 and (code == _ADMITTED or self._late(policy, sent, answered, wait))
                    if not late and not (wait and self._paused()):
                        return grant
                    # Not renewed while confirm may give it back: a renewal crossing it would revive it.
                    self._backend.leases.discard(self.leases_key, token)
                    paused_ms = int((yield Ask("confirm", self.keys, [token, int(late)])))
                except BaseException:  # cancelled while its start was reserved, or Redis failed
                    self._unreserve(token)
                    raise
                if paused_ms < 0:
                    return grant._replace(token=self._hold(policy, token))  # still ours
                self._local_share.lease_ended(token)
                yield Sleep(paused_ms / 1000.0)  # it gave its start back: any cooldown, then ask again
                patience -= int(late)
        finally:
            if leave_queue is not None:
                leave_queue()

    def _queue_for_slot(
        self, deadline: float | None, max_wait: float | None, *, if_busy: bool
    ) -> Generator[Step, Any, tuple[Callable[[], None] | None, bool]]:
        """Join the slot queue (``if_busy``: only behind others); ``(how to leave, whether it waited)``.

        A caller whose ``max_wait`` passes behind others still asks Redis once (a slot may be
        free: ``max_wait=0`` means "now or never", not "never while someone waits"); one
        already refused raises.
        """
        try:
            outcome: tuple[Callable[[], None] | None, bool] = yield QueueForSlot(remaining(deadline), if_busy)
        except TimeoutError:
            if if_busy:
                return None, False
            raise RateLimitTimeout(self.key, max_wait or 0.0, None) from None
        return outcome

    def _failed(self, error: BackendError) -> None:
        """Health hears of a failure before the next caller's turn, so that one does not ask a dead
        Redis too (not of a call turned away because Redis is known away: that has no cause)."""
        if error.__cause__ is not None:
            self._backend.health.failed(error)

    def run(self, core: Generator[Step, Any, T]) -> T:
        """Carry out ``core``'s steps in this thread (it may be ``admission`` or one built on it)."""
        steps = Steps(core)
        while (step := steps.next()) is not None:
            try:
                steps.outcome = self._do(step)
            except BaseException as error:
                steps.failure = error
        return steps.result

    def _do(self, step: Step) -> Any:
        match step:
            case Ask(script, keys, args):
                with self._askers.threads:
                    if not self._backend.health.available():  # failed while this caller queued
                        raise self._backend.health.error()
                    try:
                        return self._backend.connections.run(script, keys, args)
                    except BackendError as error:
                        self._failed(error)
                        raise
            case TakeShare(policy, max_wait):
                self._local_share.limiter.acquire(policy, max_wait)
            case Sleep(seconds):
                time.sleep(seconds)
            case AwaitRelease(seconds):
                released = threading.Event()
                self._backend.listener.watch(self.channel, released.set)
                try:
                    released.wait(seconds)
                finally:
                    self._backend.listener.unwatch(self.channel, released.set)
            case QueueForSlot(max_wait, if_busy):
                leave = self._slot_queue.try_enter()
                if leave is not None:
                    if if_busy:
                        leave()
                        return None, False
                    return leave, False
                return self._slot_queue.enter(max_wait), True
        return None

    async def run_async(self, core: Generator[Step, Any, T]) -> T:
        steps = Steps(core)
        while (step := steps.next()) is not None:
            try:
                steps.outcome = await self._do_async(step)
            except BaseException as error:
                steps.failure = error
        return steps.result

    async def _do_async(self, step: Step) -> Any:
        match step:
            case Ask(script, keys, args):
                async with self._askers.for_running_loop():
                    if not self._backend.health.available():
                        raise self._backend.health.error()
                    try:
                        return await self._backend.connections.run_async(script, keys, args)
                    except BackendError as error:
                        self._failed(error)
                        raise
            case TakeShare(policy, max_wait):
                await self._local_share.limiter.acquire_async(policy, max_wait)
            case Sleep(seconds):
                await asyncio.sleep(seconds)
            case AwaitRelease(seconds):
                loop = asyncio.get_running_loop()
                released: asyncio.Future[None] = loop.create_future()

                def wake() -> None:
                    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                        loop.call_soon_threadsafe(_resolve, released)

                self._backend.listener.watch(self.channel, wake)
                try:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(seconds):
                            await released
                finally:
                    self._backend.listener.unwatch(self.channel, wake)
            case QueueForSlot(max_wait, if_busy):
                leave = await self._slot_queue.try_enter_async()
                if leave is not None:
                    if if_busy:
                        leave()
                        return None, False
                    return leave, False
                return await self._slot_queue.enter_async(max_wait), True
        return None
