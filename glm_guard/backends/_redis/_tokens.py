"""Tokens naming one admission or one cache claim, unique across processes and hosts."""

from __future__ import annotations

import itertools
import os
import uuid

_counter = itertools.count()
_prefix = [uuid.uuid4().hex[:12].encode()]


def _new_prefix() -> None:
    _prefix[0] = uuid.uuid4().hex[:12].encode()


if hasattr(os, "register_at_fork"):  # a forked child must not repeat its parent's tokens
    os.register_at_fork(after_in_child=_new_prefix)


def new_token() -> bytes:
    """A random per-process prefix and a counter: unique without asking anyone."""
    return b"%b%x" % (_prefix[0], next(_counter))
