"""Rate, concurrency and cooldown for one key, shared through Redis, and what happens when it is away.

Admission itself is ``_admission``'s; this is the limiter around it: the ``on_backend_error``
policy, this process's share of the limits during and just after an outage
(``_local_share``), and giving leases back and setting the cooldown, which never raise into a
caller's result.  Like admission, the policy is one generator of steps, carried out by the
same sync and async drivers, so both flavours decide alike.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator
from enum import Enum
from typing import TYPE_CHECKING, Any

from ..._auto_concurrency import AutoConcurrency
from ..._errors import BackendError, BackendRequestError
from .._base import AsyncPermit, LearnedState, Limiter, LimitPolicy, Permit, ProviderLeft
from .._learned import report_limit
from ._admission import Grant, SharedAdmission, remaining, window_ms
from ._local_share import LocalShare
from ._permits import (
    NO_LEASE,
    NO_LEASE_ASYNC,
    AsyncInGrace,
    AsyncLease,
    AsyncLocalOnly,
    AsyncProbing,
    AsyncSpend,
    AsyncUnshared,
    InGrace,
    Learning,
    Lease,
    Probing,
    Spend,
    Unshared,
)
from ._steps import Ask, Step, TakeShare
from ._tokens import new_token

if TYPE_CHECKING:
    from ._backend import RedisBackend

logger = logging.getLogger("glm_guard")


class _Admitted(Enum):
    """What an admission holds, which decides its permit."""

    BY_REDIS = "by Redis"  # with a lease token, or none without a concurrency limit
    BY_BOTH = "by Redis and the local share"  # in the grace time after an outage
    BY_SHARE = "by the local share"  # Redis away: with a token when a concurrency limit applies
    UNLIMITED = "by nobody"  # Redis away, policy "open"


class RedisLimiter(Limiter):
    """One key's limits in Redis; while Redis is away, each policy's ``on_backend_error`` decides."""

    def __init__(self, backend: RedisBackend, key: str) -> None:
        self.key = key
        self._backend = backend
        self._local_share = LocalShare(key)  # serves the "local" policy while Redis is away, and just after
        self._redis_admission = SharedAdmission(backend, key, self._local_share)
        self._leases_key = self._redis_admission.leases_key
        self._channel = self._redis_admission.channel
        self._cooldown_key = self._redis_admission.keys[2]
        self._lease_ms = int(backend.lease * 1000)
        self._learned_key = self._redis_admission.learned_key
        self._pause_key = self._redis_admission.pause_key
        self._learned_limit: int | None = None  # as Redis last told this process (stats; the share in an outage)
        self._learned_epoch = 0
        self.fixed_limit: int | None = None  # the last ``concurrency=N`` admitted under (monitoring)

    def __repr__(self) -> str:
        return f"<RedisLimiter {self.key!r}>"

    def after_fork(self) -> None:
        """The parent's threads are gone from a forked child: so are their places and permits."""
        self._redis_admission.after_fork()
        self._local_share.after_fork()

    # -- the Limiter interface: one decision, two drivers, a permit per flavour ---------------

    def acquire(self, policy: LimitPolicy, max_wait: float | None) -> Permit:
        self._note_fixed(policy)
        admitted, grant = self._redis_admission.run(self._admission(policy, max_wait))
        spent, settles_lease = _spending(admitted, grant, policy)
        permit = self._permit(admitted, grant._replace(token=None) if settles_lease else grant, policy)
        if grant.probe is not None:
            permit = Probing(permit, self, grant.probe)
        return permit if spent is None else Spend(self, spent, settles_lease, permit)  # outermost: given ``used``

    async def acquire_async(self, policy: LimitPolicy, max_wait: float | None) -> AsyncPermit:
        self._note_fixed(policy)
        admitted, grant = await self._redis_admission.run_async(self._admission(policy, max_wait))
        spent, settles_lease = _spending(admitted, grant, policy)
        permit = self._async_permit(admitted, grant._replace(token=None) if settles_lease else grant, policy)
        if grant.probe is not None:
            permit = AsyncProbing(permit, self, grant.probe)
        return permit if spent is None else AsyncSpend(self, spent, settles_lease, permit)

    def _note_fixed(self, policy: LimitPolicy) -> None:
        if isinstance(policy.concurrency, int):
            self.fixed_limit = policy.concurrency

    def _permit(self, admitted: _Admitted, grant: Grant, policy: LimitPolicy) -> Permit:
        token = grant.token
        if admitted is _Admitted.BY_REDIS:
            return NO_LEASE if token is None else Lease(self, token, _learning(policy, grant))
        if admitted is _Admitted.BY_BOTH:
            lease = NO_LEASE if token is None else Lease(self, token, _learning(policy, grant))
            return InGrace(lease, self._local_share, token)
        if admitted is _Admitted.BY_SHARE:
            return self._local_share.limiter if token is None else Unshared(self, token)
        return NO_LEASE

    def _async_permit(self, admitted: _Admitted, grant: Grant, policy: LimitPolicy) -> AsyncPermit:
        token = grant.token
        if admitted is _Admitted.BY_REDIS:
            return NO_LEASE_ASYNC if token is None else AsyncLease(self, token, _learning(policy, grant))
        if admitted is _Admitted.BY_BOTH:
            lease = NO_LEASE_ASYNC if token is None else AsyncLease(self, token, _learning(policy, grant))
            return AsyncInGrace(lease, self._local_share, token)
        if admitted is _Admitted.BY_SHARE:
            return AsyncLocalOnly(self._local_share.limiter) if token is None else AsyncUnshared(self, token)
        return NO_LEASE_ASYNC

    def learned_limit(self) -> int | None:
        return self._learned_limit

    def learned_state(self) -> LearnedState | None:
        """As Redis last told this process; ``RedisBackend.learned_limits`` reads Redis itself."""
        limit = self._learned_limit
        return None if limit is None else LearnedState(limit, self._learned_epoch)

    # -- the outage policy around admission --------------------------------------------------

    def _admission(self, policy: LimitPolicy, max_wait: float | None) -> Generator[Step, Any, tuple[_Admitted, Grant]]:
        """Through Redis while it answers; else by ``on_backend_error``; both just after an outage."""
        deadline = None if max_wait is None else time.monotonic() + max_wait
        if self._backend.health.available():
            try:
                if policy.on_backend_error != "local":
                    return _Admitted.BY_REDIS, (yield from self._shared(policy, max_wait))
                if self._local_share.must_adopt:
                    yield from self._adopt(policy)
                if not self._local_share.in_grace(policy.period):
                    return _Admitted.BY_REDIS, (yield from self._shared(policy, max_wait))
                return (yield from self._in_grace(policy, deadline))
            except BackendError as error:
                if policy.on_backend_error == "closed":
                    raise
                logger.debug("glm_guard: %s served by its on_backend_error policy after %s", self.key, error)
        elif policy.on_backend_error == "closed":
            raise self._backend.health.error()
        self._backend.health.served_without_redis()
        if policy.on_backend_error == "open":
            return _Admitted.UNLIMITED, Grant(None)
        self._serving_without_redis(policy)
        yield TakeShare(self._backend.share(policy, self._learned_limit), remaining(deadline))
        return _Admitted.BY_SHARE, Grant(self._running_without_redis(policy))

    def _in_grace(self, policy: LimitPolicy, deadline: float | None) -> Generator[Step, Any, tuple[_Admitted, Grant]]:
        """Just after an outage: this process's share first, then Redis (see ``_local_share``)."""
        yield TakeShare(self._backend.share(policy, self._learned_limit), remaining(deadline))
        try:
            grant = yield from self._shared(policy, remaining(deadline))
        except BackendError:  # away again: the share's admission stands alone ("local" only here)
            self._backend.health.served_without_redis()
            self._serving_without_redis(policy)
            return _Admitted.BY_SHARE, Grant(self._running_without_redis(policy))
        except BaseException:
            self._local_share.limiter.release()
            raise
        self._local_share.redis_answered()
        self._local_share.both_admitted(grant.token)
        return _Admitted.BY_BOTH, grant

    def _shared(self, policy: LimitPolicy, max_wait: float | None) -> Generator[Step, Any, Grant]:
        """An admission through Redis; the learned limit it was made under is remembered for
        ``stats()``, and as the limit this process's share divides if Redis goes away."""
        grant = yield from self._redis_admission.admission(policy, max_wait)
        if grant.limit is not None:
            self._learned_limit = grant.limit
            self._learned_epoch = grant.epoch or 0
        return grant

    def _serving_without_redis(self, policy: LimitPolicy) -> None:
        self._local_share.serving_without_redis(
            policy,
            after_shared=self._redis_admission.ever_answered,
            held=self._backend.leases.held(self._leases_key),
        )

    def _running_without_redis(self, policy: LimitPolicy) -> bytes | None:
        """The token Redis will know this call by once it is adopted; ``None`` without a concurrency limit."""
        if policy.concurrency is None:
            return None
        token = new_token()
        self._local_share.served(token)
        return token

    def _adopt(self, policy: LimitPolicy) -> Generator[Step, Any, None]:
        """Before the first shared admission after serving without Redis: Redis takes over what
        this share did meanwhile (its running calls, its recent starts and token reservations)
        and the leases this process held across the outage, which a restarted Redis lost."""
        due = self._local_share.take_adoption(policy.period)
        if due is None:
            return
        running = due.running
        held = self._backend.leases.held(self._leases_key)
        starts = [item for age in due.starts for item in (new_token(), int(age * 1000))]
        window = window_ms(policy.period) if policy.calls else 0
        token_window = window_ms(policy.period) if policy.tokens is not None else 0
        reserved = [item for age, tokens in due.reserved for item in (new_token(), int(age * 1000), tokens)]
        counts = [len(running) + len(held), len(due.starts), token_window]
        args = [self._lease_ms, policy.calls or 0, window, *counts, *running, *held, *starts, *reserved]
        keys = [*self._redis_admission.keys[:2], self._redis_admission.spent_key, self._redis_admission.sizes_key]
        try:
            yield Ask("adopt", keys, args)
        except BaseException:
            self._local_share.adoption_failed(running)
            raise
        self._local_share.adopted(running, self._renew)
        still_held = set(self._backend.leases.held(self._leases_key))
        for token in held:
            if token not in still_held:  # ended while the request was on its way: written back, so again
                self._redis_admission.abandon(token)

    def _renew(self, token: bytes) -> None:
        self._backend.leases.add(self.key, self._leases_key, self._channel, token)

    # Giving back and cooling down never raise into the caller's result: if Redis is away
    # the lease is given back in the background once it answers, and the pause is kept in
    # this process instead.

    def unshared_finished(self, token: bytes) -> None:
        self._local_share.limiter.release()
        if self._local_share.finished(token):
            self.give_back(token)

    async def unshared_finished_async(self, token: bytes) -> None:
        self._local_share.limiter.release()
        if self._local_share.finished(token):
            await self.give_back_async(token)

    def give_back(self, token: bytes, lesson: list[object] | None = None) -> None:
        """Give the lease back, and with ``lesson`` (``Learning.lesson``) teach the learned limit in the same step."""
        self._local_share.lease_ended(token)
        if self._backend.health.available():
            self._backend.leases.discard(self._leases_key, token)
            try:
                if lesson is None:
                    self._backend.connections.run("release", [self._leases_key], [token, self._channel])
                else:
                    keys = [self._leases_key, self._learned_key]
                    self._learned(self._backend.connections.run("learn", keys, [token, self._channel, *lesson]))
                return
            except BackendError as error:
                self._backend.health.failed(error)
            except BackendRequestError as error:  # a bug, not an outage: the lease runs out by itself
                _rejected(error)
                return
        self._redis_admission.abandon(token)  # Redis away: released as soon as it answers, not after the lease

    async def give_back_async(self, token: bytes, lesson: list[object] | None = None) -> None:
        self._local_share.lease_ended(token)
        if self._backend.health.available():
            self._backend.leases.discard(self._leases_key, token)
            try:
                if lesson is None:
                    await self._backend.connections.run_async("release", [self._leases_key], [token, self._channel])
                else:
                    keys = [self._leases_key, self._learned_key]
                    reply = await self._backend.connections.run_async("learn", keys, [token, self._channel, *lesson])
                    self._learned(reply)
                return
            except BackendError as error:
                self._backend.health.failed(error)
            except BackendRequestError as error:
                _rejected(error)
                return
            except BaseException:  # cancelled mid-release: it is finished in the background
                self._redis_admission.abandon(token)
                raise
        self._redis_admission.abandon(token)

    # Settling a token reservation: one script gives the lease back too, when the permit holds it.

    def _settle_request(
        self, token: bytes, lease: bool, used: int | None, told: ProviderLeft | None
    ) -> tuple[list[str], list[object]] | None:
        if lease:
            self._local_share.lease_ended(token)
        if used is None and not lease and told is None:
            return None  # the answer named no usage: the estimate stays, and there is no lease
        if lease:
            self._backend.leases.discard(self._leases_key, token)
        keys = [self._leases_key, self._redis_admission.spent_key, self._redis_admission.sizes_key]
        args: list[object] = [token, self._channel, -1 if used is None else used]
        if told is not None:  # the budget follows the provider's count (see settle.lua)
            window = window_ms(told.period)
            reset = max(int(told.reset * 1000), 1)
            args += [f"{told.budget} {window}", told.tokens, reset, b"told:" + new_token()]
        return keys, args

    def settle(self, token: bytes, lease: bool, used: int | None, told: ProviderLeft | None = None) -> None:
        """Settle ``token``'s reservation to ``used`` (``None``: keep the estimate), lower the budget to
        what the provider ``told`` is left, and give its lease back when ``lease``; Redis away: the
        lease goes back later, the estimate stays counted (and the provider's word is dropped)."""
        request = self._settle_request(token, lease, used, told)
        if request is None:
            return
        if self._backend.health.available():
            try:
                self._backend.connections.run("settle", *request)
                return
            except BackendError as error:
                self._backend.health.failed(error)
            except BackendRequestError as error:
                _rejected(error)
                return
        if lease:
            self._redis_admission.abandon(token)

    async def settle_async(self, token: bytes, lease: bool, used: int | None, told: ProviderLeft | None = None) -> None:
        request = self._settle_request(token, lease, used, told)
        if request is None:
            return
        if self._backend.health.available():
            try:
                await self._backend.connections.run_async("settle", *request)
                return
            except BackendError as error:
                self._backend.health.failed(error)
            except BackendRequestError as error:
                _rejected(error)
                return
            except BaseException:  # cancelled mid-settle: the lease goes back in the background
                if lease:
                    self._redis_admission.abandon(token)
                raise
        if lease:
            self._redis_admission.abandon(token)

    def _learned(self, reply: list[Any]) -> None:
        """``learn.lua``'s answer: the limit now, and whether this process's lesson changed it."""
        self._learned_limit = int(reply[1])
        self._learned_epoch = int(reply[3])
        if int(reply[2]):
            report_limit(self.key, self._learned_limit, int(reply[3]))

    # Giving back, cooling down and pausing never raise into the caller's result.  Pauses and
    # cooldowns are kept in this process too, so they hold while Redis is away.

    def pause(self, reason: str, seconds: float, probe_every: float) -> None:
        self._local_share.limiter.pause(reason, seconds, probe_every)
        self._send("pause", [self._pause_key], [reason, int(seconds * 1000), int(probe_every * 1000)])

    async def pause_async(self, reason: str, seconds: float, probe_every: float) -> None:
        self._local_share.limiter.pause(reason, seconds, probe_every)
        await self._send_async("pause", [self._pause_key], [reason, int(seconds * 1000), int(probe_every * 1000)])

    def end_pause(self, since: int) -> None:
        self._send("unpause", [self._pause_key], [since])

    async def end_pause_async(self, since: int) -> None:
        await self._send_async("unpause", [self._pause_key], [since])

    def _send(self, script: str, keys: list[str], args: list[object]) -> None:
        """Run a script whose failure must never reach the caller's result (Redis away: skipped)."""
        if self._backend.health.available():
            try:
                self._backend.connections.run(script, keys, args)
            except BackendError as error:
                self._backend.health.failed(error)
            except BackendRequestError as error:
                _rejected(error)

    async def _send_async(self, script: str, keys: list[str], args: list[object]) -> None:
        if self._backend.health.available():
            try:
                await self._backend.connections.run_async(script, keys, args)
            except BackendError as error:
                self._backend.health.failed(error)
            except BackendRequestError as error:
                _rejected(error)

    def cooldown(self, seconds: float) -> None:
        self._local_share.limiter.cooldown(seconds)
        self._send("cooldown", [self._cooldown_key], [int(seconds * 1000)])

    async def cooldown_async(self, seconds: float) -> None:
        self._local_share.limiter.cooldown(seconds)
        await self._send_async("cooldown", [self._cooldown_key], [int(seconds * 1000)])


def _learning(policy: LimitPolicy, grant: Grant) -> Learning | None:
    concurrency = policy.concurrency
    if isinstance(concurrency, AutoConcurrency) and grant.epoch is not None:
        return Learning(concurrency, grant.epoch, grant.running)
    return None


def _spending(admitted: _Admitted, grant: Grant, policy: LimitPolicy) -> tuple[bytes | None, bool]:
    """The token a call's reservation is kept under in Redis (``None``: none to settle there), and
    whether its settle gives the lease back too (a fixed limit's; a learned one's teaches as it goes)."""
    if grant.spent is None or admitted is not _Admitted.BY_REDIS:
        return None, False  # a share's reservation, or one made in the grace time, keeps its estimate
    return grant.spent, grant.token is not None and _learning(policy, grant) is None


def _rejected(error: BackendRequestError) -> None:
    """A release, a cooldown or a pause Redis rejected: logged, never raised into the caller's result."""
    logger.error("glm_guard: %s", error)
