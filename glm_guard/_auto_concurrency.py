"""``concurrency="auto"``: the bounds of a concurrency limit learned from the provider's answers.

Its own module because both the settings (``GLM_API_MAX_CONCURRENCY=auto``) and the backends
read it; the rule itself is in ``backends/_learned``.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import _validate
from ._errors import ConfigurationError

__all__ = ["AutoConcurrency"]


@dataclass(frozen=True, slots=True)
class AutoConcurrency:
    """A concurrency limit learned from the provider's answers, kept between ``min`` and ``max``.

    ``concurrency="auto"`` means ``AutoConcurrency()``.  The limit starts at ``initial``
    (default: ``min``, grown quickly until the first rate-limit error) and is shared by
    every process using the key; see ``docs/adaptive.md`` for the rule.
    """

    min: int = 1
    max: int = 64
    initial: int | None = None

    def __post_init__(self) -> None:
        _validate.positive_int("min", self.min)
        _validate.positive_int("max", self.max)
        if self.max < self.min:
            raise ConfigurationError("max", f"must be >= min ({self.min}), got {self.max!r}")
        if self.initial is not None:
            _validate.positive_int("initial", self.initial)
            if not self.min <= self.initial <= self.max:
                raise ConfigurationError("initial", f"must lie in [{self.min}, {self.max}], got {self.initial!r}")

    @property
    def start(self) -> int:
        return self.min if self.initial is None else self.initial
