"""The interface every backend implements.

A backend owns shared state: one :class:`Limiter` per rate-limit key and one
:class:`CacheStore` per cache namespace.  The decorators hold no state of their own
beyond a reference to these, so moving from one process (local) to many (Redis) changes
where the state lives and nothing else.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Final, NamedTuple, Protocol

from .._auto_concurrency import AutoConcurrency
from .._errors import ConfigurationError

__all__ = [
    "BACKEND_ERROR_POLICIES",
    "AsyncPermit",
    "AutoConcurrency",
    "Backend",
    "CacheStore",
    "Counters",
    "LearnedState",
    "LearnsLimits",
    "LimitPolicy",
    "Limiter",
    "Outcome",
    "Permit",
    "ProviderLeft",
    "ReportsOutages",
    "RetryBudget",
    "RetryBudgetPolicy",
    "SharedStats",
    "SharesStats",
    "Spending",
]

#: ``local``: limit in this process with its share of the limit; ``open``: call without
#: limiting; ``closed``: raise :class:`~glm_guard.BackendError` at once.
BACKEND_ERROR_POLICIES = ("local", "open", "closed")


class Outcome(Enum):
    """What a call's answer says about the learned limit, given back with its permit."""

    SUCCEEDED = "succeeded"  # the provider answered: the limit held
    LIMITED = "limited"  # the provider refused for too many calls (GLM's 1302, a 429)


@dataclass(frozen=True, slots=True)
class LimitPolicy:
    """The limits one decorator enforces on a key.

    The policy travels with every acquisition instead of being fixed per key, so two
    decorators sharing a key each enforce their own numbers against the shared history,
    and a limit can change at run time without resetting that history.
    """

    calls: int | None
    period: float
    concurrency: int | AutoConcurrency | None
    on_backend_error: str = "local"
    """What to do while a shared store is unreachable: ``local``, ``open`` or ``closed``."""
    tokens: int | None = None
    """Tokens that may start in any ``period``, counted by each call's reservation (``None``: no budget)."""
    reserve: int = 0
    """What this call reserves from ``tokens`` (its estimate): the one field that differs per call."""
    burst: tuple[int, float] | None = None
    """``(starts, seconds)``: at most that many starts in any sub-window (``None``: no cap)."""

    def __post_init__(self) -> None:
        if self.on_backend_error not in BACKEND_ERROR_POLICIES:
            raise ConfigurationError(
                "on_backend_error", f"must be one of {', '.join(BACKEND_ERROR_POLICIES)}, got {self.on_backend_error!r}"
            )
        if self.calls is not None:
            _check_positive_int("calls", self.calls)
        if self.concurrency is not None and not isinstance(self.concurrency, AutoConcurrency):
            _check_positive_int("concurrency", self.concurrency)
        _check_positive_number("period", self.period)
        if self.burst is not None:
            if not isinstance(self.burst, tuple) or len(self.burst) != 2:
                raise ConfigurationError("burst", f"must be (starts, seconds), got {self.burst!r}")
            _check_positive_int("burst", self.burst[0])
            _check_positive_number("burst", self.burst[1])
        if self.tokens is not None:
            _check_positive_int("tokens", self.tokens)
            if not 0 <= self.reserve <= self.tokens:
                raise ConfigurationError("reserve", f"must be from 0 to tokens ({self.tokens}), got {self.reserve!r}")


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(name, f"must be a positive integer, got {value!r}")


def _check_positive_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
        raise ConfigurationError(name, f"must be a positive number of seconds, got {value!r}")


#: Bounds of a retry budget: Finagle allows windows of 1 to 60 s; a ratio above 10 (ten retries
#: per call) is no budget at all.
RETRY_WINDOW_RANGE: Final = (1.0, 60.0)
MAX_RETRY_RATIO: Final = 10.0
MAX_RETRY_FLOOR: Final = 1_000_000


@dataclass(frozen=True, slots=True)
class RetryBudgetPolicy:
    """How many retries a key may make: a share of its calls over a sliding window, with a floor.

    A retry may go while the key's retries in the last ``window`` seconds stay within
    ``max(ratio * calls, min_retries)``, its calls being the logical calls (first attempts)
    in the same window.  The defaults follow Finagle and Envoy (20 %, 10 s); the floor is
    the retries one call makes under the default ``max_tries=5``, so a lone caller never
    meets the budget: it binds only when many calls fail together.  ``ratio`` is kept to
    three decimals, so every backend decides with the same integers.
    """

    ratio: float = 0.2
    min_retries: int = 10
    window: float = 10.0

    def __post_init__(self) -> None:
        ratio = self.ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= MAX_RETRY_RATIO:
            raise ConfigurationError(
                "retry_budget.ratio", f"must be a number from 0 to {MAX_RETRY_RATIO:g}, got {ratio!r}"
            )
        floor = self.min_retries
        if isinstance(floor, bool) or not isinstance(floor, int) or not 0 <= floor <= MAX_RETRY_FLOOR:
            raise ConfigurationError(
                "retry_budget.min_retries", f"must be an integer from 0 to {MAX_RETRY_FLOOR}, got {floor!r}"
            )
        window = self.window
        low, high = RETRY_WINDOW_RANGE
        if isinstance(window, bool) or not isinstance(window, (int, float)) or not low <= window <= high:
            raise ConfigurationError("retry_budget.window", f"must be from {low:g} to {high:g} seconds, got {window!r}")

    @property
    def per_mille(self) -> int:
        """``ratio`` in thousandths: the integer both backends decide with."""
        return round(self.ratio * 1000)

    @property
    def seconds(self) -> int:
        """The window in whole seconds (rounded up): both backends count in one-second buckets."""
        return math.ceil(self.window)

    def allows(self, calls: int, retries: int) -> bool:
        """Whether one more retry fits, given the window's ``calls`` and the ``retries`` already made."""
        return (retries + 1) * 1000 <= max(self.per_mille * calls, self.min_retries * 1000)


