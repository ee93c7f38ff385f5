"""Refusals GLM makes for the account or the model rather than for concurrency.

Quota windows (1304/1308/1310) close per key after some calls and reopen at a stated time;
arrears (1113) last until cleared; an overloaded model (1305/1312) refuses a share of its
calls while other models answer. No lock here: the engine calls in under its own.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ._catalogue import QUOTA_CODES
from ._config import SimulatorConfig

__all__ = ["OVERLOAD_CODES", "Account", "Refusal"]

OVERLOAD_CODES: frozenset[str] = frozenset({"1305", "1312"})


@dataclass(frozen=True, slots=True)
class Refusal:
    """An answer decided before the concurrency check, with what its message must name."""

    code: str
    reset: float | None = None  # epoch seconds, for quota windows
    model_name: str | None = None  # the model 1312 suggests instead


@dataclass(slots=True)
class _Window:
    used: int = 0
    code: str = "1308"
    reset_mono: float | None = None  # set while the window is closed
    reset_wall: float = 0.0


@dataclass(frozen=True, slots=True)
class _Overload:
    code: str
    fraction: float
    until: float | None  # monotonic
    switch_to: str


class Account:
    """Quota windows per key (``None``: every key) and overloads per model."""

    __slots__ = ("_overloads", "_windows")

    def __init__(self) -> None:
        self._windows: dict[str | None, _Window] = {}
        self._overloads: dict[str, _Overload] = {}

    def refusal(
        self, cfg: SimulatorConfig, key: str, model: str, mono: float, wall: float, rng: random.Random
    ) -> Refusal | None:
        """The account- or model-level answer for this request, if any."""
        if cfg.in_arrears(key):
            return Refusal("1113")
        for who in (None, key):
            window = self._windows.get(who)
            if window is None or window.reset_mono is None:
                continue
            if mono < window.reset_mono:
                return Refusal(window.code, reset=window.reset_wall)
            del self._windows[who]  # the window reopened: the count starts again
        if cfg.quota_after == 0:
            window = self._windows.setdefault(key, _Window())
            self._close(window, cfg.quota_code, cfg.quota_reset, mono, wall)
            return Refusal(window.code, reset=window.reset_wall)
        overload = self._overloads.get(model)
        if overload is not None:
            if overload.until is not None and mono >= overload.until:
                del self._overloads[model]
            elif overload.fraction >= 1.0 or rng.random() < overload.fraction:
                return Refusal(overload.code, model_name=overload.switch_to)
        return None

    def admitted(self, cfg: SimulatorConfig, key: str, mono: float, wall: float) -> None:
        """Count a call against the key's quota; the ``quota_after``-th closes the window."""
        if cfg.quota_after is None:
            return
        window = self._windows.setdefault(key, _Window())
        window.used += 1
        if window.used >= cfg.quota_after:
            self._close(window, cfg.quota_code, cfg.quota_reset, mono, wall)

    def exhaust(self, key: str | None, code: str, reset_in: float, mono: float, wall: float) -> float:
        """Close ``key``'s window (every key's with ``None``) now; returns the reset, epoch s."""
        if code not in QUOTA_CODES:
            raise ValueError(f"quota code must be one of {sorted(QUOTA_CODES)}, got {code!r}")
        if not (reset_in > 0 and math.isfinite(reset_in)):
            raise ValueError(f"reset_in must be a finite number of seconds > 0, got {reset_in!r}")
        window = self._windows.setdefault(key, _Window())
        self._close(window, code, reset_in, mono, wall)
        return window.reset_wall

    def clear_quota(self, key: str | None) -> None:
        """Reopen ``key``'s window (all windows with ``None``) and forget its count."""
        if key is None:
            self._windows.clear()
        else:
            self._windows.pop(key, None)

    def overload(
        self, model: str, code: str, fraction: float, duration: float | None, switch_to: str, mono: float
    ) -> None:
        if code not in OVERLOAD_CODES:
            raise ValueError(f"overload code must be one of {sorted(OVERLOAD_CODES)}, got {code!r}")
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        if duration is not None and not (duration > 0 and math.isfinite(duration)):
            raise ValueError(f"duration must be a finite number of seconds > 0 or None, got {duration!r}")
        until = None if duration is None else mono + duration
        self._overloads[model] = _Overload(code, float(fraction), until, switch_to)

    def clear_overload(self, model: str | None) -> None:
        if model is None:
            self._overloads.clear()
        else:
            self._overloads.pop(model, None)

    def overloaded(self, mono: float) -> tuple[str, ...]:
        """Models overloaded now."""
        return tuple(sorted(m for m, o in self._overloads.items() if o.until is None or mono < o.until))

    @staticmethod
    def _close(window: _Window, code: str, reset_in: float, mono: float, wall: float) -> None:
        # Whole seconds, as GLM's text has no fraction: the stated moment is the real one.
        window.code = code
        window.reset_wall = float(math.ceil(wall + reset_in))
        window.reset_mono = mono + (window.reset_wall - wall)
        window.used = 0
