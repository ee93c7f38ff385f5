"""Rate, concurrency and cooldown for one key, shared through Redis, and what happens when it is away.

Admission itself is ``_admission``'s; this is the limiter around it: the ``on_backend_error``
policy, this process's share of the limits during and just after an outage (``_outage``),
and giving leases back and setting the cooldown, which never raise into a caller's result.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from ..._errors import BackendError, BackendRequestError
from .._base import AsyncPermit, Limiter, LimitPolicy, Permit
from ._admission import SharedAdmission, remaining
from ._outage import LocalShare
from ._permits import NO_LEASE, NO_LEASE_ASYNC, AsyncInGrace, AsyncLease, AsyncUnshared, InGrace, Lease, Unshared
from ._tokens import new_token

if TYPE_CHECKING:
    from ._backend import RedisBackend

logger = logging.getLogger("glm_guard")


class RedisLimiter(Limiter):
    """One key's limits in Redis; while Redis is away, each policy's ``on_backend_error`` decides."""

    def __init__(self, backend: RedisBackend, key: str) -> None:
        self.key = key
        self._backend = backend
        self._share = LocalShare(key)  # serves the "local" policy while Redis is away, and just after
        self._shared = SharedAdmission(backend, key, self._share.limiter)
        self.keys = self._shared.keys
        self.channel = self._shared.channel
        self._lease_ms = int(backend.lease * 1000)

    def __repr__(self) -> str:
        return f"<RedisLimiter {self.key!r}>"

    def after_fork(self) -> None:
        """The parent's threads are gone from a forked child: so are their places and permits."""
        self._shared.after_fork()
        self._share.after_fork()

    # -- the outage policy, decided before asking Redis and after it failed -----------------

    def _try_shared(self, policy: LimitPolicy) -> bool:
        if self._backend.health.available():
            return True
        if policy.on_backend_error == "closed":
            raise self._backend.health.error()
        return False

    def _shared_failed(self, policy: LimitPolicy, error: BackendError) -> None:
        if error.__cause__ is not None:  # Redis failed this call (not: turned away, Redis known away)
            self._backend.health.failed(error)
        if policy.on_backend_error == "closed":
            raise error

    def acquire(self, policy: LimitPolicy, max_wait: float | None) -> Permit:
        if self._try_shared(policy):
            try:
                if policy.on_backend_error == "local":
                    self._adopt()
                    if self._share.in_grace(policy.period):
                        return self._acquire_in_grace(policy, max_wait)
                return self._lease(self._shared.acquire(policy, max_wait))
            except BackendError as error:
                self._shared_failed(policy, error)
        self._backend.health.served_without_redis()
        if policy.on_backend_error == "open":
            return NO_LEASE
        self._share.serving_without_redis(policy.period, after_shared=self._shared.ever_answered)
        permit = self._share.limiter.acquire(self._backend.share(policy), max_wait)
        return permit if policy.concurrency is None else Unshared(self, self._served())

    async def acquire_async(self, policy: LimitPolicy, max_wait: float | None) -> AsyncPermit:
        if self._try_shared(policy):
            try:
                if policy.on_backend_error == "local":
                    await self._adopt_async()
                    if self._share.in_grace(policy.period):
                        return await self._acquire_in_grace_async(policy, max_wait)
                return self._lease_async(await self._shared.acquire_async(policy, max_wait))
            except BackendError as error:
                self._shared_failed(policy, error)
        self._backend.health.served_without_redis()
        if policy.on_backend_error == "open":
            return NO_LEASE_ASYNC
        self._share.serving_without_redis(policy.period, after_shared=self._shared.ever_answered)
        permit = await self._share.limiter.acquire_async(self._backend.share(policy), max_wait)
        return permit if policy.concurrency is None else AsyncUnshared(self, self._served())

    def _lease(self, token: bytes | None) -> Permit:
        return NO_LEASE if token is None else Lease(self, token)

    def _lease_async(self, token: bytes | None) -> AsyncPermit:
        return NO_LEASE_ASYNC if token is None else AsyncLease(self, token)

    # -- after an outage: the calls run without Redis join it, and the share holds a while --

    def _served(self) -> bytes:
        token = new_token()
        self._share.served(token)
        return token

    def _adopt(self) -> None:
        if self._share.must_adopt():
            pending = self._share.to_adopt()
            held = self._backend.leases.held(self.keys[1])
            self._backend.connections.run("adopt", [self.keys[1]], [self._lease_ms, *pending, *held])
            self._took_over(pending, held)

    async def _adopt_async(self) -> None:
        if self._share.must_adopt():
            pending = self._share.to_adopt()
            held = self._backend.leases.held(self.keys[1])
            await self._backend.connections.run_async("adopt", [self.keys[1]], [self._lease_ms, *pending, *held])
            self._took_over(pending, held)

    def _took_over(self, adopted: list[bytes], rewritten: list[bytes]) -> None:
        """Redis holds leases for the ``adopted`` calls now, and again for the ``rewritten`` ones
        this process held across the outage (a Redis that restarted lost them): renew the
        first, and give back any whose calls ended while the request was on its way."""
        for token in adopted:
            self._backend.leases.add(self.key, self.keys[1], token)
        ended = self._share.adopted(adopted)
        still_held = set(self._backend.leases.held(self.keys[1]))
        ended += [token for token in rewritten if token not in still_held]
        for token in ended:
            self._shared.abandon(token)

    def _acquire_in_grace(self, policy: LimitPolicy, max_wait: float | None) -> Permit:
        deadline = None if max_wait is None else time.monotonic() + max_wait
        self._share.limiter.acquire(self._backend.share(policy), max_wait)
        try:
            shared = self._lease(self._shared.acquire(policy, remaining(deadline)))
        except BackendError as error:  # away again: the share's admission stands alone
            self._shared_failed(policy, error)
            self._backend.health.served_without_redis()
            self._share.serving_without_redis(policy.period, after_shared=self._shared.ever_answered)
            return self._share.limiter if policy.concurrency is None else Unshared(self, self._served())
        except BaseException:
            self._share.limiter.release()
            raise
        self._share.redis_answered()
        return InGrace(shared, self._share.limiter)

    async def _acquire_in_grace_async(self, policy: LimitPolicy, max_wait: float | None) -> AsyncPermit:
        deadline = None if max_wait is None else time.monotonic() + max_wait
        local = await self._share.limiter.acquire_async(self._backend.share(policy), max_wait)
        try:
            shared = self._lease_async(await self._shared.acquire_async(policy, remaining(deadline)))
        except BackendError as error:
            self._shared_failed(policy, error)
            self._backend.health.served_without_redis()
            self._share.serving_without_redis(policy.period, after_shared=self._shared.ever_answered)
            return local if policy.concurrency is None else AsyncUnshared(self, self._served())
        except BaseException:
            self._share.limiter.release()
            raise
        self._share.redis_answered()
        return AsyncInGrace(shared, self._share.limiter)

    def unshared_finished(self, token: bytes) -> None:
        self._share.limiter.release()
        if self._share.finished(token):
            self.give_back(token)

    async def unshared_finished_async(self, token: bytes) -> None:
        self._share.limiter.release()
        if self._share.finished(token):
            await self.give_back_async(token)

    # Giving back and cooling down never raise into the caller's result: if Redis is away
    # the lease is given back in the background once it answers, and the pause is kept in
    # this process instead.

    def give_back(self, token: bytes) -> None:
        if self._backend.health.available():
            self._backend.leases.discard(self.keys[1], token)
            try:
                self._backend.connections.run("release", [self.keys[1]], [token, self.channel])
                return
            except BackendError as error:
                self._backend.health.failed(error)
            except BackendRequestError as error:  # a bug, not an outage: the lease runs out by itself
                _rejected(error)
                return
        self._shared.abandon(token)  # Redis away: released as soon as it answers, not after the lease

    async def give_back_async(self, token: bytes) -> None:
        if self._backend.health.available():
            self._backend.leases.discard(self.keys[1], token)
            try:
                await self._backend.connections.run_async("release", [self.keys[1]], [token, self.channel])
                return
            except BackendError as error:
                self._backend.health.failed(error)
            except BackendRequestError as error:
                _rejected(error)
                return
            except BaseException:  # cancelled mid-release: it is finished in the background
                self._shared.abandon(token)
                raise
        self._shared.abandon(token)

    def cooldown(self, seconds: float) -> None:
        self._share.limiter.cooldown(seconds)
        if self._backend.health.available():
            try:
                self._backend.connections.run("cooldown", [self.keys[2]], [int(seconds * 1000)])
            except BackendError as error:
                self._backend.health.failed(error)
            except BackendRequestError as error:
                _rejected(error)

    async def cooldown_async(self, seconds: float) -> None:
        self._share.limiter.cooldown(seconds)
        if self._backend.health.available():
            try:
                await self._backend.connections.run_async("cooldown", [self.keys[2]], [int(seconds * 1000)])
            except BackendError as error:
                self._backend.health.failed(error)
            except BackendRequestError as error:
                _rejected(error)


def _rejected(error: BackendRequestError) -> None:
    """A release or a cooldown Redis rejected: logged, never raised into the caller's result."""
    logger.error("glm_guard: %s", error)