class Permit(Protocol):
    """Proof that a call was admitted; give it back exactly once when the call ends.

    ``outcome`` teaches a learned limit what the answer said; ``None``: nothing (another
    error, a cancellation), and a fixed limit ignores it.
    """

    def release(self, outcome: Outcome | None = None) -> None: ...


class Spending:
    """A permit that holds a token reservation (a policy with ``tokens``).

    Its holder sets ``used`` before releasing it: the tokens the answer reports, ``0`` when the
    call failed or was cancelled (the reservation is given back); left ``None``, the estimate
    stays counted.  ``provider_left``, when set, lowers the budget in the same step.  Every such
    permit is a fresh object, so the attributes are the call's own.
    """

    __slots__ = ("provider_left", "used")

    def __init__(self) -> None:
        self.used: int | None = None
        self.provider_left: ProviderLeft | None = None  # set with ``used`` when the answer's headers say


class ProviderLeft(NamedTuple):
    """What the provider said is left of its token count, with the budget it lowers.

    The settle that carries it lowers ``budget`` (per ``period``) to ``tokens`` until ``reset``
    seconds from now, if less than that is left of it: tokens spent outside the guard (another
    program on the same account) then hold the guard back too.  The budget travels with it
    because a permit does not know its policy.
    """

    tokens: int
    reset: float
    budget: int
    period: float


class AsyncPermit(Protocol):
    """The async flavour of :class:`Permit`."""

    async def release(self, outcome: Outcome | None = None) -> None: ...


class Limiter(ABC):
    """Admission control for one key: calls per window, calls in flight, and cooldown."""

    key: str

    @abstractmethod
    def acquire(self, policy: LimitPolicy, max_wait: float | None) -> Permit:
        """Block the thread until ``policy`` admits one more call, in arrival order."""

    @abstractmethod
    async def acquire_async(self, policy: LimitPolicy, max_wait: float | None) -> AsyncPermit:
        """Wait (without blocking the loop) until ``policy`` admits one more call."""

    @abstractmethod
    def cooldown(self, seconds: float) -> None:
        """Admit nothing on this key for ``seconds``; never shortens an existing pause."""

    @abstractmethod
    async def cooldown_async(self, seconds: float) -> None:
        """The async flavour of :meth:`cooldown`."""

    @abstractmethod
    def pause(self, reason: str, seconds: float, probe_every: float) -> None:
        """Refuse every call of the key at once (``KeyPaused``) for ``seconds``, then let one
        call through per ``probe_every`` until one succeeds; never shortens a longer pause."""

    @abstractmethod
    async def pause_async(self, reason: str, seconds: float, probe_every: float) -> None:
        """The async flavour of :meth:`pause`."""

    def learned_limit(self) -> int | None:
        """The concurrency limit learned for this key, as last seen here; ``None`` if none is learned."""
        return None


class CacheStore(ABC):
    """Stored results for one cache namespace, keyed by argument digests."""

    #: Other processes read and write this store, so its keys are digests every process
    #: computes alike.  A store in this process only (``False``) takes any hashable key.
    shared: bool = True

    @abstractmethod
    def get(self, key: str) -> tuple[bool, object]:
        """``(True, value)`` on a hit, ``(False, None)`` on a miss."""

    @abstractmethod
    def set(self, key: str, value: object) -> None:
        """Store ``value`` under ``key`` for the store's TTL."""

    async def get_async(self, key: str) -> tuple[bool, object]:
        return self.get(key)

    async def set_async(self, key: str, value: object) -> None:
        self.set(key, value)

    # A shared store lets one process compute an entry while the others wait for it.
    # In one process the decorator already coalesces calls, so the defaults always claim.

    def claim(self, key: str) -> bool:
        """Try to become the one caller computing ``key``; ``False`` if another one is."""
        return True

    def unclaim(self, key: str) -> None:  # noqa: B027 - optional hook
        """Give up the claim on ``key`` (after storing it, or after failing)."""

    async def claim_async(self, key: str) -> bool:
        return self.claim(key)

    async def unclaim_async(self, key: str) -> None:
        self.unclaim(key)


class RetryBudget(ABC):
    """The retry budget of one key under one policy, shared as far as its backend shares state.

    ``deposit`` counts a logical call and never waits on I/O (a shared backend batches the
    deposits with the next ``withdraw``); ``withdraw`` says whether one retry may go, and
    counts it if so.  Neither raises: a backend that cannot reach its store decides alone.
    """

    __slots__ = ("key", "policy")

    def __init__(self, key: str, policy: RetryBudgetPolicy) -> None:
        self.key = key
        self.policy = policy

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key!r} {self.policy}>"

    @abstractmethod
    def deposit(self) -> None:
        """A logical call of the key started."""

    @abstractmethod
    def withdraw(self) -> bool:
        """Whether one more retry of the key may go now (counted when ``True``)."""

    @abstractmethod
    async def withdraw_async(self) -> bool:
        """The async flavour of :meth:`withdraw`."""


class Backend(ABC):
    """Where limiters, retry budgets and caches keep their state."""

    name: str

    @abstractmethod
    def limiter(self, key: str) -> Limiter:
        """The limiter for ``key``: the same object (or shared state) for the same key."""

    @abstractmethod
    def retry_budget(self, key: str, policy: RetryBudgetPolicy) -> RetryBudget:
        """The retry budget of ``key`` under ``policy``: every budget of the key counts the same
        calls and retries, whatever the policy, as every limiter of a key shares one history."""

    @abstractmethod
    def cache(
        self, namespace: str, *, ttl: float | None, maxsize: int, serializer: str = "json", owner: str = ""
    ) -> CacheStore:
        """The store for ``namespace``; ``ttl=None`` keeps entries until evicted.

        ``serializer`` matters only to stores outside the process (``"json"`` or ``"pickle"``);
        ``owner`` names the decorated function in warnings.
        """

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op for in-memory backends
        """Release connections; the backend may not be used afterwards."""


#: Counters by stats key, then by field name: ``{"mod.fn": {"calls": 3, "lat.42": 1}}``.
Counters = dict[str, dict[str, int]]


class SharedStats(ABC):
    """Counters and alert states that every process adds to and reads, kept by a backend.

    The monitoring package talks to a shared store only through this interface, so a new
    deployment (TLS, Sentinel, Cluster) is a backend's concern, never the recorder's.
    Minutes are whole UTC minutes (``unix time // 60``).
    """

    name: str
    """Where the numbers come from, as ``stats()`` reports it (``"redis"``)."""

    @abstractmethod
    def add(self, minutes: Mapping[int, Counters]) -> None:
        """Add per-minute counters (and the same to the running totals).

        Raises when the store did not take them, so the caller keeps them and sends them again;
        counters that partly went in are not raised, since sending them again counts them twice."""

    @abstractmethod
    def totals(self) -> Counters:
        """Every process's counters since the store was first used."""

    @abstractmethod
    def window(self, first_minute: int, last_minute: int) -> Counters:
        """Every process's counters of the minutes ``first_minute..last_minute``, summed."""

    @abstractmethod
    def reachable(self) -> bool:
        """Whether the store answers now (for ``/healthz``); never raises."""

    @abstractmethod
    def firing_alerts(self) -> set[str]:
        """The alerts some process reported as firing and nobody has resolved yet."""

    @abstractmethod
    def start_alert(self, name: str) -> bool:
        """Mark ``name`` firing; ``True`` only for the one process that changed it."""

    @abstractmethod
    def end_alert(self, name: str) -> bool:
        """Mark ``name`` resolved; ``True`` only for the one process that changed it."""


class SharesStats(ABC):
    """A backend whose processes can share their stats: the monitoring package asks it for them."""

    @abstractmethod
    def shared_stats(self) -> SharedStats:
        """The store every process using this backend adds its counters to."""


class LearnedState(NamedTuple):
    """A key's learned concurrency limit (``concurrency="auto"``), for monitoring."""

    limit: int
    cuts: int
    """Congestion epochs so far: each 1302 that cut the limit (or found it at its minimum)."""


class LearnsLimits(ABC):
    """A backend whose limiters can learn a concurrency limit: monitoring asks it for them."""

    @abstractmethod
    def learned_limits(self, keys: Iterable[str] = ()) -> dict[str, LearnedState]:
        """The learned limit of every key this process learns one for, and of those of ``keys``
        the backend holds one for, as the backend holds it now; never raises."""

    @abstractmethod
    def fixed_limits(self) -> dict[str, int]:
        """The fixed concurrency limit (``concurrency=N``) each key was last admitted under in
        this process (a shared backend adds the fleet's), so monitoring can draw calls in flight
        against it; never raises."""


class ReportsOutages(ABC):
    """A backend that can lose its shared store, and so serves some calls by its outage policy."""

    @abstractmethod
    def outage_report(self) -> dict[str, object]:
        """For ``stats()``: the store (password masked), whether it is reachable now, how many
        outages began, and how many calls this process served under ``on_backend_error``."""
